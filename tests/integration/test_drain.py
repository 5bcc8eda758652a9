"""Draining a node by migration on the local cluster: drain.yml, podmigrate drain."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_playbook
from kubernetes import client, config
from kubernetes.stream import stream

from integration.test_migrate import (
    LAZY_PIPE,
    WORKERS,
    ask,
    busybox_on,
    compute_job,
    computed,
    counter_pod,
    delete_pod,
    leftovers,
    pipe_max_size,
    wait_ready,
)

pytestmark = pytest.mark.nodes


@pytest.fixture(scope="module")
def api(cluster):
    return client.CoreV1Api(config.new_client_from_config(str(cluster["state"] / "kubeconfig")))


def deployment(name, replicas, pod):
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(replicas=replicas, selector=client.V1LabelSelector(match_labels={"app": name}),
                                     template=client.V1PodTemplateSpec(metadata=pod.metadata, spec=pod.spec)))


def on_node(api, node, app):
    return sorted(p.metadata.name for p in api.list_namespaced_pod("default", label_selector=f"app={app}").items
                  if p.spec.node_name == node and p.metadata.deletion_timestamp is None)


def cli_drain(cluster, node, *options):
    """``podmigrate drain NODE --json [OPTIONS]``: (exit code, its JSON answer)."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "podmigrate"), "drain", node,
                          "-i", str(cluster["inventory"]), "--json", *options],
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.stdout.strip(), run.stderr[-3000:]
    return run.returncode, json.loads(run.stdout)


JOB_STEPS = 2400  # two minutes at 50 ms a step: longer than the drain


@pytest.fixture
def workloads(api, cluster, tmp_path):
    """On the first worker: a Deployment of two counters, a StatefulSet's counter, a bare
    counter, an indexed Job computing in memory, a DaemonSet's pod, and three pods that
    cannot move (a hostPath): a Deployment's, one a PodDisruptionBudget protects, and a
    bare one."""
    w1 = WORKERS[0]
    apps, policy = client.AppsV1Api(api.api_client), client.PolicyV1Api(api.api_client)
    batch = client.BatchV1Api(api.api_client)
    image = "localhost/podmigrate/busybox:drained"
    busybox_on(cluster, w1, image, tmp_path)
    batch.create_namespaced_job("default", compute_job("drain-job", w1, image, steps=JOB_STEPS, completions=1,
                                                       parallelism=1, completion_mode="Indexed"))
    web = counter_pod("drain-web", None, labels={"app": "drain-web"}, node_selector={"kubernetes.io/hostname": w1})
    apps.create_namespaced_stateful_set("default", client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="drain-web"),
        spec=client.V1StatefulSetSpec(service_name="drain-web", replicas=1,
                                      selector=client.V1LabelSelector(match_labels={"app": "drain-web"}),
                                      template=client.V1PodTemplateSpec(metadata=web.metadata, spec=web.spec))))
    pin = {"kubernetes.io/hostname": w1}
    host = {"volumes": [client.V1Volume(name="host", host_path=client.V1HostPathVolumeSource(path="/tmp"))],
            "volume_mounts": [client.V1VolumeMount(name="host", mount_path="/host")]}
    apps.create_namespaced_deployment("default", deployment(
        "drain-app", 2, counter_pod("drain-app", None, labels={"app": "drain-app"}, node_selector=pin)))
    apps.create_namespaced_deployment("default", deployment(
        "drain-evictable", 1, counter_pod("drain-evictable", None, memory_mib=0, node_selector=pin, **host)))
    apps.create_namespaced_deployment("default", deployment(
        "drain-guarded", 1, counter_pod("drain-guarded", None, memory_mib=0, node_selector=pin, **host)))
    policy.create_namespaced_pod_disruption_budget("default", client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="drain-guarded"),
        spec=client.V1PodDisruptionBudgetSpec(min_available=1, selector=client.V1LabelSelector(
            match_labels={"app": "drain-guarded"}))))
    agent = counter_pod("drain-agent", None, memory_mib=0)
    apps.create_namespaced_daemon_set("default", client.V1DaemonSet(
        metadata=client.V1ObjectMeta(name="drain-agent"),
        spec=client.V1DaemonSetSpec(selector=client.V1LabelSelector(match_labels={"app": "drain-agent"}),
                                    template=client.V1PodTemplateSpec(metadata=agent.metadata, spec=agent.spec))))
    api.create_namespaced_pod("default", counter_pod("drain-bare", w1))
    api.create_namespaced_pod("default", counter_pod("drain-stuck", w1, memory_mib=0, **host))
    apps_names = ("drain-app", "drain-evictable", "drain-guarded")
    try:
        deadline = time.monotonic() + 180
        for app, count in (("app=drain-app", 2), ("app=drain-evictable", 1), ("app=drain-guarded", 1),
                           ("app=drain-agent", 1), ("app=drain-web", 1), ("job-name=drain-job", 1)):
            while len([p for p in api.list_namespaced_pod("default", label_selector=app).items
                       if p.spec.node_name == w1 and p.status.phase == "Running"
                       and all(s.ready for s in p.status.container_statuses or [False])]) < count:
                assert time.monotonic() < deadline, f"{app} never got ready on {w1}"
                time.sleep(0.5)
        for name in ("drain-bare", "drain-stuck"):
            wait_ready(api, name)
        yield apps
    finally:
        api.patch_node(w1, {"spec": {"unschedulable": None}})
        for name in apps_names:
            apps.delete_namespaced_deployment(name, "default", propagation_policy="Foreground")
        apps.delete_namespaced_daemon_set("drain-agent", "default", propagation_policy="Foreground")
        apps.delete_namespaced_stateful_set("drain-web", "default", propagation_policy="Foreground")
        batch.delete_namespaced_job("drain-job", "default", propagation_policy="Foreground")
        try:
            policy.delete_namespaced_pod_disruption_budget("drain-guarded", "default")
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        for pod in api.list_namespaced_pod("default").items:
            if (pod.metadata.labels or {}).get("app") in ("drain-bare", "drain-stuck") or \
                    (pod.metadata.annotations or {}).get("podmigrate.io/migrated-from", "").startswith("drain-"):
                delete_pod(api, pod.metadata.name)
        deadline = time.monotonic() + 90
        while any((p.metadata.labels or {}).get("app", "").startswith("drain-")
                  or (p.metadata.labels or {}).get("job-name") == "drain-job"
                  for p in api.list_namespaced_pod("default").items) and time.monotonic() < deadline:
            time.sleep(0.5)


def test_a_worker_is_drained_by_migration_its_counters_go_on_and_a_second_drain_changes_nothing(
        api, cluster, workloads):
    w1, w2 = WORKERS
    apps = workloads
    batch = client.BatchV1Api(api.api_client)
    before = {}
    for pod in api.list_namespaced_pod("default", label_selector="app in (drain-app, drain-bare, drain-web)").items:
        url = f"http://{pod.status.pod_ip}:8080"
        before[pod.metadata.name] = (int(ask(cluster, url + "/")), ask(cluster, url + "/checksum"))
    app_pods = set(on_node(api, w1, "drain-app"))
    cluster_pods = [p.metadata.name for p in api.list_namespaced_pod("kube-system",
                                                                     field_selector=f"spec.nodeName={w1}").items
                    if not any(o.kind == "DaemonSet" for o in p.metadata.owner_references or [])
                    and "kubernetes.io/config.mirror" not in (p.metadata.annotations or {})]
    (job_pod,) = [p.metadata.name
                  for p in api.list_namespaced_pod("default", label_selector="job-name=drain-job").items]

    # check mode says what would happen and changes nothing; asked for post-copy, each pod
    # would move (with eager copy where post-copy is refused: this machine's fs.pipe-max-size)
    check = run_playbook("drain.yml", cluster["inventory"], extra_vars={"node": w1, "copy": "lazy"},
                         options=("--check",))
    assert check.rc == 0 and check.changed() == 1, check.output[-3000:]
    assert "would move to" in check.output and "would be evicted" in check.output, check.output[-3000:]
    said = " ".join(check.output.split())  # the message as one line (Ansible wraps it)
    assert all(f"default/{name} would move to {w2}" in said
               for name in (*app_pods, "drain-bare", "drain-web-0", job_pod)), check.output[-3000:]
    assert not api.read_node(w1).spec.unschedulable

    # with post-copy: each pod that can have it (the StatefulSet's cannot: it moves eagerly)
    with pipe_max_size(LAZY_PIPE):
        code, answer = cli_drain(cluster, w1, "--eviction-timeout", "6", "--copy", "lazy")
    report = answer["report"]
    outcomes = {e["pod"].split("/")[1]: e for e in report["pods"]}
    assert api.read_node(w1).spec.unschedulable, "the drained node must stay cordoned"
    # a pod no controller would start again, and one its budget protects, are still there
    assert code == 1 and report["result"] == "not drained", answer
    moved = {name: e for name, e in outcomes.items() if e["outcome"] == "moved"}
    # the cluster's own pods the scheduler put on the worker (CoreDNS's) move too
    assert set(moved) - set(cluster_pods) == {*app_pods, "drain-bare", "drain-web-0", job_pod}, outcomes
    assert set(cluster_pods) <= set(moved), (cluster_pods, outcomes)
    assert moved["drain-web-0"]["now"] == "default/drain-web-0"  # a StatefulSet's pod keeps its name
    assert moved["drain-web-0"]["copy"] == "eager", moved["drain-web-0"]
    assert "keeps its name" in moved["drain-web-0"]["eager_because"], moved["drain-web-0"]
    assert {name: e["copy"] for name, e in moved.items() if name != "drain-web-0"} == \
        {name: "lazy" for name in moved if name != "drain-web-0"}, moved
    for name, e in moved.items():
        # CoreDNS's pods may go to the control-plane node too (they tolerate its taint)
        assert e["to"] == w2 or (name in cluster_pods and e["to"] != w1), e
        assert e["downtime_seconds"] > 0, e
        namespace, now_name = e["now"].split("/")
        now = api.read_namespaced_pod(now_name, namespace)
        assert now.spec.node_name == e["to"] and now.status.phase == "Running"
        if name == job_pod or name in cluster_pods:
            continue
        url = f"http://{now.status.pod_ip}:8080"
        count, checksum = before[name]
        assert int(ask(cluster, url + "/")) > count, f"{name}'s count did not go on"
        assert ask(cluster, url + "/checksum") == checksum
    # the Deployment's two pods are the moved ones: nothing started afresh in their place
    assert {p.metadata.name for p in api.list_namespaced_pod("default", label_selector="app=drain-app").items} == \
        {e["now"].split("/")[1] for name, e in moved.items() if name in app_pods}
    def outcome_of(app):
        return next(e for name, e in outcomes.items() if name.startswith(app + "-") or name == app)

    assert outcome_of("drain-evictable")["outcome"] == "evicted", outcomes
    assert "hostPath" in outcome_of("drain-evictable")["why"]
    guarded, stuck, agent = outcome_of("drain-guarded"), outcome_of("drain-stuck"), outcome_of("drain-agent")
    assert guarded["outcome"] == "left" and "would violate the pod's disruption budget" in guarded["why"], guarded
    assert stuck["outcome"] == "left" and "--force" in stuck["why"], stuck
    assert agent["outcome"] == "left" and "DaemonSet drain-agent" in agent["why"], agent
    assert on_node(api, w1, "drain-evictable") == []
    assert leftovers(cluster) == {w: [] for w in WORKERS}

    # the budget lifted and --force given: the node ends empty but for the DaemonSet's pod
    client.PolicyV1Api(api.api_client).delete_namespaced_pod_disruption_budget("drain-guarded", "default")
    run = run_playbook("drain.yml", cluster["inventory"], extra_vars={"node": w1, "force": "true"})
    assert run.rc == 0, run.output[-3000:]
    left = [p.metadata.name for p in api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={w1}").items
            if p.metadata.deletion_timestamp is None]
    assert [n for n in left if not n.startswith("drain-agent")] == [], left
    again = run_playbook("drain.yml", cluster["inventory"], extra_vars={"node": w1})
    assert again.rc == 0 and again.changed() == 0, again.output[-3000:]
    assert apps.read_namespaced_deployment_status("drain-app", "default").status.ready_replicas == 2
    # the Job, its work sped up now (a file in the container: when it ends, not what it
    # computes), completes with the result of an undisturbed run and counts no failure
    moved_job = moved[job_pod]["now"].split("/")[1]
    stream(api.connect_get_namespaced_pod_exec, moved_job, "default", command=["/bin/sh", "-c", ": > /tmp/fast"],
           stderr=True, stdout=True)
    deadline = time.monotonic() + 120
    job = batch.read_namespaced_job("drain-job", "default")
    while not job.status.succeeded:
        assert not job.status.failed and time.monotonic() < deadline, job.status
        time.sleep(1)
        job = batch.read_namespaced_job("drain-job", "default")
    assert not job.status.failed and job.status.succeeded == 1, job.status
    done = api.read_namespaced_pod(moved_job, "default")
    assert done.status.container_statuses[0].state.terminated.message.strip() == computed(0, JOB_STEPS)
    print("\ndrain: frozen " + ", ".join(f"{name} {e['downtime_seconds']} s" for name, e in sorted(moved.items())))


@pytest.mark.parametrize(("node", "options", "why"), [
    ("nosuchnode", (), "node 'nosuchnode' not found"),
    # else every pod would be refused, then evicted
    (WORKERS[0], ("--transfer", "share", "--copy", "lazy"), "copy=lazy (post-copy) needs transfer=direct")])
def test_a_drain_that_cannot_be_is_refused_before_anything_changes(api, cluster, node, options, why):
    code, answer = cli_drain(cluster, node, *options)
    assert code == 3, answer
    assert why in answer["message"], answer
    assert not any(n.spec.unschedulable for n in api.list_node().items)


def kubectl(cluster, *args, timeout=600):
    binary = sorted(ROOT.glob(".podmigrate/cache/artifacts/kubernetes-v*/bin/kubectl"))[-1]
    return subprocess.run([str(binary), "--kubeconfig", str(cluster["state"] / "kubeconfig"), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_kubectl_drain_migrates_the_pods_that_opted_in_and_evicts_the_others(api, cluster):
    """kubectl drain of a worker holding a Deployment's and a StatefulSet's pod that opted in
    (podmigrate.io/eviction: migrate) and a Deployment's pod that did not: the eviction
    webhook refuses the opted-in pods' evictions (429, kubectl drain tries again) while it
    migrates them; they go on counting on the other worker with their memory, the
    StatefulSet's under its name; the other pod is evicted as usual; kubectl drain ends."""
    w1, w2 = WORKERS
    apps = client.AppsV1Api(api.api_client)
    pin = {"kubernetes.io/hostname": w1}
    opted_in = {"podmigrate.io/eviction": "migrate"}
    keeper = counter_pod("evict-keeper", None, labels={"app": "evict-keeper"}, node_selector=pin)
    keeper.metadata.annotations = opted_in
    apps.create_namespaced_deployment("default", deployment("evict-keeper", 1, keeper))
    apps.create_namespaced_deployment("default", deployment(
        "evict-plain", 1, counter_pod("evict-plain", None, labels={"app": "evict-plain"}, node_selector=pin)))
    web = counter_pod("evict-web", None, labels={"app": "evict-web"}, node_selector=pin)
    web.metadata.annotations = opted_in
    apps.create_namespaced_stateful_set("default", client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="evict-web"),
        spec=client.V1StatefulSetSpec(service_name="evict-web", replicas=1,
                                      selector=client.V1LabelSelector(match_labels={"app": "evict-web"}),
                                      template=client.V1PodTemplateSpec(metadata=web.metadata, spec=web.spec))))
    try:
        webhook = client.AdmissionregistrationV1Api(api.api_client).read_validating_webhook_configuration(
            "podmigrate-evictions").webhooks[0]
        assert (webhook.failure_policy, webhook.client_config.url.split(":")[1]) == ("Fail", "//127.0.0.1")
        deadline = time.monotonic() + 120
        before = {}
        for app in ("evict-keeper", "evict-plain", "evict-web"):
            while not on_node(api, w1, app):
                assert time.monotonic() < deadline, f"{app} never started on {w1}"
                time.sleep(0.5)
            pod = wait_ready(api, on_node(api, w1, app)[0])
            url = f"http://{pod.status.pod_ip}:8080"
            before[app] = (pod, int(ask(cluster, url + "/")), ask(cluster, url + "/checksum"))

        run = kubectl(cluster, "drain", w1, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        for app in ("evict-keeper", "evict-web"):
            assert f"podmigrate is migrating pod default/{before[app][0].metadata.name} off node {w1}" in run.stderr, \
                run.stderr[-3000:]
            pods = api.list_namespaced_pod("default", label_selector=f"app={app}").items
            assert len(pods) == 1, [p.metadata.name for p in pods]
            now, (pod, count, checksum) = pods[0], before[app]
            assert now.spec.node_name == w2 and "podmigrate.io/restore" in now.metadata.annotations
            assert now.metadata.uid != pod.metadata.uid
            # kubectl drain ends once the StatefulSet's pod of that name is deleted: its restored
            # pod, which keeps the name, may still be restoring (no address yet)
            now = wait_ready(api, now.metadata.name)
            url = f"http://{now.status.pod_ip}:8080"
            assert int(ask(cluster, url + "/")) > count and ask(cluster, url + "/checksum") == checksum
        assert api.list_namespaced_pod("default", label_selector="app=evict-web").items[0].metadata.name == \
            "evict-web-0"
        # the pod that did not opt in was evicted: its Deployment made a new one, from scratch
        plain = api.list_namespaced_pod("default", label_selector="app=evict-plain").items
        assert before["evict-plain"][0].metadata.uid not in {p.metadata.uid for p in plain}
        assert all("podmigrate.io/restore" not in (p.metadata.annotations or {}) for p in plain)
        # kubectl drain ends once the pods it evicts are gone: the StatefulSet's is deleted
        # mid-migration (its restored pod takes its name), whose end (a Lease released, its
        # files removed) may come a moment later
        leases = client.CoordinationV1Api(api.api_client)
        deadline = time.monotonic() + 120
        while [x.metadata.name for x in leases.list_namespaced_lease("default").items
               if x.metadata.name.startswith("podmigrate-evict-")]:
            assert time.monotonic() < deadline, "a migration of kubectl drain's never ended"
            time.sleep(0.5)
        assert leftovers(cluster) == {w: [] for w in WORKERS}
    finally:
        api.patch_node(w1, {"spec": {"unschedulable": None}})
        for name in ("evict-keeper", "evict-plain"):
            apps.delete_namespaced_deployment(name, "default", propagation_policy="Foreground")
        apps.delete_namespaced_stateful_set("evict-web", "default", propagation_policy="Foreground")
        deadline = time.monotonic() + 90
        while any((p.metadata.labels or {}).get("app", "").startswith("evict-")
                  for p in api.list_namespaced_pod("default").items) and time.monotonic() < deadline:
            time.sleep(0.5)
