# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One migration per pod at a time: a ``coordination.k8s.io`` Lease per pod.

The Lease is named after the pod's original name (a pod moved before keeps it in an
annotation), in the pod's namespace, so every incarnation of a pod has the same one. Its
holder is the migration's id; annotations say its phase, source and target, and hold its
journal (runner.py: every undo step, recorded before the change it undoes, and whether
the migration passed its commit point). The API server enforces the compare-and-set: a
create fails if the Lease exists, and every update carries the resourceVersion read, so it
fails if anyone changed the Lease meanwhile. A thread renews it every few seconds; a Lease
not renewed for its duration (LEASE_SECONDS unless the migration says: its controller died)
can be taken over: by ``podmigrate recover``, or by the next migration of the pod, which
first finishes or rolls back what the journal says was left (engine.Recovery). The commit
point itself is a journal write: a controller that lost its Lease cannot commit.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.plan import MigrationError

PHASE, SOURCE, TARGET = "podmigrate.io/phase", "podmigrate.io/source", "podmigrate.io/target"
JOURNAL = "podmigrate.io/journal"
LEASE_SECONDS = 30  # a Lease not renewed for this long is its dead controller's (by default)
RENEW_SECONDS = 5
SHORTEST_LEASE = 3 * RENEW_SECONDS  # two renewals may fail before it lapses


class LostLock(Exception):
    """Another controller took this migration's Lease: it, not this one, finishes it."""


class Unfinished(Exception):
    """The pod's Lease lapsed with a journal of changes left: they are undone or finished
    (engine.Recovery) before the pod can be migrated again."""

    def __init__(self, lease):
        super().__init__(f"lease {lease['metadata']['name']} lapsed with a migration unfinished")
        self.lease = lease


def journal_of(lease):
    """The journal a Lease (as a dict) holds, or None."""
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(JOURNAL)
    return json.loads(text) if text else None


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
    def __init__(self, api_client, namespace, pod_name, holder, duration=LEASE_SECONDS, log=None):
        from kubernetes import client

        self.client = client
        self.api = client.CoordinationV1Api(api_client)
        self.sanitize = api_client.sanitize_for_serialization
        self.namespace, self.pod_name, self.holder = namespace, pod_name, holder
        self.name = lease_name(pod_name)
        self.duration = duration
        self.log = log or (lambda msg: None)
        self.lease = None
        self.phase, self.source, self.target, self.journal = "validate", None, None, None
        self.mutex = threading.Lock()  # the heartbeat and the migration write it
        self.lost = None  # why this migration no longer holds it
        self.stopped = threading.Event()
        self.heartbeat = None
        self.beats = []  # called at each renewal too, in the heartbeat's thread (the engine's node deadline)

    def _body(self, acquired, resource_version=None):
        now = datetime.datetime.now(datetime.UTC)
        notes = {PHASE: self.phase, SOURCE: self.source or "", TARGET: self.target or ""}
        if self.journal is not None:
            notes[JOURNAL] = json.dumps(self.journal, separators=(",", ":"))
        return self.client.V1Lease(
            metadata=self.client.V1ObjectMeta(
                name=self.name, resource_version=resource_version,
                labels={"app.kubernetes.io/managed-by": "podmigrate"}, annotations=notes),
            spec=self.client.V1LeaseSpec(holder_identity=self.holder, lease_duration_seconds=self.duration,
                                         acquire_time=acquired or now, renew_time=now))

    def acquire(self, source, target):
        """Take the pod's Lease, or raise MigrationError naming the migration that holds it,
        or Unfinished when it lapsed with a journal of changes left."""
        from kubernetes.client.rest import ApiException

        self.source, self.target = source, target
        try:
            self.lease = self.api.create_namespaced_lease(self.namespace, self._body(None))
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = self.read()
            if not expired(current, datetime.datetime.now(datetime.UTC)):
                raise MigrationError([self.held(current)]) from None
            left = journal_of(current)
            if left and left.get("steps"):
                raise Unfinished(current) from None
            self.take_over(current)
        self.start_heartbeat()

    def read(self):
        return self.sanitize(self.api.read_namespaced_lease(self.name, self.namespace))

    def peek(self):
        """(Read only) the Lease as it is (a dict), or None when there is none."""
        from kubernetes.client.rest import ApiException

        try:
            return self.read()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def held(self, lease):
        """Why a migration of the pod is refused while ``lease`` is held."""
        return f"pod {self.namespace}/{self.pod_name} is being migrated: {held_by(lease)}"

    def take_over(self, current):
        """The lapsed Lease ``current`` (a dict) made this holder's, its journal kept, only if
        nobody changed it since it was read."""
        from kubernetes.client.rest import ApiException

        self.journal = journal_of(current)
        try:
            self.lease = self.api.replace_namespaced_lease(
                self.name, self.namespace, self._body(None, current["metadata"]["resourceVersion"]))
        except ApiException as exc:
            if exc.status == 409:
                raise MigrationError([f"pod {self.namespace}/{self.pod_name} is being migrated: another "
                                      "controller took its lapsed lock first"]) from None
            raise

    def start_heartbeat(self):
        self.heartbeat = threading.Thread(target=self._beat, daemon=True)
        self.heartbeat.start()

    def _beat(self):
        while not self.stopped.wait(RENEW_SECONDS):
            try:
                self.write()
            except LostLock:
                return
            except Exception as exc:  # the API server away: the next beat tries again
                self.log(f"could not renew the lock: {exc}")
            for beat in self.beats:
                try:
                    beat()
                except Exception as exc:  # a node away: the next beat tries again
                    self.log(f"heartbeat: {exc}")

    def write(self, phase=None, journal=None):
        """Renew the Lease, with the phase and the journal when given; raises LostLock when
        another controller took it (an update that meets a newer resourceVersion)."""
        from kubernetes.client.rest import ApiException

        with self.mutex:
            if self.lost:
                raise LostLock(self.lost)
            if self.lease is None:
                return
            if phase is not None:
                self.phase = phase
            if journal is not None:
                self.journal = journal
            try:
                self.lease = self.api.replace_namespaced_lease(
                    self.name, self.namespace,
                    self._body(self.lease.spec.acquire_time, self.lease.metadata.resource_version))
            except ApiException as exc:
                if exc.status in (404, 409):
                    self.lost = (f"lost the lock {self.namespace}/{self.name}: another controller changed or "
                                 "removed it (podmigrate recover?)")
                    raise LostLock(self.lost) from None
                raise

    def renew(self, phase, source, target):
        """Renew the Lease and record the phase (at each phase's start)."""
        self.source, self.target = source, target
        self.write(phase=phase)

    def release(self):
        """Delete the Lease if this migration still holds it (uid and resourceVersion checked)."""
        from kubernetes.client.rest import ApiException

        self.stopped.set()
        with self.mutex:
            if self.lease is None or self.lost:
                return
            try:
                self.api.delete_namespaced_lease(self.name, self.namespace, body=self.client.V1DeleteOptions(
                    preconditions=self.client.V1Preconditions(uid=self.lease.metadata.uid,
                                                              resource_version=self.lease.metadata.resource_version)))
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self.lease = None

    def keep(self, journal):
        """The migration ends with changes it could not undo: the Lease is kept, with them in
        its journal, for ``podmigrate recover`` (or the next migration) to finish; it lapses
        as no one renews it."""
        self.stopped.set()
        try:
            self.write(phase="leftovers", journal=journal)
        finally:
            self.lease = None


def forget(api, lease):
    """A lapsed Lease with nothing left to do deleted, unless someone changed it since."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    meta = lease["metadata"]
    try:
        api.delete_namespaced_lease(meta["name"], meta["namespace"], body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=meta["uid"], resource_version=meta["resourceVersion"])))
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
