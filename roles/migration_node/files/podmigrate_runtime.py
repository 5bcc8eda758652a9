#!/usr/bin/python3 -IS
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""podmigrate's container runtime: the binary of containerd's ``podmigrate`` runtime handler.

containerd's runc shim (io.containerd.runc.v2) runs this file in place of runc for the pods
of the ``podmigrate`` RuntimeClass (its ``BinaryName``); the migration_node role installs it
and the containerd role names it. Every command is runc's, passed on unchanged (exec, same
arguments), with two exceptions for a container the migration engine is restoring:

  create   the container's pod names a migration (pod annotation ``podmigrate.io/restore``,
           passed into the container's OCI spec by the handler's ``pod_annotations``) and
           that migration's payload on this node holds the container's CRIU images (a pod
           the engine staged before the freeze waits here until they have arrived): the
           pod's emptyDir contents are unpacked into its volumes (once per pod), the
           container's writable-layer changes are applied to the rootfs containerd
           mounted, and ``runc restore --detach`` restores the processes into the bundle
           containerd prepared. Afterwards the payload records the container's id in
           ``<container>/restored``, so a later create of the container (a restart) is an
           ordinary one, from its image.
  start    of a container restored that way: nothing to do, its processes run already.

No checkpoint image, no containerd restore path: containerd sees an ordinary create and
start. The node helper (podmigrate-node) imports this module for the other side: the
writable-layer changes it packs on the source node.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import time

MIGRATIONS = os.environ.get("PODMIGRATE_MIGRATIONS", "/var/lib/podmigrate/migrations")
RESTORE_ANNOTATION = "podmigrate.io/restore"
STARTED = os.environ.get("PODMIGRATE_RESTORED_DIR", "/run/podmigrate/restored")
RUNC_CANDIDATES = ("/usr/local/sbin/runc", "/usr/sbin/runc", "/usr/bin/runc", "/usr/local/bin/runc")
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# runc's global options that take a value (go-runc passes them before the command)
VALUED = {"--root", "--log", "--log-format", "--criu", "--rootless"}
OPAQUE = "SCHILY.xattr.trusted.overlay.opaque"
VOLUMES = "volumes.tar"


def runc():
    found = os.environ.get("PODMIGRATE_RUNC")
    if found:
        return found
    for path in RUNC_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    sys.exit("podmigrate-runtime: no runc found (" + ", ".join(RUNC_CANDIDATES) + ")")


def split(argv):
    """(global options, command, the command's arguments) of a runc command line."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return argv[:i], arg, argv[i + 1:]
        i += 2 if arg in VALUED else 1
    return argv, None, []


def create_options(args):
    """({option: value}, container id) of `runc create` arguments."""
    opts, i = {}, 0
    cid = None
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            opts[key] = value
        elif arg in ("--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds", "--pidfd-socket"):
            opts["--bundle" if arg == "-b" else arg] = args[i + 1]
            i += 1
        elif arg.startswith("-"):
            opts[arg] = True
        else:
            cid = arg
        i += 1
    return opts, cid


class Aborted(Exception):
    pass


def restore_source(spec, poll=0.005):
    """(payload dir, container name) of a container to restore, or None for an ordinary one.

    A container of a pod the engine staged before the freeze (the migration's ``expect``
    file, holding a deadline, is there) waits here until its payload has arrived, and fails
    (Aborted) when the migration is abandoned (its ``abort`` file, or the deadline): it never
    starts afresh in the place of a pod being restored."""
    annotations = spec.get("annotations") or {}
    mid = annotations.get(RESTORE_ANNOTATION)
    name = annotations.get("io.kubernetes.cri.container-name")
    if not mid or annotations.get("io.kubernetes.cri.container-type") != "container":
        return None
    if not (SAFE.match(mid) and name and SAFE.match(name)):
        return None
    directory = os.path.join(MIGRATIONS, mid)
    payload = os.path.join(directory, "payload")
    images = os.path.join(payload, name, "images")
    if os.path.exists(os.path.join(directory, "abort")):
        # rolled back: not even a restart of a container restored before (it would start afresh)
        raise Aborted(f"migration {mid} was abandoned")
    if os.path.exists(os.path.join(payload, name, "restored")):
        return None  # restarted after its restore: from its image, as any container
    expect = os.path.join(directory, "expect")
    if not os.path.isdir(images):
        if not os.path.exists(expect):
            return None  # nothing of that migration here (long ended): an ordinary container
        with open(os.path.join(directory, f"waiting.{name}"), "w"):
            pass
        while not os.path.isdir(images):
            try:
                with open(expect) as f:
                    deadline = float(f.read().strip() or 0)
            except (OSError, ValueError):
                deadline = 0
            if os.path.exists(os.path.join(directory, "abort")) or time.time() > deadline:
                raise Aborted(f"migration {mid} was abandoned before its payload arrived")
            time.sleep(poll)
    return payload, name


# ---------------------------------------------------------------- writable layer

def pack_layer(upper, out):
    """Tar an overlay upper directory (the changes a container made to its image) into the
    file object ``out``: whiteouts (0/0 character devices) and opaque directories (the
    trusted.overlay.opaque xattr) are kept as such."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(root, name)
                info = tar.gettarinfo(path, os.path.relpath(path, upper))
                if info.isdir():
                    try:
                        if os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                            info.pax_headers[OPAQUE] = "y"
                    except OSError:
                        pass
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def _remove(path):
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        for entry in os.listdir(path):
            _remove(os.path.join(path, entry))
        os.rmdir(path)
    else:
        os.unlink(path)


def apply_layer(tar_path, root):
    """Apply a layer packed by ``pack_layer`` to a container's mounted rootfs ``root`` as
    overlayfs would show it: a whiteout removes the path, an opaque directory hides what the
    image had there, every other entry replaces the image's. Runs chrooted into ``root`` (in
    a child process), so no link in the rootfs can lead a path out of it."""
    src = os.open(tar_path, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chroot(root)
            os.chdir("/")
            with os.fdopen(src, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                _apply_members(tar)
            code = 0
        except BaseException as exc:  # the child must never return into the caller's code
            print(f"podmigrate-runtime: applying the writable layer failed: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(src)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"applying {tar_path} to {root} failed")


def _apply_members(tar):
    for member in tar:
        path = "/" + member.name.lstrip("/")
        if ".." in path.split("/"):
            raise ValueError(f"bad path in the layer: {member.name!r}")
        parent = os.path.dirname(path)
        if os.path.islink(parent) or not os.path.isdir(parent):
            raise ValueError(f"{parent} is not a directory in the rootfs")
        exists = os.path.lexists(path)
        if member.ischr() and member.devmajor == 0 and member.devminor == 0:
            if exists:
                _remove(path)
            continue
        if member.isdir():
            if exists and (os.path.islink(path) or not os.path.isdir(path)):
                _remove(path)
            elif exists and member.pax_headers.get(OPAQUE) == "y":
                for entry in os.listdir(path):
                    _remove(os.path.join(path, entry))
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
        elif exists:
            _remove(path)
        tar.extract(member, "/", set_attrs=True, numeric_owner=True, filter="fully_trusted")


# ---------------------------------------------------------------- restore

def restore(global_opts, args):
    """`create` of a container to restore, or None when it is an ordinary one."""
    opts, cid = create_options(args)
    bundle = opts.get("--bundle", ".")
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    try:
        found = restore_source(spec)
    except Aborted as exc:
        print(f"podmigrate-runtime: {exc}", file=sys.stderr)
        return 1
    if found is None or not cid:
        return None
    payload, name = found
    with gate(os.path.dirname(payload)):
        if os.path.exists(os.path.join(os.path.dirname(payload), "abort")):
            print(f"podmigrate-runtime: migration {os.path.basename(os.path.dirname(payload))} was abandoned",
                  file=sys.stderr)
            return 1
        return restore_into(global_opts, opts, cid, bundle, spec, payload, name)


@contextlib.contextmanager
def gate(directory, name="gate"):
    """A migration's restores and its abandonment, one at a time on a node (``gate`` beside its
    payload, flock): a restore begins only if the migration is not abandoned (its ``abort``
    file), and the helper's ``end-restored`` writes ``abort`` then takes the gate, so once
    it holds it no restore of the migration runs or will begin. (The helper holds other
    locks of a migration's directory the same way, under other names.)"""
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def restore_into(global_opts, opts, cid, bundle, spec, payload, name):
    here = os.path.join(payload, name)
    volumes = os.path.join(payload, VOLUMES)
    uid = (spec.get("annotations") or {}).get("io.kubernetes.cri.sandbox-uid", "")
    if os.path.exists(volumes) and re.match(r"^[0-9a-f-]{36}$", uid):
        unpack_volumes(volumes, f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir")
    layer = os.path.join(here, "rootfs.tar")
    if os.path.exists(layer):
        apply_layer(layer, os.path.join(bundle, spec.get("root", {}).get("path", "rootfs")))
    work = os.path.join(here, "restore-work")
    os.makedirs(work, mode=0o700, exist_ok=True)
    command = [runc(), *global_opts, "restore", "--detach", "--no-subreaper", "--bundle", bundle,
               "--image-path", os.path.join(here, "images"), "--work-path", work]
    for option in ("--pid-file", "--console-socket"):
        if option in opts:
            command += [option, opts[option]]
    if opts.get("--no-pivot"):
        command.append("--no-pivot")
    command.append(cid)
    code = subprocess.run(command, check=False).returncode
    if code == 0:
        os.makedirs(STARTED, mode=0o700, exist_ok=True)
        with open(os.path.join(STARTED, cid), "w") as f:
            f.write(name)
        with open(os.path.join(here, "restored"), "w") as f:
            f.write(cid)
    return code


def forget_start(cid):
    """The mark ``start`` would have consumed, removed (the container ends without it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(STARTED, cid))


def unpack_volumes(tar_path, target):
    """The pod's emptyDir contents into its new volumes, once (the first restored
    container of the pod does it, before any is restored)."""
    done = tar_path + ".done"
    if os.path.exists(done):
        return
    subprocess.run(["tar", "-C", target, "--numeric-owner", "-xpf", tar_path], check=True)
    with open(done, "w"):
        pass


def main(argv):
    global_opts, command, args = split(argv[1:])
    if command == "create":
        code = restore(global_opts, args)
        if code is not None:
            sys.exit(code)
    elif command == "start" and args and SAFE.match(args[-1]):
        marker = os.path.join(STARTED, args[-1])
        if os.path.exists(marker):
            os.unlink(marker)
            sys.exit(0)
    elif command == "delete" and args and SAFE.match(args[-1]):
        forget_start(args[-1])  # a restored container deleted before its start (containerd gone meanwhile)
    binary = runc()
    os.execv(binary, [binary, *argv[1:]])  # noqa: S606 (runc itself, as the shim asked)


if __name__ == "__main__":
    main(sys.argv)
