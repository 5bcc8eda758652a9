# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Emptying a node by migration (``drain.yml``, ``podmigrate drain``, ``kubectl migrate drain``).

The node is cordoned; every pod on it that can move is migrated (engine.Migration, the
target its plan picks), ``parallel`` at once. A pod a migration refuses is evicted through
the Eviction API, as ``kubectl drain`` does (a PodDisruptionBudget that allows no
disruption now is waited for, up to ``eviction_timeout``, then the pod is left), or with
``migrate_only`` left where it is; as with ``kubectl drain``, a pod no controller would
start again elsewhere is evicted only with ``force`` (eviction deletes it for good). A
DaemonSet's pod and a static pod's mirror are left alone: they belong to the node. A
migration that fails rolls back and its pod stays: it is never evicted instead (its
memory is what the drain was asked to keep). With post-copy (``copy=lazy``), a pod it
cannot have (a StatefulSet's, a node whose CRIU cannot serve pages lazily) moves with
eager copy instead; a pod post-copy loses is said to be lost. One entry per pod says what
became of it and why. docs/drain.md.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine, plan
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import transfer as transfers

MOVED, EVICTED, LEFT, FAILED, LOST = "moved", "evicted", "left", "failed", "lost"
EVICTION_RETRY_SECONDS = 5  # kubectl drain's


class Drain:
    def __init__(self, api_client, nodes, node, migrate_only=False, force=False, parallel=2, eviction_timeout=300,
                 progress=None, **migration):
        from kubernetes import client

        self.client = client
        self.api_client = engine.bounded(api_client)  # once, before any thread shares it
        self.core = client.CoreV1Api(self.api_client)
        self.nodes, self.node = nodes, node
        self.migrate_only, self.force, self.parallel = migrate_only, force, max(1, parallel)
        self.eviction_timeout = eviction_timeout
        self.progress = progress or (lambda event: None)
        self.migration = migration  # transfer, timeout, report_dir... for each engine.Migration
        self.changed = False

    def log(self, line):
        self.progress({"id": f"drain-{self.node}", "line": line})

    def problems(self):
        """Why the node cannot be drained at all (before anything changes)."""
        from kubernetes.client.rest import ApiException

        try:
            self.core.read_node(self.node)
        except ApiException as exc:
            if exc.status != 404:
                raise
            names = sorted(n.metadata.name for n in self.core.list_node().items)
            return [f"node {self.node!r} not found (nodes: {', '.join(names)})"]
        if self.node not in self.nodes:
            return [f"node {self.node} is not in the inventory: no way to reach it over SSH to migrate its pods"]
        # refused here, or every pod would be refused, then evicted
        return transfers.copy_problems(self.migration.get("copy_pages", "eager"),
                                       self.migration.get("transfer", "direct"))

    def pods(self):
        found = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        return sorted((self.api_client.sanitize_for_serialization(p) for p in found),
                      key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def cordoned(self):
        return bool(self.core.read_node(self.node).spec.unschedulable)

    def cordon(self):
        if self.cordoned():
            return False
        self.core.patch_node(self.node, {"spec": {"unschedulable": True}})
        self.log(f"cordoned {self.node}")
        return True

    def plan(self, check=False):
        """The entries of the pods that stay, and the pods to move; with ``check``, nothing
        changes (no cordon)."""
        problems = self.problems()
        if problems:
            raise plan.MigrationError(problems)
        cordoned = False if check else self.cordon()
        stay, move = [], []
        for pod in self.pods():
            why = plan.belongs_to_node(pod)
            if why:
                stay.append(entry(pod, LEFT, why=why))
            elif pod["metadata"].get("deletionTimestamp"):
                stay.append(entry(pod, LEFT, why="being deleted already", going=True))
            else:
                move.append(pod)
        return cordoned, stay, move

    def run(self):
        """Drain the node; returns the report (``drained`` when only pods that belong to
        the node are left on it)."""
        started = time.monotonic()
        cordoned, entries, move = self.plan()
        self.changed = cordoned
        refused = []
        with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
            for pod, result in zip(move, pool.map(self.migrate, move), strict=True):
                if result["outcome"] == "refused":
                    refused.append((pod, result["why"]))
                else:
                    entries.append(result)
        for pod, why in refused:
            left = self.not_evicted(pod, why)
            entries.append(entry(pod, LEFT, why=left) if left else self.evict(pod, why))
        self.changed = self.changed or any(e["outcome"] in (MOVED, EVICTED) for e in entries)
        return self.report(entries, time.monotonic() - started)

    def not_evicted(self, pod, refused):
        """Why a pod that cannot move is not evicted either, or None."""
        why = "could not move: " + "; ".join(refused)
        if pod_busy(refused):
            return why
        if self.migrate_only:
            return why + " (--migrate-only: not evicted)"
        if plan.controller_of(pod) is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") \
                and not self.force:
            return why + "; no controller would start it again elsewhere: evicting it would delete it (as " \
                "kubectl drain, only with --force)"
        return None

    def preview(self):
        """(Check mode) what a drain would do, changing nothing: each pod's plan."""
        _cordoned, entries, move = self.plan(check=True)
        for pod in move:
            try:
                try:
                    report, eager = self.migration_of(pod).plan_only(), None
                except plan.MigrationError as exc:
                    eager = self.eager_instead(exc)
                    report = self.migration_of(pod, copy_pages="eager").plan_only()
                entries.append(entry(pod, "would move", to=report.get("target"), eager_because=eager))
            except plan.MigrationError as exc:
                left = self.not_evicted(pod, exc.problems)
                entries.append(entry(pod, "would stay", why=left) if left else
                               entry(pod, "would be evicted", why="could not move: " + "; ".join(exc.problems)))
        out = self.report(entries, 0)
        out["result"], out["would_cordon"] = "would drain", not self.cordoned()
        out["changes"] = out["would_cordon"] or any(e["outcome"] in ("would move", "would be evicted")
                                                    for e in entries)
        said = ["would cordon it"] if out["would_cordon"] else []
        said += [f"{e['pod']} {e['outcome']}" + (f" to {e['to']}" if e.get("to") else "") for e in entries
                 if not e.get("belongs_to_node")]
        out["summary"] = f"node {self.node}: {'; '.join(said) or 'nothing to do'} (check mode: nothing changed)"
        return out

    def report(self, entries, seconds):
        entries.sort(key=lambda e: e["pod"])
        stays = staying(entries)
        counts = {k: sum(1 for e in entries if e["outcome"] == k) for k in (MOVED, EVICTED, LEFT, FAILED, LOST)}
        summary = (f"node {self.node}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
                   if entries else f"node {self.node}: no pod on it")
        return {"node": self.node, "result": "not drained" if stays else "drained", "pods": entries,
                "counts": counts, "seconds": round(seconds, 3), "summary": summary}

    def migration_of(self, pod, **options):
        """An engine.Migration of ``pod``, with SSH connections of its own (they run side by side)."""
        return engine.Migration(self.api_client, engine.own_connections(self.nodes), pod["metadata"]["namespace"],
                                pod["metadata"]["name"], **{**self.migration, **options})

    def eager_instead(self, refused):
        """Why post-copy alone refused a pod (MigrationError ``refused``), which then moves with
        eager copy: its memory is what the drain keeps. Any other refusal is raised again."""
        if self.migration.get("copy_pages") != "lazy" or not all(p.startswith("copy=lazy") for p in refused.problems):
            raise refused
        return "; ".join(refused.problems)

    def migrate(self, pod):
        """The pod moved."""
        meta = pod["metadata"]
        job, eager = self.migration_of(pod, progress=self.progress), None
        try:
            try:
                report = job.run()
            except plan.MigrationError as exc:
                eager = self.eager_instead(exc)
                self.log(f"{meta['namespace']}/{meta['name']} moves with copy=eager: {eager}")
                job = self.migration_of(pod, progress=self.progress, copy_pages="eager")
                report = job.run()
        except plan.MigrationError as exc:
            return {"outcome": "refused", "why": exc.problems}
        except engine.PodLost as exc:
            return entry(pod, LOST, why=str(exc), migration=job.report.get("id"))
        except Exception as exc:
            return entry(pod, FAILED, why=f"{exc} ({job.report.get('result')}: the pod stays on the node)",
                         migration=job.report.get("id"))
        self.log(f"moved {meta['namespace']}/{meta['name']}: {report['summary']}")
        return entry(pod, MOVED, to=report.get("target"), now=report.get("restored_pod"),
                     downtime_seconds=report.get("frozen_seconds"), migration=report.get("id"),
                     copy=report.get("copy"), eager_because=eager)

    def evict(self, pod, refused):
        """The pod evicted (the Eviction API: its PodDisruptionBudgets decide), as it could not
        move; waited for until it is gone."""
        from kubernetes.client.rest import ApiException

        meta = pod["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        why = f"could not move: {'; '.join(refused)}"
        body = self.client.V1Eviction(metadata=self.client.V1ObjectMeta(name=meta["name"],
                                                                        namespace=meta["namespace"]))
        deadline = time.monotonic() + self.eviction_timeout
        while True:
            try:
                self.core.create_namespaced_pod_eviction(meta["name"], meta["namespace"], body)
                break
            except ApiException as exc:
                if exc.status == 404:
                    return entry(pod, EVICTED, why=why + " (it was gone already)")
                if exc.status != 429:
                    return entry(pod, FAILED, why=f"{why}; its eviction failed: {exc.status} {exc.reason}")
                if time.monotonic() > deadline:
                    # a PodDisruptionBudget that allows no disruption now, or the eviction
                    # webhook of a pod that opted in to migration: its message says which
                    return entry(pod, LEFT, why=f"{why}; its eviction was refused for {self.eviction_timeout} s: "
                                 f"{refusal(exc)}")
                time.sleep(EVICTION_RETRY_SECONDS)
        self.log(f"evicted {ref} ({why})")
        grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30
        if not engine.gone_within(self.core, meta["namespace"], meta["name"], meta["uid"], grace + 60, 0.5):
            return entry(pod, FAILED, why=f"{why}; evicted, but still there {grace + 60} s later")
        return entry(pod, EVICTED, why=why)


def refusal(exc):
    """What the API server said when it refused a request (ApiException ``exc``)."""
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return exc.reason


def staying(entries):
    """The entries of the pods a drain leaves on the node that do not belong to it."""
    return [e for e in entries
            if e["outcome"] in (LEFT, FAILED) and not e.get("belongs_to_node") and not e.get("going")]


def pod_busy(problems):
    """Whether a refusal is a migration of the pod under way: never evicted meanwhile."""
    return any(" is being migrated: " in p for p in problems)


def entry(pod, outcome, **details):
    meta = pod["metadata"]
    out = {"pod": f"{meta['namespace']}/{meta['name']}", "outcome": outcome,
           **{k: v for k, v in details.items() if v is not None}}
    if outcome == LEFT and plan.belongs_to_node(pod):
        out["belongs_to_node"] = True
    return out
