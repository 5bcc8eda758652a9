# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SMB share of the share transfer (Azure Files, Samba), through the smbprotocol library."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import stat
import sys

from podmigrate_node.common import SAFE, SMB_CONFIG, SMB_LIBRARY, _Null, fail, pump


class Share:
    """The SMB share of SMB_CONFIG ({"server", "share", "path", "username", "password",
    "port"}), through smbprotocol's smbclient. The password is never printed."""

    def __init__(self):
        try:
            with open(SMB_CONFIG) as f:
                conf = json.load(f)
        except FileNotFoundError:
            fail(f"{SMB_CONFIG} does not exist: no SMB share is configured on this node (migration_node_smb_server)")
        for wheel in sorted(glob.glob(os.path.join(SMB_LIBRARY, "*.whl"))):
            sys.path.insert(0, wheel)  # pure Python: imported from the wheel as it is
        try:
            import smbclient
            import smbclient.shutil
        except ImportError as exc:
            fail(f"the SMB client library is missing ({exc}): run the migration_node role with SMB configured")
        self.smb = smbclient
        # encrypted (SMB3): a checkpoint holds the pod's memory, secrets included
        self.kw = {"username": conf.get("username") or None, "password": conf.get("password") or None,
                   "port": int(conf.get("port") or 445), "connection_timeout": int(conf.get("timeout") or 30),
                   "encrypt": True}
        parts = [p for p in str(conf.get("path") or "").replace("\\", "/").split("/") if p]
        self.root = "\\\\".join(["", "", conf["server"], conf["share"]]) + "".join("\\" + p for p in parts)
        self.where = f"//{conf['server']}/{conf['share']}/{'/'.join(parts)}"

    def path(self, name):
        parts = name.split("/")
        if not all(SAFE.match(p) for p in parts):
            fail(f"bad name on the share {name!r}")
        return self.root + "".join("\\" + p for p in parts)

    def stat(self, path):
        """os.stat_result of a path on the share, None when it is not there."""
        try:
            return self.smb.stat(path, **self.kw)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def digest(self, path):
        digest, size = hashlib.sha256(), [0]
        with self.smb.open_file(path, mode="rb", **self.kw) as f:
            pump(f, _Null(), digest, size)
        return digest.hexdigest(), size[0]

    def remove(self, path):
        found = self.stat(path)
        if found is None:
            return False
        if stat.S_ISDIR(found.st_mode):
            self.smb.shutil.rmtree(path, **self.kw)
        else:
            self.smb.remove(path, **self.kw)
        return True


def smb_command(func):
    """Run an smb-* command; the share's own errors end it with a message, never a trace."""
    def run(args):
        share = Share()
        try:
            func(share, args)
        except OSError as exc:
            fail(f"{share.where}: {exc}")
        except Exception as exc:  # smbprotocol's errors (access denied, logon failure, ...)
            fail(f"{share.where}: {type(exc).__name__}: {exc}")
        finally:
            share.smb.reset_connection_cache()
    return run


@smb_command
def cmd_smb_check(share, _args):
    found = share.stat(share.root)
    if found is None or not stat.S_ISDIR(found.st_mode):
        fail(f"{share.where} is not a directory on the share")
    print(json.dumps({"share": share.where}))


@smb_command
def cmd_smb_put(share, args):
    final = share.path(args.name)
    part = final + ".part"
    parent = final.rsplit("\\", 1)[0]
    if parent != share.root:
        share.smb.makedirs(parent, exist_ok=True, **share.kw)
    digest, size = hashlib.sha256(), [0]
    with open(args.file, "rb") as src, share.smb.open_file(part, mode="wb", **share.kw) as dst:
        pump(src, dst, digest, size)
        dst.flush()
    # what the share holds, read back through a new handle, before the name says it is complete
    stored = share.digest(part)
    if stored != (digest.hexdigest(), size[0]):
        share.remove(part)
        fail(f"{args.name}: the share holds sha256 {stored[0]}, {stored[1]} bytes, "
             f"not the sent {digest.hexdigest()}, {size[0]} bytes")
    share.remove(final)
    share.smb.rename(part, final, **share.kw)
    print(json.dumps({"sha256": digest.hexdigest(), "bytes": size[0], "wire_bytes": size[0], "share": share.where}))


@smb_command
def cmd_smb_get(share, args):
    remote = share.path(args.name)
    found = share.stat(remote)
    if found is None:
        if share.stat(remote + ".part") is not None:
            fail(f"{args.name} is not on the share, only an unfinished {args.name}.part: its upload never completed")
        fail(f"{args.name} is not on the share")
    if found.st_size != args.size:
        fail(f"{args.name} on the share has {found.st_size} bytes, not the sent {args.size}")
    part = args.dest + ".part"
    digest, size = hashlib.sha256(), [0]
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, share.smb.open_file(remote, mode="rb", **share.kw) as src:
            pump(src, out, digest, size)
        if (digest.hexdigest(), size[0]) != (args.sha256, args.size):
            fail(f"{args.name}: received sha256 {digest.hexdigest()}, {size[0]} bytes, "
                 f"not the sent {args.sha256}, {args.size} bytes")
        os.rename(part, args.dest)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    print(json.dumps({"sha256": digest.hexdigest(), "bytes": size[0]}))


@smb_command
def cmd_smb_rm(share, args):
    print(json.dumps({"removed": share.remove(share.path(args.name))}))
