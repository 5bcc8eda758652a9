"""The migrate module run as Ansible runs it (its arguments in a file), where it fails before
a migration could change anything: it must say so, not that it rolled back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import COLLECTIONS, NOWHERE_KUBECONFIG


def run_module(tmp_path, **args):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"pod": "default/counter", "nodes": {}, **args}}))
    res = subprocess.run([sys.executable, "-m", "ansible_collections.podmigrate.cluster.plugins.modules.migrate",
                          str(path)], cwd=COLLECTIONS, capture_output=True, text=True, timeout=120, check=False)
    return json.loads(res.stdout)


@pytest.mark.parametrize("why", ["no kubeconfig", "no API server"])
def test_a_migration_that_fails_before_any_change_says_nothing_changed(tmp_path, why):
    kubeconfig = tmp_path / "kubeconfig"
    if why == "no API server":  # port 9 on loopback: nothing listens
        kubeconfig.write_text(NOWHERE_KUBECONFIG)
    answer = run_module(tmp_path, kubeconfig=str(kubeconfig), target="pm-w2", timeout=5)
    assert answer["failed"]
    assert answer["msg"].startswith("migration failed before it changed anything: "), answer["msg"]
    assert "rolled back" not in answer["msg"]
    if why == "no API server":
        assert answer["report"]["result"] == "not started"
