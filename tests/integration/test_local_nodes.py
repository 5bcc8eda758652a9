"""The local provider, end to end: real nodes booted by the real playbooks (see conftest.py)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils import localnodes
from helpers import ROOT, run_playbook

from integration.nodes import (
    GATEWAY,
    NODES,
    SUBNET,
    can_connect,
    host_cgroup_mounts,
    link_exists,
    ssh,
    write_inventory,
)

pytestmark = pytest.mark.nodes


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


def test_each_node_has_a_cgroup_tree_of_its_own(cluster):
    # As a VM: a cgroup made in one node is neither at the host's root nor seen by another node.
    made = ssh(cluster["state"], NODES["pmt-w1"][0], "mkdir /sys/fs/cgroup/devices/pmt-own && echo made")
    try:
        assert made.stdout.strip() == "made", made.stderr
        other = ssh(cluster["state"], NODES["pmt-w2"][0], "ls /sys/fs/cgroup/devices/")
        assert "pmt-own" not in other.stdout.split()
        devices = next(d for d in localnodes.own_cgroup_dirs() if d.startswith("/sys/fs/cgroup/devices"))
        assert not os.path.exists(f"{devices}/pmt-own")
        assert os.path.isdir(f"{devices}/podmigrate-pmt-w1/pmt-own")
    finally:
        ssh(cluster["state"], NODES["pmt-w1"][0], "rmdir /sys/fs/cgroup/devices/pmt-own")


def test_host_wide_kernel_settings_are_shadowed_inside_the_nodes(cluster):
    paths = [Path("/proc/sys/kernel/panic"), Path("/proc/sys/vm/overcommit_memory")]
    host_before = [p.read_text() for p in paths]
    try:
        res = ssh(cluster["state"], NODES["pmt-w1"][0],
                  "cat /proc/sys/kernel/panic /proc/sys/vm/overcommit_memory; "
                  "echo 10 > /proc/sys/kernel/panic && sysctl -q -w vm.overcommit_memory=1 && echo written")
        assert res.stdout.split() == ["10", "1", "written"], res.stdout + res.stderr
        assert [p.read_text() for p in paths] == host_before
    finally:  # should the shadow ever fail, put the host's own values back
        for path, value in zip(paths, host_before, strict=True):
            if path.read_text() != value:
                path.write_text(value)


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
    assert f"{SUBNET} dev host0 proto kernel scope link src {cp}" in routes, routes
    # Besides the bridge's subnet, only the pod network's routes (to the other nodes' pods
    # through them, and this node's own pod bridge) and the Service network on loopback
    # (kube-proxy rewrites it before it leaves): no default route, nothing beyond.
    pods = ipaddress.ip_network("10.244.0.0/16")
    assert "10.96.0.0/12 dev lo scope link" in routes, routes
    others = [r for r in routes if not r.startswith((f"{SUBNET} ", "10.96.0.0/12 dev lo "))]
    assert others and all(ipaddress.ip_network(r.split()[0]).subnet_of(pods) for r in others), routes
    assert all(ipaddress.ip_address(r.split()[2]) in ipaddress.ip_network(SUBNET)
               for r in others if " via " in r), routes


def test_nodes_install_packages_through_the_relay_and_reach_nothing_else_through_it(cluster):
    state, addr = cluster["state"], NODES["pmt-w1"][0]
    res = ssh(state, addr, "apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive "
              "apt-get -q -y install --no-install-recommends hello >/dev/null && hello", timeout=600)
    assert res.stdout.strip() == "Hello, world!", res.stderr[-2000:]
    # the relay kept the package it fetched, and another node gets it from there
    kept = list((ROOT / ".podmigrate" / "cache" / "apt").glob("*/**/hello_*.deb"))
    assert len(kept) == 1, kept
    uri = ssh(state, NODES["pmt-w2"][0], "apt-get -q update >/dev/null && apt-get -q --print-uris download hello",
              timeout=600).stdout.split()[0].strip("'")
    assert uri.endswith("/" + kept[0].name), uri
    ask = ("python3 -c \"import http.client as h; c = h.HTTPConnection('{}', 3142, timeout=30); "
           "c.request('GET', '{}'); r = c.getresponse(); print(r.getheader('X-Podmigrate-Relay'), len(r.read()))\"")
    assert ssh(state, NODES["pmt-w2"][0], ask.format(GATEWAY, uri)).stdout.split() == [
        "cached", str(kept[0].stat().st_size)]
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
