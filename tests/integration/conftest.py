"""Fixtures of the integration tests: one real cluster of local nodes for the session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_playbook

from integration.nodes import (
    BRIDGE,
    DECOY_HOST_IF,
    DECOY_HOST_IP,
    DECOY_IP,
    DECOY_NS,
    NODES,
    can_connect,
    host_cgroup_mounts,
    link_exists,
    our_cgroups,
    our_mounts,
    our_processes,
    write_inventory,
)


def pytest_collection_modifyitems(items):
    """The tests that reboot the nodes (marker ``reboots``) run last: every other test sees
    the nodes as site.yml left them."""
    items.sort(key=lambda item: item.get_closest_marker("reboots") is not None)


@pytest.fixture(scope="session")
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
    # a run killed before its clean-up left ours behind (the names are the tests' own)
    subprocess.run(["ip", "link", "del", DECOY_HOST_IF], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", DECOY_NS], capture_output=True, check=False)
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Two real nodes built by site.yml; torn down by teardown.yml, which must leave nothing."""
    if os.geteuid() != 0:
        pytest.fail("the local-node tests need root (systemd-nspawn, bridges)")
    kept = os.environ.get("PODMIGRATE_TEST_CLUSTER")
    if kept:  # a developer's cluster, built, updated and torn down by hand (docs/testing.md); never in CI
        work = Path(kept)
        yield {"state": work / "state", "inventory": work / "hosts.yml", "first": None, "work": work,
               "cgroups_before": host_cgroup_mounts()}
        return
    work = tmp_path_factory.mktemp("local-nodes")
    work.chmod(0o755)
    state = work / "state"
    inventory = write_inventory(work / "hosts.yml", state, NODES)
    cgroups_before = host_cgroup_mounts()
    first = run_playbook("site.yml", inventory)
    torn_down = False
    try:
        assert first.rc == 0, first.output[-6000:]
        assert our_processes(state), "the nodes should be running"
        yield {"state": state, "inventory": inventory, "first": first, "work": work,
               "cgroups_before": cgroups_before}
        run = run_playbook("teardown.yml", inventory)
        torn_down = True
        assert run.rc == 0, run.output[-4000:]
        assert_nothing_left(state)
        again = run_playbook("teardown.yml", inventory)
        assert again.rc == 0 and again.changed() == 0, again.output[-3000:]
    finally:
        if not torn_down:
            run_playbook("teardown.yml", inventory)


def assert_nothing_left(state: Path):
    """Teardown leaves no process, mount, cgroup, bridge, veth or file of ours."""
    assert our_processes(state) == []
    assert our_cgroups(NODES) == []
    assert our_mounts(state) == []
    assert not link_exists(BRIDGE)
    assert not any(link_exists(f"vb-{name}") for name in NODES)
    assert sorted(os.listdir(state)) == []
