# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the processes of a pod hold that CRIU must dump specially (the engine judges it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import struct

from podmigrate_node.pod import pod_containers


def pod_processes(uid, proc="/proc"):
    """{pid: container id} of every process in a pod's container cgroups (cgroupfs or systemd
    driver names), the pod's sandbox included."""
    marks = (f"pod{uid}/", f"pod{uid.replace('-', '_')}.slice/")
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue  # gone meanwhile
        for line in lines:
            path = line.split(":", 2)[-1]
            mark = next((m for m in marks if m in path), None)
            if mark:
                leaf = path.split(mark, 1)[1].split("/")[0]
                found[int(entry)] = re.sub(r"^cri-containerd-|\.scope$", "", leaf)
                break
    return found


SOCK_DIAG_BY_FAMILY, UDIAG_SHOW_PEER, UNIX_DIAG_PEER = 20, 4, 2
CLONE_NEWNET = 0x40000000


def _unix_diag():
    """{inode: [type, peer inode]} of every unix socket of this network namespace that has a
    live peer (sock_diag, the kernel's socket inventory; a peer that closed, or a connection
    not yet accepted, shows as inode 0 and is left out)."""
    peers = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as nl:  # NETLINK_SOCK_DIAG
        request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_PEER,
                              0xFFFFFFFF, 0xFFFFFFFF)
        nl.send(struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + request)
        while True:
            data = nl.recv(1 << 16)
            while data:
                length, kind = struct.unpack_from("=IH", data)
                if kind == 3:  # NLMSG_DONE
                    return peers
                if kind == 2:  # NLMSG_ERROR
                    raise OSError(-struct.unpack_from("=i", data, 16)[0], "sock_diag refused the unix socket dump")
                _, type_, _, _, ino = struct.unpack_from("=BBBBI", data, 16)
                at = 32
                while at + 4 <= length:
                    size, attr = struct.unpack_from("=HH", data, at)
                    peer = struct.unpack_from("=I", data, at + 4)[0] if attr == UNIX_DIAG_PEER else 0
                    if peer:
                        peers[ino] = [type_, peer]
                    at += (size + 3) & ~3
                data = data[(length + 3) & ~3:]


def unix_peers(pid):
    """{inode: [type, peer inode]} of the connected unix sockets in the network namespace of
    process PID (a pod's containers share theirs), asked from inside that namespace."""
    import ctypes

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            if ctypes.CDLL(None, use_errno=True).setns(netns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter the network namespace of process {pid}")
            answer = {"peers": _unix_diag()}
            code = 0
        except OSError as e:
            answer = {"error": str(e)}
        with os.fdopen(write, "w") as out:
            json.dump(answer, out)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        answer = json.loads(f.read() or "{}")
    os.waitpid(child, 0)
    if "peers" not in answer:
        raise OSError(answer.get("error", f"cannot list the unix sockets of process {pid}"))
    return {int(ino): value for ino, value in answer["peers"].items()}


def _socket_of(pidfd, fd):
    """(family, type, protocol, local address) of a process's socket, from a copy of its file
    descriptor (pidfd_getfd, kernel >= 5.6); None where the kernel refuses the copy."""
    import ctypes
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    copy = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd (438 on every architecture but alpha)
    if copy < 0:
        return None
    sock = socket.socket(fileno=copy)
    try:
        try:
            local = sock.getsockname()
        except OSError:
            local = None
        return sock.family, sock.type, sock.proto, _address_text(local)
    finally:
        sock.detach()
        os.close(copy)


def _address_text(local):
    """A socket's address as JSON can carry it: [host, port] for IP, a path, @NAME for an
    abstract unix socket (which Python gives as bytes)."""
    if isinstance(local, tuple):
        return list(local[:2])
    if isinstance(local, bytes):
        return "@" + local[1:].decode(errors="replace") if local[:1] == b"\0" else local.decode(errors="replace")
    return None if local is None else str(local)


def open_files(pid, proc="/proc"):
    """(fd, what /proc/PID/fd/FD links to, its stat) for each file descriptor process PID
    holds, in fd order; those gone meanwhile left out."""
    base = f"{proc}/{pid}/fd"
    try:
        fds = sorted(os.listdir(base), key=int)
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"{base}/{fd}")
            st = os.stat(f"{base}/{fd}")
        except OSError:
            continue
        yield int(fd), target, st


def process_holdings(pid, proc="/proc", peers=None):
    """What process PID holds that CRIU has to dump specially: its sockets (one per kind, with
    how many), its connected unix sockets one by one with their peers (given the ``unix_peers``
    of its network namespace), its anonymous inodes and its character devices, open or mapped."""
    base = f"{proc}/{pid}"
    with open(f"{base}/comm") as f:
        comm = f.read().strip()
    nspid = pid
    with open(f"{base}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                nspid = int(line.split()[-1])
    sockets, anon, devices, connected = {}, {}, {}, []
    pidfd = None
    with contextlib.suppress(OSError):  # else the sockets cannot be copied; CRIU still checks them in the dump
        pidfd = os.pidfd_open(pid)
    for fd, target, st in open_files(pid, proc):
        if target.startswith("socket:"):
            kind = _socket_of(pidfd, fd) if pidfd is not None else None
            if kind is None:
                continue
            family, type_, proto, local = kind
            key = (int(family), int(type_), proto)
            entry = sockets.setdefault(key, {"family": key[0], "type": key[1], "proto": proto, "fd": fd,
                                             "local": local, "count": 0})
            entry["count"] += 1
            ino = st.st_ino
            if family == socket.AF_UNIX and peers and ino in peers:
                connected.append({"fd": fd, "ino": ino, "type": peers[ino][0], "peer": peers[ino][1],
                                  "local": local})
        elif target.startswith("anon_inode:"):
            anon.setdefault(target.split(":", 1)[1], int(fd))
        elif stat.S_ISCHR(st.st_mode):
            devices.setdefault(target, {"path": target, "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
                                        "fd": int(fd)})
    if pidfd is not None:
        os.close(pidfd)
    try:
        with open(f"{base}/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        maps = []
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
            continue
        try:
            st = os.stat(f"{base}/map_files/{fields[0]}")
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            path = fields[5]
            devices.setdefault(f"map:{path}", {"path": path, "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
                                               "mapped": True})
    return {"pid": pid, "nspid": nspid, "comm": comm, "sockets": list(sockets.values()), "unix": connected,
            "anon": [{"kind": k, "fd": v} for k, v in anon.items()], "devices": list(devices.values())}


def cmd_preflight(args):
    names = {c["id"]: c["name"] for c in pod_containers(args.uid)}
    found, peers, memory = [], None, {}
    for pid, cid in sorted(pod_processes(args.uid).items()):
        if cid not in names:
            continue  # the sandbox (pause): restored by the runtime, not by CRIU
        try:
            if peers is None:
                peers = unix_peers(pid)
            found.append({"container": names[cid], **process_holdings(pid, peers=peers)})
            memory[names[cid]] = memory.get(names[cid], 0) + anonymous_bytes(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    # every connected unix socket of the pod's network namespace, held by its processes or not
    # and the memory CRIU will dump, of the pod (what the engine's progress counts against)
    # and of each container (what each container's CRIU holds at once)
    print(json.dumps({"processes": found, "unix_sockets": sorted(peers or {}),
                      "memory_bytes": sum(memory.values()), "container_memory": memory}))


def cmd_memory(args):
    """The anonymous memory of every process of the pod (post-copy's progress on the target:
    a lazily restored page counts once it has arrived)."""
    total = 0
    for pid in pod_processes(args.uid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += anonymous_bytes(pid)
    print(json.dumps({"memory_bytes": total}))


def anonymous_bytes(pid, proc="/proc"):
    """The anonymous memory of a process (what CRIU dumps as its pages), from smaps_rollup."""
    with open(f"{proc}/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0
