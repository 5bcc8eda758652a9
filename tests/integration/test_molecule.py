"""The molecule scenario of the seed-fork node role, run as part of the test suite.

The upstream node roles are checked on the session cluster's nodes instead (test_node_roles.py).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import ROOT, VENV_BIN

pytestmark = pytest.mark.nodes


def molecule_test(scenario: str, min_verified: int) -> str:
    """Run `molecule test -s SCENARIO`; assert every step ran and testinfra verified; return its output."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    proc = subprocess.run([str(VENV_BIN / "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    # Every step ran, idempotence and the testinfra verification included.
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in out, (step, out[-4000:])
    verified = re.search(r"=+ (\d+) passed(?:, [^=]*)? in [0-9.]+s", out)
    assert verified and int(verified.group(1)) >= min_verified and "failed" not in verified.group(0), out[-4000:]
    return out


def test_molecule_seed_fork_scenario_passes():
    out = molecule_test("seed_fork", 10)
    # The steps a container cannot do are skipped with a message, and the insecure kubelet is warned about.
    for message in ("seed-fork: skipping the kernel downgrade to 5.4.0-1068-azure on pmf-n1",
                    "seed-fork: not mounting //pmfstorage.file.core.windows.net/checkpoints at",
                    "seed-fork: not loading overlay and br_netfilter on pmf-n1",
                    "WARNING (seed-fork profile): the kubelet on pmf-n1 runs with --anonymous-auth=true"):
        assert message in out, (message, out[-4000:])
