"""The local provider, end to end: real nodes booted by the real playbooks.

Two nodes (one control plane, one worker) on a test bridge of their own, with a
state directory of their own, so a cluster built by `make demo` can keep running.
The base image cache is the project's, so it is built once per machine.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_playbook

pytestmark = pytest.mark.nodes

BRIDGE = "pmt-br0"
SUBNET = "10.213.250.0/24"
GATEWAY = "10.213.250.1"
NODES = {"pmt-cp": ("10.213.250.11", "control_plane"), "pmt-w1": ("10.213.250.21", "workers")}
# A host of our own outside the nodes' bridge: a network namespace with a
# listener, to prove the nodes cannot reach what is not on their bridge.
DECOY_NS, DECOY_HOST_IF, DECOY_HOST_IP, DECOY_IP = "pmt-decoy", "pmt-dcy0", "10.213.251.1", "10.213.251.2"


def write_inventory(path: Path, state_dir: Path, nodes: dict, **overrides) -> Path:
    groups = {"control_plane": {}, "workers": {}}
    for name, (address, group) in nodes.items():
        groups[group][name] = {"ansible_host": address}
    lines = ["all:", "  hosts:", "    localhost:", "      ansible_connection: local",
             "      ansible_python_interpreter: '{{ ansible_playbook_python }}'",
             "  vars:", "    podmigrate_provider: local", f"    podmigrate_state_dir: {state_dir}",
             f"    podmigrate_cache_dir: {ROOT / '.podmigrate' / 'cache'}",
             f"    local_nodes_bridge: {overrides.get('bridge', BRIDGE)}",
             f"    local_nodes_subnet: {overrides.get('subnet', SUBNET)}",
             f"    local_nodes_gateway: {overrides.get('gateway', GATEWAY)}",
             "  children:", "    nodes:", "      vars:",
             "        ansible_user: root", "        ansible_python_interpreter: /usr/bin/python3",
             f"        ansible_ssh_private_key_file: {state_dir}/ssh/id_ed25519",
             f"        ansible_ssh_common_args: -o UserKnownHostsFile={state_dir}/ssh/known_hosts"
             " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
             f"        ansible_control_path_dir: {state_dir}/ssh/cp",
             "      children:"]
    for group, hosts in groups.items():
        lines += [f"        {group}:", "          hosts:" if hosts else "          hosts: {}"]
        for name, hv in hosts.items():
            lines += [f"            {name}:", f"              ansible_host: {hv['ansible_host']}"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def ssh(state_dir: Path, address: str, command: str, timeout: int = 30) -> subprocess.CompletedProcess:
    """Run a command on a node over real SSH, checking the generated host key."""
    return subprocess.run(
        ["ssh", "-i", f"{state_dir}/ssh/id_ed25519", "-o", f"UserKnownHostsFile={state_dir}/ssh/known_hosts",
         "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=10", f"root@{address}", command],
        capture_output=True, text=True, timeout=timeout, check=False)


def our_processes(state_dir: Path) -> list[str]:
    """Every process on this host whose command line mentions the state directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(state_dir) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def our_mounts(state_dir: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(state_dir) in line]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def host_cgroup_mounts() -> list[str]:
    return sorted(line for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[2] in ("cgroup", "cgroup2") or line.split()[1] == "/sys/fs/cgroup")


def can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def decoy():
    """A test host of our own in a network namespace, not on the nodes' bridge."""
    cmds = [["ip", "netns", "add", DECOY_NS],
            ["ip", "link", "add", DECOY_HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", DECOY_NS],
            ["ip", "addr", "add", f"{DECOY_HOST_IP}/24", "dev", DECOY_HOST_IF],
            ["ip", "link", "set", DECOY_HOST_IF, "up"],
            ["ip", "-n", DECOY_NS, "addr", "add", f"{DECOY_IP}/24", "dev", "eth0"],
            ["ip", "-n", DECOY_NS, "link", "set", "eth0", "up"],
            ["ip", "-n", DECOY_NS, "link", "set", "lo", "up"]]
    listener = None
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", DECOY_NS, sys.executable, "-c",
             "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             f"s.bind(('{DECOY_IP}',2222))\ns.listen()\ntime.sleep(900)"])
        deadline = time.monotonic() + 10
        while not can_connect(DECOY_IP, 2222) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield DECOY_IP
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "link", "del", DECOY_HOST_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", DECOY_NS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two real nodes built by site.yml; torn down by teardown.yml whatever happens."""
    if os.geteuid() != 0:
        pytest.fail("the local-node tests need root (systemd-nspawn, bridges)")
    work = tmp_path_factory.mktemp("local-nodes")
    work.chmod(0o755)
    state = work / "state"
    inventory = write_inventory(work / "hosts.yml", state, NODES)
    cgroups_before = host_cgroup_mounts()
    first = run_playbook("site.yml", inventory)
    try:
        assert first.rc == 0, first.output[-6000:]
        yield {"state": state, "inventory": inventory, "first": first, "work": work,
               "cgroups_before": cgroups_before}
    finally:
        run_playbook("teardown.yml", inventory)


def test_site_builds_the_nodes_and_reports_changes(cluster):
    recap = cluster["first"].recap()
    assert set(recap) >= {"localhost", *NODES}
    assert recap["localhost"]["changed"] > 0
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in recap.values())


@pytest.mark.parametrize("name", sorted(NODES))
def test_ssh_into_each_node_with_the_generated_key_and_host_key(cluster, name):
    res = ssh(cluster["state"], NODES[name][0], "hostname; id -u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [name, "0"]


@pytest.mark.parametrize("name", sorted(NODES))
def test_systemd_is_pid_1_and_the_node_booted_cleanly(cluster, name):
    res = ssh(cluster["state"], NODES[name][0],
              "cat /proc/1/comm; systemctl is-system-running; . /etc/os-release; echo $VERSION_CODENAME")
    assert res.stdout.split() == ["systemd", "running", "trixie"], res.stdout + res.stderr


def test_each_node_has_its_own_identity(cluster):
    ids = {name: ssh(cluster["state"], addr, "cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
           for name, (addr, _) in NODES.items()}
    machine_ids = {v.split()[0] for v in ids.values()}
    host_keys = {v.split()[2] for v in ids.values()}
    assert len(machine_ids) == len(NODES) and len(host_keys) == len(NODES), ids


def test_cgroup_hierarchies_are_writable_inside_the_nodes_and_the_hosts_are_untouched(cluster):
    addr = NODES["pmt-w1"][0]
    res = ssh(cluster["state"], addr,
              "findmnt -rn -t cgroup -o TARGET,OPTIONS; mkdir /sys/fs/cgroup/memory/pmt-probe && "
              "rmdir /sys/fs/cgroup/memory/pmt-probe && echo created")
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("/sys/fs/cgroup/")]
    assert {r[0].rsplit("/", 1)[1] for r in rows} >= {"memory", "cpu", "pids", "devices", "freezer"}
    assert all(r[1].startswith("rw,") for r in rows), rows
    assert res.stdout.strip().endswith("created")
    assert host_cgroup_mounts() == cluster["cgroups_before"]


def test_nodes_reach_each_other_but_nothing_outside_their_bridge(cluster, decoy):
    state = cluster["state"]
    cp, w1 = NODES["pmt-cp"][0], NODES["pmt-w1"][0]
    probe = "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/{}' && echo reached || echo unreachable"
    # Positive control: the decoy's listener is up and reachable from the host.
    assert can_connect(decoy, 2222)
    assert ssh(state, cp, probe.format(w1, 22)).stdout.strip() == "reached"
    assert ssh(state, w1, probe.format(cp, 22)).stdout.strip() == "reached"
    assert ssh(state, cp, probe.format(decoy, 2222)).stdout.strip() == "unreachable"
    routes = [r.strip() for r in ssh(state, cp, "ip -4 route show").stdout.splitlines()]
    assert routes == [f"{SUBNET} dev host0 proto kernel scope link src {cp}"], routes


def test_nodes_install_packages_through_the_relay_and_reach_nothing_else_through_it(cluster):
    state, addr = cluster["state"], NODES["pmt-w1"][0]
    res = ssh(state, addr, "apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive "
              "apt-get -q -y install --no-install-recommends hello >/dev/null && hello", timeout=600)
    assert res.stdout.strip() == "Hello, world!", res.stderr[-2000:]
    probe = ("python3 -c \"import http.client as h; c = h.HTTPConnection('{}', 3142, timeout=10); "
             "c.request('GET', 'http://example.invalid/'); print(c.getresponse().status)\"")
    assert ssh(state, addr, probe.format(GATEWAY)).stdout.strip() == "403"


def test_a_second_run_changes_nothing_and_leaves_nodes_running(cluster):
    from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import list_nodes

    before = {n.name: n.pid() for n in list_nodes(str(cluster["state"]))}
    second = run_playbook("site.yml", cluster["inventory"])
    assert second.rc == 0, second.output[-4000:]
    assert second.changed() == 0, second.output[-4000:]
    assert {n.name: n.pid() for n in list_nodes(str(cluster["state"]))} == before
    assert all(before.values())


def test_status_command_shows_the_running_nodes(cluster):
    res = subprocess.run([str(ROOT / "scripts" / "podmigrate"), "nodes", "--state-dir", str(cluster["state"])],
                         capture_output=True, text=True, check=True)
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[2:]}
    assert rows == {name: "running" for name in NODES}, res.stdout


# -- bad input: refused before anything is made --------------------------------

def refused(tmp_path, nodes, expected, user=None, **overrides):
    if user is not None:  # pytest's tmp dirs are private to root
        tmp_path = Path(tempfile.mkdtemp(prefix="pmt-"))
    state = tmp_path / "state"
    inventory = write_inventory(tmp_path / "hosts.yml", state, nodes, **overrides)
    tmp_path.chmod(0o755)
    try:
        run = run_playbook("site.yml", inventory, user=user)
        state_made = state.exists()
    finally:
        if user is not None:
            shutil.rmtree(tmp_path)
    assert run.rc != 0
    assert expected in run.output, run.output[-3000:]
    assert not state_made, "a refused run must not create anything"
    if "bridge" in overrides:
        assert not link_exists(overrides["bridge"])


def test_zero_nodes_is_refused(tmp_path):
    refused(tmp_path, {}, "no nodes requested", bridge="pmt-bad0")


def test_subnet_already_in_use_on_the_host_is_refused(tmp_path, cluster):
    nodes = {"pmt-x1": ("10.213.250.31", "control_plane")}
    refused(tmp_path, nodes, f"subnet {SUBNET} is already in use on this host", bridge="pmt-bad1")


def test_a_name_clash_with_a_running_machine_is_refused(tmp_path, cluster):
    net = ipaddress.ip_network("10.213.252.0/24")
    nodes = {"pmt-w1": (str(net[21]), "control_plane")}
    refused(tmp_path, nodes, "node name pmt-w1 clashes with a machine already running",
            bridge="pmt-bad2", subnet=str(net), gateway=str(net[1]))


def test_missing_privileges_are_refused(tmp_path):
    nodes = {"pmt-x1": ("10.213.253.11", "control_plane")}
    refused(tmp_path, nodes, "the local provider must run as root", user=65534,
            bridge="pmt-bad3", subnet="10.213.253.0/24", gateway="10.213.253.1")


# -- teardown: last, on the same cluster ---------------------------------------

def test_teardown_leaves_no_process_mount_bridge_or_file_of_ours(cluster):
    state = cluster["state"]
    assert our_processes(state), "the nodes should be running before teardown"
    run = run_playbook("teardown.yml", cluster["inventory"])
    assert run.rc == 0, run.output[-4000:]
    assert our_processes(state) == []
    assert our_mounts(state) == []
    assert not link_exists(BRIDGE)
    assert not any(link_exists(f"vb-{name}") for name in NODES)
    assert sorted(os.listdir(state)) == []
    again = run_playbook("teardown.yml", cluster["inventory"])
    assert again.rc == 0 and again.changed() == 0, again.output[-3000:]
