# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""node_connections: the nodes as Ansible reaches them (plugin_utils/inventory_nodes.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.podmigrate.cluster.plugins.plugin_utils.inventory_nodes import inventory_nodes


class ActionModule(ActionBase):
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        nodes, problems = inventory_nodes(task_vars)
        if problems:
            return {**result, "failed": True, "problems": problems, "msg": "; ".join(problems)}
        return {**result, "changed": False, "nodes": nodes}
