#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_connections
short_description: How the migration engine reaches each node, exactly as Ansible does
description:
  - Returns, for every host of the inventory's C(control_plane) and C(workers) groups (by its
    C(kubernetes_node_name), else its name), the SSH connection Ansible itself would use
    and whether it becomes root there, resolved through Ansible's own ssh connection and
    become plugins (the inventory's variables and their aliases, C(ansible.cfg), the
    environment). The migrate and drain modules resolve their nodes the same way; the
    eviction webhook's engine gets them from this.
  - Fails, naming each, when a host is reached otherwise than by ssh or with a password
    (the engine logs in non-interactively, with a key).
  - An action that runs on the controller; changes nothing.
version_added: "0.2.0"
author: podmigrate contributors (!UNKNOWN)
options: {}
attributes:
  check_mode:
    support: full
    description: It only reads the inventory.
"""

EXAMPLES = r"""
- name: How the engine reaches the nodes
  podmigrate.cluster.node_connections:
  register: node_connections
"""

RETURN = r"""
nodes:
  description:
    - By Kubernetes node name, C(host), C(user), C(port), C(key), C(ssh_args) (the common
      and extra ssh arguments), C(become), C(become_method) and C(become_user).
  returned: success
  type: dict
  sample:
    pm-w1:
      host: 10.213.0.12
      user: root
      port: null
      key: /srv/ssh/id_ed25519
      ssh_args: ""
      become: false
      become_method: sudo
      become_user: root
"""
