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

A step that changes a node or the cluster is also written down as data, ``{"do": KIND,
...}`` (what the engine's ``undo_KIND`` needs), in the journal: the list of those steps,
and whether the commit point was passed. ``journal_changed`` is told each time the
journal changes, before the change it records is made (the engine writes it into the
pod's Lease), so a controller that dies at any moment leaves a journal that says what to
undo, or to finish, and a new controller can do it (engine.Recovery).
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
        self.undo = []  # (what, function, rollback only, record or None)
        self.changed = False
        self.committed = False

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
        self.undo.append((*step, False, None))

    def on_rollback(self, step):
        """(what, function): undone only if the migration fails before its commit point."""
        self.changed = True
        self.undo.append((*step, True, None))

    def always_do(self, what, kind, after_rollback=False, **args):
        """A journaled step undone when the migration ends, whichever way: ``undo_KIND(**args)``;
        with ``after_rollback``, not while a rollback step is left undone (the source's files,
        which its node's watcher needs while the source stays frozen)."""
        self.record(what, {"do": kind, **args, **({"after_rollback": True} if after_rollback else {})},
                    rollback_only=False)

    def rollback_do(self, what, kind, **args):
        """A journaled step undone only if the migration fails before its commit point."""
        self.record(what, {"do": kind, **args}, rollback_only=True)

    def record(self, what, record, rollback_only):
        self.changed = True
        self.undo.append((what, lambda: self.undo_step(record), rollback_only, record))
        self.journal_changed()

    def undo_step(self, record):
        """Carry out a journaled step (the engine: its ``undo_KIND`` method)."""
        raise NotImplementedError

    def journal(self):
        """What a new controller needs to finish or undo this migration (JSON-able)."""
        return {"committed": self.committed,
                "steps": [{"what": what, "rollback_only": rollback_only, **record}
                          for what, _undo, rollback_only, record in self.undo if record]}

    def journal_changed(self):
        """Told each time the journal changes (the engine writes it into the pod's Lease)."""

    def pass_commit_point(self):
        """From here the restored pod stays and the source is never thawed: the journal says
        so first (the engine's write of it is the commit point, and raises if it fails)."""
        before = self.undo
        self.committed = True
        self.undo = [u for u in self.undo if not u[2]]
        try:
            self.journal_changed()
        except Exception:
            self.committed, self.undo = False, before
            raise

    def cleanup(self):
        """Undo what is left, newest first; the steps that failed are kept in ``self.undo``
        (and so in the journal). Once a rollback step fails, the older rollback steps are
        kept undone too: each is safe only after the newer ones (the source is thawed only
        once the restored pod is gone)."""
        errors, left = [], []
        blocked = None
        for step in reversed(self.undo):
            what, undo, rollback_only = step[0], step[1], step[2]
            if blocked and (rollback_only or (step[3] or {}).get("after_rollback")):
                errors.append(f"{what}: not done, as {blocked} failed")
                left.insert(0, step)
                continue
            try:
                undo()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
                left.insert(0, step)
                if rollback_only:
                    blocked = what
        self.undo = left
        if errors:
            self.report["cleanup_errors"] = errors
            self.log("cleanup left: " + "; ".join(errors))

    def write_report(self):
        if not self.report_dir:
            return
        os.makedirs(self.report_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.report_dir, f"{self.id}.json")
        # whole or not at all: a controller killed while it writes leaves the last one
        with open(f"{path}.part", "w") as f:
            json.dump(self.report, f, indent=2)  # the phases in the order they ran
        os.replace(f"{path}.part", path)
        self.report["report"] = path
