"""The engine reaches each node as Ansible itself would: the action of the migrate and drain
modules resolves every node's connection through Ansible's own ssh connection and become
plugins (plugin_utils/inventory_nodes.py), from a real inventory read by Ansible."""

from __future__ import annotations

import getpass
import json
import subprocess

import pytest
from helpers import NOWHERE_KUBECONFIG, ROOT

INVENTORY = """
all:
  vars:
    admin: azureuser
  children:
    control_plane:
      hosts:
        cp:
          ansible_host: 192.0.2.10
          ansible_user: "{{ admin }}"
          ansible_become: true
          ansible_ssh_private_key_file: /keys/id_ed25519
          ansible_ssh_common_args: -o UserKnownHostsFile=/keys/known_hosts
    workers:
      hosts:
        w1:
          # Ansible's older names for the same settings
          ansible_ssh_host: 192.0.2.11
          ansible_ssh_user: root
          ansible_ssh_port: 2222
          ansible_ssh_extra_args: -o ConnectionAttempts=3
          kubernetes_node_name: worker-one
        w2:
          ansible_become: "yes"
          ansible_become_user: admin
"""


def resolve(tmp_path, text=INVENTORY):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager
    from ansible_collections.podmigrate.cluster.plugins.plugin_utils.inventory_nodes import inventory_nodes

    (tmp_path / "hosts.yml").write_text(text)
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(tmp_path / "hosts.yml")])
    variables = VariableManager(loader=loader, inventory=inventory)
    variables._hostvars = HostVars(inventory=inventory, variable_manager=variables, loader=loader)  # as a play has
    return inventory_nodes(variables.get_vars(host=inventory.get_host("cp"), include_hostvars=True))


def test_each_node_is_reached_as_ansible_reaches_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ANSIBLE_REMOTE_USER", raising=False)
    nodes, problems = resolve(tmp_path)
    assert problems == []
    assert nodes == {
        "cp": {"host": "192.0.2.10", "user": "azureuser", "port": None, "key": "/keys/id_ed25519",
               "ssh_args": "-o UserKnownHostsFile=/keys/known_hosts", "become": True, "become_method": "sudo",
               "become_user": "root"},
        "worker-one": {"host": "192.0.2.11", "user": "root", "port": 2222, "key": None,
                       "ssh_args": "-o ConnectionAttempts=3", "become": False, "become_method": "sudo",
                       "become_user": "root"},
        # no address, no user: its name, and the user running Ansible
        "w2": {"host": "w2", "user": getpass.getuser(), "port": None, "key": None, "ssh_args": "",
               "become": True, "become_method": "sudo", "become_user": "admin"}}


def test_the_environment_ansible_reads_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_REMOTE_USER", "operator")
    monkeypatch.setenv("ANSIBLE_REMOTE_PORT", "2200")
    nodes, _ = resolve(tmp_path)
    assert (nodes["w2"]["user"], nodes["w2"]["port"]) == ("operator", 2200)
    assert (nodes["worker-one"]["user"], nodes["worker-one"]["port"]) == ("root", 2222)  # its own variables win


@pytest.mark.parametrize(("setting", "why"), [
    ("ansible_connection: local", "node w2: Ansible reaches it by local; the engine reaches nodes over ssh only"),
    ("ansible_password: secret",
     "node w2: Ansible logs in with a password; the engine logs in with a key only (BatchMode)")])
def test_a_node_ansible_reaches_otherwise_is_refused_before_anything_changes(tmp_path, setting, why):
    text = INVENTORY.replace("          ansible_become_user: admin\n",
                             f"          ansible_become_user: admin\n          {setting}\n")
    nodes, problems = resolve(tmp_path, text)
    assert problems == [why] and "w2" not in nodes
    # through ansible-playbook: the migrate task fails saying so, and never reaches a node
    (tmp_path / "kubeconfig").write_text(NOWHERE_KUBECONFIG)
    (tmp_path / "play.yml").write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"podmigrate.cluster.migrate": {"pod": "default/counter", "kubeconfig": str(tmp_path / "kubeconfig")}}]}]))
    res = subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stdout[-3000:]
    assert f"refused, nothing changed: {why}" in res.stdout, res.stdout[-3000:]
    assert "secret" not in res.stdout + res.stderr
