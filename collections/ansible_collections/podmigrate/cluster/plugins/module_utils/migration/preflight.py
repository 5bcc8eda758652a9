# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What CRIU cannot dump in a pod, judged before a migration changes anything.

The node helper's ``preflight POD-UID`` lists what every process of the pod's containers
holds: its sockets (family, type, protocol; connected unix sockets one by one, with their
peers), anonymous inodes and character devices, open or mapped. ``problems`` turns that
into one sentence per thing CRIU (4.x; the rules of its ``criu/files.c``, ``sockets.c``,
``sk-inet.c``, ``sk-unix.c`` and ``proc_parse.c``) would refuse to dump, naming the
container, the process and what to do. Pure Python, no Ansible.
"""

from __future__ import annotations

SOCK_RAW = 3
# socket families CRIU dumps
DUMPED_FAMILIES = {1: "unix", 2: "IPv4", 10: "IPv6", 16: "netlink", 17: "packet"}
# (with their article: "an SCTP socket")
FAMILY_NAMES = {3: "an AX.25", 4: "an IPX", 5: "an AppleTalk", 9: "an X.25", 15: "a PF_KEY", 21: "an RDS",
                29: "a CAN", 30: "a TIPC", 31: "a Bluetooth", 38: "an AF_ALG (kernel crypto)", 40: "a vsock",
                42: "a Qualcomm IPC router", 43: "an SMC", 44: "an XDP", 45: "an MCTP"}
# IP protocols CRIU dumps on a socket that is not raw (raw sockets may carry any)
DUMPED_IP_PROTOCOLS = {0, 1, 6, 17, 58, 136}  # IP (default), ICMP, TCP, UDP, ICMPv6, UDP-Lite
PROTOCOL_NAMES = {33: "a DCCP", 132: "an SCTP", 262: "an MPTCP"}
# anonymous inodes CRIU dumps (the names /proc/PID/fd links show after "anon_inode:")
DUMPED_ANON = {"[eventfd]", "[eventpoll]", "inotify", "[fanotify]", "[signalfd]", "[timerfd]", "[pidfd]",
               "bpf-map"}
ANON_NAMES = {"[io_uring]": "an io_uring instance", "[perf_event]": "a perf event",
              "[userfaultfd]": "a userfaultfd", "kvm-vm": "a KVM virtual machine", "kvm-vcpu": "a KVM vCPU"}
DEVZERO = (1, 5)


def _chrdev_dumped(major, minor):
    """Whether CRIU dumps an open character device: memory devices (/dev/null, zero, random...),
    the tun device, terminals and pseudo-terminals."""
    return major in (1, 4, 5) or 136 <= major <= 143 or (major, minor) == (10, 200)


def _address(local):
    if isinstance(local, list) and len(local) >= 2:
        host = local[0] or "*"
        return f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}"
    return local or ""


def _socket_problem(sock):
    family, type_, proto = sock["family"], sock["type"], sock.get("proto")
    where = f"fd {sock['fd']}" + (f", bound to {_address(sock['local'])}" if _address(sock.get("local")) else "")
    many = f" ({sock['count']} such sockets)" if sock.get("count", 1) > 1 else ""
    if family not in DUMPED_FAMILIES:
        name = FAMILY_NAMES.get(family, f"a family {family}")
        return (f"{name} socket ({where}){many}: CRIU dumps only unix, IPv4, IPv6, netlink and packet sockets; "
                "close it before the migration, or keep this pod where it is")
    if family in (2, 10) and type_ != SOCK_RAW and proto not in DUMPED_IP_PROTOCOLS:
        name = PROTOCOL_NAMES.get(proto, f"an IP protocol {proto}")
        if proto == 262:
            return (f"an MPTCP socket ({where}){many}: CRIU cannot dump MPTCP. Let the program use plain TCP: "
                    "turn MPTCP off in the pod's network namespace (net.mptcp.enabled=0, which clusters built "
                    "by podmigrate set for every pod through cluster_network_pod_sysctls; something in this pod "
                    "turned it on again), or tell the program (Go: GODEBUG=multipathtcp=0)")
        return (f"{name} socket ({where}){many}: CRIU dumps only TCP, UDP, UDP-Lite and ICMP sockets; "
                "close it before the migration, or keep this pod where it is")
    return None


UNIX_KINDS = {1: "stream", 2: "datagram", 5: "seqpacket"}


def _unix_problems(found):
    """Connected unix sockets whose other end is not in the same container. Each container is
    its own CRIU dump, and CRIU dumps a connected unix socket only with its peer in the same
    dump (else "Can't dump half of stream unix connection", or "External socket is used")."""
    holder = {}
    for process in found.get("processes") or []:
        for sock in process.get("unix") or []:
            holder[sock["ino"]] = process
    in_pod_netns = set(found.get("unix_sockets") or [])
    pairs, outside = {}, []
    for process in found.get("processes") or []:
        for sock in process.get("unix") or []:
            kind = UNIX_KINDS.get(sock["type"], f"type {sock['type']}")
            peer = holder.get(sock["peer"])
            if peer is not None and peer["container"] != process["container"]:
                ends = tuple(sorted((process["container"], peer["container"])))
                pairs.setdefault(ends, []).append((process, peer, kind))
            elif peer is None and sock["peer"] not in in_pod_netns:
                outside.append((process, sock, kind))
    said = []
    for (one, other), found_ in pairs.items():
        process, peer, kind = found_[0]
        count = len(found_) // 2 or 1
        said.append(f"containers {one} and {other} are connected by {count} unix socket connection(s) "
                    f"(a {kind} socket of process {process['comm']} in {process['container']} to process "
                    f"{peer['comm']} in {peer['container']}): each container is checkpointed by its own CRIU "
                    "dump, and CRIU cannot dump one end of a unix connection without the other. Keep this pod "
                    "where it is, or let the containers exchange data through a file or a FIFO in an "
                    "emptyDir volume, which move")
    for process, sock, kind in outside:
        where = f", bound to {sock['local']}" if sock.get("local") else ""
        said.append(f"container {process['container']}: process {process['comm']} (pid {process['nspid']} in the "
                    f"container, {process['pid']} on the node) holds a {kind} unix socket (fd {sock['fd']}{where}) "
                    "connected to a socket outside the pod (a node daemon's socket through a hostPath?): CRIU "
                    "cannot dump one end of a unix connection without the other; close it before the migration, "
                    "or keep this pod where it is")
    return said


def problems(found):
    """One sentence per thing in ``found`` (the helper's ``preflight`` answer) that CRIU cannot dump."""
    said = _unix_problems(found)
    for process in found.get("processes") or []:
        who = (f"container {process['container']}: process {process['comm']} "
               f"(pid {process['nspid']} in the container, {process['pid']} on the node) holds")
        for sock in process.get("sockets") or []:
            problem = _socket_problem(sock)
            if problem:
                said.append(f"{who} {problem}")
        for anon in process.get("anon") or []:
            if anon["kind"] not in DUMPED_ANON:
                name = ANON_NAMES.get(anon["kind"], f"an anonymous inode {anon['kind']}")
                said.append(f"{who} {name} (fd {anon['fd']}), which CRIU cannot dump; keep this pod where it is")
        for device in process.get("devices") or []:
            rdev = tuple(device["rdev"])
            if device.get("mapped"):
                if rdev != DEVZERO:
                    said.append(f"{who} a memory mapping of the device {device['path']} ({rdev[0]}:{rdev[1]}), "
                                "which CRIU cannot dump without a device plugin (none is installed); "
                                "keep this pod where it is")
            elif not _chrdev_dumped(*rdev):
                said.append(f"{who} the device {device['path']} ({rdev[0]}:{rdev[1]}, fd {device['fd']}) open, "
                            "which CRIU cannot dump; close it before the migration, or keep this pod where it is")
    return said
