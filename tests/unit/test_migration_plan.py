"""The migration engine's pure parts: planning refusals, target choice, the restored pod."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import guard, manifest, plan


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


def test_without_a_target_the_other_node_with_the_most_room_is_chosen():
    nodes = dict(NODES, cp=node("cp", ready=False))
    assert plan.plan(pod(), nodes, {}) == ("w1", "w2")
    nodes = {"w1": node("w1"), "w2": node("w2"), "w3": node("w3"), "w4": node("w4", memory="8Gi", ready=False)}
    # w3 has more memory left than w2, which runs a pod; w4 more still, but is not Ready
    assert plan.plan(pod(), nodes, {"w2": [pod("other", "w2", memory="1Gi")]}) == ("w1", "w3")
    assert plan.plan(pod(), nodes, {"w3": [pod("other", "w3", memory="1Gi")]}) == ("w1", "w2")
    # with the memory equal, the CPU left decides
    assert plan.plan(pod(), nodes, {"w2": [pod("other", "w2", cpu="1", memory="0")]}) == ("w1", "w3")


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
    bad["metadata"]["ownerReferences"] = [{"kind": "Workflow", "name": "web-1", "controller": True}]
    with pytest.raises(plan.MigrationError) as err:
        plan.plan(bad, NODES, {}, target="w2")
    assert len(err.value.problems) == 4, err.value.problems
    text = str(err.value)
    for expected in ("Pending, not Running", "host's network", "Workflow web-1: migrating its pods is not "
                     "supported", "hostPath"):
        assert expected in text


@pytest.mark.parametrize("kind", ["ReplicaSet", "ReplicationController", "Job", "StatefulSet"])
def test_a_pod_of_a_replica_set_moves_and_one_of_its_owners_that_does_not_control_it_is_no_bar(kind):
    owned = pod()
    owned["metadata"]["ownerReferences"] = [{"kind": "ConfigMap", "name": "notes"},
                                            {"kind": kind, "name": "web-1", "controller": True}]
    assert plan.plan(owned, NODES, {}, target="w2") == ("w1", "w2")
    assert plan.controller_of(owned)["name"] == "web-1"


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


def test_a_replica_sets_restored_pod_is_the_leases_until_the_commit_and_never_the_cheapest_to_delete():
    source = pod()
    source["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                                              "uid": "rs", "controller": True}]
    source["metadata"]["annotations"][manifest.DELETION_COST] = str(manifest.LOWEST_COST)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "podmigrate-counter", "uid": "l"}
    restored = manifest.restored_pod(source, "w2", "m-abc", "abc", owner=lease)
    assert restored["metadata"]["ownerReferences"] == [{**lease, "controller": True}]
    # the lowest cost is the source's alone at the commit: the ReplicaSet deletes it, not this one
    assert restored["metadata"]["annotations"][manifest.DELETION_COST] == str(manifest.LOWEST_COST + 1)
    assert "ownerReferences" not in manifest.restored_pod(pod(), "w2", "m-abc", "abc")["metadata"]


def test_a_statefulsets_restored_pod_keeps_the_name_and_is_the_statefulsets_from_the_start():
    source = pod(name="web-0")
    source["spec"].update(hostname="web-0", subdomain="web")
    source["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                                              "uid": "sts", "controller": True, "blockOwnerDeletion": True}]
    restored = manifest.restored_pod(source, "w2", "m-abc", "abc", keep_name=True)
    assert restored["metadata"]["name"] == "web-0"
    assert restored["metadata"]["ownerReferences"] == source["metadata"]["ownerReferences"]
    assert restored["metadata"]["ownerReferences"] is not source["metadata"]["ownerReferences"]
    assert restored["metadata"]["annotations"][manifest.RESTORE_ANNOTATION] == "m-abc"
    assert restored["metadata"]["annotations"][manifest.ORIGINAL_NAME] == "web-0"
    assert (restored["spec"]["hostname"], restored["spec"]["subdomain"], restored["spec"]["nodeName"]) == \
        ("web-0", "web", "w2")


def test_a_long_name_is_cut_to_fit_with_its_suffix():
    restored = manifest.restored_pod(pod(name="x" * 63), "w2", "m-abcdef", "abcdef")
    assert len(restored["metadata"]["name"]) == 63 and restored["metadata"]["name"].endswith("-abcdef")


@pytest.mark.parametrize(("meta", "message"), [
    ({"ownerReferences": [{"kind": "DaemonSet", "name": "logs", "controller": True}]},
     "pod default/counter belongs to DaemonSet logs, which runs one pod on each node: it stays with its node"),
    ({"annotations": {"kubernetes.io/config.mirror": "abc"}},
     "pod default/counter is a static pod of node w1's kubelet (its mirror here): it belongs to that node"),
])
def test_pods_that_belong_to_their_node_are_refused_saying_so(meta, message):
    p = pod()
    p["metadata"].update(meta)
    with pytest.raises(plan.MigrationError) as refused:
        plan.plan(p, {"w1": node("w1"), "w2": node("w2")}, {})
    assert refused.value.problems == [message]


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


def labelled(name, **labels):
    n = node(name)
    n["metadata"]["labels"] = {"kubernetes.io/hostname": name, **labels}
    return n


def refused(p, nodes, target, pods_by_node=None):
    with pytest.raises(plan.MigrationError) as exc:
        plan.plan(p, nodes, pods_by_node or {}, target=target)
    return "; ".join(exc.value.problems)


def test_a_target_the_pods_node_selector_excludes_is_refused():
    nodes = {"w1": labelled("w1", disk="ssd"), "w2": labelled("w2", disk="hdd"), "w3": labelled("w3", disk="ssd")}
    p = pod(nodeSelector={"disk": "ssd"})
    assert "node w2 does not have the label disk=ssd of the pod's nodeSelector" in refused(p, nodes, "w2")
    assert plan.plan(p, nodes, {}, target="w3") == ("w1", "w3")
    assert plan.plan(p, nodes, {}) == ("w1", "w3")  # the chosen target obeys it too


@pytest.mark.parametrize(("expression", "w2_allowed"), [
    ({"key": "zone", "operator": "In", "values": ["a"]}, False),
    ({"key": "zone", "operator": "NotIn", "values": ["a"]}, True),
    ({"key": "gpu", "operator": "Exists"}, True),
    ({"key": "gpu", "operator": "DoesNotExist"}, False),
    ({"key": "cores", "operator": "Gt", "values": ["8"]}, True),
    ({"key": "cores", "operator": "Lt", "values": ["8"]}, False),
])
def test_required_node_affinity_is_obeyed_with_every_operator(expression, w2_allowed):
    nodes = {"w1": labelled("w1", zone="a", cores="4"), "w2": labelled("w2", zone="b", gpu="1", cores="16")}
    p = pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expression]}]}}})
    if w2_allowed:
        assert plan.plan(p, nodes, {}, target="w2") == ("w1", "w2")
    else:
        assert "node w2 matches none of the pod's required node affinity terms" in refused(p, nodes, "w2")


def test_node_affinity_terms_are_alternatives():
    nodes = {"w1": labelled("w1", zone="a"), "w2": labelled("w2", zone="b"), "w3": labelled("w3", zone="c")}
    p = pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}]}}})
    assert "matches none" in refused(p, nodes, "w2")
    assert plan.plan(p, nodes, {}, target="w3") == ("w1", "w3")


def test_a_pin_to_the_source_node_by_hostname_or_name_does_not_keep_the_pod_there():
    """The original tutorial's pod is pinned to its node by kubernetes.io/hostname: moving it
    is what the user asks (the restored pod is bound to the target and drops the pin)."""
    nodes = {"w1": labelled("w1", zone="a"), "w2": labelled("w2", zone="a")}
    by_label = pod(nodeSelector={"kubernetes.io/hostname": "w1", "zone": "a"})
    assert plan.plan(by_label, nodes, {}, target="w2") == ("w1", "w2")
    by_name = pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["w1"]}],
         "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["w1"]},
                              {"key": "zone", "operator": "In", "values": ["a"]}]}]}}})
    assert plan.plan(by_name, nodes, {}, target="w2") == ("w1", "w2")
    nodes["w2"]["metadata"]["labels"]["zone"] = "b"  # what is not a pin is still obeyed
    assert "node w2 does not have the label zone=a" in refused(by_label, nodes, "w2")
    assert "matches none" in refused(by_name, nodes, "w2")


def test_a_move_that_breaks_a_hard_topology_spread_is_refused():
    nodes = {"w1": labelled("w1", zone="a"), "w2": labelled("w2", zone="b"), "w3": labelled("w3", zone="c")}
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "counter"}}}]
    p = pod(topologySpreadConstraints=spread)
    peer = pod(name="peer")
    peer["metadata"].update(uid="u-2", labels={"app": "counter"})
    # zone a: the pod; zone b: a peer; zone c: none. To b: b has 2, a and c 0: skew 2
    problems = refused(p, nodes, "w2", {"w1": [p], "w2": [peer]})
    assert "node w2: moving the pod there would skew its topology spread over zone beyond 1 (a: 0, b: 2, c: 0)" \
        in problems
    assert plan.plan(p, nodes, {"w1": [p], "w2": [peer]}, target="w3") == ("w1", "w3")
    # a soft constraint is the scheduler's wish, not a refusal
    soft = pod(topologySpreadConstraints=[{**spread[0], "whenUnsatisfiable": "ScheduleAnyway"}])
    assert plan.plan(soft, nodes, {"w1": [soft], "w2": [peer]}, target="w2") == ("w1", "w2")


@pytest.mark.parametrize("volume", [{"nfs": {"server": "10.0.0.1", "path": "/x"}},
                                    {"iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": "x", "lun": 0}},
                                    {"ephemeral": {"volumeClaimTemplate": {}}}])
def test_a_volume_podmigrate_does_not_carry_is_refused_by_name(volume):
    p = pod(volumes=[{"name": "data", **volume}])
    kind = next(iter(volume))
    assert f"volume 'data' is a {kind} volume, which podmigrate does not carry" in refused(p, NODES, "w2")


def test_the_volumes_podmigrate_carries_or_mounts_again_pass():
    p = pod(volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "configMap": {"name": "c"}},
                     {"name": "c", "secret": {"secretName": "s"}}, {"name": "d", "downwardAPI": {}},
                     {"name": "e", "projected": {"sources": []}}])
    assert plan.plan(p, NODES, {}, target="w2") == ("w1", "w2")


GiB = 1 << 30


def test_room_for_the_checkpoint_is_counted_on_both_nodes_for_each_transfer():
    free = {"source": ("w1", 10 * GiB), "target": ("w2", 10 * GiB)}
    assert plan.room_problems(4 * GiB, GiB, "direct", free, ("w2", 8 * GiB)) == []
    # the target holds the whole payload: 5 GiB and a margin do not fit in 5 GiB
    tight = {"source": ("w1", GiB + 128 * 2**20), "target": ("w2", 5 * GiB)}
    assert plan.room_problems(4 * GiB, GiB, "direct", tight, ("w2", 8 * GiB)) == [
        "node w2 has 5120 MiB free for the checkpoint, it needs 5184 MiB (the target of a 5120 MiB payload)"]
    # the share transfer keeps the payload and its archive on each
    problems = plan.room_problems(4 * GiB, GiB, "share", free, ("w2", 8 * GiB))
    assert [p.split(" has ")[0] for p in problems] == ["node w1", "node w2"]
    assert "it needs 10304 MiB" in problems[0]
    # a pod that keeps its name keeps its whole payload on the source too
    problems = plan.room_problems(4 * GiB, GiB, "keep", tight, ("w2", 8 * GiB))
    assert [p.split(" has ")[0] for p in problems] == ["node w1", "node w2"]
    assert "it needs 5184 MiB (the source of a 5120 MiB payload)" in problems[0]


def test_a_target_without_the_memory_the_pods_processes_use_is_refused():
    free = {"source": ("w1", 100 * GiB), "target": ("w2", 100 * GiB)}
    assert plan.room_problems(4 * GiB, 0, "direct", free, ("w2", 3 * GiB)) == [
        "node w2 has 3072 MiB of memory available, the pod's processes use 4096 MiB"]


def test_a_node_address_must_be_an_ip_address_before_it_reaches_authorized_keys():
    n = node("w1")
    n["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.5"}]
    assert plan.node_address(n, "ignored") == "10.0.0.5"
    n["status"]["addresses"] = [{"type": "InternalIP", "address": '10.0.0.5",command="/bin/sh'}]
    with pytest.raises(plan.MigrationError, match=r"reports the InternalIP .* which is not an IP address"):
        plan.node_address(n, "w1")
    n["status"]["addresses"] = []
    assert plan.node_address(n, "w1.example") == "w1.example"  # the inventory's host name
    with pytest.raises(plan.MigrationError, match="neither an IP address nor a host name"):
        plan.node_address(n, "w1 *")


def test_the_job_hand_over_guard_refuses_only_that_jobs_new_pods_in_its_namespace_for_one_migration():
    body, binding = guard.policy("20261205-abc123", "team-a", "job-uid")
    assert body["metadata"]["name"] == binding["metadata"]["name"] == binding["spec"]["policyName"] == \
        "podmigrate-20261205-abc123"
    assert body["spec"]["failurePolicy"] == "Fail"
    assert body["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    rule = body["spec"]["validations"][0]
    assert "r.uid == 'job-uid'" in rule["expression"]
    assert f"object.metadata.annotations['{manifest.RESTORE_ANNOTATION}'] == '20261205-abc123'" in rule["expression"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}}



def test_a_statefulsets_guard_refuses_only_a_new_pod_of_that_name_that_is_not_the_restored_one():
    body, binding = guard.policy("20261206-abc123", "team-a", "sts-uid", pod_name="web-0")
    rule = body["spec"]["validations"][0]
    assert rule["expression"].startswith("object.metadata.name != 'web-0' || ")
    assert "sts-uid" not in rule["expression"]
    assert f"object.metadata.annotations['{manifest.RESTORE_ANNOTATION}'] == '20261206-abc123'" in rule["expression"]
    assert "team-a/web-0" in rule["message"]
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}}


def test_a_restored_pod_keeps_its_address_only_when_asked_and_a_pod_moved_before_drops_a_stale_one():
    kept = manifest.restored_pod(pod(), "w2", "m-aaaa", "aaaa", address="10.244.1.5")
    assert kept["metadata"]["annotations"][manifest.ADDRESS_ANNOTATION] == "10.244.1.5"
    again = manifest.restored_pod(kept, "cp", "m-bbbb", "bbbb")  # moved on without keeping it
    assert manifest.ADDRESS_ANNOTATION not in again["metadata"]["annotations"]


def test_the_home_of_an_address_is_the_node_whose_pod_range_holds_it():
    nodes = {name: {**node(name), "spec": {"podCIDR": cidr, "podCIDRs": [cidr, f"fd00:{i}::/64"]}}
             for i, (name, cidr) in enumerate([("cp", "10.244.0.0/24"), ("w1", "10.244.1.0/24")])}
    assert plan.address_home("10.244.1.5", nodes) == "w1"
    assert plan.address_home("10.244.0.200", nodes) == "cp"
    assert plan.address_home("10.245.0.1", nodes) is None
    assert plan.address_home("fd00:1::5", nodes) is None and plan.address_home(None, nodes) is None


def test_a_kept_address_is_routed_to_the_node_it_lives_on_and_left_to_the_ranges_at_home():
    ips = {"cp": "10.0.0.1", "w1": "10.0.0.2", "w2": "10.0.0.3"}
    assert plan.address_routes("w1", "w2", ips) == {"cp": "10.0.0.3", "w1": "10.0.0.3", "w2": "local"}
    assert plan.address_routes("w1", "w1", ips) == {"cp": "home", "w1": "home", "w2": "home"}


def test_the_sweep_gives_back_only_what_no_pod_that_still_runs_holds():
    from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import addresses

    pods = [pod(),  # 10.244.1.5
            {"metadata": {"annotations": {manifest.ADDRESS_ANNOTATION: "10.244.1.9"}}, "status": {}},  # staged
            {**pod(), "status": {"phase": "Succeeded", "podIP": "10.244.1.7"}}]
    used = addresses.in_use(pods)
    assert used == {"10.244.1.5", "10.244.1.9"}
    listings = {"w1": {"held": ["10.244.1.5", "10.244.1.7"], "routes": {}},
                "w2": {"held": [], "routes": {"10.244.1.7": "local", "10.244.1.9": "local"}},
                "cp": {"held": [], "routes": {"10.244.1.9": "10.0.0.3"}}}
    assert addresses.stale(listings, used) == {"w1": ["10.244.1.7"], "w2": ["10.244.1.7"]}
