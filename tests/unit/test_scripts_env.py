"""The scripts run from a fresh shell: they find the project's .venv themselves (scripts/projectenv.py)."""

from __future__ import annotations

import subprocess

from helpers import ROOT

# a fresh shell of a new user: the system's python3, no .venv on PATH, no activation
FRESH = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def run(*argv, timeout=120):
    return subprocess.run([str(ROOT / "scripts" / argv[0]), *argv[1:]], cwd=ROOT, env=FRESH,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_bench_imports_its_packages_from_a_fresh_shell():
    res = run("bench", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: bench"), res.stdout


def test_migrate_finds_ansible_playbook_from_a_fresh_shell(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    res = run("podmigrate", "migrate", "default/nosuchpod", "-i", str(inventory), timeout=300)
    # no cluster here, so it fails, but in the playbook, not for want of one
    assert res.returncode != 0
    assert "FileNotFoundError" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "ansible-playbook" not in res.stderr, res.stderr
