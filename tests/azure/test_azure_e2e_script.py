"""scripts/azure-e2e: up -> migrate demo -> down, and down always runs.

ansible-playbook and the demo are replaced by a recorder (ANSIBLE_PLAYBOOK, PODMIGRATE_DEMO)
that fails where a test asks; the real playbooks are exercised by test_azure_provider.py,
the real demo by `make demo` and the migration tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RECORDER = """#!/bin/sh
name="$1"
[ "$(basename "$0")" = demo ] && name="demo $*"
echo "$name" >> "$E2E_CALLS"
[ "$1" = "$E2E_FAIL" ] || [ "$(basename "$0")" = "$E2E_FAIL" ] && exit 3
exit 0
"""


def run_job(tmp_path: Path, fail: str = "", cidr: str = "203.0.113.7/32") -> tuple[int, list[str], str]:
    for name in ("ansible-playbook", "demo"):
        (tmp_path / name).write_text(RECORDER)
        (tmp_path / name).chmod(0o755)
    recorder = tmp_path / "ansible-playbook"
    calls = tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PODMIGRATE_"))}
    env.update(ANSIBLE_PLAYBOOK=str(recorder), PODMIGRATE_DEMO=str(tmp_path / "demo"), E2E_CALLS=str(calls),
               E2E_FAIL=fail,
               PODMIGRATE_ADMIN_CIDR=cidr)
    proc = subprocess.run([str(ROOT / "scripts/azure-e2e")], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, calls.read_text().splitlines() if calls.exists() else [], proc.stderr


def test_up_demo_down_in_that_order(tmp_path):
    rc, calls, err = run_job(tmp_path)
    assert calls == ["site.yml", "demo -i inventories/azure", "teardown.yml"]
    assert rc == 0, err


def test_down_runs_when_the_demo_fails_and_the_job_fails(tmp_path):
    rc, calls, err = run_job(tmp_path, fail="demo")
    assert calls == ["site.yml", "demo -i inventories/azure", "teardown.yml"]
    assert rc == 1 and "demo FAILED" in err


def test_down_runs_when_up_fails(tmp_path):
    rc, calls, err = run_job(tmp_path, fail="site.yml")
    assert calls == ["site.yml", "teardown.yml"]
    assert rc == 1 and "up FAILED" in err


def test_a_failed_teardown_fails_the_job(tmp_path):
    rc, calls, err = run_job(tmp_path, fail="teardown.yml")
    assert calls[-1] == "teardown.yml"
    assert rc != 0 and "teardown FAILED" in err


def test_no_admin_range_no_job(tmp_path):
    rc, calls, err = run_job(tmp_path, cidr="")
    assert rc == 2 and calls == []
    assert "PODMIGRATE_ADMIN_CIDR" in err
