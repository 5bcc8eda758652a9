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
import ipaddress
import json
import os
import re
import shlex
import signal
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
ADDRESSES = "addresses.json"  # the source pod's addresses, in the payload
LAZY = "lazy.json"  # in a container's payload (post-copy): the port its pages are asked for on
LAZY_EXIT = "lazy-pages.exit"  # beside it, once CRIU's lazy-pages daemon has ended: its exit code
IMG_COMMON_MAGIC, FILES_MAGIC, INETSK = 0x54564319, 0x56303138, 4


def runc():
    found = os.environ.get("PODMIGRATE_RUNC")
    if found:
        return found
    for path in RUNC_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    sys.exit("podmigrate-runtime: no runc found (" + ", ".join(RUNC_CANDIDATES) + ")")


def global_options(argv):
    """({option: its value, or True}, the index of the command) of a runc command line."""
    options, i = {}, 0
    while i < len(argv) and argv[i].startswith("-"):
        valued = argv[i] in VALUED
        options[argv[i]] = (argv[i + 1] if i + 1 < len(argv) else None) if valued else True
        i += 2 if valued else 1
    return options, i


def split(argv):
    """(global options, command, the command's arguments) of a runc command line."""
    _, i = global_options(argv)
    if i >= len(argv):
        return argv, None, []
    return argv[:i], argv[i], argv[i + 1:]


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


# ---------------------------------------------------------------- the pod's address

def netns_addresses(netns):
    """The global IPv4 and IPv6 addresses in network namespace ``netns`` (a path: the
    sandbox's bind mount, or /proc/PID/ns/net), the source of its default route first (a
    pod that kept its address on an earlier move has the address of its node's range too:
    podmigrate_cni.py)."""
    out = subprocess.run(["nsenter", f"--net={netns}", "sh", "-c", "ip -j addr show; ip -j route show default"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    found = [a["local"] for link in json.loads(out[0]) for a in link.get("addr_info", [])
             if a.get("scope") == "global" and a.get("family") in ("inet", "inet6")]
    sources = [r["prefsrc"] for r in json.loads(out[1]) if r.get("prefsrc") in found] if len(out) > 1 else []
    return sources[:1] + [a for a in found if a not in sources[:1]]


HOLD_CHAIN = "PODMIGRATE-HOLD"
# CRIU's own packets (soccr.h: "All packets with this mark have not to be blocked"): the
# restore of a connection its peer had half-closed replays that FIN through a raw socket
SOCCR_MARK = "0xC114"


def hold_network(netns):
    """Every packet into and out of network namespace ``netns`` dropped (iptables in it: a
    chain that INPUT and OUTPUT jump to first, dropping all but CRIU's own), until
    release_network. A frozen pod's kernel then acknowledges nothing its dump will not
    have and sends no reset or FIN when its processes are killed; a restored pod's
    receives nothing before its sockets are all back (a packet dropped is sent again by
    its peer; one refused would end the connection)."""
    rules = (f"*filter\n:{HOLD_CHAIN} - [0:0]\n-A {HOLD_CHAIN} -m mark --mark {SOCCR_MARK} -j RETURN\n"
             f"-A {HOLD_CHAIN} -j DROP\n"
             f"-I INPUT 1 -j {HOLD_CHAIN}\n-I OUTPUT 1 -j {HOLD_CHAIN}\nCOMMIT\n")
    subprocess.run(["nsenter", f"--net={netns}", "iptables-restore", "-w", "--noflush"], input=rules, text=True,
                   capture_output=True, check=True)


def release_network(netns):
    """hold_network's drop lifted (its chain emptied); nothing if there is none."""
    subprocess.run(["nsenter", f"--net={netns}", "iptables", "-w", "-F", HOLD_CHAIN], capture_output=True,
                   check=False)


def spec_netns(spec):
    """The path of a container's network namespace in its OCI spec, or None (the node's)."""
    return next((ns.get("path") for ns in (spec.get("linux") or {}).get("namespaces") or []
                 if ns.get("type") == "network"), None)


def _words(address):
    """An address as CRIU's images hold it: its bytes as 32-bit words of this machine."""
    raw = address.packed
    return tuple(int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, len(raw), 4))


def address_mapping(old, new):
    """{words of a source pod address: words of the restored pod's}, the first global
    address of each family to the first of the same family (an IPv4 address also in its
    IPv4-mapped IPv6 form, as an IPv6 socket holds it); none for a family one of whose
    source addresses the restored pod has too (it kept its address: podmigrate_cni.py)."""
    mapping = {}
    for version in (4, 6):
        before = [ipaddress.ip_address(a) for a in old if ipaddress.ip_address(a).version == version]
        after = [ipaddress.ip_address(a) for a in new if ipaddress.ip_address(a).version == version]
        if before and after and not set(before) & set(after):  # (a pod that keeps its address has it)
            mapping[_words(before[0])] = _words(after[0])
            if version == 4:
                mapped = [ipaddress.IPv6Address(f"::ffff:{a}") for a in (before[0], after[0])]
                mapping[_words(mapped[0])] = _words(mapped[1])
    return mapping


def _varint(buf, i):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _put_varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _fields(buf):
    """A protobuf message as [field, wire type, value] (varints as ints, the rest as bytes)."""
    i, out = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = bytes(buf[i:i + size]), i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = bytes(buf[i:i + size]), i + size
        else:
            raise ValueError(f"protobuf wire type {wire} at {i}")
        out.append([field, wire, value])
    return out


def _encode(fields):
    out = bytearray()
    for field, wire, value in fields:
        out += _put_varint(field << 3 | wire)
        out += _put_varint(value) if wire == 0 else _put_varint(len(value)) + value if wire == 2 else value
    return bytes(out)


def _readdress_socket(isk, mapping):
    """An inet socket (CRIU's inet_sk_entry) with its source and destination address (fields
    11, 12: repeated uint32) mapped, or None when it holds no mapped address."""
    fields = _fields(isk)
    changed = False
    for number in (11, 12):
        at = [k for k, (field, wire, _value) in enumerate(fields) if field == number and wire == 0]
        new = mapping.get(tuple(fields[k][2] for k in at))
        if new:  # a key matched: as many words as the address has
            for k, word in zip(at, new, strict=True):
                fields[k][2] = word
            changed = True
    return _encode(fields) if changed else None


def readdress(images, mapping):
    """The sockets of a container's CRIU images (files.img) bound or connected to the source
    pod's address, moved to the restored pod's: the restored pod has an address of its own
    (until a pod keeps its address), and CRIU binds a socket to the address it had (a
    connected UDP socket such as a DNS forwarder's, or a listener on the pod's address
    would fail the restore: "Can't bind inet socket"). The images as dumped stay in
    files.img.dumped, so a second restore of the same images maps from them. Returns how
    many sockets were moved."""
    path = os.path.join(images, "files.img")
    dumped = path + ".dumped"
    if not os.path.exists(path) or not (mapping or os.path.exists(dumped)):
        return 0
    if not os.path.exists(dumped):
        os.link(path, dumped)
    with open(dumped, "rb") as f:
        data = f.read()
    head = 8 if int.from_bytes(data[:4], "little") == IMG_COMMON_MAGIC else 4
    if int.from_bytes(data[head - 4:head], "little") != FILES_MAGIC:
        raise ValueError(f"{dumped} is not CRIU's files image")
    out, i, moved = bytearray(data[:head]), head, 0
    while i < len(data):
        size = int.from_bytes(data[i:i + 4], "little")
        entry = data[i + 4:i + 4 + size]
        i += 4 + size
        fields = _fields(entry)
        if [1, 0, INETSK] in fields:
            sockets = [field for field in fields if field[:2] == [4, 2]]
            for field in sockets:
                socket = _readdress_socket(field[2], mapping)
                if socket is not None:
                    field[2], moved, entry = socket, moved + 1, None
            entry = entry if entry is not None else _encode(fields)
        out += len(entry).to_bytes(4, "little") + entry
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(out)
    os.replace(path + ".new", path)
    return moved


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
def gate(directory):
    """A migration's lock on a node: a flock on its directory itself, so that taking it makes
    no file in a directory the helper's ``forget`` may be emptying under it. Yields whether
    the directory is still there; FileNotFoundError when it was gone before. Its restores
    and its abandonment one at a time: a restore begins only if the migration is not
    abandoned (its ``abort`` file), and the helper's ``end-restored`` writes ``abort`` then
    takes the gate, so once it holds it no restore of the migration runs or will begin.
    (The source's watcher and ``extend`` take it to read and write the deadline.)"""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield os.path.isdir(directory)
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
    mapping = restored_addresses(payload, spec)
    readdress(os.path.join(here, "images"), mapping)
    work = os.path.join(here, "restore-work")
    os.makedirs(work, mode=0o700, exist_ok=True)
    command = [runc(), *global_opts, "restore", "--detach", "--no-subreaper", "--bundle", bundle,
               "--image-path", os.path.join(here, "images"), "--work-path", work]
    # established TCP connections (dumped with the pod) live on where the pod kept its
    # address; with a new one their peers could not know them: restored closed
    if not mapping:
        command.append("--tcp-established")
    env = criu_config(os.path.join(work, "criu.conf"), ["tcp-close" if mapping else "no-tcp-close"])
    lazy = None
    if os.path.exists(os.path.join(here, LAZY)):
        lazy = serve_lazy_pages(here, work, [runc(), *global_opts, "kill", cid, "KILL"])
        if isinstance(lazy, str):
            tell_runtime_error(global_opts, lazy)
            return 1
        command.append("--lazy-pages")
    for option in ("--pid-file", "--console-socket"):
        if option in opts:
            command += [option, opts[option]]
    if opts.get("--no-pivot"):
        command.append("--no-pivot")
    command.append(cid)
    code = subprocess.run(command, check=False, env=env).returncode
    if code != 0 and lazy:
        os.killpg(lazy.pid, signal.SIGKILL)  # its daemon would wait for the restore for ever
        lazy.wait()
    if code != 0:
        tell_runtime_error(global_opts, "runc restore failed" + criu_errors(os.path.join(work, "restore.log")))
    if code == 0:
        os.makedirs(STARTED, mode=0o700, exist_ok=True)
        with open(os.path.join(STARTED, cid), "w") as f:
            f.write(f"{name}\n{os.path.basename(os.path.dirname(payload))}\n")
        with open(os.path.join(here, "restored"), "w") as f:
            f.write(cid)
        netns = spec_netns(spec)
        if netns and all_restored(payload):
            release_network(netns)  # the pod network's hold (podmigrate_cni.py) lifted
    return code


def serve_lazy_pages(here, work, kill):
    """Post-copy: CRIU's lazy-pages daemon for one container, started before its restore. The
    restore hands it the restored processes' userfaultfds (through lazy-pages.socket in the
    work directory); it fills their memory from the source's page server (loopback, the
    migration's SSH tunnel: lazy.json's port) as they touch it, and the rest in the
    background. It outlives this create (its own session) and writes its exit code to
    LAZY_EXIT once the last page is in or it failed; when it failed, the command ``kill``
    first kills the container (its memory has holes that would read as zeros). Its process (a shell around CRIU, the
    leader of its process group) once it waits for the restore, else why not."""
    with open(os.path.join(here, LAZY)) as f:
        port = int(json.load(f)["port"])
    ready, status = os.pipe()
    log = os.path.join(work, "lazy-pages.log")
    done = os.path.join(here, LAZY_EXIT)
    daemon = subprocess.Popen(
        ["sh", "-c", 'criu "$@"; code=$?; [ $code = 0 ] || ' + shlex.join(kill) + ' 2>/dev/null; '
         'echo $code > "$0.part"; mv "$0.part" "$0"', done, "lazy-pages",
         "--images-dir", os.path.join(here, "images"), "--work-dir", work, "--page-server", "--address", "127.0.0.1",
         "--port", str(port), "--status-fd", str(status), "-v4", "-o", log],
        pass_fds=[status], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    os.close(status)
    with os.fdopen(ready, "rb") as f:
        if f.read(1) == b"\0":
            return daemon
    daemon.wait()
    return "CRIU's lazy-pages daemon did not start" + criu_errors(log)


def criu_config(path, lines):
    """The environment of runc with CRIU's options ``lines`` and ``network-lock skip`` in a
    configuration file of CRIU's (CRIU_CONFIG_FILE: it overrides /etc/criu/default.conf;
    what runc asks and /etc/criu/runc.conf override it). ``network-lock skip``: podmigrate
    holds the pod's network itself (hold_network), from the freeze to the end of the
    restore, not CRIU for each container's part of it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{line}\n" for line in ["network-lock skip", *lines]))
    return {**os.environ, "CRIU_CONFIG_FILE": path}


def all_restored(payload):
    """Whether every container dumped into ``payload`` is restored."""
    names = [n for n in os.listdir(payload) if os.path.isdir(os.path.join(payload, n, "images"))]
    return all(os.path.exists(os.path.join(payload, n, "restored")) for n in names)


def restored_addresses(payload, spec):
    """address_mapping from the source pod's addresses (the payload's addresses.json) to
    those of the pod's network namespace here; {} for a pod in the node's network."""
    netns = spec_netns(spec)
    source = os.path.join(payload, ADDRESSES)
    if not netns or not os.path.exists(source):
        return {}
    with open(source) as f:
        return address_mapping(json.load(f), netns_addresses(netns))


def criu_errors(log):
    """The first errors of a CRIU log and where it stopped."""
    try:
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "Error" in line][:6]
    return "\nCRIU's log:\n" + "\n".join([*errors, "...", *lines[-3:]])


def tell_runtime_error(global_opts, message):
    """``message`` as runc's last error in its JSON log (--log): the shim reads that line into
    the error containerd, the kubelet and so the migration report (the restored pod's
    status) give; runc's own says no more than "criu failed: type RESTORE errno 0"."""
    options, _ = global_options(global_opts)
    if not options.get("--log") or options.get("--log-format") != "json":
        print(f"podmigrate-runtime: {message}", file=sys.stderr)
        return
    line = {"level": "error", "msg": message.replace("\n", " | "),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(options["--log"], "a") as f:
        f.write(json.dumps(line) + "\n")


def forget_start(cid):
    """The mark ``start`` would have consumed, removed (the container ends without it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(STARTED, cid))


def started_by(migration):
    """The ids of the containers restored by ``migration`` whose ``start`` has not come (the
    migration's id is its mark's second line). One whose start containerd abandoned (the
    kubelet gone mid-call) is no longer runc's container in a bundle: only its mark is left."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for cid in os.listdir(STARTED):
            with contextlib.suppress(FileNotFoundError), open(os.path.join(STARTED, cid)) as f:
                if f.read().split("\n")[1:2] == [migration]:
                    found.append(cid)
    return found


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
