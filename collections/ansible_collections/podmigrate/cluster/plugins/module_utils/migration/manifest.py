# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod that replaces the source on the target (upstream: the restored pod; seed-fork:
the tutorial's clone pod), and when it counts as restored. Plain dicts, as in plan.py."""

from __future__ import annotations

import copy
import re

ORIGINAL_NAME = "podmigrate.io/migrated-from"
ORIGINAL_NODE = "podmigrate.io/source-node"
RUNTIME_CLASS = "podmigrate"
RESTORE_ANNOTATION = "podmigrate.io/restore"
# the IP address a restored pod keeps (podmigrate's CNI plugin, roles/migration_node/files/podmigrate_cni.py)
ADDRESS_ANNOTATION = "podmigrate.io/ip"
# a ReplicaSet scaling down deletes its pods of the lowest cost first (after those not
# Running or not Ready): the source is given the lowest at the commit, the restored pod
# never has it (engine.Migration.hand_over)
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_COST = -(2**31)


def restored_pod(pod, target, migration_id, suffix, runtime_class=RUNTIME_CLASS, owner=None, keep_name=False,
                 address=None):
    """The manifest of the pod restored on ``target`` by migration ``migration_id``.

    The same containers and images (never pulled: the image must be on the target), labels
    kept (Services follow the pod), the original name and node recorded in annotations,
    bound to the target node, run under ``runtime_class``: podmigrate's runtime restores
    each container from the migration's payload when containerd creates it, as the
    annotation RESTORE_ANNOTATION names it. The source's init containers ran already and do
    not run again. ``owner``, an ownerReference, is made its controller: the migration's
    Lease, while the source's controller (a ReplicaSet) must not count it yet. With
    ``keep_name`` (a StatefulSet's pod) it has the source's name, and its ownerReferences
    from the start: it is created once the source is gone. ``address``: the source's IP,
    which the restored pod keeps (annotation ADDRESS_ANNOTATION); without it, a new one.
    """
    spec = copy.deepcopy(pod.get("spec") or {})
    metadata = _moved_metadata(pod, suffix)
    if keep_name:
        metadata["name"] = pod["metadata"]["name"]
        metadata["ownerReferences"] = copy.deepcopy(pod["metadata"].get("ownerReferences") or [])
    metadata["annotations"][RESTORE_ANNOTATION] = migration_id
    metadata["annotations"].pop(ADDRESS_ANNOTATION, None)
    if address:
        metadata["annotations"][ADDRESS_ANNOTATION] = address
    if metadata["annotations"].get(DELETION_COST) == str(LOWEST_COST):
        metadata["annotations"][DELETION_COST] = str(LOWEST_COST + 1)
    if owner:
        metadata["ownerReferences"] = [{**owner, "controller": True}]
    for container in spec["containers"]:
        container["imagePullPolicy"] = "Never"
    for key in ("nodeName", "nodeSelector", "affinity", "schedulerName", "initContainers"):
        spec.pop(key, None)
    spec["nodeName"] = target
    spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _moved_metadata(pod, suffix):
    """Metadata of the pod that replaces ``pod`` on another node: ``<original name>-<suffix>``,
    the same namespace and labels (Services follow it), the original name and node in
    annotations (a pod moved twice keeps its first name)."""
    meta = pod.get("metadata") or {}
    if not re.match(r"^[a-z0-9]{1,10}$", suffix):
        raise ValueError(f"suffix must be 1-10 lower-case letters or digits: {suffix!r}")
    base = (meta.get("annotations") or {}).get(ORIGINAL_NAME, meta["name"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith("kubectl.kubernetes.io/last-applied") and k != RESTORE_ANNOTATION}
    annotations[ORIGINAL_NAME] = base
    annotations[ORIGINAL_NODE] = (pod.get("spec") or {}).get("nodeName", "")
    return {"name": f"{base[:63 - len(suffix) - 1]}-{suffix}", "namespace": meta.get("namespace", "default"),
            "labels": dict(meta.get("labels") or {}), "annotations": annotations}


def clone_pod(pod, target, suffix):
    """The tutorial's clone pod for ``pod`` on ``target``: the same spec and containers (the
    fork restores them from the source's checkpoint), ``spec.clonePod`` naming the source,
    ``restartPolicy: Never``, bound to the target node; labels kept and the original name
    and node recorded as for an upstream migration."""
    spec = copy.deepcopy(pod.get("spec") or {})
    metadata = _moved_metadata(pod, suffix)
    # the source's placement rules would keep the clone off the target: nodeName decides
    for key in ("nodeName", "nodeSelector", "affinity", "schedulerName"):
        spec.pop(key, None)
    spec["nodeName"] = target
    spec["clonePod"] = pod["metadata"]["name"]
    spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# Waiting reasons that a restore does not recover from by waiting longer.
FAILED_WAITING = ("CreateContainerError", "CreateContainerConfigError", "ErrImageNeverPull", "InvalidImageName",
                  "CrashLoopBackOff", "RunContainerError", "ImageInspectError")


def restored_problem(pod, containers):
    """None when the restored pod is Running with every container running (and Ready);
    otherwise what it is waiting for, prefixed "failed: " when waiting cannot help."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"failed: the pod is {status['phase']}: {status.get('message') or status.get('reason') or ''}".strip()
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or []}
    waiting = []
    for name in containers:
        s = statuses.get(name)
        if s is None:
            waiting.append(f"{name}: no status yet")
            continue
        state = s.get("state") or {}
        if s.get("restartCount", 0) > 0 or "terminated" in state:
            term = state.get("terminated") or (s.get("lastState") or {}).get("terminated") or {}
            return (f"failed: container {name} exited after the restore "
                    f"({term.get('reason', 'exited')} {term.get('exitCode', '')}: {term.get('message', '')})").strip()
        if "waiting" in state:
            reason = state["waiting"].get("reason", "")
            message = f"{name}: {reason} {state['waiting'].get('message', '')}".strip()
            if reason in FAILED_WAITING:
                return f"failed: container {message}"
            waiting.append(message)
        elif not s.get("ready"):
            waiting.append(f"{name}: not ready")
    if waiting or status.get("phase") != "Running":
        return "; ".join(waiting) or f"the pod is {status.get('phase')}"
    return None
