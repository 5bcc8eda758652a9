# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One migration per pod at a time: a ``coordination.k8s.io`` Lease per pod.

The Lease is named after the pod's original name (a pod moved before keeps it in an
annotation), in the pod's namespace, so every incarnation of a pod has the same one. Its
holder is the migration's id; annotations say its phase, source and target. The API server
enforces the compare-and-set: a create fails if the Lease exists, and taking over an
expired one is an update with the resourceVersion read, which fails if anyone changed it
meanwhile. A migration renews it at every phase; one that holds it past its duration
(the controller died) lets the next migration take it over.
"""

from __future__ import annotations

import datetime
import hashlib

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.plan import MigrationError

PHASE, SOURCE, TARGET = "podmigrate.io/phase", "podmigrate.io/source", "podmigrate.io/target"


def lease_name(pod_name):
    """The Lease's name for a pod (a DNS subdomain of at most 253 characters)."""
    name = f"podmigrate-{pod_name}"
    if len(name) > 253:
        name = name[:240] + "-" + hashlib.sha256(pod_name.encode()).hexdigest()[:12]
    return name


def expired(lease, now):
    """Whether a Lease (as a dict) was last renewed longer ago than its duration."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    if isinstance(renewed, str):
        renewed = datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    return now > renewed + datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)


def held_by(lease):
    """The sentence a refused migration gives: who holds the pod, since when, doing what."""
    spec = lease.get("spec") or {}
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    return (f"migration {spec.get('holderIdentity')} holds it (since {spec.get('acquireTime')}, "
            f"phase {notes.get(PHASE, '?')}, {notes.get(SOURCE, '?')} -> {notes.get(TARGET, '?')}; "
            f"its lock lapses {spec.get('leaseDurationSeconds')} s after its last renewal, "
            f"{spec.get('renewTime')})")


class PodLock:
    def __init__(self, api_client, namespace, pod_name, holder, duration):
        from kubernetes import client

        self.client = client
        self.api = client.CoordinationV1Api(api_client)
        self.sanitize = api_client.sanitize_for_serialization
        self.namespace, self.pod_name, self.holder = namespace, pod_name, holder
        self.name = lease_name(pod_name)
        self.duration = duration
        self.lease = None

    def _body(self, phase, source, target, acquired, resource_version=None):
        now = datetime.datetime.now(datetime.UTC)
        return self.client.V1Lease(
            metadata=self.client.V1ObjectMeta(
                name=self.name, resource_version=resource_version,
                labels={"app.kubernetes.io/managed-by": "podmigrate"},
                annotations={PHASE: phase, SOURCE: source or "", TARGET: target or ""}),
            spec=self.client.V1LeaseSpec(holder_identity=self.holder, lease_duration_seconds=self.duration,
                                         acquire_time=acquired or now, renew_time=now))

    def acquire(self, source, target):
        """Take the pod's Lease, or raise MigrationError naming the migration that holds it."""
        from kubernetes.client.rest import ApiException

        try:
            self.lease = self.api.create_namespaced_lease(self.namespace, self._body("validate", source, target, None))
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        current = self.sanitize(self.api.read_namespaced_lease(self.name, self.namespace))
        if not expired(current, datetime.datetime.now(datetime.UTC)):
            raise MigrationError([f"pod {self.namespace}/{self.pod_name} is being migrated: {held_by(current)}"])
        try:  # expired: taken over only if nobody changed it since it was read
            self.lease = self.api.replace_namespaced_lease(
                self.name, self.namespace,
                self._body("validate", source, target, None, current["metadata"]["resourceVersion"]))
        except ApiException as exc:
            if exc.status == 409:
                raise MigrationError([f"pod {self.namespace}/{self.pod_name} is being migrated: another "
                                      "migration took its expired lock first"]) from None
            raise

    def renew(self, phase, source, target):
        """Renew the Lease and record the phase (at each phase's start)."""
        if self.lease is None:
            return
        self.lease = self.api.replace_namespaced_lease(
            self.name, self.namespace,
            self._body(phase, source, target, self.lease.spec.acquire_time, self.lease.metadata.resource_version))

    def release(self):
        """Delete the Lease if this migration still holds it (uid and resourceVersion checked)."""
        from kubernetes.client.rest import ApiException

        if self.lease is None:
            return
        try:
            self.api.delete_namespaced_lease(self.name, self.namespace, body=self.client.V1DeleteOptions(
                preconditions=self.client.V1Preconditions(uid=self.lease.metadata.uid,
                                                          resource_version=self.lease.metadata.resource_version)))
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.lease = None
