"""Unit tests of the local provider's pure parts (no nodes booted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


# /proc/self/mountinfo and /proc/self/cgroup as read on this kind of host (cgroup v1, hybrid).
HOST_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/elsewhere rw,relatime - cgroup cgroup rw,pids
"""
HOST_CGROUP = """\
9:name=systemd:/
5:devices:/
4:memory:/process_api/7100
3:cpuset:/
1:cpu:/
8:pids:/
0::/
"""


def test_a_nodes_cgroups_are_children_of_ours_in_every_hierarchy_under_sys_fs_cgroup():
    base = ln.cgroup_dirs(HOST_MOUNTINFO, HOST_CGROUP)
    assert base == sorted(["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/memory/process_api/7100",
                           "/sys/fs/cgroup/devices", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"])
    assert ln.node_cgroups("w1", base)[0] == "/sys/fs/cgroup/cpu/podmigrate-w1"


def test_cgroup_dirs_follow_a_mount_of_a_subtree_and_joined_controllers():
    # as inside a node: memory mounted at our own cgroup; cpu and cpuacct in one hierarchy
    mountinfo = ("1 0 0:1 /process_api/7100 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                 "2 0 0:2 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n"
                 "3 0 0:3 /other /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n")
    cgroup = "4:memory:/process_api/7100/sub\n1:cpu,cpuacct:/a\n8:pids:/\n"
    assert ln.cgroup_dirs(mountinfo, cgroup) == ["/sys/fs/cgroup/cpu,cpuacct/a", "/sys/fs/cgroup/memory/sub"]


def test_on_a_cgroup_v2_host_the_node_cgroup_is_a_child_of_ours_in_the_one_hierarchy():
    mountinfo = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert ln.cgroup_dirs(mountinfo, "0::/user.slice/session-1.scope\n") == [
        "/sys/fs/cgroup/user.slice/session-1.scope"]


def test_a_new_cpuset_gets_its_parents_cpus_and_memory_nodes(tmp_path):
    (tmp_path / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset.mems").write_text("0\n")
    child = tmp_path / "podmigrate-w1"
    child.mkdir()  # the kernel makes a new cpuset's files, empty
    (child / "cpuset.cpus").write_text("")
    (child / "cpuset.mems").write_text("")
    ln.make_cgroups([str(child), str(tmp_path / "podmigrate-w2")])
    assert (child / "cpuset.cpus").read_text() == "0-1\n" and (child / "cpuset.mems").read_text() == "0\n"
    assert (tmp_path / "podmigrate-w2").is_dir()


def test_removing_a_nodes_cgroups_takes_the_deepest_first_and_names_one_that_stays(tmp_path):
    (tmp_path / "n1" / "kubepods" / "burstable" / "pod1").mkdir(parents=True)
    ln.remove_cgroups([str(tmp_path / "n1")])
    assert not (tmp_path / "n1").exists()
    (tmp_path / "n2" / "busy").mkdir(parents=True)
    (tmp_path / "n2" / "busy" / "f").write_text("")  # rmdir fails, as on a cgroup with processes
    with pytest.raises(ln.NodeError, match="n2/busy"):
        ln.remove_cgroups([str(tmp_path / "n2")], timeout=0.5)


def test_a_process_started_with_the_joiner_runs_in_the_nodes_cgroups_on_this_host():
    if os.geteuid() != 0:
        pytest.skip("needs root: it makes cgroups")
    base = ln.own_cgroup_dirs()
    assert base and all(os.path.isdir(d) for d in base)
    dirs = ln.node_cgroups(f"unit{os.getpid()}", base)
    ln.make_cgroups(dirs)
    try:
        proc = subprocess.Popen(["sleep", "30"], preexec_fn=ln.joiner(dirs))
        try:
            with open(f"/proc/{proc.pid}/cgroup") as f:
                paths = [line.split(":", 2)[2] for line in f.read().splitlines()]
            assert len(paths) == len(dirs) and all(p.endswith(f"/podmigrate-unit{os.getpid()}") for p in paths), paths
        finally:
            proc.kill()
            proc.wait()
    finally:
        ln.remove_cgroups(dirs)
    assert not any(os.path.exists(d) for d in dirs)


def test_a_stopped_nodes_frozen_processes_are_thawed_and_killed_so_its_cgroups_go(tmp_path):
    # as a migration whose controller died leaves a source: its processes frozen in a
    # freezer cgroup below the node's (here below one of this test's own, in the real hierarchy)
    [freezer] = [d for d in ln.own_cgroup_dirs() if os.path.basename(d) == "freezer"]
    top = ln.node_cgroups(f"unit-{os.getpid()}", [freezer])
    frozen = os.path.join(top[0], "kubepods", "pod")
    os.makedirs(frozen)
    sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=ln.joiner([frozen]))
    try:
        with open(os.path.join(frozen, "freezer.state"), "w") as f:
            f.write("FROZEN")
        deadline = time.monotonic() + 5
        while Path(frozen, "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sleeper.kill()  # a frozen process does not act on it until thawed
        time.sleep(0.2)
        assert sleeper.poll() is None
        ln.remove_cgroups(top, timeout=5)
        assert not os.path.exists(top[0])
        assert sleeper.wait(timeout=5) == -9
    finally:
        if sleeper.poll() is None:
            with open(os.path.join(frozen, "freezer.state"), "w") as f:
                f.write("THAWED")
            sleeper.kill()
            sleeper.wait()
        for path in (frozen, os.path.dirname(frozen), top[0]):
            if os.path.isdir(path):
                os.rmdir(path)
