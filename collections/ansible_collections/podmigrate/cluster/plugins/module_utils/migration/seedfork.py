# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed-fork profile's migration: the original tutorial's clone pod, with this
project's safety rules.

The tutorial's fork (Kubernetes v1.19 with Schrettenbrunner's PoC) moves a pod when a new
pod names it in ``spec.clonePod``: the fork's kubelets checkpoint the source and restore
the clone from the checkpoint share. The engine therefore needs no SSH and no node
helper here. Phases (each timed and reported, as upstream):

  validate  every refusal of the upstream profile plus the fork's own
            (plan.plan_clone), and a dry run of the clone pod: an API server
            that drops spec.clonePod is not the fork; before anything changes
  clone     the clone pod created on the target (manifest.clone_pod)
  verify    the clone Running, every container ready, none restarted
  commit    only now is the source pod deleted

Any failure before the commit deletes the clone; the source pod is not touched by the
engine (the fork itself may have stopped it: the tutorial says the source "gets broken
during the migration"), and the error says in which state it was left.
"""

from __future__ import annotations

import json

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine, manifest, plan
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.remote import NodeError


class CloneMigration(engine.Migration):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report.update(profile=plan.SEED_FORK, transfer="clonePod (the fork's checkpoint share)")

    def validate(self):
        from kubernetes.client.rest import ApiException

        pod, nodes, pods_by_node, claims = self.observe()
        source, target = plan.plan_clone(pod, nodes, pods_by_node, claims, self.target_name)
        self.pod = pod
        self.report.update(source=source, target=target)
        self.containers = [c["name"] for c in pod["spec"]["containers"]]
        self.manifest = manifest.clone_pod(pod, target, self.id.rsplit("-", 1)[1])
        # An API server without the fork drops spec.clonePod: the "clone" would start
        # afresh, run, and the source would be deleted with its state. Ask it first.
        try:
            stored = self.create(dry_run=True)
        except ApiException as exc:
            raise plan.MigrationError([f"the API server refuses the clone pod ({exc.status}): "
                                       f"{(exc.body or exc.reason or '').strip()[:600]}"]) from None
        if (stored.get("spec") or {}).get("clonePod") != self.name:
            raise plan.MigrationError([self.not_the_fork()])

    def plan_checks(self):
        self.validate()  # read-only: the clone pod is only a dry run

    def not_the_fork(self):
        return ("the API server drops spec.clonePod: this cluster does not run the tutorial's fork "
                "(the seed-fork profile needs it; an upstream cluster migrates with podmigrate_profile=upstream)")

    def create(self, dry_run=False):
        """Create the clone pod (or only ask the API server what it would store); the pod
        as stored, read raw: the client's V1PodSpec does not know spec.clonePod."""
        kwargs = {"dry_run": "All"} if dry_run else {}
        answer = self.core.create_namespaced_pod(self.namespace, self.manifest, _preload_content=False, **kwargs)
        return json.loads(answer.data)

    def clone(self):
        self.restored_name = self.manifest["metadata"]["name"]
        self.on_rollback(("delete the restored pod", self.delete_restored))
        stored = self.create()
        self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"
        if (stored.get("spec") or {}).get("clonePod") != self.name:
            raise NodeError(self.not_the_fork())

    def verify(self):
        self.wait_running(what="clone pod")

    def source_state(self):
        from kubernetes.client.rest import ApiException

        try:
            pod = self.as_dict(self.core.read_namespaced_pod(self.name, self.namespace))
        except ApiException as exc:
            return f"the source pod cannot be read ({exc.status})"
        phase = (pod.get("status") or {}).get("phase")
        if manifest.restored_problem(pod, self.containers) is None:
            return f"the source pod {self.namespace}/{self.name} still runs"
        return (f"the source pod {self.namespace}/{self.name} is {phase} and not ready: the fork stopped it "
                "while checkpointing (the tutorial's known limitation); its checkpoint is on the share")

    def execute(self):
        self.phase("validate", self.validate)
        self.event("MigrationStarted", f"cloning to {self.report['target']} (seed-fork profile: spec.clonePod)")
        try:
            self.phase("clone", self.clone)
            self.phase("verify", self.verify)
        except Exception as exc:
            # roll back now, so the error can say what became of the source
            self.cleanup()
            raise NodeError(f"{exc}; the clone was deleted; {self.source_state()}") from exc
        # the commit point: the clone runs; only now is the source given up
        self.pass_commit_point()
        self.phase("commit", self.commit)


def migration_class(profile):
    """The engine for a runtime profile."""
    if profile not in plan.PROFILES:
        raise plan.MigrationError([f"profile {profile!r} is not one of {', '.join(plan.PROFILES)}"])
    return CloneMigration if profile == plan.SEED_FORK else engine.Migration
