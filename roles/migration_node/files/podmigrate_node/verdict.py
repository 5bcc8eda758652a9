# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which copy of a migrating pod lives, decided once, on the target node.

The target's verdict (an empty file, ``verdict-restored`` or ``verdict-abandoned``: it
needs no room, so it can be written on a full disk) is written once, under the runtime's
gate (so no restore is half-way meanwhile), and never changed: ``restored`` (every
container of the pod runs from its checkpoint here: this is the live copy, the source must
end) or ``abandoned`` (the migration's runtime restores nothing more, what it restored is
killed: the source must go on). Whoever acts on the pod asks for it first and follows it:
the engine before its commit point (``restored --claim``) and in its rollback
(``end-restored``), ``podmigrate recover``, and the source node's watcher when no
controller came back (``verdict``). So two of them can never decide differently, even when
each thinks the other is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from podmigrate_node.common import RUNC_ROOT, fail, migration_dir, runtime

RESTORED, ABANDONED = "restored", "abandoned"


def read(directory):
    """The verdict: the name of the empty file ``verdict-<verdict>`` in the migration's
    directory (an empty file needs no room: it can be written on a full disk)."""
    for verdict in (RESTORED, ABANDONED):
        if os.path.exists(os.path.join(directory, f"verdict-{verdict}")):
            return verdict
    return None


def write(directory, verdict):
    """(Called holding the gate, the verdict unwritten.)"""
    os.close(os.open(os.path.join(directory, f"verdict-{verdict}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# empty files of the engine's (they need no room): the restored pod keeps its address, and it is routed here
ADDRESS_EXPECTED, ADDRESS_MOVED = "address-expected", "address-moved"


def wholly_restored(directory):
    """Every container of the payload restored by the runtime (its ``restored`` mark), and
    the pod's address routed here if it keeps it (``address-moved`` beside
    ``address-expected``: a restored pod that keeps its address is no live copy until the
    nodes route it to it)."""
    if os.path.exists(os.path.join(directory, ADDRESS_EXPECTED)) and \
            not os.path.exists(os.path.join(directory, ADDRESS_MOVED)):
        return False
    payload = os.path.join(directory, "payload")
    try:
        names = [n for n in os.listdir(payload) if os.path.isdir(os.path.join(payload, n))]
    except FileNotFoundError:
        return False
    return bool(names) and all(os.path.exists(os.path.join(payload, n, "restored")) for n in names)


def restored_by(migration):
    """{container id: runc's state} of the containers on this node that migration
    ``migration`` restored, or is restoring (the runtime's restore annotation in their OCI
    spec names it, or their start mark does), read from runc alone: it holds with
    containerd or the kubelet down."""
    res = subprocess.run([runtime().runc(), "--root", RUNC_ROOT, "list", "--format", "json"],
                         capture_output=True, check=False)
    found, marked = {}, set(runtime().started_by(migration))
    for state in json.loads(res.stdout or b"null") or []:
        try:
            with open(os.path.join(state["bundle"], "config.json")) as f:
                annotations = json.load(f).get("annotations") or {}
        except (OSError, KeyError, ValueError):
            annotations = {}
        # a restored container whose start containerd abandoned (the kubelet gone mid-call)
        # has lost its bundle, not its processes: its start mark names the migration
        if annotations.get(runtime().RESTORE_ANNOTATION) == migration or state.get("id") in marked:
            found[state["id"]] = state
    return found


def abandon(migration, directory, wait):
    """The migration abandoned here (called holding the gate): its ``abort`` file (its
    runtime restores nothing more, nor restarts a container it restored), every container
    it restored killed and waited for until stopped; the verdict written. The ids killed."""
    with open(os.path.join(directory, "abort"), "a"):
        pass
    ended = []
    deadline = time.monotonic() + wait
    while live := {cid: s for cid, s in restored_by(migration).items() if s.get("status") != "stopped"}:
        for cid in live:
            subprocess.run([runtime().runc(), "--root", RUNC_ROOT, "kill", cid, "KILL"], capture_output=True,
                           check=False)
            if cid not in ended:
                ended.append(cid)
        if time.monotonic() > deadline:
            fail(f"restored container(s) {', '.join(live)} still run after {wait} s")
        time.sleep(0.05)
    stopped = restored_by(migration)
    for cid, state in stopped.items():
        if not os.path.exists(os.path.join(state.get("bundle") or "/nonexistent", "config.json")):
            # containerd abandoned it: nobody else will ever delete it
            subprocess.run([runtime().runc(), "--root", RUNC_ROOT, "delete", "--force", cid], capture_output=True,
                           check=False)
    for cid in {*stopped, *runtime().started_by(migration)}:
        runtime().forget_start(cid)  # their start, which did nothing, never comes now
    if read(directory) is None:
        write(directory, ABANDONED)
    return ended


def forget_memory(directory, verdict):
    """What holds the pod's memory removed once the verdict is in (the restored processes
    have theirs): the CRIU images, streamed pages, writable layers and volumes; the
    runtime's ``restored`` marks stay (a restart of a restored container is an ordinary one)."""
    subprocess.run(["rm", "-rf", "--", os.path.join(directory, "pages"), os.path.join(directory, "payload.part")],
                   check=True)
    payload = os.path.join(directory, "payload")
    if not os.path.isdir(payload):
        return
    for name in os.listdir(payload):
        path = os.path.join(payload, name)
        if not os.path.isdir(path):
            os.unlink(path)
            continue
        for entry in os.listdir(path):
            if not (verdict == RESTORED and entry == "restored"):
                subprocess.run(["rm", "-rf", "--", os.path.join(path, entry)], check=True)


def cmd_verdict(args):
    """(The target; also the forced command of the migration's key, for the source's
    watcher.) The verdict, decided now if it was not: ``restored`` when every container of
    the payload runs restored, else ``abandoned`` (what was restored of it killed). The
    pod's memory held in the migration's files is removed either way."""
    directory = migration_dir(args.migration)
    if not os.path.isdir(directory):
        print(json.dumps({"verdict": None, "why": "nothing of the migration on this node"}))
        return
    with runtime().gate(directory) as there:
        if not there:  # removed while it waited (forget)
            print(json.dumps({"verdict": None, "why": "nothing of the migration on this node"}))
            return
        verdict, ended = read(directory), []
        if verdict is None:
            if wholly_restored(directory):
                write(directory, RESTORED)
                verdict = RESTORED
            else:
                ended = abandon(args.migration, directory, args.wait)
                verdict = ABANDONED
        forget_memory(directory, verdict)
    print(json.dumps({"verdict": verdict, "ended": ended}))


def cmd_end_restored(args):
    """The engine's rollback on the target, before its restored pod is deleted and the
    source thawed: the migration abandoned (``abandon``, holding the gate: a restore under
    way ends first); after it no process of the restored pod runs, whether containerd and
    the kubelet run or not. Refused when the verdict is already ``restored`` (another
    controller, or the source's watcher, went forward: the restored pod is the live copy)."""
    directory = migration_dir(args.migration)
    if not os.path.isdir(directory):
        print(json.dumps({"ended": []}))
        return
    with runtime().gate(directory) as there:
        if not there:  # removed while it waited (forget)
            print(json.dumps({"ended": []}))
            return
        if read(directory) == RESTORED:
            fail(f"migration {args.migration} was settled forward on this node: its restored pod is the live copy")
        ended = abandon(args.migration, directory, args.wait)
    print(json.dumps({"ended": ended}))


def claim(migration, directory):
    """The engine's commit: the verdict ``restored`` written, unless it is ``abandoned``."""
    with runtime().gate(directory):
        verdict = read(directory)
        if verdict == ABANDONED:
            fail(f"migration {migration} was abandoned on this node (its source's watcher, or a recovery, "
                 "decided so): it cannot be committed")
        if verdict is None:
            write(directory, RESTORED)
