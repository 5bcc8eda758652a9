# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoint of a frozen pod: each container by runc/CRIU, its writable layer, its volumes."""

from __future__ import annotations

import json
import os
import subprocess
import time

from podmigrate_node.common import RUNC_ROOT, SAFE, criu_errors, du, fail, migration_dir, runtime
from podmigrate_node.pod import empty_dirs, is_frozen, running, upper_dir
from podmigrate_node.stream import PageTunnel


def cmd_dump(args):
    """Dump the frozen pod into the migration's payload: per container its CRIU images (runc
    checkpoint, left running, so still frozen) and its writable-layer changes; the emptyDir
    volumes once, all while nothing in the pod runs."""
    directory = migration_dir(args.migration)
    payload = os.path.join(directory, "payload")
    os.makedirs(payload, mode=0o700, exist_ok=True)
    live = running(args.uid)
    thawed = [c["name"] for c in live if not is_frozen(c["freezer"])]
    if thawed:
        fail(f"container(s) {', '.join(thawed)} of pod {args.uid} are not frozen")
    report = {"containers": {}}
    for c in live:
        name = c["name"]
        if not SAFE.match(name or ""):
            fail(f"bad container name {name!r}")
        here = os.path.join(payload, name)
        work = os.path.join(directory, "work", name)
        os.makedirs(here, mode=0o700)
        os.makedirs(work, mode=0o700)
        started = time.monotonic()
        command = [runtime().runc(), "--root", RUNC_ROOT, "checkpoint", "--leave-running", "--file-locks",
                   "--image-path", os.path.join(here, "images"), "--work-path", work]
        tunnel = PageTunnel(args, name) if args.to else None
        try:
            if tunnel:
                command += ["--page-server", f"127.0.0.1:{tunnel.local_port}"]
            res = subprocess.run([*command, c["id"]], capture_output=True, text=True, check=False)
            streamed = tunnel.finish() if tunnel and res.returncode == 0 else None
        finally:
            if tunnel:
                tunnel.close()
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
    print(json.dumps(report))
