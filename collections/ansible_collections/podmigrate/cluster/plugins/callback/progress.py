# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
name: progress
type: notification
short_description: Shows a migration's progress (phases, bytes, rate, time left) while it runs
description:
  - The C(podmigrate.cluster.migrate) module runs for as long as the migration takes and Ansible
    shows a task's result only at its end. This callback shows the engine's progress meanwhile,
    from the file the module appends it to
    (C(module_utils/migration/progress.py)), each phase as it begins and ends, and the bytes
    moved with their rate and the time left, as a bar redrawn in place on a terminal, or as
    plain lines otherwise.
  - It names that file to the module through the environment variable C(PODMIGRATE_PROGRESS_FILE)
    (the module runs on the controller, which passes its environment on). When that variable is
    set already, whoever set it shows the progress (C(scripts/podmigrate migrate)) and this
    callback does nothing.
  - Enabled in the project's C(ansible.cfg) (C(callbacks_enabled)).
author: podmigrate contributors (!UNKNOWN)
"""

import os
import sys
import tempfile

from ansible.plugins.callback import CallbackBase
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import progress


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "podmigrate.cluster.progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.follower = None
        self.path = None

    def v2_playbook_on_start(self, playbook):
        if os.environ.get("PODMIGRATE_PROGRESS_FILE"):
            return
        fd, self.path = tempfile.mkstemp(prefix="podmigrate-progress-")  # 0600
        os.close(fd)
        os.environ["PODMIGRATE_PROGRESS_FILE"] = self.path
        self.follower = progress.Follower(self.path, sys.stdout).start()

    def v2_playbook_on_stats(self, stats):
        if self.follower is None:
            return
        self.follower.finish()
        self.follower = None
        os.environ.pop("PODMIGRATE_PROGRESS_FILE", None)
        os.unlink(self.path)
