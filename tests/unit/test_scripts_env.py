"""The scripts run from a fresh shell: they find the project's .venv themselves (scripts/projectenv.py)."""

from __future__ import annotations

import subprocess

import pytest
from helpers import FRESH, ROOT


def run(*argv, timeout=300, env=FRESH):
    return subprocess.run([str(ROOT / "scripts" / argv[0]), *argv[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def inventory(tmp_path):
    """An inventory without a cluster: a migration must fail, and say why."""
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    return str(path)


def test_bench_imports_its_packages_from_a_fresh_shell():
    res = run("bench", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: bench"), res.stdout


def test_migrate_finds_ansible_playbook_from_a_fresh_shell(inventory):
    res = run("podmigrate", "migrate", "default/nosuchpod", "-i", inventory)
    # no cluster here, so it fails, but in the playbook, not for want of one
    assert res.returncode != 0
    assert "FileNotFoundError" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "ansible-playbook" not in res.stderr, res.stderr


def test_migrate_says_why_it_failed_whatever_callbacks_the_users_environment_adds(inventory):
    # profile_tasks prints around the JSON document the CLI reads
    res = run("podmigrate", "migrate", "default/nosuchpod", "-i", inventory,
              env=dict(FRESH, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks"))
    assert res.returncode != 0
    # the failed task's own message, not the playbook's raw output
    assert res.stderr.startswith("Task failed:"), res.stderr[-2000:]
    assert "custom_stats" not in res.stderr
