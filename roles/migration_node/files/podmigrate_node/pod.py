# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pod's containers as containerd and runc keep them: their freezers, signals and images, and
the commands that freeze, thaw, end and check them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

from podmigrate_node.common import CGROUPS, RUNC_ROOT, check_uid, ctr, fail, migration_dir, runtime


def runc_state(cid):
    res = subprocess.run([runtime().runc(), "--root", RUNC_ROOT, "state", cid], capture_output=True, check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def pod_containers(uid):
    """Every container containerd keeps for a pod (its sandbox aside): id, name, image (the
    reference it was created from and CRI's image id), and, while it runs, runc's state."""
    import base64

    found = []
    query = f'labels."io.kubernetes.pod.uid"=={check_uid(uid)}'
    for cid in ctr("containers", "ls", "-q", query).stdout.decode().split():
        info = json.loads(ctr("containers", "info", cid).stdout)
        labels = info.get("Labels") or {}
        if labels.get("io.cri-containerd.kind") != "container":
            continue
        ext = (info.get("Extensions") or {}).get("io.cri-containerd.container.metadata") or {}
        meta = json.loads(base64.b64decode(ext.get("value", "")) or b"{}").get("Metadata") or {}
        found.append({"id": cid, "name": labels.get("io.kubernetes.container.name"), "image": info.get("Image"),
                      "image_ref": meta.get("ImageRef"), "state": runc_state(cid)})
    return found


def running(uid):
    """The pod's containers whose processes run (or are frozen), each with its freezer."""
    live = []
    for c in pod_containers(uid):
        state = c["state"] or {}
        if state.get("status") in ("running", "paused") and state.get("pid"):
            c["freezer"] = freezer_of(state["pid"])
            live.append(c)
    return live


def freezer_of(pid, proc="/proc", cgroups=None):
    """(cgroup directory, 1 or 2) of the freezer a process is in: v1's freezer hierarchy when
    the node has one, else its cgroup v2 directory."""
    cgroups = cgroups or CGROUPS
    unified = None
    with open(f"{proc}/{pid}/cgroup") as f:
        for line in f.read().splitlines():
            _, controllers, path = line.split(":", 2)
            if "freezer" in controllers.split(","):
                return os.path.join(cgroups, "freezer", path.lstrip("/")), 1
            if controllers == "":
                unified = path
    if unified is None:
        raise ValueError(f"process {pid} is in no freezer cgroup")
    return os.path.join(cgroups, unified.lstrip("/")), 2


def set_frozen(freezer, frozen):
    path, version = freezer
    name, value = ("freezer.state", "FROZEN" if frozen else "THAWED") if version == 1 else \
        ("cgroup.freeze", "1" if frozen else "0")
    with open(os.path.join(path, name), "w") as f:
        f.write(value)


def is_frozen(freezer):
    path, version = freezer
    if version == 1:
        with open(os.path.join(path, "freezer.state")) as f:
            return f.read().strip() == "FROZEN"
    with open(os.path.join(path, "cgroup.events")) as f:
        return "frozen 1" in f.read().splitlines()


def pending_signals(pid):
    """The signals pending for a process (its own and its thread group's), as a bit mask."""
    mask = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigPnd:", "ShdPnd:")):
                mask |= int(line.split()[1], 16)
    return mask


def normalized(ref):
    """An image reference as containerd's CRI stores it ("redis" is docker.io/library/redis:latest)."""
    name, at, digest = ref.partition("@")
    first, slash, _rest = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name + at + digest


def cmd_images_present(args):
    listed = set(ctr("images", "ls", "-q").stdout.decode().split())
    print(json.dumps({"missing": [normalized(ref) for ref in args.refs if normalized(ref) not in listed]}))


def freeze(live, directory, timeout=10.0):
    """Freeze the running containers ``live`` (as ``running`` found them) at once: each
    one's freezer written in one pass, then waited for; then hold the pod's network (every
    packet in and out dropped: its kernel acknowledges nothing more, and sends nothing when
    the pod ends). Records the signals pending at the freeze (``kill`` waits for the
    kubelet's). Fails, thawing them all, when one does not freeze or is no longer the
    process it was. Returns its seconds."""
    started = time.monotonic()
    if not live:
        fail("the pod has no running container")
    for c in live:
        set_frozen(c["freezer"], True)
    deadline = time.monotonic() + timeout
    while not all(is_frozen(c["freezer"]) for c in live):
        if time.monotonic() > deadline:
            thaw(live)
            fail(f"the containers {', '.join(c['name'] for c in live)} did not freeze within {timeout} s")
        time.sleep(0.001)
    gone = [c["name"] for c in live if not os.path.exists(f"/proc/{c['state']['pid']}")]
    if gone:
        thaw(live)
        fail(f"container(s) {', '.join(gone)} ended or restarted before the freeze")
    try:
        runtime().hold_network(netns(live))
    except subprocess.CalledProcessError as exc:
        resume(live)
        fail(f"could not hold the pod's network: {exc.stderr.strip()}")
    with open(os.path.join(directory, "pending.json"), "w") as f:
        json.dump({c["id"]: pending_signals(c["state"]["pid"]) for c in live}, f)
    return round(time.monotonic() - started, 4)


def thaw(live):
    for c in live:
        with contextlib.suppress(FileNotFoundError):
            set_frozen(c["freezer"], False)


def netns(live):
    """The network namespace of the pod whose running containers are ``live``."""
    return f"/proc/{live[0]['state']['pid']}/ns/net"


def resume(live):
    """A frozen pod going on where it stopped: thawed, its network's hold lifted."""
    thaw(live)
    if live:
        runtime().release_network(netns(live))


def cmd_thaw(args):
    live = running(args.uid)
    resume(live)
    print(json.dumps({"thawed": [c["name"] for c in live]}))


def upper_dir(mountpoint, mountinfo="/proc/self/mountinfo"):
    """The overlay upper directory of the rootfs mounted at ``mountpoint``."""
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            if fields[4] != mountpoint:
                continue
            sep = fields.index("-")
            if fields[sep + 1] != "overlay":
                raise ValueError(f"{mountpoint} is a {fields[sep + 1]} mount, not overlay")
            for option in fields[sep + 3].split(","):
                if option.startswith("upperdir="):
                    return option.split("=", 1)[1]
    raise ValueError(f"no overlay mount at {mountpoint}")


def cmd_kill(args):
    """The end of the source pod, after the commit: wait (up to --wait seconds) until the
    kubelet has signalled every frozen container (its stop began, so it will not start them
    again), then SIGKILL every process of each and thaw them. A frozen process dies on
    SIGKILL without running another instruction. If the kubelet's signal never comes the
    processes are killed and left frozen: the kubelet's own SIGKILL thaws them (runc)."""
    print(json.dumps(end_frozen(args.uid, migration_dir(args.migration), args.wait)))


def end_frozen(uid, directory, wait):
    """cmd_kill's work: {killed, kubelet_signalled, thawed}."""
    with open(os.path.join(directory, "pending.json")) as f:
        before = json.load(f)
    live = running(uid)
    deadline = time.monotonic() + wait
    signalled = False
    while live and time.monotonic() < deadline:
        try:
            signalled = all(pending_signals(c["state"]["pid"]) & ~before.get(c["id"], 0) for c in live)
        except FileNotFoundError:
            signalled = True
        if signalled:
            break
        time.sleep(0.02)
    killed = 0
    for c in live:
        path, _version = c["freezer"]
        with contextlib.suppress(FileNotFoundError), open(os.path.join(path, "cgroup.procs")) as f:
            for pid in f.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
                    killed += 1
    if signalled:
        thaw(live)
    return {"killed": killed, "kubelet_signalled": signalled, "thawed": signalled}


def cmd_restored(args):
    """{container name: restored?} of a pod: the runtime records the id of each container it
    restored in the migration's payload. With --claim (the engine's verify, before its
    commit point), when every one is, the verdict ``restored`` is written (verdict.py), and
    the command fails if the migration was abandoned here meanwhile."""
    directory = migration_dir(args.migration)
    payload = os.path.join(directory, "payload")
    found = {}
    for c in pod_containers(args.uid):
        if (c["state"] or {}).get("status") != "running":
            continue
        try:
            with open(os.path.join(payload, c["name"], "restored")) as f:
                found[c["name"]] = f.read().strip() == c["id"]
        except (OSError, TypeError):
            found[c["name"]] = False
    if args.claim and found and all(found.values()):
        from podmigrate_node import verdict

        verdict.claim(args.migration, directory)
    print(json.dumps(found))


def empty_dirs(uid):
    return f"/var/lib/kubelet/pods/{check_uid(uid)}/volumes/kubernetes.io~empty-dir"
