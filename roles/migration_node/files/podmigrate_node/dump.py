# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoint of a frozen pod: each container by runc/CRIU, its writable layer, its volumes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time

from podmigrate_node.common import RUNC_ROOT, SAFE, du, fail, migration_dir, runtime
from podmigrate_node.pod import empty_dirs, freeze, is_frozen, running, upper_dir
from podmigrate_node.preflight import open_files, pod_processes
from podmigrate_node.stream import LazyTunnel, PageTunnel, open_receive, send


def cmd_dump(args):
    """Freeze the pod and dump it into the migration's payload: per container its CRIU images
    (runc checkpoint, left running, so still frozen) and its writable-layer changes; the
    emptyDir volumes once, all while nothing in the pod runs.

    A session with the engine, one JSON line each way: what can be done before the freeze is
    done first (the pod's containers found, the page tunnels to the target opened), then
    {"ready"}; on the engine's "freeze" line the pod is frozen, {"frozen", "seconds"}; then
    the dump and its report; with --send, the payload sent to the target (--to) over an SSH
    session opened before the freeze, and the send's report. The end of stdin before
    "freeze" ends it, nothing frozen.

    With --lazy (post-copy) the memory pages are not dumped: each container's CRIU serves
    them from here, through a LazyTunnel (--port: the target's end of it), to the target's
    restore as it asks for them; the session's last line, {"served"}, comes once every page
    server has ended. The end of stdin before that ends them (serve_pages)."""
    directory = migration_dir(args.migration)
    payload = os.path.join(directory, "payload")
    os.makedirs(payload, mode=0o700, exist_ok=True)
    live = running(args.uid)
    for c in live:
        if not SAFE.match(c["name"] or ""):
            fail(f"bad container name {c['name']!r}")
    ports = dict(p.split("=", 1) for p in args.port)
    tunnels, receiver = {}, None
    try:
        if args.send:
            receiver = open_receive(args, "payload")
        if args.port:  # the memory pages stream to the target's page servers (else they stay here too)
            for c in live:
                if c["name"] not in ports:
                    fail(f"no page server port for container {c['name']}")
                tunnels[c["name"]] = (LazyTunnel if args.lazy else PageTunnel)(args, c["name"], int(ports[c["name"]]))
        print(json.dumps({"ready": [c["name"] for c in live]}), flush=True)
        if sys.stdin.readline().strip() != "freeze":
            fail("the engine went away before the freeze: nothing was frozen")
        print(json.dumps({"frozen": [c["name"] for c in live], "seconds": freeze(live, directory)}), flush=True)
        print(json.dumps(dump(args, live, payload, directory, tunnels)), flush=True)
        if args.send:
            print(json.dumps(send(args, payload, "payload", opened=receiver)), flush=True)
        if args.lazy:
            print(json.dumps(serve_pages(tunnels)), flush=True)
    finally:
        end_servers(tunnels, grace=10)  # those a failure left (all have ended when served)
        for tunnel in tunnels.values():
            tunnel.close()
        if receiver and receiver.poll() is None:
            receiver.kill()


def start_lazy(tunnel, command, env, work):
    """``runc checkpoint --lazy-pages``: CRIU dumps all but the memory pages, then serves those
    on the tunnel's port until the target's ``criu lazy-pages`` has them all. Returned when it
    serves (CRIU's status byte; the process left running in ``tunnel.server``), or as a
    CompletedProcess when it failed before."""
    # CRIU keeps the memory in pipes until it has served it, two descriptors per 4 MiB (4 GiB:
    # over 2000); it raises its own limit only with CAP_SYS_RESOURCE, so it is given the most
    # it may have without (seen: "Can't make pipe for page-pipe: Too many open files")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ready, status = os.pipe()
    with open(os.path.join(work, "checkpoint.err"), "w+") as err:
        # its own process group: ended whole (runc and its CRIU) should the session go first
        tunnel.server = subprocess.Popen([*command[:-1], "--status-fd", str(status), command[-1]], pass_fds=[status],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                         start_new_session=True)
        os.close(status)
        with os.fdopen(ready, "rb") as f:
            serving = f.read(1) == b"\0"
        if serving:
            return subprocess.CompletedProcess(command, 0, "", "")
        code = tunnel.server.wait()
        tunnel.server = None
        err.seek(0)
        return subprocess.CompletedProcess(command, code or 1, "", err.read())


def lazy_servers(tunnels):
    """{name: LazyTunnel} of the containers whose lazy page server was started."""
    return {name: t for name, t in tunnels.items() if isinstance(t, LazyTunnel) and t.server}


def serve_pages(tunnels, poll=0.2, limit=6 * 3600):
    """Post-copy's end on the source: every container's lazy page server waited for until it
    has served the target all its pages and ended; {"served": {name: runc's exit code}}. If
    stdin ends first (the engine rolled back, or went away), a page server nobody has asked
    yet is ended (end_servers); one that serves a restore goes on until that restore has all
    its pages or is gone: a restored pod the engine, a recovery or the watcher keeps needs
    them, and one deleted ends its CRIU's requests."""
    servers = {name: t.server for name, t in lazy_servers(tunnels).items()}
    started = time.monotonic()
    while any(p.poll() is None for p in servers.values()):
        if select.select([sys.stdin], [], [], poll)[0] and not sys.stdin.readline():
            end_servers(tunnels, limit)
            fail("the engine ended the session before every page was served")
    return {"served": {name: p.returncode for name, p in servers.items()},
            "seconds": round(time.monotonic() - started, 3)}


def end_servers(tunnels, grace, poll=0.2):
    """The lazy page servers still running ended: one empty connection to each (a page server
    nobody has asked yet then ends as if it had served; one serving the target refuses it:
    CRIU accepts one connection), the rest waited for up to ``grace`` seconds, then killed
    (runc and its CRIU, which release the pod's processes, still frozen)."""
    servers = [t.server for t in lazy_servers(tunnels).values()]
    for tunnel in lazy_servers(tunnels).values():
        if tunnel.server.poll() is None:
            with socket.socket() as sk:
                sk.settimeout(2)
                with contextlib.suppress(OSError):
                    sk.connect(("127.0.0.1", tunnel.local_port))
    ended = time.monotonic() + grace
    while any(p.poll() is None for p in servers) and time.monotonic() < ended:
        time.sleep(poll)
    for proc in servers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def held_fifos(uid, live, proc="/proc"):
    """{(device, inode): {"path", "bytes", "containers"}} of the named pipes (FIFOs) the pod's
    containers hold open, with the bytes waiting in each (read while the pod is frozen) and
    the containers that hold it, in the order of ``live``."""
    names = {c["id"]: c["name"] for c in live}
    order = [c["name"] for c in live]
    fifos = {}
    for pid, cid in pod_processes(uid, proc).items():
        if cid not in names:
            continue
        for fd, target, st in open_files(pid, proc):
            if not stat.S_ISFIFO(st.st_mode) or target.startswith("pipe:"):
                continue  # anonymous pipes never cross containers
            entry = fifos.get((st.st_dev, st.st_ino))
            if entry is None:
                entry = fifos[(st.st_dev, st.st_ino)] = {"path": target, "bytes": _waiting(f"{proc}/{pid}/fd/{fd}"),
                                                         "containers": []}
            if names[cid] not in entry["containers"]:
                entry["containers"].append(names[cid])
    for entry in fifos.values():
        entry["containers"].sort(key=order.index)
    return fifos


def _waiting(link):
    """The bytes waiting in the pipe behind LINK (a /proc/PID/fd entry), without taking any."""
    fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    finally:
        os.close(fd)


def fifo_data_to_drop(fifos):
    """The containers whose dump must leave out its FIFOs' waiting bytes, so that each byte is
    restored once: CRIU dumps them with every container that holds the FIFO, and each
    container is its own restore. The first container holding a FIFO keeps them; a later
    one drops them, which it can only when every FIFO with bytes waiting that it holds is
    kept by an earlier container (CRIU keeps all of a dump's FIFO bytes in one image)."""
    drop, keep = set(), set()
    for entry in fifos.values():
        if entry["bytes"]:
            keep.add(entry["containers"][0])
            drop.update(entry["containers"][1:])
    both = drop & keep
    if both:
        fail(f"container(s) {', '.join(sorted(both))} hold a named pipe with bytes waiting that another container "
             "holds too, and another with bytes waiting of their own: CRIU would restore the shared bytes twice "
             f"({', '.join(e['path'] for e in fifos.values() if e['bytes'])})")
    return drop


def dump(args, live, payload, directory, tunnels):
    thawed = [c["name"] for c in live if not is_frozen(c["freezer"])]
    if thawed:
        fail(f"container(s) {', '.join(thawed)} of pod {args.uid} are not frozen")
    report = {"containers": {}}
    drop = fifo_data_to_drop(held_fifos(args.uid, live))
    if live:  # where the pod's sockets are bound: the restore moves them to the restored pod's address
        addresses = runtime().netns_addresses(f"/proc/{live[0]['state']['pid']}/ns/net")
        fd = os.open(os.path.join(payload, runtime().ADDRESSES), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(addresses, f)
    for c in live:
        name = c["name"]
        here = os.path.join(payload, name)
        work = os.path.join(directory, "work", name)
        os.makedirs(here, mode=0o700)
        os.makedirs(work, mode=0o700)
        started = time.monotonic()
        # established TCP connections too (a pod that keeps its address keeps them; else
        # the restore closes them); the pod's network is held since the freeze (pod.freeze)
        command = [runtime().runc(), "--root", RUNC_ROOT, "checkpoint", "--leave-running", "--file-locks",
                   "--tcp-established", "--image-path", os.path.join(here, "images"), "--work-path", work]
        tunnel = tunnels.get(name)
        lazy = isinstance(tunnel, LazyTunnel)
        if tunnel:
            command += [*(["--lazy-pages"] if lazy else []), "--page-server", f"127.0.0.1:{tunnel.local_port}"]
        # with lazy pages CRIU takes only the port from runc: it would serve on every address
        env = runtime().criu_config(os.path.join(work, "criu.conf"),
                                    ["no-tcp-close", *(["address 127.0.0.1"] if lazy else [])])
        if lazy:
            res = start_lazy(tunnel, [*command, c["id"]], env, work)
            with open(os.path.join(here, runtime().LAZY), "w") as f:  # where the target's restore asks for the pages
                json.dump({"port": tunnel.remote_port}, f)
        else:
            res = subprocess.run([*command, c["id"]], capture_output=True, text=True, check=False, env=env)
        streamed = tunnel.finish() if tunnel and not lazy and res.returncode == 0 else None
        if res.returncode != 0:
            said = tunnel.failure() if tunnel and not lazy else ""
            fail(f"checkpoint of {name} failed: {res.stderr.strip()[-300:]}" + runtime().criu_errors(f"{work}/dump.log")
                 + (f"\nthe target's page server: {said}" if said else ""))
        if name in drop:
            os.remove(os.path.join(here, "images", "fifo-data.img"))
        dumped = time.monotonic()
        fd = os.open(os.path.join(here, "rootfs.tar"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            runtime().pack_layer(upper_dir(c["state"]["rootfs"]), out)
        report["containers"][name] = {
            "id": c["id"], "image_bytes": du(os.path.join(here, "images")) + (streamed or {}).get("bytes", 0),
            "streamed_bytes": (streamed or {}).get("bytes", 0), "lazy": lazy,
            "rootfs_bytes": os.path.getsize(os.path.join(here, "rootfs.tar")),
            "dump_seconds": round(dumped - started, 3), "rootfs_seconds": round(time.monotonic() - dumped, 3)}
    if args.volume:
        for name in args.volume:
            if not SAFE.match(name):
                fail(f"bad volume name {name!r}")
        out = os.path.join(payload, "volumes.tar")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            subprocess.run(["tar", "-C", empty_dirs(args.uid), "--numeric-owner", "-cf", "-", "--", *args.volume],
                           stdout=f, check=True)
        report["volumes"] = {"names": args.volume, "bytes": os.path.getsize(out)}
    return report
