"""The seed-fork profile's migration: the tutorial's clone pod, its refusals, and the
engine path (clone, wait, only then delete the source; on failure delete the clone)."""

from __future__ import annotations

import copy
import json
import types

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import (
    engine,
    manifest,
    plan,
    remote,
    seedfork,
)
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException


def node(name):
    return {"metadata": {"name": name}, "spec": {},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def counter(**spec):
    """The tutorial's demo pod (`kubectl run counter1 --restart=Never ... -- -m 50`) as the
    API server returns it."""
    return {"metadata": {"name": "counter1", "namespace": "default", "labels": {"run": "counter1"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "uid": "u-1", "resourceVersion": "7", "creationTimestamp": "2022-04-06T10:00:00Z"},
            "spec": {"nodeName": "zone2", "restartPolicy": "Never", "dnsPolicy": "ClusterFirst",
                     "nodeSelector": {"kubernetes.io/hostname": "zone2"},
                     "containers": [{"name": "counter1", "image": "ghcr.io/schrej/podmigration-testapp:latest",
                                     "args": ["-m", "50"], "resources": {}}],
                     **spec},
            "status": {"phase": "Running", "podIP": "10.32.0.4",
                       "containerStatuses": [{"name": "counter1", "ready": True, "restartCount": 0,
                                              "state": {"running": {}}}]}}


NODES = {"master": node("master"), "zone2": node("zone2"), "zone3": node("zone3")}


# ------------------------------------------------------------------ the clone pod manifest
def test_the_clone_pod_is_the_tutorials():
    clone = manifest.clone_pod(counter(), "zone3", "a1b2c3")
    # the tutorial's clone: the same spec, spec.clonePod naming the source, restartPolicy Never
    assert clone["apiVersion"] == "v1" and clone["kind"] == "Pod"
    assert clone["spec"]["clonePod"] == "counter1"
    assert clone["spec"]["restartPolicy"] == "Never"
    assert clone["spec"]["containers"] == counter()["spec"]["containers"]
    assert clone["spec"]["dnsPolicy"] == "ClusterFirst"
    # bound to the target; the source's placement (pinned to its node) would keep it off
    assert clone["spec"]["nodeName"] == "zone3"
    assert "nodeSelector" not in clone["spec"]
    assert "status" not in clone


def test_the_clone_keeps_the_labels_so_a_service_follows_and_records_the_source():
    meta = manifest.clone_pod(counter(), "zone3", "a1b2c3")["metadata"]
    assert meta["name"] == "counter1-a1b2c3"
    assert meta["namespace"] == "default"
    assert meta["labels"] == {"run": "counter1"}
    assert meta["annotations"] == {manifest.ORIGINAL_NAME: "counter1", manifest.ORIGINAL_NODE: "zone2"}
    # nothing the API server owns is sent back
    assert not {"uid", "resourceVersion", "creationTimestamp"} & set(meta)


def test_a_pod_moved_before_is_cloned_from_its_current_name_and_keeps_its_first_name():
    moved = manifest.clone_pod(counter(), "zone3", "aaaaaa")
    moved["status"] = counter()["status"]
    again = manifest.clone_pod(moved, "zone2", "bbbbbb")
    assert again["spec"]["clonePod"] == "counter1-aaaaaa"
    assert again["metadata"]["name"] == "counter1-bbbbbb"
    assert again["metadata"]["annotations"][manifest.ORIGINAL_NAME] == "counter1"
    assert again["metadata"]["annotations"][manifest.ORIGINAL_NODE] == "zone3"


def test_the_clone_forces_restart_policy_never_and_leaves_the_source_untouched():
    source = counter(restartPolicy="OnFailure", affinity={"nodeAffinity": {}})
    before = copy.deepcopy(source)
    clone = manifest.clone_pod(source, "zone3", "x1")
    assert clone["spec"]["restartPolicy"] == "Never"
    assert "affinity" not in clone["spec"]
    assert source == before


def test_a_long_name_is_cut_to_fit_and_a_bad_suffix_is_refused():
    long = counter()
    long["metadata"]["name"] = "c" * 63
    assert len(manifest.clone_pod(long, "zone3", "a1b2c3")["metadata"]["name"]) == 63
    with pytest.raises(ValueError, match="suffix"):
        manifest.clone_pod(counter(), "zone3", "Not-OK")


# ------------------------------------------------------------------ the profile's refusals
def test_a_clone_is_planned_like_an_upstream_migration():
    assert plan.plan_clone(counter(), NODES, {}, target="zone3") == ("zone2", "zone3")


def test_a_source_that_would_restart_is_refused():
    with pytest.raises(plan.MigrationError) as err:
        plan.plan_clone(counter(restartPolicy="Always"), NODES, {}, target="zone3")
    assert err.value.problems == [
        "pod default/counter1 has restartPolicy Always: the seed-fork profile needs Never (the tutorial: "
        "otherwise the source container is restarted while the fork checkpoints it)"]


def test_a_pod_without_restart_policy_is_refused_as_always():
    pod = counter()
    del pod["spec"]["restartPolicy"]
    with pytest.raises(plan.MigrationError, match="restartPolicy Always"):
        plan.plan_clone(pod, NODES, {}, target="zone3")


def test_an_emptydir_would_be_lost_and_is_refused():
    with pytest.raises(plan.MigrationError, match="'scratch' is an emptyDir"):
        plan.plan_clone(counter(volumes=[{"name": "scratch", "emptyDir": {}}]), NODES, {}, target="zone3")


def test_every_refusal_of_both_kinds_is_listed_at_once():
    pod = counter(restartPolicy="Always", hostNetwork=True, volumes=[{"name": "data", "hostPath": {"path": "/x"}}])
    pod["status"]["phase"] = "Pending"
    with pytest.raises(plan.MigrationError) as err:
        plan.plan_clone(pod, NODES, {}, target="zone2")
    text = "\n".join(err.value.problems)
    for expected in ("is Pending, not Running", "host's network", "hostPath", "already runs on zone2",
                     "restartPolicy Always"):
        assert expected in text
    assert len(err.value.problems) == 5


# ------------------------------------------------------------------ the engine path
class FakeCore:
    """The API calls the clone path makes, against pods kept in a dict. ``clone_status``
    is what the target's (fork) kubelet makes of the clone."""

    def __init__(self, source, clone_status, source_after=None, fork=True):
        self.fork = fork
        self.pods = {source["metadata"]["name"]: source}
        self.clone_status = clone_status
        self.source_after = source_after
        self.calls = []

    def read_namespace(self, name):
        return {"metadata": {"name": name}}

    def read_namespaced_pod(self, name, namespace):
        if name not in self.pods:
            raise ApiException(status=404)
        return self.pods[name]

    def list_namespaced_pod(self, namespace):
        return types.SimpleNamespace(items=list(self.pods.values()))

    def list_node(self):
        return types.SimpleNamespace(items=list(NODES.values()))

    def list_pod_for_all_namespaces(self):
        return self.list_namespaced_pod(None)

    def list_namespaced_persistent_volume_claim(self, namespace):
        return types.SimpleNamespace(items=[])

    def create_namespaced_pod(self, namespace, body, dry_run=None, _preload_content=True):
        stored = copy.deepcopy(body)
        if not self.fork:  # an API server without the fork drops the field it does not know
            del stored["spec"]["clonePod"]
        if dry_run == "All":
            self.calls.append(("dry-run", body["metadata"]["name"]))
        else:
            self.calls.append(("create", body["metadata"]["name"]))
            self.created = body
            self.pods[body["metadata"]["name"]] = dict(stored, status=self.clone_status)
            if self.source_after:
                self.pods["counter1"]["status"] = self.source_after
        assert _preload_content is False  # read raw: V1PodSpec would drop clonePod
        return types.SimpleNamespace(data=json.dumps(stored).encode())

    def delete_namespaced_pod(self, name, namespace, **kw):
        self.calls.append(("delete", name))
        self.pods.pop(name, None)

    def create_namespaced_event(self, namespace, event):
        self.calls.append(("event", event.reason))


def clone_job(core, tmp_path, timeout=5):
    job = seedfork.CloneMigration(ApiClient(), {}, "default", "counter1", target="zone3",
                                  report_dir=str(tmp_path), timeout=timeout)
    job.core = core
    return job


RUNNING = {"phase": "Running", "containerStatuses": [{"name": "counter1", "ready": True, "restartCount": 0,
                                                      "state": {"running": {}}}]}


def test_the_source_is_deleted_only_after_the_clone_runs(tmp_path):
    core = FakeCore(counter(), RUNNING)
    report = clone_job(core, tmp_path).run()
    clone = core.created["metadata"]["name"]
    assert [c for c in core.calls if c[0] != "event"] == [("dry-run", clone), ("create", clone),
                                                          ("delete", "counter1")]
    assert core.created["spec"]["clonePod"] == "counter1"
    assert core.created["spec"]["nodeName"] == "zone3"
    assert report["result"] == "migrated"
    assert report["profile"] == "seed-fork"
    assert list(report["phases"]) == ["validate", "clone", "verify", "commit"]
    assert report["restored_pod"] == f"default/{core.created['metadata']['name']}"
    assert "counter1" not in core.pods
    assert (tmp_path / f"{report['id']}.json").exists()


def test_a_clone_that_fails_is_deleted_and_the_source_is_left_alone(tmp_path):
    failed = {"phase": "Failed", "message": "restore failed: no checkpoint on the share"}
    core = FakeCore(counter(), failed)
    job = clone_job(core, tmp_path)
    with pytest.raises(remote.NodeError) as err:
        job.run()
    clone = core.created["metadata"]["name"]
    assert [c for c in core.calls if c[0] != "event"] == [("dry-run", clone), ("create", clone), ("delete", clone)]
    assert "counter1" in core.pods and clone not in core.pods
    assert "no checkpoint on the share" in str(err.value)
    assert "the clone was deleted; the source pod default/counter1 still runs" in str(err.value)
    assert job.report["result"] == "rolled back"
    assert ("event", "MigrationFailed") in core.calls


def test_a_source_the_fork_broke_is_reported_as_such(tmp_path):
    broken = {"phase": "Failed", "containerStatuses": [{"name": "counter1", "ready": False, "restartCount": 0,
                                                        "state": {"terminated": {"exitCode": 137}}}]}
    core = FakeCore(counter(), {"phase": "Pending"}, source_after=broken)
    with pytest.raises(remote.NodeError, match="is Failed and not ready: the fork stopped it"):
        clone_job(core, tmp_path, timeout=0).run()
    assert "counter1" in core.pods


def test_a_refused_clone_changes_nothing(tmp_path):
    core = FakeCore(counter(restartPolicy="Always"), RUNNING)
    with pytest.raises(plan.MigrationError, match="restartPolicy Always"):
        clone_job(core, tmp_path).run()
    assert [c for c in core.calls if c[0] != "event"] == []


def test_the_profile_picks_the_engine():
    assert seedfork.migration_class("seed-fork") is seedfork.CloneMigration
    assert seedfork.migration_class("upstream") is engine.Migration
    with pytest.raises(plan.MigrationError, match="not one of upstream, seed-fork"):
        seedfork.migration_class("tutorial")


def test_a_pod_already_cloned_to_the_target_is_left_as_it_is(tmp_path):
    moved = manifest.clone_pod(counter(), "zone3", "aaaaaa")
    moved["status"] = RUNNING
    core = FakeCore(moved, RUNNING)  # only the clone is left, under its new name
    assert list(core.pods) == ["counter1-aaaaaa"]
    report = clone_job(core, tmp_path).run()
    assert report["result"] == "already there"
    assert [c for c in core.calls if c[0] != "event"] == []


def test_a_cluster_without_the_fork_is_refused_before_anything_is_created(tmp_path):
    # upstream Kubernetes would start the "clone" afresh and the source's state would be lost
    core = FakeCore(counter(), RUNNING, fork=False)
    with pytest.raises(plan.MigrationError, match=r"drops spec\.clonePod: this cluster does not run"):
        clone_job(core, tmp_path).run()
    assert [c[0] for c in core.calls if c[0] != "event"] == ["dry-run"]
    assert list(core.pods) == ["counter1"]
