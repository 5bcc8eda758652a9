# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The processes a migration left on a node when its controller went away, ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from podmigrate_node.common import migration_dir

HELPER_NAME = b"podmigrate-node"


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def ancestors(pid, proc="/proc"):
    """``pid`` and the processes it descends from."""
    found = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = _read(f"{proc}/{pid}/stat")
        if not stat:
            break
        pid = int(stat.rsplit(b")", 1)[1].split()[1])
    return found


def parents(proc="/proc"):
    """{pid: parent pid} of every process."""
    found = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            stat = _read(f"{proc}/{entry}/stat")
            if stat:
                found[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return found


def descendants(roots, parent_of):
    """``roots`` and every process descended from them."""
    found, grew = set(roots), True
    while grew:
        more = {pid for pid, parent in parent_of.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def processes_of(migration, proc="/proc", me=None):
    """The pids of migration ``migration``'s helper processes (the helper run with its id, or
    as the forced command of its key) and of everything they started; not its node's
    watcher (watch.py), which ends by itself when the migration's files go."""
    mine = ancestors(me or os.getpid(), proc)
    mark = migration.encode()
    parent_of = {pid: parent for pid, parent in parents(proc).items() if pid not in mine}
    roots = set()
    for pid in parent_of:
        argv = _read(f"{proc}/{pid}/cmdline").split(b"\0")
        helper = any(a.endswith(HELPER_NAME) for a in argv[:2]) and b"watch" not in argv[1:3]
        forced = any(v.startswith(b"SSH_ORIGINAL_COMMAND=") and mark in v
                     for v in _read(f"{proc}/{pid}/environ").split(b"\0"))
        if helper and (mark in argv or forced):
            roots.add(pid)
    return descendants(roots, parent_of)


def dumping(pids, proc="/proc"):
    """Those of ``pids`` that are a runc checkpoint (CRIU dumping a frozen container) or
    descend from one: killed mid-dump, CRIU could leave its parasite code in a process."""
    roots = set()
    for pid in pids:
        argv = _read(f"{proc}/{pid}/cmdline").split(b"\0")
        if argv and os.path.basename(argv[0]).startswith(b"runc") and b"checkpoint" in argv:
            roots.add(pid)
    return descendants(roots, {p: q for p, q in parents(proc).items() if p in pids})


def cmd_settle(args):
    """End the migration's processes, its controller gone: each may end by itself for
    --grace seconds (a session that finds its controller gone), then those left are
    SIGKILLed, but for a dump under way, which is waited for up to --wait seconds (it runs
    on to its end) and only then killed. Prints what it saw and killed."""
    migration_dir(args.migration)
    started = time.monotonic()
    seen = left = processes_of(args.migration)
    killed = 0
    while left:
        waited = time.monotonic() - started
        spare = dumping(left) if waited < args.wait else set()
        spare |= {a for pid in spare for a in ancestors(pid)} & left  # orphaned, a dump would be lost sight of
        if waited >= args.grace:
            for pid in left - spare:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        time.sleep(0.2)
        left = processes_of(args.migration)
    print(json.dumps({"seen": len(seen), "killed": killed, "seconds": round(time.monotonic() - started, 2)}))
