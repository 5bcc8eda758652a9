# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed-fork profile's migration: the original tutorial's clone pod, with this
project's safety rules.

The tutorial's fork (Kubernetes v1.19 with Schrettenbrunner's PoC) moves a pod when a new
pod names it in ``spec.clonePod``: the fork's kubelets checkpoint the source and restore
the clone from the checkpoint share. The engine therefore needs no SSH and no node
helper here. Phases (each timed and reported, as upstream):

  validate  every refusal of the upstream profile plus the fork's own
            (migration.plan_clone), before anything changes
  clone     the clone pod created on the target (migration.clone_pod)
  verify    the clone Running, every container ready, none restarted
  commit    only now is the source pod deleted

Any failure before the commit deletes the clone; the source pod is not touched by the
engine (the fork itself may have stopped it: the tutorial says the source "gets broken
during the migration"), and the error says in which state it was left.
"""

from __future__ import annotations

from ansible_collections.podmigrate.cluster.plugins.module_utils import engine, migration


class CloneMigration(engine.Migration):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report.update(profile=migration.SEED_FORK, transfer="clonePod (the fork's checkpoint share)")

    def validate(self):
        pod, nodes, pods_by_node, claims = self.observe()
        source, target = migration.plan_clone(pod, nodes, pods_by_node, claims, self.target_name)
        self.pod = pod
        self.report.update(source=source, target=target)
        self.containers = [c["name"] for c in pod["spec"]["containers"]]

    def clone(self):
        manifest = migration.clone_pod(self.pod, self.report["target"], self.id.rsplit("-", 1)[1])
        self.restored_name = manifest["metadata"]["name"]
        self.undo.append(("delete the restored pod", self.delete_restored))
        # a dict body goes to the API server as it is: spec.clonePod, which the client's
        # V1PodSpec does not know, is kept
        self.core.create_namespaced_pod(self.namespace, manifest)
        self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"

    def verify(self):
        self.wait_running("clone pod")

    def source_state(self):
        from kubernetes.client.rest import ApiException

        try:
            pod = self.as_dict(self.core.read_namespaced_pod(self.name, self.namespace))
        except ApiException as exc:
            return f"the source pod cannot be read ({exc.status})"
        phase = (pod.get("status") or {}).get("phase")
        if migration.restored_problem(pod, self.containers) is None:
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
            raise engine.NodeError(f"{exc}; the clone was deleted; {self.source_state()}") from exc
        # the commit point: the clone runs; only now is the source given up
        self.undo = [u for u in self.undo if u[0] != "delete the restored pod"]
        self.phase("commit", self.commit)


def migration_class(profile):
    """The engine for a runtime profile."""
    if profile not in migration.PROFILES:
        raise migration.MigrationError([f"profile {profile!r} is not one of {', '.join(migration.PROFILES)}"])
    return CloneMigration if profile == migration.SEED_FORK else engine.Migration
