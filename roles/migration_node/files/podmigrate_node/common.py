# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every command of the helper shares: where migrations live, names it accepts, its tools."""

from __future__ import annotations

import os
import re
import subprocess
import sys

MIGRATIONS = os.environ.get("PODMIGRATE_MIGRATIONS", "/var/lib/podmigrate/migrations")
NAMESPACE = "k8s.io"
RUNC_ROOT = os.environ.get("PODMIGRATE_RUNC_ROOT", f"/run/containerd/runc/{NAMESPACE}")
CGROUPS = os.environ.get("PODMIGRATE_CGROUPS", "/sys/fs/cgroup")
CHUNK = 1 << 20
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
UID = re.compile(r"^[0-9a-f-]{36}$")
FENCE_CHAIN = "FORWARD"
SMB_CONFIG = os.environ.get("PODMIGRATE_SMB_CONFIG", "/etc/podmigrate/smb.json")
SMB_LIBRARY = os.environ.get("PODMIGRATE_SMB_LIBRARY", "/usr/local/lib/podmigrate/python")


def fail(msg):
    print(f"podmigrate-node: {msg}", file=sys.stderr)
    sys.exit(1)


def migration_dir(mid):
    if not SAFE.match(mid):
        fail(f"bad migration id {mid!r}")
    return os.path.join(MIGRATIONS, mid)


def pump(src, dst, digest=None, counter=None):
    """Copy src to dst in chunks; update a hash and a [bytes] counter on the way."""
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        if digest is not None:
            digest.update(chunk)
        if counter is not None:
            counter[0] += len(chunk)
        dst.write(chunk)


def ctr(*args, **kw):
    return subprocess.run(["ctr", "-n", NAMESPACE, *args], check=True, capture_output=True, **kw)


def check_uid(uid):
    if not UID.match(uid):
        fail(f"bad pod uid {uid!r}")
    return uid


def runtime():
    """The runtime of the podmigrate RuntimeClass (podmigrate_runtime.py, in the helper's
    archive beside this package, as it is beside the archive on the node)."""
    import podmigrate_runtime

    return podmigrate_runtime


def du(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


class _Null:
    def write(self, _data):
        pass
