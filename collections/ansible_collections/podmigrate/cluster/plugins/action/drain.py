# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain module, given the nodes as Ansible reaches them (plugin_utils/engine_action.py)."""

from __future__ import annotations

from ansible_collections.podmigrate.cluster.plugins.plugin_utils.engine_action import EngineAction as ActionModule

__all__ = ["ActionModule"]
