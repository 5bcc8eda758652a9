# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phase runner of a migration: each phase timed into the report in the order it ran,
and the undo stack with its commit point.

Every step that changes something records how to undo it, before it acts:
``always`` (undone when the migration ends, whichever way: files, keys, the fence) or
``on_rollback`` (undone only if the migration fails before its commit point: the restored
pod, the thaw of the source, a brought image). ``pass_commit_point`` drops the second kind:
from there the restored pod stays and the source is never thawed. ``cleanup`` runs what
is left, newest first, and records what it could not undo. So ``changed`` (an undo step
was ever recorded) tells whether a failure rolled something back or came before any change.
"""

from __future__ import annotations

import json
import os
import time


class Runner:
    def __init__(self, migration_id, report, progress=None, report_dir=None):
        self.id = migration_id
        self.report = report
        self.progress = progress or (lambda event: None)  # told dicts (progress.py)
        self.report_dir = report_dir
        self.undo = []
        self.changed = False

    def log(self, msg):
        self.progress({"id": self.id, "line": msg})

    def tell(self, event):
        """A progress event of this migration (progress.py: bytes moved in a phase)."""
        self.progress({"id": self.id, **event})

    def phase(self, name, func, *args):
        self.log(f"{name} ...")
        self.phase_starting(name)
        started = time.monotonic()
        try:
            result = func(*args)
        finally:
            self.report["phases"][name] = round(time.monotonic() - started, 3)
        self.log(f"{name}: {self.report['phases'][name]:.2f} s")
        self.phase_done(name, self.report["phases"][name])
        return result

    def phase_starting(self, name):
        """Told before each phase (the engine renews its lock)."""

    def phase_done(self, name, seconds):
        """Told after each phase that succeeded (the engine records an Event)."""

    def always(self, step, change=True):
        """(what, function): undone when the migration ends, whichever way; ``change=False``
        for what changes nothing of the pod or its nodes (the migration's own lock)."""
        self.changed = self.changed or change
        self.undo.append((*step, False))

    def on_rollback(self, step):
        """(what, function): undone only if the migration fails before its commit point."""
        self.changed = True
        self.undo.append((*step, True))

    def pass_commit_point(self):
        self.undo = [u for u in self.undo if not u[2]]

    def cleanup(self):
        errors = []
        for what, undo, _rollback_only in reversed(self.undo):
            try:
                undo()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        self.undo = []
        if errors:
            self.report["cleanup_errors"] = errors
            self.log("cleanup left: " + "; ".join(errors))

    def write_report(self):
        if not self.report_dir:
            return
        os.makedirs(self.report_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.report_dir, f"{self.id}.json")
        with open(path, "w") as f:
            json.dump(self.report, f, indent=2)  # the phases in the order they ran
        self.report["report"] = path
