#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_daemon
short_description: A detached helper process of the local provider, known by its pid file
description:
  - Starts a command in a session of its own with its output in a log file, so that it
    outlives Ansible; records its pid and command line in O(pidfile).
  - A process counts as this daemon only while its command line is exactly the recorded
    one, so a stale pid file never makes the module signal another process.
  - Started again (restarted) when O(argv) differs from the command line it runs with.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  pidfile:
    description: Where the pid and command line are recorded.
    type: path
    required: true
  argv:
    description: The command to run. Required to start.
    type: list
    elements: str
  logfile:
    description: Where its output goes; default the pid file's name with C(.log).
    type: path
  state:
    description: C(started) or C(stopped).
    type: str
    choices: [started, stopped]
    default: started
"""

EXAMPLES = r"""
- name: Package relay for the nodes
  podmigrate.cluster.local_daemon:
    pidfile: /srv/pm/relay/aptrelay.pid
    argv: [python3, /srv/pm/relay/aptrelay.py, --bind, 10.213.0.1, --allow, mirror.example]
"""

RETURN = r"""
pid:
  description: The daemon's pid, when it runs.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import Daemon, NodeError, read_pidfile


def main():
    module = AnsibleModule(
        argument_spec={
            "pidfile": {"type": "path", "required": True},
            "argv": {"type": "list", "elements": "str"},
            "logfile": {"type": "path"},
            "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
        },
        required_if=[("state", "started", ["argv"])],
        supports_check_mode=True,
    )
    p = module.params
    daemon = Daemon(p["pidfile"], p["argv"], p["logfile"])
    running = daemon.pid() is not None
    before = {"running": running, "argv": read_pidfile(p["pidfile"])[1] if running else None}
    if p["state"] == "started":
        changed = not daemon.running_as_wanted()
        after = {"running": True, "argv": p["argv"]}
        if changed and not module.check_mode:
            try:
                daemon.start()
            except NodeError as exc:
                module.fail_json(msg=str(exc), changed=True)
    else:
        changed = running
        after = {"running": False, "argv": None}
        if changed and not module.check_mode:
            daemon.stop()
    module.exit_json(changed=changed, diff={"before": before, "after": after}, pid=daemon.pid())


if __name__ == "__main__":
    main()
