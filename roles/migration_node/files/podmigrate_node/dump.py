# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoint of a frozen pod: each container by runc/CRIU, its writable layer, its volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from podmigrate_node.common import RUNC_ROOT, SAFE, criu_errors, du, fail, migration_dir, runtime
from podmigrate_node.pod import empty_dirs, freeze, is_frozen, running, upper_dir
from podmigrate_node.stream import PageTunnel, open_receive, send


def cmd_dump(args):
    """Freeze the pod and dump it into the migration's payload: per container its CRIU images
    (runc checkpoint, left running, so still frozen) and its writable-layer changes; the
    emptyDir volumes once, all while nothing in the pod runs.

    A session with the engine, one JSON line each way: what can be done before the freeze is
    done first (the pod's containers found, the page tunnels to the target opened), then
    {"ready"}; on the engine's "freeze" line the pod is frozen, {"frozen", "seconds"}; then
    the dump and its report; with --send, the payload sent to the target (--to) over an SSH
    session opened before the freeze, and the send's report. The end of stdin before
    "freeze" ends it, nothing frozen."""
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
        if args.to:
            for c in live:
                if c["name"] not in ports:
                    fail(f"no page server port for container {c['name']}")
                tunnels[c["name"]] = PageTunnel(args, c["name"], int(ports[c["name"]]))
        print(json.dumps({"ready": [c["name"] for c in live]}), flush=True)
        if sys.stdin.readline().strip() != "freeze":
            fail("the engine went away before the freeze: nothing was frozen")
        print(json.dumps({"frozen": [c["name"] for c in live], "seconds": freeze(live, directory)}), flush=True)
        print(json.dumps(dump(args, live, payload, directory, tunnels)), flush=True)
        if args.send:
            print(json.dumps(send(args, payload, "payload", opened=receiver)), flush=True)
    finally:
        for tunnel in tunnels.values():
            tunnel.close()
        if receiver and receiver.poll() is None:
            receiver.kill()


def dump(args, live, payload, directory, tunnels):
    thawed = [c["name"] for c in live if not is_frozen(c["freezer"])]
    if thawed:
        fail(f"container(s) {', '.join(thawed)} of pod {args.uid} are not frozen")
    report = {"containers": {}}
    for c in live:
        name = c["name"]
        here = os.path.join(payload, name)
        work = os.path.join(directory, "work", name)
        os.makedirs(here, mode=0o700)
        os.makedirs(work, mode=0o700)
        started = time.monotonic()
        command = [runtime().runc(), "--root", RUNC_ROOT, "checkpoint", "--leave-running", "--file-locks",
                   "--image-path", os.path.join(here, "images"), "--work-path", work]
        tunnel = tunnels.get(name)
        if tunnel:
            command += ["--page-server", f"127.0.0.1:{tunnel.local_port}"]
        res = subprocess.run([*command, c["id"]], capture_output=True, text=True, check=False)
        streamed = tunnel.finish() if tunnel and res.returncode == 0 else None
        if res.returncode != 0:
            fail(f"checkpoint of {name} failed: {res.stderr.strip()[-300:]}" + criu_errors(f"{work}/dump.log"))
        dumped = time.monotonic()
        fd = os.open(os.path.join(here, "rootfs.tar"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            runtime().pack_layer(upper_dir(c["state"]["rootfs"]), out)
        report["containers"][name] = {
            "id": c["id"], "image_bytes": du(os.path.join(here, "images")) + (streamed or {}).get("bytes", 0),
            "streamed_bytes": (streamed or {}).get("bytes", 0),
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
