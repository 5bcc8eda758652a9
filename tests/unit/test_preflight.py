"""The pre-flight of a migration: the node helper's look at a real process, and what CRIU
would refuse in it (module_utils/migration/preflight.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import preflight
from podmigrate_node import preflight as node

# A process holding what CRIU dumps (TCP and UDP sockets, unix sockets, one abstract, an eventfd,
# /dev/null, a mapping of /dev/zero) and what it cannot (an MPTCP listener, an io_uring,
# /dev/fuse open). Every socket is on loopback or unbound.
HOLDER = r"""
import ctypes, mmap, os, socket, sys
keep = []
mptcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
mptcp.bind(("127.0.0.1", 0)); mptcp.listen()
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); abstract.bind(b"\0podmigrate-preflight")
keep += [mptcp, tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), *socket.socketpair(), abstract]
keep.append(os.eventfd(0))
ring = ctypes.CDLL(None, use_errno=True).syscall(425, 4, ctypes.create_string_buffer(120))
assert ring >= 0, ctypes.get_errno()
keep += [os.open("/dev/fuse", os.O_RDWR), os.open("/dev/null", os.O_RDONLY)]
zero = os.open("/dev/zero", os.O_RDWR)
keep.append(mmap.mmap(zero, 4096, flags=mmap.MAP_PRIVATE))
print(mptcp.getsockname()[1], ring, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder():
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port, ring = proc.stdout.readline().split()
        yield proc.pid, int(port), int(ring)
    finally:
        proc.kill()
        proc.wait()


def test_the_helper_sees_every_kind_of_socket_file_and_device_a_process_holds(holder):
    pid, port, ring = holder
    held = node.process_holdings(pid)
    assert held["pid"] == pid and held["comm"].startswith("python")
    kinds = {(s["family"], s["type"], s["proto"]) for s in held["sockets"]}
    assert {(2, 1, 262), (2, 1, 6), (2, 2, 17), (1, 1, 0)} <= kinds, kinds
    [mptcp] = [s for s in held["sockets"] if s["proto"] == 262]
    assert mptcp["local"] == ["127.0.0.1", port]
    [pair] = [s for s in held["sockets"] if (s["family"], s["type"]) == (1, 1)]
    assert pair["count"] == 2
    # bound to an abstract name, an address Python gives as bytes; the helper prints it as JSON
    [abstract] = [s for s in held["sockets"] if (s["family"], s["type"]) == (1, 2)]
    assert abstract["local"] == "@podmigrate-preflight"
    json.dumps(held)
    anon = {a["kind"]: a["fd"] for a in held["anon"]}
    assert anon["[io_uring]"] == ring and "[eventfd]" in anon
    devices = {(d["path"], bool(d.get("mapped"))): tuple(d["rdev"]) for d in held["devices"]}
    assert devices[("/dev/fuse", False)] == (10, 229)
    assert devices[("/dev/null", False)] == (1, 3)
    assert devices[("/dev/zero", True)] == (1, 5)


def test_only_what_criu_cannot_dump_is_refused_each_with_what_to_do(holder):
    pid, port, ring = holder
    said = preflight.problems({"processes": [{"container": "app", **node.process_holdings(pid)}]})
    assert len(said) == 3, said
    mptcp, uring, fuse = said
    assert mptcp.startswith("container app: process python") and f"{pid} on the node" in mptcp
    assert "an MPTCP socket (fd " in mptcp and f"bound to 127.0.0.1:{port}" in mptcp
    assert "net.mptcp.enabled=0" in mptcp and "GODEBUG=multipathtcp=0" in mptcp
    assert f"an io_uring instance (fd {ring}), which CRIU cannot dump" in uring
    assert "the device /dev/fuse (10:229" in fuse and "close it before the migration" in fuse


def test_a_mapped_device_and_sockets_criu_has_no_code_for_are_refused():
    process = {"container": "gpu", "comm": "train", "pid": 4321, "nspid": 7,
               "sockets": [{"family": 40, "type": 1, "proto": 0, "fd": 5, "local": None, "count": 1},
                           {"family": 10, "type": 1, "proto": 132, "fd": 6, "local": ["::", 9000], "count": 3},
                           {"family": 2, "type": 3, "proto": 132, "fd": 7, "local": None, "count": 1}],
               "anon": [{"kind": "[timerfd]", "fd": 8}, {"kind": "[perf_event]", "fd": 9}],
               "devices": [{"path": "/dev/nvidia0", "rdev": [195, 0], "mapped": True},
                           {"path": "/dev/pts/0", "rdev": [136, 0], "fd": 0},
                           {"path": "/dev/net/tun", "rdev": [10, 200], "fd": 10}]}
    said = preflight.problems({"processes": [process]})
    assert [s.split(" holds ", 1)[1].split(" (")[0] for s in said] == \
        ["a vsock socket", "an SCTP socket", "a perf event", "a memory mapping of the device /dev/nvidia0"]
    assert all(s.startswith("container gpu: process train (pid 7 in the container, 4321 on the node)") for s in said)
    assert "bound to [::]:9000" in said[1] and "(3 such sockets)" in said[1]


def test_a_pods_processes_are_found_by_their_cgroups(tmp_path):
    uid = "0b5e0c43-6a55-4f5e-9d51-3c1f2a7b8e90"
    lines = {
        "101": f"12:devices:/kubepods/burstable/pod{uid}/aaaa\n0::/kubepods/burstable/pod{uid}/aaaa\n",
        "102": f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}"
               ".slice/cri-containerd-bbbb.scope\n",
        "103": "0::/system.slice/containerd.service\n",
        "104": f"0::/kubepods/pod{uid[:-1]}1/cccc\n",
    }
    for pid, text in lines.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cgroup").write_text(text)
    (tmp_path / "self").mkdir()
    assert node.pod_processes(uid, proc=str(tmp_path)) == {101: "aaaa", 102: "bbbb"}


def test_a_unix_connection_between_two_containers_or_out_of_the_pod_is_refused():
    # two real processes holding the two ends of a unix stream connection (and each a pair
    # of its own, which moves with it)
    script = ("import os, socket, sys\n"
              "a, b = socket.socketpair(); mine = socket.socketpair()\n"
              "if os.fork() == 0:\n"
              "    a.close(); mine[0].close(); mine[1].close(); theirs = socket.socketpair()\n"
              "    sys.stdin.read(); os._exit(0)\n"
              "b.close(); print(os.getpid(), flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        parent = int(proc.stdout.readline())
        child = int(subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout)
        peers = node.unix_peers(parent)
        held = [node.process_holdings(pid, peers=peers) for pid in (parent, child)]
    finally:
        proc.kill()
        proc.wait()
    assert [len(h["unix"]) for h in held] == [3, 3], held
    found = {"processes": [{"container": "writer", **held[0]}, {"container": "reader", **held[1]}],
             "unix_sockets": sorted(peers)}
    [said] = preflight.problems(found)
    assert said.startswith("containers reader and writer are connected by 1 unix socket connection(s) "
                           "(a stream socket of process python"), said
    assert "CRIU cannot dump one end of a unix connection without the other" in said
    # both in one container: one CRIU dump holds both ends
    assert preflight.problems({**found, "processes": [{**p, "container": "app"} for p in found["processes"]]}) == []
    # the peer is in no process of the pod and not in its network namespace
    alone = {"processes": [{"container": "app", **held[0]}],
             "unix_sockets": [s["ino"] for s in held[0]["unix"]]}
    [said] = preflight.problems(alone)
    assert said.startswith(f"container app: process {held[0]['comm']} (pid {parent} in the container"), said
    assert "connected to a socket outside the pod" in said


def test_the_memory_a_process_would_dump_is_its_anonymous_memory():
    # a process holding 64 MiB it wrote (and the interpreter's own few MiB)
    child = subprocess.Popen([sys.executable, "-c", "import time\nkeep = bytearray(b'x' * (64 << 20))\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        counted = node.anonymous_bytes(child.pid)
        assert 64 << 20 <= counted < 100 << 20, counted
    finally:
        child.kill()
        child.wait()
