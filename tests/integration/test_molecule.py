"""The molecule scenario of the node roles, run as part of the test suite."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import ROOT, VENV_BIN

pytestmark = pytest.mark.nodes


def test_molecule_node_roles_scenario_passes():
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    proc = subprocess.run([str(VENV_BIN / "molecule"), "test", "-s", "node_roles"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    # Every step ran, idempotence and the testinfra verification included.
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in out, (step, out[-4000:])
    verified = re.search(r"=+ (\d+) passed(?:, [^=]*)? in [0-9.]+s", out)
    assert verified and int(verified.group(1)) >= 5 and "failed" not in verified.group(0), out[-4000:]
