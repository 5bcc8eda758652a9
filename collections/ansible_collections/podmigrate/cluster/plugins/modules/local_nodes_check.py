#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_nodes_check
short_description: Validate a requested set of local test-cluster nodes before anything is made
description:
  - Fails, listing every problem at once, when the local provider cannot build the
    requested nodes; changes nothing.
  - Checks that there is at least one node and one control-plane
    node, node names (valid hostnames, at most 12 characters), that no node is in both
    groups, that addresses are unique host addresses inside the subnet, that the
    subnet is not routed through another interface of the host, and that no other
    systemd-nspawn machine with a node's name is running.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  nodes:
    description: The nodes, each with C(name), C(address), C(groups) and C(node_dir).
    type: list
    elements: dict
    required: true
  subnet:
    description: The bridge's subnet (C(10.213.0.0/24)).
    type: str
    required: true
  gateway:
    description: The host's address on the bridge, without prefix.
    type: str
    required: true
  bridge:
    description: Bridge interface name.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Validate the nodes
  podmigrate.cluster.local_nodes_check:
    nodes:
      - {name: cp1, address: 10.213.0.11, groups: [control_plane], node_dir: /srv/pm/nodes/cp1}
    subnet: 10.213.0.0/24
    gateway: 10.213.0.1
    bridge: pm-br0
"""

RETURN = r"""
nodes:
  description: Names of the validated nodes.
  returned: success
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import (
    ip_json,
    nspawn_processes,
    validate,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "nodes": {"type": "list", "elements": "dict", "required": True},
            "subnet": {"type": "str", "required": True},
            "gateway": {"type": "str", "required": True},
            "bridge": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    nodes = [dict(n, root=os.path.join(os.path.abspath(n.get("node_dir", "")), "rootfs"))
             for n in p["nodes"]]
    errors = validate(nodes, p["subnet"], p["gateway"], p["bridge"],
                      routes=ip_json("route", "show", "table", "all"),
                      running=nspawn_processes())
    if errors:
        module.fail_json(msg="the local nodes cannot be built:\n- " + "\n- ".join(errors),
                         errors=errors)
    module.exit_json(changed=False, nodes=[n["name"] for n in nodes])


if __name__ == "__main__":
    main()
