#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_node
short_description: Boot or stop a local test-cluster node (systemd-nspawn machine)
description:
  - Boots the node whose root filesystem is C(<node_dir>/rootfs) as a systemd-nspawn
    machine with systemd as PID 1 and its network on a host bridge, detached from
    Ansible so that it outlives the playbook like a VM.
  - Waits until the node's systemd reports C(running) or C(degraded).
  - Each node runs in cgroups of its own (C(podmigrate-<name>) under this process's
    cgroup in every hierarchy), as a VM has a cgroup root of its own; stopping
    removes them.
  - Stopping powers the node off (systemd inside shuts down cleanly).
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  name:
    description: Machine name; also the node's hostname.
    type: str
    required: true
  node_dir:
    description: The node's directory; holds C(rootfs/), C(nspawn.pid) and C(console.log).
    type: path
    required: true
  bridge:
    description: Host bridge the node's veth is attached to. Required to start.
    type: str
  binds:
    description:
      - Host directories mounted into the node when it boots, each C(HOST:NODE).
      - A running node keeps the mounts it booted with.
    type: list
    elements: str
    default: []
  state:
    description: C(started) boots the node if it is not running; C(stopped) powers it off.
    type: str
    choices: [started, stopped]
    default: started
  boot_timeout:
    description: Seconds to wait for the node's systemd to finish booting.
    type: int
    default: 120
notes:
  - Needs root, C(systemd-nspawn) and C(nsenter) on the host.
"""

EXAMPLES = r"""
- name: Boot node cp1
  podmigrate.cluster.local_node:
    name: cp1
    node_dir: /srv/podmigrate/nodes/cp1
    bridge: pm-br0
"""

RETURN = r"""
pid:
  description: PID of the node's systemd-nspawn process on the host.
  returned: when the node runs
  type: int
init_pid:
  description: Host PID of the node's PID 1 (its systemd); use with nsenter.
  returned: when the node runs
  type: int
system_state:
  description: What C(systemctl is-system-running) says inside the node, or C(stopped).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import Node, NodeError


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "node_dir": {"type": "path", "required": True},
            "bridge": {"type": "str"},
            "binds": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
            "boot_timeout": {"type": "int", "default": 120},
        },
        required_if=[("state", "started", ["bridge"])],
        supports_check_mode=True,
    )
    p = module.params
    node = Node(p["name"], p["node_dir"], p["bridge"], p["binds"])
    running = node.pid() is not None
    want = p["state"] == "started"
    # a node that stopped by itself may have left its cgroups; stopping removes them
    changed = running != want or (not want and os.path.exists(node.cgroupfile))
    before = "running" if running else "stopped"
    diff = {"before": {"state": before}, "after": {"state": p["state"] if changed else before}}
    if changed and not module.check_mode:
        try:
            if want:
                node.start(timeout=p["boot_timeout"])
            else:
                node.stop()
        except NodeError as exc:
            module.fail_json(msg=str(exc), changed=True)
    elif want and running and not module.check_mode:
        try:
            node.wait_booted(p["boot_timeout"])
        except NodeError as exc:
            module.fail_json(msg=str(exc))
    status = node.status()
    module.exit_json(changed=changed, diff=diff, pid=status["pid"],
                     init_pid=status["init_pid"], system_state=status["state"])


if __name__ == "__main__":
    main()
