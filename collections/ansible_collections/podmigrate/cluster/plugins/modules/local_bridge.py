#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_bridge
short_description: A Linux bridge with one host address, for local test-cluster nodes
description:
  - Creates (or removes) a bridge in the host's network namespace and gives the host
    one address on it. Nothing else on the host is changed; no forwarding or NAT is
    set up, so nodes on the bridge reach each other and the host's bridge address only.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  name:
    description: Bridge interface name.
    type: str
    required: true
  address:
    description: The host's address on the bridge, with prefix (C(10.213.0.1/24)).
    type: str
  state:
    description: Whether the bridge should exist.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Bridge for the local nodes
  podmigrate.cluster.local_bridge:
    name: pm-br0
    address: 10.213.0.1/24
"""

RETURN = r"""
addresses:
  description: The bridge's IPv4 addresses after the change.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import ip_json


def addresses(name):
    out = []
    for link in ip_json("-4", "addr", "show", "dev", name):
        for a in link.get("addr_info", []):
            out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def exists(name):
    return bool(ip_json("link", "show", "dev", name))


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "address": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        required_if=[("state", "present", ["address"])],
        supports_check_mode=True,
    )
    name, address, state = module.params["name"], module.params["address"], module.params["state"]
    present = exists(name)
    before = {"exists": present, "addresses": addresses(name) if present else []}
    cmds = []
    if state == "absent":
        if present:
            cmds.append(["ip", "link", "del", "dev", name])
    else:
        if present:
            kind = ip_json("-d", "link", "show", "dev", name)[0].get("linkinfo", {}).get("info_kind")
            if kind != "bridge":
                module.fail_json(msg=f"interface {name} exists and is a {kind or 'plain'} interface, not a bridge")
        else:
            cmds.append(["ip", "link", "add", "name", name, "type", "bridge"])
        for other in before["addresses"]:
            if other != address:
                cmds.append(["ip", "addr", "del", other, "dev", name])
        if address not in before["addresses"]:
            cmds.append(["ip", "addr", "add", address, "dev", name])
        if not present or "UP" not in ip_json("link", "show", "dev", name)[0].get("flags", []):
            cmds.append(["ip", "link", "set", "dev", name, "up"])
    after = {"exists": state == "present", "addresses": [address] if state == "present" else []}
    if cmds and not module.check_mode:
        for cmd in cmds:
            module.run_command(cmd, check_rc=True)
        after["addresses"] = addresses(name) if state == "present" else []
    module.exit_json(changed=bool(cmds), diff={"before": before, "after": after},
                     addresses=after["addresses"], commands=[" ".join(c) for c in cmds])


if __name__ == "__main__":
    main()
