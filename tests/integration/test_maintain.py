"""Rolling maintenance by migration on the local cluster: maintain.yml reboots the workers
one at a time, each drained by migration first. These tests reboot the nodes: they run
after every other test of the session (conftest.py, marker ``reboots``)."""

from __future__ import annotations

import json
import time

import pytest
from helpers import run_playbook
from kubernetes import client, config

from integration.nodes import node_run
from integration.test_drain import deployment
from integration.test_migrate import WORKERS, ask, counter_pod

pytestmark = [pytest.mark.nodes, pytest.mark.reboots]


@pytest.fixture(scope="module")
def api(cluster):
    return client.CoreV1Api(config.new_client_from_config(str(cluster["state"] / "kubeconfig")))


def booted(cluster, node):
    """When the node's PID 1 started (clock ticks since the host booted): a reboot changes it."""
    return int(node_run(cluster, node, "cut -d' ' -f22 /proc/1/stat").strip())


def test_a_rolling_reboot_of_the_workers_moves_a_deployments_counter_twice_and_it_counts_on(api, cluster):
    apps = client.AppsV1Api(api.api_client)
    w1, w2 = WORKERS
    apps.create_namespaced_deployment("default", deployment(
        "kept", 1, counter_pod("kept", None, node_selector={"kubernetes.io/hostname": w1})))
    try:
        deadline = time.monotonic() + 120
        while (apps.read_namespaced_deployment_status("kept", "default").status.ready_replicas or 0) < 1:
            assert time.monotonic() < deadline, "the Deployment's pod never got ready"
            time.sleep(0.5)
        pod = api.list_namespaced_pod("default", label_selector="app=kept").items[0]
        original, url = pod.metadata.name, f"http://{pod.status.pod_ip}:8080"
        count, checksum = int(ask(cluster, url + "/")), ask(cluster, url + "/checksum")
        boots = {node: booted(cluster, node) for node in WORKERS}
        reports = cluster["state"] / "reports"
        before = set(reports.glob("*.json"))

        run = run_playbook("maintain.yml", cluster["inventory"], extra_vars={"task": "reboot"})
        assert run.rc == 0, run.output[-5000:]

        assert all(booted(cluster, node) != boots[node] for node in WORKERS), "a worker was not rebooted"
        nodes = {n.metadata.name: n for n in api.list_node().items}
        assert not any(nodes[w].spec.unschedulable for w in WORKERS), "a worker was left cordoned"
        pods = api.list_namespaced_pod("default", label_selector="app=kept").items
        assert len(pods) == 1, [p.metadata.name for p in pods]
        now = pods[0]
        assert (now.metadata.annotations or {}).get("podmigrate.io/migrated-from") == original
        url = f"http://{now.status.pod_ip}:8080"
        assert int(ask(cluster, url + "/")) > count, "the counter started again instead of going on"
        assert ask(cluster, url + "/checksum") == checksum
        # moved off each worker before its reboot: twice, and never started afresh
        moves = [json.loads(p.read_text()) for p in set(reports.glob("*.json")) - before]
        mine = [m for m in moves if m["pod"].startswith(f"default/{original}")]
        assert sorted((m["source"], m["target"], m["result"]) for m in mine) == \
            sorted([(w1, w2, "migrated"), (w2, w1, "migrated")]), mine
        print(f"\nrolling reboot: the Deployment's pod frozen {[m['frozen_seconds'] for m in mine]} s")
        status = apps.read_namespaced_deployment_status("kept", "default").status
        assert status.ready_replicas == 1
    finally:
        apps.delete_namespaced_deployment("kept", "default", propagation_policy="Foreground")
        deadline = time.monotonic() + 60
        while api.list_namespaced_pod("default", label_selector="app=kept").items and time.monotonic() < deadline:
            time.sleep(0.5)


def test_a_maintenance_a_local_node_cannot_have_is_refused_before_any_node_is_touched(api, cluster):
    run = run_playbook("maintain.yml", cluster["inventory"], extra_vars={"task": "kernel", "kernel_version": "6.1.0"})
    assert run.rc != 0
    assert "a local node shares this machine's kernel" in run.output, run.output[-3000:]
    assert not any(n.spec.unschedulable for n in api.list_node().items)
