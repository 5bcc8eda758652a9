"""The migration engine's pure parts: planning refusals, target choice, the restored pod."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import manifest, plan


def node(name, ready=True, cpu="2", memory="4Gi", cordoned=False):
    return {"metadata": {"name": name}, "spec": {"unschedulable": cordoned},
            "status": {"allocatable": {"cpu": cpu, "memory": memory},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name="counter", node_name="w1", phase="Running", cpu="250m", memory="256Mi", **spec):
    return {"metadata": {"name": name, "namespace": "default", "labels": {"app": name},
                         "annotations": {"note": "kept"}, "uid": "u-1", "resourceVersion": "7"},
            "spec": {"nodeName": node_name, "containers": [
                {"name": "app", "image": "counter:1", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
                **spec},
            "status": {"phase": phase, "podIP": "10.244.1.5"}}


NODES = {"cp": node("cp"), "w1": node("w1"), "w2": node("w2")}


@pytest.mark.parametrize(("quantity", "millis"), [("250m", 250), ("1", 1000), ("0.5", 500), ("2", 2000)])
def test_cpu_quantities(quantity, millis):
    assert plan.cpu_millis(quantity) == millis


@pytest.mark.parametrize(("quantity", "size"), [("128Mi", 128 * 2**20), ("1G", 10**9), ("1048576", 2**20),
                                                 ("1e6", 10**6), ("1.5Gi", 3 * 2**29)])
def test_memory_quantities(quantity, size):
    assert plan.memory_bytes(quantity) == size


def test_a_quantity_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not a memory quantity"):
        plan.memory_bytes("lots")


def test_requests_sum_containers_and_count_the_largest_init_container():
    p = pod(cpu="100m", memory="100Mi")
    p["spec"]["containers"].append({"name": "side", "resources": {"requests": {"cpu": "100m"}}})
    assert plan.pod_requests(p) == (200, 100 * 2**20)
    p["spec"]["initContainers"] = [{"name": "init", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}]
    assert plan.pod_requests(p) == (1000, 100 * 2**20)


def test_a_named_target_that_can_take_the_pod_is_planned():
    assert plan.plan(pod(), NODES, {"w1": [pod()]}, target="w2") == ("w1", "w2")


def test_without_a_target_the_first_other_node_with_room_is_chosen():
    nodes = dict(NODES, cp=node("cp", ready=False))
    assert plan.plan(pod(), nodes, {}) == ("w1", "w2")


@pytest.mark.parametrize(("target", "message"), [
    ("w9", "node 'w9' not found"),
    ("w1", "already runs on w1"),
])
def test_unknown_or_same_node_is_refused(target, message):
    with pytest.raises(plan.MigrationError, match=message):
        plan.plan(pod(), NODES, {}, target=target)


def test_a_target_not_ready_cordoned_or_full_is_refused_with_each_reason():
    nodes = dict(NODES, w2=node("w2", ready=False, cordoned=True, memory="100Mi"))
    with pytest.raises(plan.MigrationError) as err:
        plan.plan(pod(), nodes, {}, target="w2")
    text = str(err.value)
    assert "not Ready" in text and "cordoned" in text and "no room" in text


def test_room_counts_the_pods_already_on_the_target_but_not_finished_ones():
    nodes = dict(NODES, w2=node("w2", memory="512Mi"))
    running = pod("other", "w2", memory="300Mi")
    finished = pod("done", "w2", phase="Succeeded", memory="300Mi")
    with pytest.raises(plan.MigrationError, match="no room"):
        plan.plan(pod(), nodes, {"w2": [running]}, target="w2")
    assert plan.plan(pod(), nodes, {"w2": [finished]}, target="w2") == ("w1", "w2")


def test_every_problem_of_the_pod_is_listed_at_once():
    bad = pod(phase="Pending", hostNetwork=True, volumes=[{"name": "data", "hostPath": {"path": "/srv"}}])
    bad["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "web-1", "controller": True}]
    with pytest.raises(plan.MigrationError) as err:
        plan.plan(bad, NODES, {}, target="w2")
    assert len(err.value.problems) == 4, err.value.problems
    text = str(err.value)
    for expected in ("Pending, not Running", "host's network", "ReplicaSet web-1", "hostPath"):
        assert expected in text


def test_claims_must_be_read_write_many():
    volumes = [{"name": "a", "persistentVolumeClaim": {"claimName": "rwo"}},
               {"name": "b", "persistentVolumeClaim": {"claimName": "rwx"}},
               {"name": "c", "persistentVolumeClaim": {"claimName": "gone"}}]
    claims = {"rwo": {"status": {"accessModes": ["ReadWriteOnce"]}},
              "rwx": {"status": {"accessModes": ["ReadWriteMany"]}}}
    with pytest.raises(plan.MigrationError) as err:
        plan.plan(pod(volumes=volumes), NODES, {}, claims, target="w2")
    assert err.value.problems == [
        "volume 'a': claim 'rwo' is ReadWriteOnce, not ReadWriteMany: the target node could not mount it "
        "while the source still runs",
        "volume 'c': claim 'gone' not found"]


def test_empty_dir_config_map_and_a_bare_pod_are_accepted():
    ok = pod(volumes=[{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}])
    ok["metadata"]["ownerReferences"] = [{"kind": "Node", "name": "w1", "controller": False}]
    assert plan.plan(ok, NODES, {}, target="w2") == ("w1", "w2")


def test_no_other_node_able_to_take_the_pod_says_why_for_each():
    nodes = {"w1": node("w1"), "w2": node("w2", ready=False)}
    with pytest.raises(plan.MigrationError, match="no node can take pod default/counter: w2: node w2 is not"):
        plan.plan(pod(), nodes, {})


def test_the_restored_pod_keeps_labels_spec_and_images_and_runs_under_podmigrates_runtime_on_the_target():
    source = pod(nodeSelector={"disk": "ssd"})
    before = copy.deepcopy(source)
    restored = manifest.restored_pod(source, "w2", "20261202-a1b2c3", "a1b2c3")
    assert source == before, "the source's manifest must not change"
    assert restored["metadata"]["name"] == "counter-a1b2c3"
    assert restored["metadata"]["labels"] == {"app": "counter"}
    assert restored["metadata"]["annotations"] == {"note": "kept", manifest.ORIGINAL_NAME: "counter",
                                                   manifest.ORIGINAL_NODE: "w1",
                                                   manifest.RESTORE_ANNOTATION: "20261202-a1b2c3"}
    assert "uid" not in restored["metadata"] and "resourceVersion" not in restored["metadata"]
    assert "status" not in restored
    spec = restored["spec"]
    assert spec["nodeName"] == "w2" and "nodeSelector" not in spec
    assert spec["runtimeClassName"] == manifest.RUNTIME_CLASS == "podmigrate"
    container = spec["containers"][0]
    assert container["image"] == source["spec"]["containers"][0]["image"]
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"] == source["spec"]["containers"][0]["resources"]


def test_a_pod_moved_twice_keeps_its_original_name_and_names_only_its_last_migration():
    once = manifest.restored_pod(pod(), "w2", "m-aaaa", "aaaa")
    once["status"] = {"phase": "Running"}
    twice = manifest.restored_pod(once, "w1", "m-bbbb", "bbbb")
    assert twice["metadata"]["name"] == "counter-bbbb"
    assert twice["metadata"]["annotations"][manifest.ORIGINAL_NAME] == "counter"
    assert twice["metadata"]["annotations"][manifest.ORIGINAL_NODE] == "w2"
    assert twice["metadata"]["annotations"][manifest.RESTORE_ANNOTATION] == "m-bbbb"


def test_a_long_name_is_cut_to_fit_with_its_suffix():
    restored = manifest.restored_pod(pod(name="x" * 63), "w2", "m-abcdef", "abcdef")
    assert len(restored["metadata"]["name"]) == 63 and restored["metadata"]["name"].endswith("-abcdef")


def test_a_pod_of_another_runtime_class_is_refused_and_one_moved_before_is_not():
    nodes = {"w1": node("w1"), "w2": node("w2")}
    with pytest.raises(plan.MigrationError, match="runs under RuntimeClass kata"):
        plan.plan(pod(runtimeClassName="kata"), nodes, {})
    assert plan.plan(pod(runtimeClassName="podmigrate"), nodes, {}) == ("w1", "w2")


def test_a_tainted_target_is_refused_unless_the_pod_tolerates_the_taint():
    tainted = dict(node("cp"), spec={"taints": [{"key": "node-role.kubernetes.io/control-plane",
                                                 "effect": "NoSchedule"}]})
    nodes = {"cp": tainted, "w1": node("w1")}
    with pytest.raises(plan.MigrationError, match=r"taint node-role\.kubernetes\.io/control-plane:NoSchedule"):
        plan.plan(pod(), nodes, {}, target="cp")
    with pytest.raises(plan.MigrationError, match="no node can take"):
        plan.plan(pod(), nodes, {})
    tolerant = pod(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}])
    assert plan.plan(tolerant, nodes, {}, target="cp") == ("w1", "cp")


@pytest.mark.parametrize(("toleration", "matches"), [
    ({"operator": "Exists"}, True),
    ({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, True),
    ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"key": "k", "value": "v"}, True),
    ({"key": "k", "value": "other"}, False),
    ({"key": "other", "operator": "Exists"}, False),
])
def test_tolerations_match_taints_as_kubernetes_does(toleration, matches):
    assert plan.tolerates(toleration, {"key": "k", "value": "v", "effect": "NoSchedule"}) is matches


def restored(phase="Running", **state):
    status = {"name": "app", "ready": state.pop("ready", True), "restartCount": state.pop("restarts", 0),
              "state": state or {"running": {}}}
    return {"status": {"phase": phase, "containerStatuses": [status]}}


@pytest.mark.parametrize(("pod_status", "expected"), [
    (restored(), None),
    (restored(ready=False), "app: not ready"),
    (restored("Pending", waiting={"reason": "ContainerCreating"}), "app: ContainerCreating"),
    (restored("Pending", waiting={"reason": "CreateContainerError", "message": "criu failed"}),
     "failed: container app: CreateContainerError criu failed"),
    (restored(restarts=1), "failed: container app exited after the restore"),
    (restored("Failed"), "failed: the pod is Failed"),
    ({"status": {"phase": "Pending"}}, "app: no status yet"),
])
def test_a_restored_pod_counts_only_when_every_container_runs_and_is_ready(pod_status, expected):
    problem = manifest.restored_problem(pod_status, ["app"])
    assert problem == expected if expected is None else problem.startswith(expected)


def test_the_internal_ip_of_a_node():
    addresses = [{"type": "Hostname", "address": "w1"}, {"type": "InternalIP", "address": "10.0.0.5"}]
    assert plan.internal_ip({"status": {"addresses": addresses}}) == "10.0.0.5"
    assert plan.internal_ip({"status": {}}) is None


def test_the_restored_pod_runs_no_init_container_again():
    source = pod(initContainers=[{"name": "setup", "image": "x"}])
    assert "initContainers" not in manifest.restored_pod(source, "w2", "m-abc", "abc")["spec"]


def test_a_pods_lock_lapses_after_its_duration_and_says_who_holds_it():
    import datetime

    from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import lock

    renewed = datetime.datetime(2026, 12, 2, 18, 0, tzinfo=datetime.UTC)
    lease = {"metadata": {"annotations": {lock.PHASE: "checkpoint", lock.SOURCE: "w1", lock.TARGET: "w2"}},
             "spec": {"holderIdentity": "20261202180000-abcdef", "acquireTime": "2026-12-02T17:59:58.000000Z",
                      "renewTime": "2026-12-02T18:00:00.000000Z", "leaseDurationSeconds": 60}}
    assert not lock.expired(lease, renewed + datetime.timedelta(seconds=59))
    assert lock.expired(lease, renewed + datetime.timedelta(seconds=61))
    assert lock.expired({"spec": {}}, renewed)
    said = lock.held_by(lease)
    assert said.startswith("migration 20261202180000-abcdef holds it (since 2026-12-02T17:59:58")
    assert "phase checkpoint, w1 -> w2" in said
    assert lock.lease_name("counter") == "podmigrate-counter"
    long = lock.lease_name("x" * 253)
    assert len(long) <= 253 and long != lock.lease_name("x" * 252 + "y")
