# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration engine: moves a running pod to another node with its memory.

Used by the ``podmigrate.cluster.migrate`` module (``migrate.yml``) and by
``scripts/podmigrate migrate``. It talks to the API server with the ``kubernetes`` client
and to the nodes over SSH, running the ``podmigrate-node`` helper the migration_node role
installs. The checkpoint and the restore are podmigrate's own (runc and CRIU on the
nodes), not the kubelet's or containerd's. The phases, in order (each timed, each told as
an Event; docs/migration.md describes them, and what a failure in each undoes):
validate, prepare, images (when the target lacks one), stage, fence, freeze, checkpoint,
transfer, address (when the pod keeps its IP), restore, verify, commit. Any failure before
the commit rolls back to the source pod, which goes on where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import queue
import re
import secrets
import shlex
import shutil
import tempfile
import threading
import time

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import (
    guard,
    lock,
    manifest,
    plan,
    preflight,
    progress,
)
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import transfer as transfers
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.remote import MIGRATIONS, NodeError
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.runner import Runner

# the names callers use (the module, the CLI, the bench)
MigrationError = plan.MigrationError


API_SECONDS = 30  # the longest one call to the API server may take
# the source node settles a migration by itself this long after its controller last said it
# lives (podmigrate-node watch), should no controller ever come back: longer than a Lease's
# lapse and a recovery, which normally come first
NODE_DEADLINE = 120


# a Job's pod: the finalizer by which the Job counts its end, and the labels its selector matches
JOB_FINALIZER = "batch.kubernetes.io/job-tracking"
SOURCE_DELETED = "source-deleted"  # the source node's watcher leaves such a migration to recover (watch.py)
JOB_SELECTOR_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")


class ApiUnreachable(Exception):
    """The API server did not answer a call within its bound."""


def bounded(api_client, seconds=API_SECONDS):
    """``api_client`` with every call given up after ``seconds`` (the client's default is to
    wait forever, and to retry three times), unless the call asks for a bound of its own: one
    retry only (a kept-alive connection the API server closed meanwhile), each try half the
    bound. A call given up, or whose connection failed, raises ApiUnreachable naming it."""
    import urllib3
    from kubernetes.client import rest as kube_rest

    if getattr(api_client.rest_client, "podmigrate_bounded", False):
        return api_client
    api_client.configuration.retries = urllib3.Retry(total=1, redirect=False, raise_on_status=False)
    api_client.rest_client = kube_rest.RESTClientObject(api_client.configuration)
    rest = api_client.rest_client
    request = rest.request

    def with_timeout(method, url, *args, **kw):
        bound = kw.get("_request_timeout") or seconds
        kw["_request_timeout"] = bound / 2
        try:
            return request(method, url, *args, **kw)
        except urllib3.exceptions.HTTPError as exc:
            path = url.split("://", 1)[-1].partition("/")[2].partition("?")[0]
            raise ApiUnreachable(f"the API server did not answer {method} /{path} within {bound} s "
                                 f"({type(exc).__name__})") from None

    rest.request, rest.podmigrate_bounded = with_timeout, True
    return api_client


class PodLost(Exception):
    """Post-copy failed past the commit point: neither copy of the pod was whole."""


class AlreadyThere(Exception):
    """The pod was moved to the target before: nothing to do."""


class Migration(Runner):
    def __init__(self, api_client, nodes, namespace, name, target=None, transfer="direct",
                 share_dir="/var/lib/podmigrate/share", share="dir", copy_pages="eager", report_dir=None, progress=None,
                 helper_digest=None, timeout=600, migration_id=None, node_deadline=NODE_DEADLINE,
                 lock_seconds=lock.LEASE_SECONDS, keep_address=True):
        from kubernetes import client  # imported here: the pure parts need no client

        self.client = client
        self.api_client = bounded(api_client)
        self.core = client.CoreV1Api(api_client)
        self.nodes = nodes
        self.namespace, self.name, self.target_name = namespace, name, target
        self.transfer = transfer
        self.share_dir = share_dir
        self.helper_digest = helper_digest
        self.timeout = timeout
        self.node_deadline = node_deadline
        self.lock_seconds = lock_seconds
        self.keep_address = keep_address
        self.address = None  # {"ip", "home", "routes"}: the pod's IP, kept (plan_address)
        self.watching, self.extended = False, 0.0  # the source's watcher, and when it was last told
        migration_id = migration_id or time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.copy_pages = copy_pages
        report = {"id": migration_id, "pod": f"{namespace}/{name}", "transfer": transfer, "copy": copy_pages,
                  "phases": {},
                  **({"share": share} if transfer == "share" else {}), "containers": {}, "result": "running"}
        super().__init__(migration_id, report, progress, report_dir)
        self.directory = f"{MIGRATIONS}/{self.id}"  # on both nodes
        self.carrier = transfers.choose(self, transfer, share, copy_pages)
        self.pod = self.source = self.target = None
        self.restored_name = None
        self.uid = self.containers = None
        self.owner = None  # the source's controller (a ReplicaSet), which the restored pod is handed to
        self.keeps_name = False  # a StatefulSet's pod: the restored pod takes the source's name (replace)
        self.lock = None
        self.done = "migrated"  # the result when execute() returns
        self.story = []  # the Events told so far, for the restored pod when it is created
        self.uids = {}  # of the pods told Events, by name
        self.events = queue.Queue()
        self.event_sender = threading.Thread(target=self.send_events, daemon=True)

    # ------------------------------------------------------------ helpers
    def phase_starting(self, name):
        if self.lock is not None:
            self.lock.renew(name, self.report.get("source"), self.report.get("target"))
        self.write_report()  # the controller's own record of how far it came

    def context(self):
        """What a new controller needs besides the journal's steps (Recovery)."""
        return {"id": self.id, "namespace": self.namespace, "name": self.name, "uid": self.uid,
                "lease": self.lock.pod_name if self.lock else None, "containers": self.containers,
                "source": self.report.get("source"), "target": self.report.get("target"),
                "restored": self.restored_name, "owner": self.owner, "keeps_name": self.keeps_name,
                "transfer": self.transfer, "address": self.address,
                "share": self.report.get("share"), "timeout": self.timeout}

    def journal_changed(self):
        if self.lock is not None:
            self.lock.write(journal={**self.journal(), "context": self.context()})

    def undo_step(self, record):
        """A journaled step's ``undo_KIND``: the transfer's, else the engine's."""
        args = {k: v for k, v in record.items() if k not in ("do", "what", "rollback_only", "after_rollback")}
        kind = f"undo_{record['do']}"
        return (getattr(self.carrier, kind, None) or getattr(self, kind))(**args)

    def undo_files(self, node):
        """The migration's files on ``node`` removed (under the lock that the source's
        watcher and the lock's heartbeat take to write there)."""
        self.nodes[node].helper("forget", self.id)

    def undo_processes(self, node):
        self.nodes[node].helper("settle", self.id, "--wait", self.timeout, timeout=self.timeout + 60)

    def undo_thaw(self, node, uid):
        self.nodes[node].helper("thaw", uid)

    def undo_image(self, node, image):
        self.nodes[node].run(f"ctr -n k8s.io images rm {shlex.quote(image)}", check=False)

    def undo_fence(self, node):
        self.nodes[node].helper("unfence", self.id)

    def undo_handover(self, name, owner):
        """Past the commit point, the restored pod handed to its controller (again: a commit
        that failed before, or a controller that died in it); before it, nothing (the
        rollback deletes the restored pod). Kept in the journal until done, so the Lease
        that holds the restored pod until then is never deleted first (the garbage
        collector would delete the pod with it)."""
        if self.committed:
            self.hand_over(name, owner)

    def hand_over(self, name, owner):
        """The restored pod ``name`` made its controller's (``owner``), as its kind needs (a
        StatefulSet's was its own from its creation: replace)."""
        if owner["kind"] in plan.NAME_KEPT:
            return
        if owner["kind"] == "Job":
            self.hand_over_to_job(name, owner)
        else:
            self.hand_over_to_replica_set(name, owner)

    def hand_over_to_job(self, name, owner):
        """The commit of a Job's pod, before the source is deleted. The source first stops
        being the Job's: its ownerReference, its tracking finalizer (so the Job never counts
        it, as failed or at all) and the label the Job's selector matches (so the Job does
        not adopt it again) go in one patch. Then the restored pod, which the Lease
        controlled so far, becomes the Job's, with the tracking finalizer (so its end is
        counted). The other order would give the Job two active pods of one index, and it
        keeps the older. Between the two the Job counts none and would start one afresh:
        a guard (guard.py) refuses that create for the moment (the Job syncs a second after
        a pod event, so it normally sees both changes at once)."""
        source, restored = self.read_pod(self.name, self.uid), self.read_pod(name)
        release = source is not None and plan.controller_of(source) is not None
        adopt = restored is not None and restored["metadata"].get("ownerReferences") != [owner]
        creations = self.creation_guard(owner)
        if not (release or adopt):  # done before: by this commit (the cleanup), or by one that died after
            creations.remove()
            return
        self.report["guard_seconds"] = creations.install()
        if release:
            meta = source["metadata"]
            ops = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
                   {"op": "remove", "path": "/metadata/ownerReferences"},
                   {"op": "add", "path": "/metadata/finalizers",
                    "value": [f for f in meta.get("finalizers") or [] if f != JOB_FINALIZER]}]
            ops += [{"op": "replace", "path": "/metadata/labels/" + key.replace("/", "~1"), "value": "podmigrate-moved"}
                    for key in JOB_SELECTOR_LABELS if key in (meta.get("labels") or {})]
            self.core.patch_namespaced_pod(self.name, self.namespace, ops)
        if adopt:
            finalizers = restored["metadata"].get("finalizers") or []
            self.core.patch_namespaced_pod(name, self.namespace, [
                {"op": "test", "path": "/metadata/uid", "value": restored["metadata"]["uid"]},
                {"op": "replace", "path": "/metadata/ownerReferences", "value": [owner]},
                {"op": "add", "path": "/metadata/finalizers",
                 "value": finalizers + ([] if JOB_FINALIZER in finalizers else [JOB_FINALIZER])}])
            self.report["handed_over"] = f"{owner['kind']} {owner['name']}"
        creations.remove()

    def read_pod(self, name, uid=None):
        """Pod ``name`` (only the one with ``uid``, when given) as a dict, or None."""
        from kubernetes.client.rest import ApiException

        try:
            pod = self.as_dict(self.core.read_namespaced_pod(name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return pod if uid in (None, pod["metadata"]["uid"]) else None

    def hand_over_to_replica_set(self, name, owner):
        """The commit of a pod of a ReplicaSet, before the source is deleted: the restored pod
        ``name``, which the migration's Lease controlled so that the ReplicaSet would neither
        count nor adopt it, is made the ReplicaSet's (``owner``, the source's controlling
        ownerReference). The source is first given the lowest deletion cost: should the
        ReplicaSet count both before the source's deletion, it deletes the source, never
        the restored pod (Running and Ready, as verified). docs/migration.md."""
        from kubernetes.client.rest import ApiException

        try:  # only the source's uid: the precondition refuses any other pod of its name
            self.core.patch_namespaced_pod(self.name, self.namespace, {"metadata": {
                "uid": self.uid, "annotations": {manifest.DELETION_COST: str(manifest.LOWEST_COST)}}})
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        restored = self.read_pod(name)
        if restored is None or restored["metadata"].get("ownerReferences") == [owner]:
            return
        self.core.patch_namespaced_pod(name, self.namespace, [
            {"op": "test", "path": "/metadata/uid", "value": restored["metadata"]["uid"]},
            {"op": "replace", "path": "/metadata/ownerReferences", "value": [owner]}])
        self.report["handed_over"] = f"{owner['kind']} {owner['name']}"

    def undo_restored(self, node, name):
        """The staged or restored pod ended on its node first (``end-restored``: its runtime
        restores nothing more, nor starts a container of it afresh, and every process it
        restored is killed, with or without containerd and the kubelet), then deleted. Only
        then may the source be thawed: never two live copies, even for a moment."""
        self.report.setdefault("ended_on_target", []).extend(
            json.loads(self.nodes[node].helper("end-restored", self.id))["ended"])
        pod = self.read_pod(name)
        # only this migration's pod on that node (a StatefulSet's pod restored on its source
        # node by the rollback has the same name)
        if pod is not None and pod["spec"].get("nodeName") == node and \
                (pod["metadata"].get("annotations") or {}).get(manifest.RESTORE_ANNOTATION) == self.id:
            self.delete_pod(name, pod["metadata"]["uid"])

    def undo_restore_at_source(self, node, pod, address=None):
        """The rollback of a pod that keeps its name, once its source pod was deleted: the pod
        restored on its source node ``node`` (``pod``, its manifest there) from that node's
        own copy of the checkpoint (it kept it: replace), as on any target. Its restored
        pod elsewhere is gone by then (the newer step)."""
        host, name = self.nodes[node], pod["metadata"]["name"]
        if address:  # the pod's kept address: routed to its source node again
            self.route_address(address["ip"], address["routes"])
        existing = self.read_pod(name)
        if existing is not None and existing["metadata"]["uid"] == self.uid:
            if not existing["metadata"].get("deletionTimestamp"):
                return  # the source was never deleted: the thaw (the older step) lets it go on
            self.wait_gone(name, self.uid)
            existing = None
        if existing is None:
            missing = host.run(" ; ".join(f"test -d {self.directory}/payload/{c}/images || echo {c}"
                                          for c in self.containers), check=False).split()
            if missing:
                raise NodeError(f"node {node} no longer has its copy of the checkpoint of {', '.join(missing)}: "
                                f"pod {self.namespace}/{name} cannot be restored there")
            # the runtime waits for a payload it expects rather than start a container afresh
            deadline = time.time() + 3 * self.timeout
            host.run(f"umask 077; echo {deadline:.0f} > {self.directory}/expect")
            existing = self.as_dict(self.core.create_namespaced_pod(self.namespace, pod))
            self.uids[name] = existing["metadata"]["uid"]
        elif existing["spec"].get("nodeName") != node or \
                (existing["metadata"].get("annotations") or {}).get(manifest.RESTORE_ANNOTATION) != self.id:
            raise NodeError(f"pod {self.namespace}/{name} exists, and is not its restore on {node}: not restoring "
                            "it a second time")
        uid = self.wait_running(name, f"pod restored on its source node {node}")["metadata"]["uid"]
        self.claim_restored(host, uid, f"pod {self.namespace}/{name} on {node}")
        self.report["restored_at_source"] = {"node": node, "uid": uid}

    def phase_done(self, name, seconds):
        self.event(f"Migration{name.capitalize()}", f"{name} done in {seconds:.2f} s")

    def event(self, reason, message, pod_name=None, kind="Normal"):
        """An Event of this migration on ``pod_name``, else on the source pod and, once it
        exists, the restored pod too (which is told the earlier ones when it is created), so
        that ``kubectl describe`` of the moved pod tells the whole story. Sent in order by a
        thread of their own: none is downtime."""
        if pod_name is None:
            self.story.append((reason, message, kind, _now()))
            names = list(dict.fromkeys([self.name] + ([self.restored_name] if self.restored_name else [])))
        else:
            names = [pod_name]
        for name in names:
            self.events.put((name, reason, message, kind, _now()))

    def tell_restored_pod_the_story(self):
        for reason, message, kind, when in self.story:
            self.events.put((self.restored_name, reason, message, kind, when))

    def send_events(self):
        while True:
            item = self.events.get()
            if item is None:
                return
            name, reason, message, kind, when = item
            try:
                self.core.create_namespaced_event(self.namespace, self.client.CoreV1Event(
                    metadata=self.client.V1ObjectMeta(generate_name=f"{name}.podmigrate."),
                    # with the pod's uid, as kubectl describe looks them up
                    involved_object=self.client.V1ObjectReference(kind="Pod", namespace=self.namespace,
                                                                  name=name, uid=self.uids.get(name),
                                                                  api_version="v1"),
                    reason=reason, message=f"migration {self.id}: {message}", type=kind,
                    source=self.client.V1EventSource(component="podmigrate"),
                    first_timestamp=when, last_timestamp=when, count=1))
            except Exception as exc:
                self.log(f"could not record event {reason} on {name}: {exc}")

    def as_dict(self, obj):
        return self.api_client.sanitize_for_serialization(obj)

    # ------------------------------------------------------------ phases
    def observe(self):
        """The pod (or the pod it was moved to before), the nodes, the pods on each node
        and the namespace's claims, as plain dicts."""
        from kubernetes.client.rest import ApiException

        try:
            self.core.read_namespace(self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise MigrationError([f"namespace {self.namespace!r} not found"]) from None
            raise
        try:
            pod = self.as_dict(self.core.read_namespaced_pod(self.name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            # a pod moved before runs under a new name that records this one
            moved = [p for p in self.as_dict(self.core.list_namespaced_pod(self.namespace).items)
                     if ((p["metadata"].get("annotations") or {}).get(manifest.ORIGINAL_NAME) == self.name)]
            if not moved:
                raise MigrationError([f"pod {self.namespace}/{self.name} not found"]) from None
            pod = max(moved, key=lambda p: p["metadata"].get("creationTimestamp") or "")
            self.name = pod["metadata"]["name"]
            if self.target_name and pod["spec"].get("nodeName") == self.target_name:
                self.report.update(source=self.target_name, target=self.target_name, current=self.name)
                raise AlreadyThere(
                    f"{self.namespace}/{self.name} (moved before) already runs on {self.target_name}") from None
        annotations = pod["metadata"].get("annotations") or {}
        if self.target_name and pod["spec"].get("nodeName") == self.target_name and \
                annotations.get(manifest.ORIGINAL_NAME) == self.name:  # moved there before, its name kept
            self.report.update(source=self.target_name, target=self.target_name, current=self.name)
            raise AlreadyThere(f"{self.namespace}/{self.name} (moved before) already runs on {self.target_name}")
        nodes = {n["metadata"]["name"]: n for n in self.as_dict(self.core.list_node().items)}
        pods_by_node = {}
        for p in self.as_dict(self.core.list_pod_for_all_namespaces().items):
            pods_by_node.setdefault((p.get("spec") or {}).get("nodeName"), []).append(p)
        claims = {c["metadata"]["name"]: c for c in self.as_dict(
            self.core.list_namespaced_persistent_volume_claim(self.namespace).items)}
        return pod, nodes, pods_by_node, claims

    def pod_lock(self, pod):
        """The lock of ``pod`` (lock.py), by its original name: every incarnation has the one Lease."""
        original = (pod["metadata"].get("annotations") or {}).get(manifest.ORIGINAL_NAME) or self.name
        return lock.PodLock(self.api_client, self.namespace, original, self.id, duration=self.lock_seconds,
                            log=self.log)

    def lock_problems(self, pod):
        """(Check mode, no lock taken) why the pod's lock stops a migration now: another holds
        it, or one whose controller went away left it unfinished (a migration recovers it)."""
        pod_lock = self.pod_lock(pod)
        lease = pod_lock.peek()
        if lease is None:
            return []
        if not lock.expired(lease, _now()):
            return [pod_lock.held(lease)]
        if (lock.journal_of(lease) or {}).get("steps"):
            self.report["would_recover_first"] = lease["spec"].get("holderIdentity")
        return []

    def plan_checks(self):
        self.check(take_lock=False)

    def plan_only(self):
        """Check mode: every reason the pod cannot move (MigrationError), else the plan; nothing
        changed: no lock taken, nothing written on a node or in the cluster (what the nodes
        are asked is read-only: the helper's version, its pre-flight, free disk and memory,
        the images present)."""
        try:
            self.plan_checks()
        except AlreadyThere as exc:
            self.report.update(result="already there", summary=str(exc))
            return self.report
        bring, memory_bytes = getattr(self, "bring", []), getattr(self, "memory_bytes", None)
        self.report.update(result="would migrate", plan={
            "source": self.report["source"], "target": self.report["target"], "transfer": self.transfer,
            "memory_bytes": memory_bytes, "images_to_bring": bring, "address": self.report.get("address"),
            **({"handed_to": f"{self.owner['kind']} {self.owner['name']}"} if self.owner else {})})
        memory = f", {memory_bytes / 2**20:.0f} MiB of memory to move" if memory_bytes else ""
        address = self.report.get("address") or {}
        address = (f", keeping its address {address['ip']}" if address.get("kept") else
                   f", with a new address ({address['why']})" if address.get("why") else "")
        self.report["summary"] = (f"{self.report['pod']} would move {self.report['source']} -> {self.report['target']} "
                                  f"({self.transfer} transfer{memory}{address}"
                                  f"{', bringing ' + ', '.join(bring) if bring else ''}); nothing changed (check mode)")
        return self.report

    def api_user(self):
        """Who this engine is to the API server (migrate.yml: podmigrate-engine, role kubeadm)."""
        review = self.client.AuthenticationV1Api(self.api_client).create_self_subject_review(
            self.client.V1SelfSubjectReview())
        return review.status.user_info.username

    def take_lock(self, pod, source, target):
        """The pod's lock (lock.py), held to the end of the migration; then the pod read
        again: the problems that stop the migration (another holds the lock, or the pod
        changed while this one looked at it)."""
        from kubernetes.client.rest import ApiException

        self.lock = self.pod_lock(pod)
        self.lock.beats.append(self.extend_node_deadline)
        try:
            self.lock.acquire(source, target)
        except MigrationError as exc:
            self.lock = None
            return exc.problems
        except lock.Unfinished:
            self.lock = None
            raise
        try:
            now = self.core.read_namespaced_pod(self.name, self.namespace).metadata.uid
        except ApiException as exc:
            if exc.status != 404:
                raise
            now = None
        if now != pod["metadata"]["uid"]:
            return [f"pod {self.namespace}/{self.name} changed while this migration looked at it "
                    "(another migration moved it?): run it again"]
        return []

    def validate(self):
        """Why the pod cannot move (MigrationError), before anything changes. A migration of
        the pod that its controller left unfinished is finished or rolled back first."""
        for _attempt in range(3):
            try:
                return self.check()
            except lock.Unfinished as exc:
                self.recover_first(exc.lease)
        raise MigrationError([f"pod {self.namespace}/{self.name}: its lock lapsed unfinished again and again"])

    def recover_first(self, lease):
        self.log(f"the pod's migration {lease['spec'].get('holderIdentity')} was left unfinished "
                 "(its controller went away): recovering it first")
        recovery = Recovery(self.api_client, own_connections(self.nodes), lease, report_dir=self.report_dir,
                            progress=self.progress, helper_digest=self.helper_digest)
        self.report.setdefault("recovered", []).append(recovery.run()["summary"])

    def check(self, take_lock=True):
        problems = []
        pod, nodes, pods_by_node, claims = self.observe()
        self.report["api_user"] = self.api_user()
        try:
            source, target = plan.plan(pod, nodes, pods_by_node, claims, self.target_name)
        except MigrationError as exc:
            problems += exc.problems
            source, target = (pod.get("spec") or {}).get("nodeName"), None
        problems += self.take_lock(pod, source, target) if take_lock else self.lock_problems(pod)
        if self.transfer not in transfers.TRANSFERS:
            problems.append(f"transfer {self.transfer!r} is not one of {', '.join(transfers.TRANSFERS)}")
        problems += transfers.copy_problems(self.copy_pages, self.transfer)
        if self.transfer == "share" and self.report["share"] not in transfers.SHARES:
            problems.append(f"share {self.report['share']!r} is not one of {', '.join(transfers.SHARES)}")
        for role, name in (("source", source), ("target", target)):
            if name and name not in self.nodes:
                problems.append(f"{role} node {name} is not in the inventory: no way to reach it over SSH")
        if problems:
            raise MigrationError(problems)
        self.pod = pod
        self.source, self.target = self.nodes[source], self.nodes[target]
        self.source_ip = plan.node_address(nodes[source], self.source.host)
        self.target_ip = plan.node_address(nodes[target], self.target.host)
        self.report.update(source=source, target=target)
        for node in (self.source, self.target):
            digest = node.helper("version", check=False).strip()
            if self.helper_digest and digest != self.helper_digest:
                raise MigrationError([f"node {node.name}: the podmigrate-node helper is missing or stale "
                                      "(run site.yml, or playbooks/nodes.yml, again)"])
        # what CRIU would refuse to dump, found before the fence (CRIU itself finds it only in the dump)
        found = json.loads(self.source.helper("preflight", pod["metadata"]["uid"]))
        problems += preflight.problems(found)
        self.memory_bytes = found.get("memory_bytes", 0)  # what the checkpoint's progress counts against
        self.container_memory = found.get("container_memory") or {}  # what each container's CRIU holds
        owner = plan.controller_of(pod)
        self.keeps_name = bool(owner) and owner.get("kind") in plan.NAME_KEPT
        problems += self.room_problems(pod["metadata"]["uid"])
        # restored containers start from their own images, which are never pulled: those the
        # target lacks are brought from the source before the freeze
        images = sorted({c["image"] for c in pod["spec"]["containers"]})
        self.bring = json.loads(self.target.helper("images-present", *images))["missing"]
        lost = json.loads(self.source.helper("images-present", *self.bring))["missing"] if self.bring else []
        problems += [f"image {image} is on neither node: node {self.target.name} lacks it and the "
                     f"source's containerd no longer has it to bring" for image in lost]
        problems += self.carrier.problems()
        if owner and (owner.get("kind") == "Job" or self.keeps_name):
            problems += self.creation_guard(owner).problems()
        if problems:
            raise MigrationError(problems)
        self.containers = [c["name"] for c in pod["spec"]["containers"]]
        self.volumes = [v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v]
        self.pod_ip = (pod.get("status") or {}).get("podIP")
        self.plan_address(nodes)
        self.owner = owner  # one plan moves: a ReplicaSet's, a Job's, a StatefulSet's, or None
        self.uid = self.uids[self.name] = pod["metadata"]["uid"]

    def plan_address(self, nodes):
        """Whether the restored pod keeps the source's IP address (``self.address``), and if
        not, why (the report's ``address``; told before anything changes)."""
        home = plan.address_home(self.pod_ip, nodes)
        why = None
        if not self.keep_address:
            why = "not asked to keep it"
        elif home is None:
            why = f"its address {self.pod_ip} is not in a node's IPv4 pod range"
        else:
            lacking = [n.name for n in (self.source, self.target)
                       if not json.loads(n.helper("addresses"))["network"]["keeps"]]
            missing = sorted(set(nodes) - set(self.nodes))
            if lacking:
                why = f"the pod network of {', '.join(lacking)} does not chain podmigrate's CNI plugin"
            elif missing:
                why = f"node(s) {', '.join(missing)} are not in the inventory: their route to it cannot be changed"
        if why:
            self.report["address"] = {"kept": False, "ip": self.pod_ip, "why": why}
            self.log(f"the restored pod gets a new IP address: {why}")
            return
        node_ips = {name: plan.node_address(nodes[name], self.nodes[name].host) for name in sorted(nodes)}
        self.address = {"ip": self.pod_ip, "home": home, "node_ips": node_ips}
        self.report["address"] = {"kept": True, "ip": self.pod_ip, "home": home}

    def move_address(self):
        """The pod's address routed to the target on every node, all at once, while the pod is
        dumped and carried (a future; the ``address`` phase waits for what is left of it).
        Nothing answers meanwhile: the source is frozen and its network held, and the
        restored pod's is held until its runtime has restored it, so a packet that comes
        early is dropped and sent again. On the node of its range, host-local's reservation
        of it kept from the source pod's deletion. (Not given back on a rollback: the source
        pod holds the address on, and once it ends, the sweep frees it, as for any pod that
        ends away from the node of its range: addresses.py.)"""
        ip, home, node_ips = self.address["ip"], self.address["home"], self.address["node_ips"]
        back = plan.address_routes(home, self.source.name, node_ips)
        self.rollback_do(f"route {ip} to {self.source.name} again", "address_routes", ip=ip, routes=back)
        pool = concurrent.futures.ThreadPoolExecutor(1)
        routing = pool.submit(self.route_to_target)
        pool.shutdown(wait=False)
        # a failure of the dump or the transfer: the routing ended before it is undone
        self.on_rollback(("wait for the address's routing", lambda: concurrent.futures.wait([routing])))
        return routing

    def route_to_target(self):
        """Every node routing the pod's address to the target (the target marked
        ``address-moved`` once it does), and on the node of its range host-local's
        reservation of it held; the seconds it took."""
        started = time.monotonic()
        ip, home, node_ips = self.address["ip"], self.address["home"], self.address["node_ips"]
        extra = {self.source.name: ["--hold"]} if home == self.source.name else {}
        self.route_address(ip, plan.address_routes(home, self.target.name, node_ips), extra,
                           then={self.target.name: f"touch {self.directory}/address-moved"})
        return round(time.monotonic() - started, 3)

    def route_address(self, ip, routes, extra=None, then=None):
        """Each node of ``routes`` ({node: route}) routing ``ip`` so, all at once (the pod is
        frozen meanwhile), with the ``extra`` arguments ({node: [...]}) of each, and ``then``
        a shell command of its own ({node: command}) once it has."""
        extra, then = extra or {}, then or {}

        def one(name):
            command = self.nodes[name].helper_command(["address", ip, "--route", routes[name], *extra.get(name, [])])
            self.nodes[name].run(command + (f" && {then[name]}" if name in then else ""))

        with concurrent.futures.ThreadPoolExecutor(max(1, len(routes))) as pool:
            calls = [pool.submit(one, name) for name in routes]
        for call in calls:
            call.result()  # (the first failure raised)

    def undo_address_routes(self, ip, routes):
        self.route_address(ip, routes)

    def creation_guard(self, owner):
        """The guard (guard.py) of a Job's pods, or of a StatefulSet's pod's name."""
        return guard.CreationGuard(self.api_client, self.namespace, self.id, owner,
                                   pod_name=self.name if self.keeps_name else None, log=self.log)

    def room_problems(self, uid):
        """Too little disk for the checkpoint on either node, or too little memory on the
        target for what the pod's processes use (plan.room_problems)."""
        volumes = self.source.run(f"du -sb /var/lib/kubelet/pods/{shlex.quote(uid)}/volumes/kubernetes.io~empty-dir "
                                  "2>/dev/null | cut -f1", check=False).strip()
        free = {}
        for role, node in (("source", self.source), ("target", self.target)):
            out = node.run(f"df -B1 --output=avail {MIGRATIONS} | tail -n 1").strip()
            free[role] = (node.name, int(out))
        meminfo = self.target.run("grep '^MemAvailable:' /proc/meminfo").split()
        return plan.room_problems(self.memory_bytes, int(volumes) if volumes.isdigit() else 0,
                                  "keep" if self.keeps_name and self.transfer == "direct" else self.transfer, free,
                                  (self.target.name, int(meminfo[1]) * 1024))

    def prepare(self):
        for node in (self.source, self.target):
            # the source's, which its watcher needs, stay while its thaw is left undone
            self.always_do(f"remove files on {node.name}", "files", node=node.name, after_rollback=node is self.source)
            node.run(f"install -d -m 0700 {MIGRATIONS} {self.directory}")
        for node in (self.source, self.target):
            # undone before the files: a helper process a failure left (a page server whose
            # peer's link was cut) ended first
            self.always_do(f"end the migration's processes on {node.name}", "processes", node=node.name)
        self.carrier.prepare()
        # undone after the restored pod is deleted (the newest first): never two live copies
        self.rollback_do("thaw the source", "thaw", node=self.source.name, uid=self.uid)
        self.watch()

    def watch(self):
        """The source's own deadline (podmigrate-node watch, a transient service that ends when
        the migration's files go): should no controller ever come back, it settles the pod
        ``node_deadline`` seconds after the last word from this one (its lock's heartbeat)."""
        self.extend_node_deadline(force=True)
        watch = self.source.helper_command(["watch", self.id, self.uid, self.namespace, self.name])
        self.source.run(f"systemd-run --quiet --collect --unit podmigrate-watch-{self.id} {watch}")
        self.watching = True

    def extend_node_deadline(self, force=False):
        """The source's watcher told this controller lives (at most every 10 s, from the
        lock's heartbeat; at once when ``force``)."""
        if not (self.watching or force) or (not force and time.monotonic() - self.extended < 10):
            return
        self.source.helper("extend", self.id, "--seconds", self.node_deadline, timeout=30)
        self.extended = time.monotonic()

    def bring_images(self):
        """The pod's images the target lacks, from the source's containerd to the target's
        (ctr export | ctr import), while the pod still runs."""
        brought = []
        for image in self.bring:
            self.rollback_do(f"remove the brought image {image}", "image", node=self.target.name, image=image)
            # once more on a failure: one CI run in three this session saw the target's import
            # refuse the stream ("unrecognized image format") that passed the run before
            for attempt in (1, 2):
                try:
                    size = self.source.pipe(
                        f"ctr -n k8s.io images export --platform linux/amd64 - {shlex.quote(image)}",
                        self.target, "ctr -n k8s.io images import --platform linux/amd64 -", timeout=self.timeout)
                    break
                except NodeError as exc:
                    if attempt == 2:
                        raise
                    self.log(f"bringing {image} failed, trying once more: {exc}")
            brought.append({"image": image, "bytes": size, "attempts": attempt})
        missing = json.loads(self.target.helper("images-present", *self.bring))["missing"] if self.bring else []
        if missing:
            raise NodeError(f"node {self.target.name} still lacks {', '.join(missing)} after the import")
        self.report["images_brought"] = brought

    def fence(self):
        """New connections to the pod refused on the source node while it moves; not for a
        pod that keeps its address: its held network drops a new connection's first packet,
        which the client sends again, and the restored pod answers (docs/migration.md)."""
        if not self.pod_ip or self.address:
            return
        self.always_do("lift the fence", "fence", node=self.source.name)
        self.source.helper("fence", self.pod_ip, self.id)

    def open_capture(self):
        """The source's dump session, started while the pod still runs: it finds the pod's
        containers and opens the page tunnels now, so that neither is downtime; it freezes
        the pod when told (``freeze``) and dumps it at once, with no round trip between."""
        volumes = [a for v in self.volumes for a in ("--volume", v)]
        self.capture = self.source.session("dump", self.uid, self.id, *volumes, *self.carrier.dump_args())
        self.always(("end the dump session", self.capture.close))

    def freeze(self):
        self.capture.send("freeze")
        self.report["freeze_seconds"] = self.capture.answer(60)["seconds"]

    def payload_bytes(self, *nodes):
        """The bytes of this migration's files on ``nodes`` (its directory on each)."""
        total = 0
        for node in nodes:
            out = node.run(f"du -sb {self.directory} 2>/dev/null | cut -f1", timeout=10, check=False).strip()
            total += int(out) if out.isdigit() else 0
        return total

    def watch_bytes(self, phase, nodes, total):
        """While ``phase`` runs, the bytes of this migration's files on ``nodes`` (before the
        freeze they hold a few hundred), told every two seconds (progress.py); nothing is
        asked of the nodes before the first."""
        return progress.ByteWatch(self.tell, phase, lambda: self.payload_bytes(*nodes), total, interval=2.0)

    def checkpoint(self):
        # the dump writes on the source, or (direct) streams the pages into the target's files
        with self.watch_bytes("checkpoint", (self.source, self.target), self.memory_bytes):
            dumped = self.capture.answer(self.timeout)
        for name, entry in dumped["containers"].items():
            self.report["containers"].setdefault(name, {}).update(
                checkpoint_bytes=entry["image_bytes"], rootfs_bytes=entry["rootfs_bytes"],
                streamed_bytes=entry["streamed_bytes"], dump_seconds=entry["dump_seconds"])
        if "volumes" in dumped:
            self.report["volumes"] = dumped["volumes"]

    def move(self):
        containers = self.report["containers"].values()
        raw = sum(c.get("checkpoint_bytes", 0) + c.get("rootfs_bytes", 0) for c in containers) + \
            (self.report.get("volumes") or {}).get("bytes", 0)
        # what the target holds of the payload, of all of it (the streamed pages are there already)
        with self.watch_bytes("transfer", (self.target,), raw):
            self.report["transfer_detail"] = self.carrier.carry()

    def stage(self):
        """The restored pod created on the target before the freeze: the kubelet admits it and
        sets up its sandbox, network and volumes while the source still runs; podmigrate's
        runtime holds its first container until the payload has arrived (the ``expect``
        file, with a deadline). Meanwhile the source's dump session gets ready. So none of
        that is downtime. A pod that keeps its name cannot be created before its source is
        gone (replace): the dump session gets ready, and the guard against a new pod of its
        name goes up (its controller creates none while the source exists anyway)."""
        self.open_capture()
        if self.keeps_name:
            self.always_do(f"remove the guard of pod {self.name}'s name", "guard", after_rollback=True)
            self.report["guard_seconds"] = self.creation_guard(self.owner).install()
            self.capture.answer(self.timeout)
            self.extend_node_deadline(force=True)
            return
        deadline = time.time() + 3 * self.timeout
        # the target's verdict counts the restored pod a live copy only once its address moved
        expect_address = f" && touch {self.directory}/address-expected" if self.address else ""
        self.target.run(f"umask 077; echo {deadline:.0f} > {self.directory}/expect{expect_address}")
        lease = None
        if self.owner:  # the Lease controls it until the commit: its ReplicaSet neither counts nor adopts it
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": self.lock.name,
                     "uid": self.lock.lease.metadata.uid}
        restored = manifest.restored_pod(self.pod, self.target.name, self.id, self.id.rsplit("-", 1)[1], owner=lease,
                                         address=(self.address or {}).get("ip"))
        self.restored_name = restored["metadata"]["name"]
        if self.owner:
            self.always_do(f"hand the restored pod to {self.owner['kind']} {self.owner['name']}", "handover",
                           name=self.restored_name, owner=self.owner)
        self.rollback_do("delete the restored pod", "restored", node=self.target.name, name=self.restored_name)
        self.uids[self.restored_name] = self.core.create_namespaced_pod(self.namespace, restored).metadata.uid
        self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"
        self.tell_restored_pod_the_story()
        first = self.containers[0]
        waited = time.monotonic() + self.timeout
        while self.target.run(f"test -e {self.directory}/waiting.{first} && echo yes", check=False).strip() != "yes":
            pod = self.as_dict(self.core.read_namespaced_pod(self.restored_name, self.namespace))
            problem = manifest.restored_problem(pod, self.containers) or ""
            if problem.startswith("failed:") or time.monotonic() > waited:
                raise NodeError(f"restored pod {self.restored_name} was never ready to restore: "
                                f"{problem.removeprefix('failed: ') or 'its runtime did not start waiting'}")
            time.sleep(0.05)
        self.capture.answer(self.timeout)  # the source's dump session is ready
        # the source's watcher told this controller lives right before the freeze (it cannot
        # have settled the pod meanwhile: it never settles one while it is being dumped)
        self.extend_node_deadline(force=True)

    def replace(self):
        """A pod that keeps its name (a StatefulSet's), its checkpoint safe on the target and
        kept on the source too (its pages were not streamed), the guard up (stage) so that
        its controller creates no pod of that name meanwhile: the frozen source deleted and
        its processes killed; the restored pod of that name created, its controller's from
        the start. A rollback from here restores the pod on its source node from the
        source's copy (undo_restore_at_source), once the restored pod is gone."""
        at_source = manifest.restored_pod(self.pod, self.source.name, self.id, self.id.rsplit("-", 1)[1],
                                          keep_name=True, address=(self.address or {}).get("ip"))
        back = None
        if self.address:  # routed to the source again first: its kubelet must reach it to see it Ready
            back = {"ip": self.address["ip"],
                    "routes": plan.address_routes(self.address["home"], self.source.name, self.address["node_ips"])}
        self.rollback_do(f"restore the pod on its source node {self.source.name}", "restore_at_source",
                         node=self.source.name, pod=at_source, address=back)
        self.source.run(f"touch {self.directory}/{SOURCE_DELETED}")  # its watcher leaves it to recover
        self.end_source()
        restored = manifest.restored_pod(self.pod, self.target.name, self.id, self.id.rsplit("-", 1)[1],
                                         keep_name=True, address=(self.address or {}).get("ip"))
        self.restored_name = restored["metadata"]["name"]
        self.rollback_do("delete the restored pod", "restored", node=self.target.name, name=self.restored_name)
        self.uids[self.restored_name] = self.core.create_namespaced_pod(self.namespace, restored).metadata.uid
        self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"
        self.tell_restored_pod_the_story()

    def undo_guard(self):
        self.creation_guard(self.owner).remove()

    def delete_restored(self):
        self.delete_pod(self.restored_name)

    def delete_pod(self, name, uid=None):
        """Pod ``name`` (only the one with ``uid``, when given) deleted at once and waited for
        until it is gone; False when it was gone already."""
        from kubernetes.client.rest import ApiException

        options = self.client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=self.client.V1Preconditions(uid=uid) if uid else None)
        try:
            self.core.delete_namespaced_pod(name, self.namespace, body=options)
        except ApiException as exc:
            if exc.status == 404 or (uid and exc.status == 409):  # 409: a new pod of the name
                return False
            raise
        self.wait_gone(name, uid)
        return True

    def wait_gone(self, name, uid=None, timeout=120):
        if not gone_within(self.core, self.namespace, name, uid, timeout):
            raise NodeError(f"pod {self.namespace}/{name} still exists after {timeout} s")

    def wait_running(self, name=None, what="restored pod"):
        """The restored pod (or pod ``name``) once Running with every container ready and none
        restarted."""
        name = name or self.restored_name
        deadline = time.monotonic() + self.timeout
        while True:
            pod = self.as_dict(self.core.read_namespaced_pod(name, self.namespace))
            problem = manifest.restored_problem(pod, self.containers)
            if problem is None:
                return pod
            if problem.startswith("failed:") or time.monotonic() > deadline:
                raise NodeError(f"{what} {name}: {problem.removeprefix('failed: ')}")
            time.sleep(0.1)

    def restore(self):
        """The payload is there: the runtime restores each container as the kubelet creates
        it; until the pod is Running and Ready."""
        self.restored_uid = self.wait_running()["metadata"]["uid"]

    def verify(self):
        self.claim_restored(self.target, self.restored_uid, f"restored pod {self.restored_name}")

    def claim_restored(self, node, uid, what):
        """Every container of pod ``uid`` on ``node`` runs from the checkpoint, else NodeError
        (``what`` names the pod). --claim: once every container runs restored, the node's
        verdict says so (no watcher or recovery can abandon it after; verdict.py), unless it
        was abandoned."""
        restored = json.loads(node.helper("restored", self.id, uid, "--claim"))
        fresh = [c for c in self.containers if not restored.get(c)]
        if fresh:
            raise NodeError(f"{what}: container(s) {', '.join(fresh)} started afresh instead of from their checkpoint")

    def commit(self):
        self.core.delete_namespaced_pod(self.name, self.namespace)
        self.wait_gone(self.name)

    def end_frozen_source(self):
        """The commit of a frozen source (end_source). A ReplicaSet's pod is handed over first
        (hand_over): its ReplicaSet never counts one pod too few."""
        if self.owner:
            self.hand_over(self.restored_name, self.owner)
        self.end_source()

    def end_source(self):
        """The source pod's object deleted first (the kubelet then stops its containers and
        never starts them again), then, if it was still there, its processes killed by the
        helper once the kubelet's stop has begun: they never run another instruction."""
        if self.delete_pod(self.name, self.uid):
            self.report["source_end"] = json.loads(self.source.helper("kill", self.uid, self.id))

    # ------------------------------------------------------------ driver
    def run(self):
        started = time.monotonic()
        control = tempfile.mkdtemp(prefix="podmigrate-ssh-")
        for node in self.nodes.values():
            node.multiplex(control)
        self.event_sender.start()
        try:
            self.execute()
            self.report["result"] = self.done
        except lock.LostLock as exc:
            # another controller (podmigrate recover) took the journal: its changes are its own
            self.undo = [u for u in self.undo if not u[3]]
            self.report.update(result="taken over", error=str(exc))
            self.log(f"stopped: {exc}")
            raise
        except AlreadyThere as exc:
            self.report.update(result="already there", message=str(exc))
        except MigrationError as exc:
            self.report.update(result="refused", error=str(exc), problems=exc.problems)
            raise
        except PodLost as exc:
            self.report.update(result="lost", error=str(exc))
            self.log(f"failed: {exc}")
            raise
        except Exception as exc:
            if not self.changed:  # before the first change: nothing to roll back
                self.report.update(result="not started", error=f"{type(exc).__name__}: {exc}")
                self.log(f"failed before any change: {exc}")
                raise
            self.report.update(result="rolled back", error=f"{type(exc).__name__}: {exc}")
            self.log(f"failed: {exc}; rolling back")
            self.event("MigrationFailed", f"rolled back: {exc}", pod_name=self.name, kind="Warning")
            raise
        finally:
            self.cleanup()
            self.unlock()
            for node in self.nodes.values():
                node.close()
            shutil.rmtree(control, ignore_errors=True)
            self.report["total_seconds"] = round(time.monotonic() - started, 3)
            self.summarize()
            self.write_report()
            if self.committed and self.restored_name:
                self.event("MigrationDone", self.report["summary"], pod_name=self.restored_name)
            self.events.put(None)
            self.event_sender.join(timeout=60)
        return self.report

    def unlock(self):
        """The lock released, or, with steps left that could not be undone, kept with them in
        its journal for ``podmigrate recover``."""
        if self.lock is None:
            return
        left = self.journal()
        try:
            if left["steps"]:
                self.lock.keep({**left, "context": self.context()})
                self.report["left_for_recover"] = [step["what"] for step in left["steps"]]
                self.log("left for podmigrate recover: " + ", ".join(self.report["left_for_recover"]))
            else:
                self.lock.release()
        except Exception as exc:  # the Lease lapses; its journal (written before each change) says the rest
            self.report.setdefault("cleanup_errors", []).append(f"the lock: {exc}")

    def execute(self):
        """The phases up to and including the commit (the seed-fork profile has its own)."""
        self.phase("validate", self.validate)
        self.event("MigrationStarted", f"moving to {self.target.name} ({self.transfer} transfer)")
        if self.copy_pages == "lazy":
            self.log("post-copy: the pod runs on the target before its memory is all there; should the source "
                     "node or the link fail before the last page, the pod is lost")
        self.phase("prepare", self.prepare)
        if self.bring:
            self.phase("images", self.bring_images)
        self.phase("stage", self.stage)
        self.phase("fence", self.fence)
        frozen = time.monotonic()
        self.phase("freeze", self.freeze)
        routing = self.move_address() if self.address else None
        self.phase("checkpoint", self.checkpoint)
        self.phase("transfer", self.move)
        if routing:
            # what is left of it once the payload is there; its own time beside the phases
            self.report["address_route_seconds"] = self.phase("address", routing.result)
        if self.keeps_name:
            self.phase("replace", self.replace)
        self.phase("restore", self.restore)
        self.phase("verify", self.verify)
        self.report["frozen_seconds"] = round(time.monotonic() - frozen, 3)
        # the commit point: from here the restored pod stays and the source is never thawed;
        # the fence goes once the source is gone
        self.pass_commit_point()
        if self.copy_pages == "lazy":
            self.phase("pages", self.fetch_pages)
        self.phase("commit", self.end_frozen_source)

    def fetch_pages(self):
        """Post-copy, past the commit point: the restored pod runs while the frozen source
        serves it the rest of its memory. Should that fail, the restored pod's memory has
        holes and the source's is older than what the restored pod has answered since: the
        pod is lost, and both copies are ended (PodLost)."""
        try:
            # what the restored pod holds of its memory so far, told every two seconds
            with progress.ByteWatch(self.tell, "pages", self.restored_memory, self.memory_bytes, interval=2.0):
                self.report["post_copy"] = self.carrier.finish()
        except Exception as exc:
            self.event("MigrationLost", f"post-copy failed, the pod is lost: {exc}", pod_name=self.name,
                       kind="Warning")
            self.delete_pod(self.restored_name)
            self.end_source()
            raise PodLost(f"{exc}. The pod is lost: its restored copy's memory was incomplete and its source's "
                          "older than what the restored copy had answered; both were ended") from exc

    def restored_memory(self):
        """The anonymous memory of the restored pod's processes: post-copy's pages count once
        they have arrived."""
        return json.loads(self.target.helper("memory", self.restored_uid, timeout=10))["memory_bytes"]

    def summarize(self):
        volumes = self.report.get("volumes") or {}
        raw = sum(c.get("checkpoint_bytes", 0) + c.get("rootfs_bytes", 0)
                  for c in self.report["containers"].values()) + volumes.get("bytes", 0)
        fetched = (self.report.get("post_copy") or {}).get("bytes", 0)  # post-copy: the pages, after the restore
        sent = (self.report.get("transfer_detail") or {}).get("sent_bytes", 0) + \
            sum(c.get("streamed_bytes", 0) for c in self.report["containers"].values()) + fetched
        # the time the bytes took to move: the transfer, and the checkpoint too when the pages
        # streamed to the target as they were dumped; with post-copy, from the restore's start
        # to the last page too
        phases = self.report["phases"]
        moving = phases.get("transfer", 0)
        if any(c.get("streamed_bytes") for c in self.report["containers"].values()):
            moving += phases.get("checkpoint", 0)
        if fetched:
            moving += phases.get("restore", 0) + phases.get("verify", 0) + phases.get("pages", 0)
        self.report.update(checkpoint_bytes=raw, sent_bytes=sent)
        if moving:
            self.report["throughput_mib_s"] = round((raw + fetched) / moving / 2**20, 1)
        if self.report["result"] == "already there":
            self.report["summary"] = self.report["message"]
            return
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in self.report["phases"].items())
        self.report["summary"] = (f"{self.report['pod']} {self.report.get('source', '?')} -> "
                                  f"{self.report.get('target', '?')}: {self.report['result']} in "
                                  f"{self.report.get('total_seconds', 0):.2f} s ({phases}); "
                                  f"checkpoint {raw / 2**20:.1f} MiB, sent {sent / 2**20:.1f} MiB")


class Recovery(Migration):
    """A migration whose controller went away (killed, its machine or its SSH lost), finished
    or rolled back by another, from the journal in the pod's lapsed Lease (lock.py). It
    keeps the migration's id (its report is the same file, now with the end), takes over
    the Lease (a compare-and-set: one recovery only), waits for the migration's processes
    on both nodes to end, then decides: forward (the migration passed its commit point, or
    its restored pod runs from the checkpoint: it may have answered clients) to the commit,
    or back to the source, which is thawed after the restored pod is gone."""

    def __init__(self, api_client, nodes, lease, report_dir=None, progress=None, helper_digest=None):
        self.left = lock.journal_of(lease) or {}
        ctx = self.left.get("context") or {}
        if not ctx.get("id"):
            raise MigrationError([f"lease {lease['metadata']['name']} holds no journal this version can read"])
        super().__init__(api_client, nodes, ctx["namespace"], ctx["name"], ctx.get("target"),
                         transfer=ctx.get("transfer") or "direct", share=ctx.get("share") or "dir",
                         report_dir=report_dir, progress=progress, helper_digest=helper_digest,
                         timeout=ctx.get("timeout") or 600, migration_id=ctx["id"])
        self.lease = lease
        # what the migration's own controller wrote into the report before it went away
        try:
            with open(os.path.join(report_dir, f"{self.id}.json")) as f:
                before = json.load(f)
            self.report["interrupted"] = {k: before[k] for k in ("phases", "result", "containers") if k in before}
        except (TypeError, OSError, ValueError):
            pass  # no report directory, or none written there
        self.uid, self.containers, self.restored_name = ctx.get("uid"), ctx.get("containers") or [], ctx.get("restored")
        self.owner, self.keeps_name = ctx.get("owner"), bool(ctx.get("keeps_name"))
        self.address = ctx.get("address")
        self.report.update(source=ctx.get("source"), target=ctx.get("target"))
        if self.restored_name:
            self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"
        missing = [n for n in (ctx.get("source"), ctx.get("target")) if n and n not in nodes]
        if missing:
            raise MigrationError([f"node {', '.join(missing)} of migration {self.id} is not in the inventory: "
                                  "no way to reach it over SSH"])
        self.source, self.target = nodes.get(ctx.get("source")), nodes.get(ctx.get("target"))
        self.lock = lock.PodLock(api_client, self.namespace, ctx.get("lease") or self.name, f"{self.id}.recover",
                                 log=self.log)
        self.lock.source, self.lock.target = ctx.get("source"), ctx.get("target")

    def execute(self):
        self.phase("settle", self.settle)
        decision, why = self.decide()
        self.report["recovery"] = {"decision": decision, "why": why}
        self.log(f"recovering {self.id}: {decision}, as {why}")
        if decision == "forward":
            if not self.committed:
                if self.address:
                    # the controller may have died with some nodes routing it to the source
                    # still (the target marks address-moved once its own route is there)
                    self.phase("address", self.route_to_target)
                self.pass_commit_point()
            self.phase("commit", self.end_frozen_source)
            self.done = "recovered: migrated"
        else:
            self.done = "recovered: rolled back"  # cleanup undoes every step, the newest first

    def settle(self):
        """The Lease taken over, with its journal; then every process of the migration on
        its nodes ended (the dump runs on to its end, then finds its controller gone)."""
        self.lock.phase = "recover"
        self.lock.take_over(self.lease)
        self.lock.start_heartbeat()
        self.taken = True
        ended = {}
        for node in {n.name: n for n in (self.source, self.target) if n}.values():
            ended[node.name] = json.loads(node.helper("settle", self.id, "--wait", self.timeout,
                                                      timeout=self.timeout + 60))
        self.report["settled"] = ended
        # the journal's steps are this controller's only now: nothing of the migration runs
        self.committed = bool(self.left.get("committed"))
        for record in self.left.get("steps") or []:
            step = {k: v for k, v in record.items() if k not in ("what", "rollback_only")}
            self.undo.append((record["what"], lambda r=step: self.undo_step(r), record["rollback_only"], step))
        self.changed = self.loaded = True

    def unlock(self):
        if not getattr(self, "taken", False):
            self.lock = None  # never held: another recovery took it first
        elif not getattr(self, "loaded", False):
            # the nodes could not be settled: the journal is kept as it was, for the next try
            self.lock.keep(self.left)
            return
        super().unlock()

    def decide(self):
        """forward or back, and why: as the target's verdict says (verdict.py: decided once, there,
        when every container runs restored or not, by whichever asks first; the source's
        watcher follows it too). Settled, nothing of the migration runs on the nodes."""
        if self.committed:
            return "forward", "it had passed its commit point"
        if self.target is None:
            return "back", "it had not chosen its target"
        verdict = json.loads(self.target.helper("verdict", self.id))["verdict"]
        if verdict == "restored":
            return "forward", "its restored pod runs from the checkpoint (it may have answered clients)"
        if verdict == "abandoned":
            return "back", "its restored pod had not wholly started from the checkpoint"
        return "back", "nothing of it had reached the target"


def unfinished(api_client, namespace=None, name=None):
    """(Read only) the migrations left unfinished, of pod NAMESPACE/NAME or of all pods: each
    podmigrate Lease with a journal, said as "NAMESPACE/LEASE: its holder (lapsed or not)"."""
    from kubernetes import client

    leases = client.CoordinationV1Api(bounded(api_client))
    selector = "app.kubernetes.io/managed-by=podmigrate"
    found = leases.list_namespaced_lease(namespace, label_selector=selector) if namespace else \
        leases.list_lease_for_all_namespaces(label_selector=selector)
    now = _now()
    return [f"{x['metadata']['namespace']}/{x['metadata']['name']}: {lock.held_by(x)}"
            + ("" if lock.expired(x, now) else " (its controller still runs)")
            for x in (api_client.sanitize_for_serialization(y) for y in found.items)
            if (not name or x["metadata"]["name"] == lock.lease_name(name)) and (lock.journal_of(x) or {}).get("steps")]


def recover(api_client, nodes, namespace=None, name=None, **kw):
    """Every migration left unfinished (of pod NAMESPACE/NAME, or of all pods): each lapsed
    podmigrate Lease with a journal, recovered (Recovery); a Lease still renewed is waited
    for as long as it lasts and a renewal more (its controller may have just died), then
    refused. Returns the reports; a Lease with nothing left is deleted."""
    from kubernetes import client

    leases = client.CoordinationV1Api(bounded(api_client))
    selector = "app.kubernetes.io/managed-by=podmigrate"
    started, deadline = time.monotonic(), None
    reports = []
    while True:
        found = leases.list_namespaced_lease(namespace, label_selector=selector) if namespace else \
            leases.list_lease_for_all_namespaces(label_selector=selector)
        found = [api_client.sanitize_for_serialization(x) for x in found.items]
        if name:
            found = [x for x in found if x["metadata"]["name"] == lock.lease_name(name)]
        now = _now()
        live = [x for x in found if not lock.expired(x, now)]
        for lease in found:
            if lease in live:
                continue
            if (lock.journal_of(lease) or {}).get("steps"):
                reports.append(Recovery(api_client, nodes, lease, **kw).run())
            else:
                lock.forget(leases, lease)
        if not live:
            return reports
        if deadline is None:
            deadline = started + lock.RENEW_SECONDS + max(
                (x.get("spec") or {}).get("leaseDurationSeconds") or lock.LEASE_SECONDS for x in live)
        if time.monotonic() > deadline:
            raise MigrationError([f"lease {x['metadata']['namespace']}/{x['metadata']['name']}: "
                                  f"{lock.held_by(x)}: its controller still runs" for x in live])
        time.sleep(1)


def own_connections(nodes):
    """The nodes (remote.Node) for a migration that runs beside others: copies, so that each
    migration's SSH connections (its masters, Node.multiplex) are its own."""
    return {name: copy.copy(node) for name, node in nodes.items()}


def gone_within(core, namespace, name, uid=None, timeout=120, interval=0.2):
    """Whether pod ``name`` (only the one with ``uid``, when given: a new pod of the name does
    not count) is gone within ``timeout`` seconds."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if uid not in (None, core.read_namespaced_pod(name, namespace).metadata.uid):
                return True
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        time.sleep(interval)
    return False


def _now():
    import datetime

    return datetime.datetime.now(datetime.UTC)


def parse_pod(ref):
    m = re.match(r"^(?:([a-z0-9-]+)/)?([a-z0-9.-]+)$", ref or "")
    if not m:
        raise MigrationError([f"pod {ref!r} is not NAMESPACE/NAME"])
    return m.group(1) or "default", m.group(2)
