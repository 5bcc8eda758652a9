# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration's progress: what the engine tells while it works, and how it is shown.

The engine tells events, dicts the ``migrate`` module writes to its progress file as one
JSON object per line:

  {"id", "line"}                                   a phase begins or ends, a note
  {"id", "phase", "bytes", "total", "seconds"}     bytes moved so far in a phase that
                                                   moves memory (``total`` an estimate)

``scripts/podmigrate migrate`` and the ``podmigrate.cluster.progress`` callback (the
playbook's output) read that file and show it with ``Follower``: a bar redrawn in place
on a terminal, plain lines otherwise (one per phase line, one byte line every few
seconds).
"""

from __future__ import annotations

import json
import threading
import time

MIB = 2**20


def text(event):
    """One event as a line of text."""
    if "line" in event:
        return f"[{event['id']}] {event['line']}"
    done, total, seconds = event["bytes"], event.get("total") or 0, event.get("seconds") or 0
    rate = done / seconds if seconds > 0 else 0
    out = f"[{event['id']}] {event['phase']}: {done / MIB:.1f} MiB"
    if total:
        out += f" of ~{total / MIB:.1f} MiB ({min(done / total, 1):.0%})"
    out += f", {rate / MIB:.1f} MiB/s"
    if total > done and rate > 0:
        left = (total - done) / rate
        out += f", ~{left:.0f} s left" if left >= 1 else ", <1 s left"
    return out


def progress_bar(event, width=30):
    """A byte event as a progress bar line (for a terminal)."""
    total = event.get("total") or 0
    filled = int(width * min(event["bytes"] / total, 1)) if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {text(event).split('] ', 1)[1]}"


class ByteWatch:
    """Tells ``emit`` how many bytes ``measure()`` counts, every ``interval`` seconds while a
    phase runs (from a thread; ``measure`` must be safe to call from one). The first is
    told after one interval: a phase that ends sooner tells nothing."""

    def __init__(self, emit, phase, measure, total, interval=1.0):
        self.emit, self.phase, self.measure, self.total, self.interval = emit, phase, measure, total, interval
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=15)

    def watch(self):
        while not self.stop.wait(self.interval):
            try:
                done = self.measure()
            except Exception:  # a failed count is no reason to stop the migration
                done = None
            if done is not None and not self.stop.is_set():
                self.emit({"phase": self.phase, "bytes": max(done, 0), "total": self.total,
                           "seconds": round(time.monotonic() - self.started, 3)})


class Follower:
    """Shows the events of a progress file on ``out`` as they come: on a terminal, the byte
    events of a phase as one bar redrawn in place; otherwise every line, and a byte event
    at most every ``every`` seconds."""

    def __init__(self, path, out, terminal=None, every=5.0):
        self.path, self.out, self.every = path, out, every
        self.terminal = out.isatty() if terminal is None else terminal
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.follow, daemon=True)
        self.drawn = False  # a bar is on the terminal's last line
        self.last_bytes = 0.0

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.done.set()
        self.thread.join()

    def show(self, event):
        if "line" not in event:
            if self.terminal:
                self.out.write("\r\033[K" + progress_bar(event))
                self.drawn = True
            elif time.monotonic() - self.last_bytes >= self.every:
                self.out.write(text(event) + "\n")
                self.last_bytes = time.monotonic()
            self.out.flush()
            return
        if self.drawn:
            self.out.write("\n")
            self.drawn = False
        self.out.write(text(event) + "\n")
        self.out.flush()

    def follow(self):
        with open(self.path) as f:
            pending = ""
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        try:
                            event = json.loads(pending)
                        except ValueError:
                            event = {"id": "?", "line": pending.rstrip()}
                        pending = ""
                        self.show(event)
                elif self.done.is_set():
                    if self.drawn:
                        self.out.write("\n")
                        self.out.flush()
                    return
                else:
                    time.sleep(0.1)
