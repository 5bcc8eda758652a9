# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the migration engine reaches each node: as Ansible itself would, resolved by
Ansible's own ssh connection and become plugins from everything that configures them (the
inventory's variables and their aliases, ansible.cfg, the environment), not by a second
copy of those rules. Used by the action plugins of the modules that migrate (migrate,
drain), which run on the controller and give the module the result as its ``nodes``."""

from __future__ import annotations

import getpass

from ansible import constants as C
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import become_loader, connection_loader

GROUPS = ("control_plane", "workers")
SSH = ("ssh", "ansible.builtin.ssh", "smart")


def node_connection(host_vars):
    """The engine's connection to the node whose (templated) variables are ``host_vars``:
    dict(host, user, port, key, ssh_args, become, become_method, become_user); or a
    sentence saying why the engine cannot reach it the way Ansible does."""
    name = host_vars["inventory_hostname"]
    transport = host_vars.get("ansible_connection") or C.DEFAULT_TRANSPORT
    if transport not in SSH:
        return f"node {name}: Ansible reaches it by {transport}; the engine reaches nodes over ssh only"
    ssh = connection_loader.get("ssh", PlayContext())
    ssh.set_options(var_options=host_vars)
    if ssh.get_option("password"):
        return f"node {name}: Ansible logs in with a password; the engine logs in with a key only (BatchMode)"
    args = " ".join(a for a in (ssh.get_option("ssh_common_args"), ssh.get_option("ssh_extra_args")) if a)
    node = {"host": ssh.get_option("host"), "user": ssh.get_option("remote_user") or getpass.getuser(),
            "port": ssh.get_option("port"), "key": ssh.get_option("private_key_file"), "ssh_args": args,
            "become": boolean(host_vars.get("ansible_become", C.DEFAULT_BECOME), strict=False),
            "become_method": host_vars.get("ansible_become_method") or C.DEFAULT_BECOME_METHOD,
            "become_user": "root"}
    if node["become"]:
        method = become_loader.get(node["become_method"])
        if method is None:
            return f"node {name}: no become plugin {node['become_method']}"
        method.set_options(var_options=host_vars)
        node["become_user"] = method.get_option("become_user") or "root"
    return node


def inventory_nodes(task_vars):
    """Every host of the inventory's control_plane and workers groups, by Kubernetes node
    name (``kubernetes_node_name``, else the host's name): its connection (node_connection),
    or the list of sentences saying which cannot be reached as Ansible does."""
    nodes, problems = {}, []
    hosts = [h for group in GROUPS for h in task_vars["groups"].get(group, [])]
    for host in dict.fromkeys(hosts):
        host_vars = task_vars["hostvars"][host]
        found = node_connection(host_vars)
        if isinstance(found, str):
            problems.append(found)
        else:
            nodes[host_vars.get("kubernetes_node_name") or host] = found
    return nodes, problems
