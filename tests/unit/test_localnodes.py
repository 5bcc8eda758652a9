"""Unit tests of the local provider's pure parts (no nodes booted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils import localnodes as ln

SUBNET, GW, BR = "10.213.0.0/24", "10.213.0.1", "pm-br0"


def node(name, address, groups=("workers",), root=None):
    return {"name": name, "address": address, "groups": list(groups), "root": root or f"/s/nodes/{name}/rootfs"}


def good_nodes():
    return [node("cp1", "10.213.0.11", ["control_plane", "nodes"]), node("w1", "10.213.0.21")]


def check(nodes=None, subnet=SUBNET, gateway=GW, bridge=BR, routes=(), running=()):
    return ln.validate(good_nodes() if nodes is None else nodes, subnet, gateway, bridge,
                       list(routes), list(running))


def test_valid_request_has_no_errors():
    assert check() == []


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"nodes": []}, "no nodes requested"),
    ({"nodes": [node("w1", "10.213.0.21")]}, "no node in the control_plane group"),
    ({"nodes": [node("cp1", "10.213.0.11", ["control_plane", "workers"])]}, "in both control_plane and workers"),
    ({"nodes": [node("Bad_Name", "10.213.0.11", ["control_plane"])]}, "is not valid"),
    ({"nodes": [node("averyveryverylongname", "10.213.0.11", ["control_plane"])]}, "is not valid"),
    ({"nodes": [node("cp1", "10.99.0.11", ["control_plane"])]}, "is not a host address in"),
    ({"nodes": [node("cp1", "10.213.0.255", ["control_plane"])]}, "is not a host address in"),
    ({"nodes": [node("cp1", "not-an-ip", ["control_plane"])]}, "is not an IP address"),
    ({"nodes": [node("cp1", "10.213.0.1", ["control_plane"])]}, "already used by the host's bridge address"),
    ({"nodes": [node("cp1", "10.213.0.11", ["control_plane"]), node("w1", "10.213.0.11")]}, "already used by node cp1"),
    ({"subnet": "10.213.0.1/24"}, "is not a network"),
    ({"gateway": "10.99.0.1"}, "is not a host address in"),
    ({"bridge": "a-bridge-name-too-long"}, "not a valid interface name"),
    ({"routes": [{"dst": "10.213.0.0/16", "dev": "eth7"}]}, "already in use on this host"),
    ({"running": [{"pid": 42, "machine": "w1", "root": "/other/w1/rootfs"}]}, "clashes with a machine already running"),
])
def test_each_bad_request_is_refused_with_a_clear_message(kwargs, expected):
    errors = check(**kwargs)
    assert any(expected in e for e in errors), errors


def test_all_problems_are_reported_at_once():
    errors = check(nodes=[node("w1", "10.99.0.1")], bridge="x" * 16)
    assert len(errors) == 3, errors


def test_routes_of_our_own_bridge_or_other_subnets_are_fine():
    routes = [{"dst": "10.213.0.0/24", "dev": BR}, {"dst": "default", "dev": "eth0"},
              {"dst": "192.0.2.0/24", "dev": "eth0"}, {"dst": "fd00::/64", "dev": "eth0"}]
    assert check(routes=routes) == []


def test_our_own_running_node_is_not_a_clash():
    assert check(running=[{"pid": 42, "machine": "w1", "root": "/s/nodes/w1/rootfs"}]) == []


def test_nspawn_argv_round_trips_through_the_parser():
    argv = ln.nspawn_argv("w1", "/s/nodes/w1/rootfs", BR)
    assert ln.parse_nspawn_argv(argv) == {"machine": "w1", "root": "/s/nodes/w1/rootfs"}
    assert argv[argv.index("--network-bridge") + 1] == BR
    assert "--boot" in argv
    assert "--register=no" in argv
    assert argv[-1] == "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"


def test_parse_nspawn_argv_accepts_the_equals_forms():
    assert ln.parse_nspawn_argv(["systemd-nspawn", "-D", "/r", "--machine=m1", "--", "-M", "x"]) == {
        "machine": "m1", "root": "/r"}


def test_nspawn_env_turns_off_seccomp_and_makes_api_vfs_writable():
    env = ln.nspawn_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "SYSTEMD_SECCOMP": "0", "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"}


@pytest.mark.parametrize(("texts", "expected"), [
    (["Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n"
      "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"],
     "http://mirror.example/debian"),
    (["deb http://security.example/debian-security bookworm-security main\n"
      "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"],
     "http://mirror.example/debian"),
    (["# nothing\n"], None),
])
def test_detect_debian_mirror(texts, expected):
    assert ln.detect_debian_mirror(texts) == expected


def test_a_node_whose_pidfile_names_another_process_is_not_running(tmp_path):
    # A stale pid file must never make us signal or nsenter an unrelated process.
    node_dir = tmp_path / "n1"
    node_dir.mkdir()
    (node_dir / "nspawn.pid").write_text(json.dumps({"pid": os.getpid(), "argv": ln.proc_cmdline(os.getpid())}))
    n = ln.Node("n1", str(node_dir))
    assert n.pid() is None
    assert n.status()["state"] == "stopped"
    assert n.stop() is False


def test_a_process_named_systemd_nspawn_for_another_root_is_not_our_node(tmp_path):
    # A real process whose argv looks like another node's nspawn (same name, other root).
    proc = subprocess.Popen(["systemd-nspawn", "-c", "import time; time.sleep(30)", "-D", "/elsewhere", "-M", "n1"],
                            executable=sys.executable)
    try:
        deadline = time.monotonic() + 5
        while ln.proc_cmdline(proc.pid)[:1] != ["systemd-nspawn"] and time.monotonic() < deadline:
            time.sleep(0.05)
        node_dir = tmp_path / "n1"
        node_dir.mkdir()
        (node_dir / "nspawn.pid").write_text(json.dumps({"pid": proc.pid, "argv": ln.proc_cmdline(proc.pid)}))
        assert ln.Node("n1", str(node_dir)).pid() is None
        found = [p for p in ln.nspawn_processes() if p["pid"] == proc.pid]
        assert found == [{"pid": proc.pid, "machine": "n1", "root": "/elsewhere"}]
    finally:
        proc.kill()
        proc.wait()


def test_start_refuses_a_node_without_a_root_filesystem(tmp_path):
    with pytest.raises(ln.NodeError, match="no root filesystem"):
        ln.Node("n1", str(tmp_path / "n1"), "br").start()


def test_daemon_runs_detached_restarts_on_a_new_command_line_and_stops(tmp_path):
    pidfile = str(tmp_path / "d.pid")
    first = ln.Daemon(pidfile, ["sleep", "300"])
    assert first.start() is True
    pid = first.pid()
    assert pid and ln.proc_cmdline(pid) == ["sleep", "300"]
    assert first.start() is False and first.pid() == pid
    second = ln.Daemon(pidfile, ["sleep", "301"])
    assert second.running_as_wanted() is False
    assert second.start() is True
    assert second.pid() != pid and ln.proc_cmdline(pid) != ["sleep", "300"]
    # Stopping needs no command line: the pid file records it.
    assert ln.Daemon(pidfile).stop() is True
    assert ln.Daemon(pidfile).pid() is None
    assert ln.Daemon(pidfile).stop() is False


def test_a_daemon_pid_file_does_not_claim_a_process_with_another_command_line(tmp_path):
    pidfile = tmp_path / "d.pid"
    pidfile.write_text(json.dumps({"pid": os.getpid(), "argv": ["sleep", "300"]}))
    assert ln.Daemon(str(pidfile)).pid() is None
    assert ln.Daemon(str(pidfile)).stop() is False


def test_a_daemon_that_exits_at_once_is_reported_with_its_log(tmp_path):
    with pytest.raises(ln.NodeError, match=r"(?s)did not start \(exit 3\).*cannot bind"):
        ln.Daemon(str(tmp_path / "d.pid"), ["sh", "-c", "echo cannot bind >&2; sleep 0.05; exit 3"]).start()
