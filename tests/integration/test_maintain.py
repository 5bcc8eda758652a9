"""Rolling maintenance by migration on the local cluster: maintain.yml reboots the workers
one at a time, each drained by migration first. These tests reboot the nodes: they run
after every other test of the session (conftest.py, marker ``reboots``)."""

from __future__ import annotations

import json
import time

import pytest
from helpers import run_playbook
from kubernetes import client, config
from kubernetes.stream import stream

from integration.nodes import node_run
from integration.test_migrate import WORKERS, busybox_on, compute_job, computed

pytestmark = [pytest.mark.nodes, pytest.mark.reboots]


@pytest.fixture(scope="module")
def api(cluster):
    return client.CoreV1Api(config.new_client_from_config(str(cluster["state"] / "kubeconfig")))


def booted(cluster, node):
    """When the node's PID 1 started (clock ticks since the host booted): a reboot changes it."""
    return int(node_run(cluster, node, "cut -d' ' -f22 /proc/1/stat").strip())


def test_a_rolling_reboot_of_the_workers_moves_a_running_job_twice_and_it_ends_with_the_right_result(
        api, cluster, tmp_path):
    """A Job computing in memory on the first worker while maintain.yml reboots both
    workers: its pod moves off each before its reboot, and the Job completes with the
    result of an undisturbed run, counting no failure (its work is sped up once the roll
    is done: a file in the container, which changes when it ends, not what it computes)."""
    batch = client.BatchV1Api(api.api_client)
    w1, w2 = WORKERS
    image = "localhost/podmigrate/busybox:maintained"
    busybox_on(cluster, w1, image, tmp_path)
    steps = 6000  # five minutes at 50 ms a step: longer than the roll
    batch.create_namespaced_job("default", compute_job("maintained", w1, image, steps=steps))
    try:
        deadline = time.monotonic() + 60
        while True:
            pods = api.list_namespaced_pod("default", label_selector="job-name=maintained").items
            if pods and pods[0].status.phase == "Running":
                break
            assert time.monotonic() < deadline, [(p.metadata.name, p.status.phase) for p in pods]
            time.sleep(0.2)
        original = pods[0].metadata.name
        boots = {node: booted(cluster, node) for node in WORKERS}
        reports = cluster["state"] / "reports"
        before = set(reports.glob("*.json"))

        run = run_playbook("maintain.yml", cluster["inventory"], extra_vars={"task": "reboot"})
        assert run.rc == 0, run.output[-5000:]

        assert all(booted(cluster, node) != boots[node] for node in WORKERS), "a worker was not rebooted"
        nodes = {n.metadata.name: n for n in api.list_node().items}
        assert not any(nodes[w].spec.unschedulable for w in WORKERS), "a worker was left cordoned"
        pods = api.list_namespaced_pod("default", label_selector="job-name=maintained").items
        assert len(pods) == 1 and pods[0].status.phase == "Running", [(p.metadata.name, p.status.phase) for p in pods]
        now = pods[0]
        assert (now.metadata.annotations or {}).get("podmigrate.io/migrated-from") == original
        # moved off each worker before its reboot: twice, and never started afresh
        moves = [json.loads(p.read_text()) for p in set(reports.glob("*.json")) - before]
        mine = [m for m in moves if m["pod"].startswith(f"default/{original}")]
        assert sorted((m["source"], m["target"], m["result"]) for m in mine) == \
            sorted([(w1, w2, "migrated"), (w2, w1, "migrated")]), mine
        print(f"\nrolling reboot: the Job's pod frozen {[m['frozen_seconds'] for m in mine]} s")

        stream(api.connect_get_namespaced_pod_exec, now.metadata.name, "default",
               command=["/bin/sh", "-c", ": > /tmp/fast"], stderr=True, stdout=True)
        deadline = time.monotonic() + 120
        job = batch.read_namespaced_job("maintained", "default")
        while not job.status.succeeded:
            assert not job.status.failed, f"the Job counted a failure: {job.status}"
            assert time.monotonic() < deadline, job.status
            time.sleep(1)
            job = batch.read_namespaced_job("maintained", "default")
        assert not job.status.failed and job.status.succeeded == 1, job.status
        done = api.read_namespaced_pod(now.metadata.name, "default")
        assert done.status.container_statuses[0].state.terminated.message.strip() == computed(0, steps)
    finally:
        batch.delete_namespaced_job("maintained", "default", propagation_policy="Foreground")
        deadline = time.monotonic() + 60
        while api.list_namespaced_pod("default", label_selector="job-name=maintained").items and \
                time.monotonic() < deadline:
            time.sleep(0.5)


def test_a_maintenance_a_local_node_cannot_have_is_refused_before_any_node_is_touched(api, cluster):
    run = run_playbook("maintain.yml", cluster["inventory"], extra_vars={"task": "kernel", "kernel_version": "6.1.0"})
    assert run.rc != 0
    assert "a local node shares this machine's kernel" in run.output, run.output[-3000:]
    assert not any(n.spec.unschedulable for n in api.list_node().items)
