# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules that run the engine share (migrate, drain): their options (documented
in the doc fragment podmigrate.cluster.engine), the API client, the nodes reached as
Ansible reaches them, and the progress file."""

from __future__ import annotations

import json
import os

from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine, lock, remote
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import transfer as transfers

ARGUMENT_SPEC = {
    "transfer": {"type": "str", "choices": list(transfers.TRANSFERS), "default": "direct"},
    "share": {"type": "str", "choices": list(transfers.SHARES), "default": "dir"},
    "copy": {"type": "str", "choices": list(transfers.COPIES), "default": "eager"},
    "share_dir": {"type": "str", "default": "/var/lib/podmigrate/share"},
    "nodes": {"type": "dict"},  # the action (plugin_utils/engine_action.py) gives the inventory's
    "kubeconfig": {"type": "path", "required": True},
    "context": {"type": "str"},
    "helper": {"type": "path"},
    "report_dir": {"type": "path"},
    "progress_file": {"type": "path"},
    "timeout": {"type": "int", "default": 600},
    "node_deadline": {"type": "int", "default": engine.NODE_DEADLINE},
    "lock_seconds": {"type": "int", "default": lock.LEASE_SECONDS},
    "keep_address": {"type": "bool", "default": True},
}
NODE_KEYS = ("host", "user", "port", "key", "ssh_args", "become", "become_method", "become_user")


class Controller:
    """The engine's means, from a module's parameters; a node the engine could not act on as
    root is refused (fail_json) before anything changes."""

    def __init__(self, module):
        self.module = module
        p = module.params
        try:
            from kubernetes import config
        except ImportError:
            module.fail_json(msg="the kubernetes Python client is needed on the controller (requirements.txt)")
        self.config = config
        # where the progress goes: the file asked for (scripts/podmigrate), else the one the
        # podmigrate.cluster.progress callback follows for the playbook's output
        self.progress_file = p["progress_file"] or os.environ.get("PODMIGRATE_PROGRESS_FILE")
        # the version of the helper built from the controller's sources (what the nodes must run)
        self.helper_digest = nodehelper.digest(p["helper"]) if p["helper"] else None
        specs = {name: {k: v for k, v in spec.items() if k in NODE_KEYS and v is not None}
                 for name, spec in (p["nodes"] or {}).items()}
        problems = [x for name, spec in specs.items() for x in remote.connection_problems(name, **spec)]
        if p["lock_seconds"] < lock.SHORTEST_LEASE:
            problems.append(f"lock_seconds {p['lock_seconds']} is too short: at least {lock.SHORTEST_LEASE} (the lock "
                            f"is renewed every {lock.RENEW_SECONDS} s)")
        if problems:
            module.fail_json(msg="refused, nothing changed: " + "; ".join(problems), problems=problems, report={})
        self.nodes = {name: remote.Node(name, **spec) for name, spec in specs.items()}

    def connect(self):
        p = self.module.params
        return self.config.new_client_from_config(config_file=p["kubeconfig"], context=p["context"])

    def progress(self, event):
        if self.progress_file:
            try:
                with open(self.progress_file, "a") as f:
                    f.write(json.dumps(event) + "\n")
            except OSError:
                pass  # whoever followed it went away: the migration goes on

    def migration_options(self):
        """The keyword arguments every engine.Migration of this module is given."""
        p = self.module.params
        return {"transfer": p["transfer"], "share_dir": p["share_dir"], "share": p["share"], "copy_pages": p["copy"],
                "report_dir": p["report_dir"], "progress": self.progress, "helper_digest": self.helper_digest,
                "timeout": p["timeout"], "node_deadline": p["node_deadline"],
                "lock_seconds": p["lock_seconds"], "keep_address": p["keep_address"]}
