# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action of the modules that run the migration engine (migrate, drain): the module
runs on the controller, given the nodes (unless the task names them) as Ansible reaches
them (inventory_nodes)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.podmigrate.cluster.plugins.plugin_utils.inventory_nodes import inventory_nodes


class EngineAction(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if not args.get("nodes"):
            nodes, problems = inventory_nodes(task_vars)
            if problems:
                return {**result, "failed": True, "problems": problems, "report": {},
                        "msg": "refused, nothing changed: " + "; ".join(problems)}
            args["nodes"] = nodes
        return {**result, **self._execute_module(module_name=self._task.resolved_action, module_args=args,
                                                 task_vars=task_vars)}
