# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Planning a migration: every refusal before anything changes, and where the pod goes.

Pods, nodes and claims are plain dicts in the API's JSON shape (camelCase keys), as
``kubernetes.core.k8s_info`` returns them and as the ``kubernetes`` client's
``ApiClient().sanitize_for_serialization`` makes them, so this module needs neither.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.manifest import RUNTIME_CLASS

# the controllers whose pods move: the restored pod is handed to the source's controller at the
# commit (engine.Migration.hand_over; docs/migration.md says why that never doubles nor loses one)
HANDED_OVER = ("ReplicaSet", "ReplicationController", "Job")
# the controllers whose pods keep their name: the source pod is deleted before the restored
# pod of that name is created, bound to the controller from the start
NAME_KEPT = ("StatefulSet",)
CPU_RE = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPE]i?|e\d+|)$")
MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


class MigrationError(Exception):
    """A migration refused before anything changed; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def cpu_millis(quantity):
    """Millicores of a CPU quantity ("250m", "1", "0.5")."""
    m = CPU_RE.match(str(quantity).strip())
    if not m:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    value = float(m.group(1))
    return round(value if m.group(2) else value * 1000)


def memory_bytes(quantity):
    """Bytes of a memory quantity ("128Mi", "1G", "1048576", "1e6")."""
    m = MEMORY_RE.match(str(quantity).strip())
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    unit = m.group(2)
    factor = 10 ** int(unit[1:]) if unit.startswith("e") else MEMORY_UNITS[unit]
    return int(float(m.group(1)) * factor)


def pod_requests(pod):
    """(millicores, bytes) the scheduler counts for a pod: the sum over its containers, or
    its largest init container's, whichever is more."""
    spec = pod.get("spec", {})

    def total(containers):
        cpu = mem = 0
        for c in containers or []:
            req = (c.get("resources") or {}).get("requests") or {}
            cpu += cpu_millis(req["cpu"]) if "cpu" in req else 0
            mem += memory_bytes(req["memory"]) if "memory" in req else 0
        return cpu, mem

    cpu, mem = total(spec.get("containers"))
    for init in spec.get("initContainers") or []:
        icpu, imem = total([init])
        cpu, mem = max(cpu, icpu), max(mem, imem)
    return cpu, mem


def node_ready(node):
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_room(node, pods_on_node):
    """(millicores, bytes) still free on a node for requests."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    cpu = cpu_millis(allocatable.get("cpu", "0"))
    mem = memory_bytes(allocatable.get("memory", "0"))
    for pod in pods_on_node:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        pcpu, pmem = pod_requests(pod)
        cpu, mem = cpu - pcpu, mem - pmem
    return cpu, mem


# the volumes a migration carries (emptyDir) or that the target mounts again as they were
CARRIED_VOLUMES = ("emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected", "downwardAPI")


def _volume_problems(pod, claims):
    problems = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume.get("name")
        kinds = [k for k in volume if k != "name"]
        if "hostPath" in volume:
            problems.append(f"volume {name!r} is a hostPath: its files stay on the source node")
        elif "persistentVolumeClaim" in volume:
            claim_name = volume["persistentVolumeClaim"].get("claimName")
            claim = claims.get(claim_name)
            if claim is None:
                problems.append(f"volume {name!r}: claim {claim_name!r} not found")
                continue
            modes = ((claim.get("status") or {}).get("accessModes")
                     or (claim.get("spec") or {}).get("accessModes") or [])
            if "ReadWriteMany" not in modes:
                held = "/".join(modes) or "without access modes"
                problems.append(f"volume {name!r}: claim {claim_name!r} is {held}, not ReadWriteMany: "
                                "the target node could not mount it while the source still runs")
        elif not any(k in CARRIED_VOLUMES for k in kinds):
            problems.append(f"volume {name!r} is a {'/'.join(kinds) or 'volume of no type'} volume, which "
                            "podmigrate does not carry (it carries emptyDir volumes, and mounts ReadWriteMany "
                            "claims, configMap, secret, projected and downwardAPI volumes again on the target)")
    return problems


def plan(pod, nodes, pods_by_node, claims=None, target=None):
    """Check that ``pod`` can move, pick the target; return (source node, target node).

    nodes: {name: node}; pods_by_node: {node name: [pods]}; claims: {name: PVC} of the
    pod's namespace. Raises MigrationError with every problem found.
    """
    claims = claims or {}
    problems = []
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    ref = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    source = spec.get("nodeName")
    if status.get("phase") != "Running":
        problems.append(f"pod {ref} is {status.get('phase') or 'in no phase'}, not Running")
    if spec.get("hostNetwork"):
        problems.append(f"pod {ref} uses the host's network: its addresses are the source node's")
    if spec.get("runtimeClassName") not in (None, RUNTIME_CLASS):
        problems.append(f"pod {ref} runs under RuntimeClass {spec['runtimeClassName']}: only pods runc runs "
                        f"(the default runtime or {RUNTIME_CLASS}) can be checkpointed")
    owner = controller_of(pod) or {}
    stays = belongs_to_node(pod)
    if stays:
        problems.append(f"pod {ref} {stays}")
    elif owner and owner.get("kind") not in HANDED_OVER + NAME_KEPT:
        problems.append(f"pod {ref} is managed by {owner.get('kind')} {owner.get('name')}: migrating its pods is "
                        "not supported (those of a ReplicaSet, Deployment, ReplicationController, StatefulSet or "
                        "Job are)")
    problems += _volume_problems(pod, claims)
    if target is not None:
        if target not in nodes:
            problems.append(f"node {target!r} not found (nodes: {', '.join(sorted(nodes))})")
        elif target == source:
            problems.append(f"pod {ref} already runs on {target}")
        else:
            problems += _target_problems(pod, nodes[target], pods_by_node.get(target, []))
            problems += spread_problems(pod, target, nodes, pods_by_node)
        chosen = target
    else:
        candidates = [n for n in sorted(nodes) if n != source]
        fitting = [n for n in candidates if not _target_problems(pod, nodes[n], pods_by_node.get(n, [])) +
                   spread_problems(pod, n, nodes, pods_by_node)]
        # the node with the most room left for requests, memory first (then by name)
        chosen = min(fitting, key=lambda n: tuple(-x for x in reversed(node_room(nodes[n], pods_by_node.get(n, [])))),
                     default=None)
        if chosen is None:
            problems.append(f"no node can take pod {ref}: "
                            + ("; ".join(f"{n}: {', '.join(_target_problems(pod, nodes[n], pods_by_node.get(n, [])))}"
                                         for n in candidates) or "there is no other node"))
    if problems:
        raise MigrationError(problems)
    return source, chosen


def controller_of(pod):
    """The pod's controlling ownerReference (a dict), or None."""
    return next((o for o in (pod.get("metadata") or {}).get("ownerReferences") or [] if o.get("controller")), None)


def belongs_to_node(pod):
    """Why ``pod`` stays with its node, whatever asks it to move (a migration, a drain), or
    None: a static pod's mirror, a DaemonSet's pod."""
    meta = pod.get("metadata") or {}
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return (f"is a static pod of node {(pod.get('spec') or {}).get('nodeName')}'s kubelet (its mirror here): "
                "it belongs to that node")
    owner = controller_of(pod) or {}
    if owner.get("kind") == "DaemonSet":
        return f"belongs to DaemonSet {owner.get('name')}, which runs one pod on each node: it stays with its node"
    return None


def _target_problems(pod, node, pods_on_node):
    name = (node.get("metadata") or {}).get("name")
    problems = []
    if not node_ready(node):
        problems.append(f"node {name} is not Ready")
    if (node.get("spec") or {}).get("unschedulable"):
        problems.append(f"node {name} is cordoned")
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(tolerates(t, taint) for t in tolerations):
            shown = taint["key"] + (f"={taint['value']}" if taint.get("value") else "")
            problems.append(f"node {name} has the taint {shown}:{taint['effect']}, which the pod does not tolerate")
    problems += placement_problems(pod, node)
    cpu, mem = pod_requests(pod)
    free_cpu, free_mem = node_room(node, pods_on_node)
    if cpu > free_cpu or mem > free_mem:
        problems.append(f"node {name} has no room: the pod requests {cpu}m CPU and {mem} bytes, "
                        f"{max(free_cpu, 0)}m and {max(free_mem, 0)} bytes are free")
    return problems


HOSTNAME = "kubernetes.io/hostname"


def placement_problems(pod, node):
    """Why the scheduler would not place ``pod`` on ``node``: its nodeSelector, its required
    node affinity (Kubernetes' rules: any term, every expression of it). What pins the pod
    to its one node (the node's hostname label, or its name) is not obeyed: a migration
    moves it off that node on purpose (the restored pod is bound to the target)."""
    meta = node.get("metadata") or {}
    name = meta.get("name")
    labels = meta.get("labels") or {}
    spec = pod.get("spec") or {}
    problems = [f"node {name} does not have the label {key}={value} of the pod's nodeSelector"
                for key, value in sorted((spec.get("nodeSelector") or {}).items())
                if key != HOSTNAME and labels.get(key) != value]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(_term_matches(t, labels, name) for t in terms):
        problems.append(f"node {name} matches none of the pod's required node affinity terms")
    return problems


def _term_matches(term, labels, name):
    """Whether a node selector term selects the node; its pins to one node are met by all."""
    expressions = [(e, labels) for e in term.get("matchExpressions") or [] if e.get("key") != HOSTNAME] + \
        [(e, {"metadata.name": name}) for e in term.get("matchFields") or [] if e.get("key") != "metadata.name"]
    return bool(term.get("matchExpressions") or term.get("matchFields")) and \
        all(_expression_matches(e, values) for e, values in expressions)


def _expression_matches(expression, labels):
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    value = labels.get(key)
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt"):
        try:
            number, bound = int(value), int(values[0])
        except (TypeError, ValueError, IndexError):
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def spread_problems(pod, target, nodes, pods_by_node):
    """The pod's topology spread constraints (whenUnsatisfiable: DoNotSchedule) the move to
    ``target`` would break: the skew between the target's domain, with the pod, and the
    emptiest domain, without it, above maxSkew."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    problems = []
    for constraint in spec.get("topologySpreadConstraints") or []:
        if constraint.get("whenUnsatisfiable", "DoNotSchedule") != "DoNotSchedule":
            continue
        key, skew = constraint.get("topologyKey"), int(constraint.get("maxSkew") or 1)
        # the domains of the nodes the pod may run on (nodeAffinityPolicy Honor, the default)
        domain_of = {n: ((node.get("metadata") or {}).get("labels") or {}).get(key) for n, node in nodes.items()
                     if not placement_problems(pod, node)}
        if domain_of.get(target) is None:
            problems.append(f"node {target} has no label {key}, which the pod's topology spread needs")
            continue
        counts = dict.fromkeys((d for d in domain_of.values() if d is not None), 0)
        selector = constraint.get("labelSelector") or {}
        for node_name, pods in pods_by_node.items():
            domain = domain_of.get(node_name)
            if domain is None:
                continue
            for other in pods:
                other_meta = other.get("metadata") or {}
                if other_meta.get("uid") == meta.get("uid") or \
                        other_meta.get("namespace") != meta.get("namespace") or \
                        (other.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                if selector_matches(selector, other_meta.get("labels") or {}):
                    counts[domain] += 1
        counts[domain_of[target]] += selector_matches(selector, meta.get("labels") or {})
        if counts[domain_of[target]] - min(counts.values()) > skew:
            problems.append(f"node {target}: moving the pod there would skew its topology spread over {key} "
                            f"beyond {skew} ({', '.join(f'{d}: {c}' for d, c in sorted(counts.items()))})")
    return problems


def selector_matches(selector, labels):
    """Whether a label selector (matchLabels and matchExpressions) selects ``labels``."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and \
        all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


MARGIN_BYTES = 64 << 20  # CRIU's own images, the logs, the filesystem's slack


def room_problems(memory, volumes, transfer, free, target_memory):
    """Why the nodes have no room for the checkpoint of a pod whose processes use ``memory``
    bytes and whose emptyDir volumes hold ``volumes``: ``free`` {"source": (name, bytes),
    "target": (name, bytes)} on the disk of the migration's files, ``target_memory`` (name,
    MemAvailable bytes). The target holds the whole payload (with the share transfer also
    its archive); the source, with the direct transfer, all but the memory pages (which
    stream to the target), with ``keep`` (the direct transfer of a pod that keeps its
    name, whose source keeps a copy) the payload, with the share transfer the payload and
    its archive. The target must have the memory the pod's processes use now, not only
    what it requests."""
    payload = memory + volumes
    need = {"source": {"share": 2 * payload, "keep": payload}.get(transfer, volumes) + MARGIN_BYTES,
            "target": (2 * payload if transfer == "share" else payload) + MARGIN_BYTES}
    problems = []
    for role in ("source", "target"):
        name, available = free[role]
        if available < need[role]:
            problems.append(f"node {name} has {available >> 20} MiB free for the checkpoint, "
                            f"it needs {need[role] >> 20} MiB (the {role} of a {payload >> 20} MiB payload)")
    name, available = target_memory
    if available < memory + MARGIN_BYTES:
        problems.append(f"node {name} has {available >> 20} MiB of memory available, the pod's processes use "
                        f"{memory >> 20} MiB")
    return problems


def tolerates(toleration, taint):
    """Whether a pod toleration matches a node taint (Kubernetes' rules)."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


# ---------------------------------------------------------------- the seed-fork profile
# The original tutorial's fork (Kubernetes v1.19 with Schrettenbrunner's PoC) migrates a
# pod when a new pod names it in ``spec.clonePod``: the fork's kubelets checkpoint the
# source and restore the clone from the checkpoint share. docs/seed-fork.md.
UPSTREAM, SEED_FORK = "upstream", "seed-fork"
PROFILES = (UPSTREAM, SEED_FORK)


def clone_problems(pod):
    """What the seed-fork profile refuses on top of ``plan``'s refusals."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    ref = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    problems = []
    policy = spec.get("restartPolicy") or "Always"
    if policy != "Never":
        problems.append(f"pod {ref} has restartPolicy {policy}: the seed-fork profile needs Never (the tutorial: "
                        "otherwise the source container is restarted while the fork checkpoints it)")
    for volume in spec.get("volumes") or []:
        if "emptyDir" in volume:
            problems.append(f"volume {volume.get('name')!r} is an emptyDir: the fork's clone checkpoints processes, "
                            "not volumes; its files would be lost (the upstream profile carries them)")
    return problems


def plan_clone(pod, nodes, pods_by_node, claims=None, target=None):
    """``plan`` for the seed-fork profile: every refusal of ``plan`` and of ``clone_problems``
    at once; returns (source node, target node)."""
    problems = clone_problems(pod)
    try:
        planned = plan(pod, nodes, pods_by_node, claims, target)
    except MigrationError as exc:
        raise MigrationError(exc.problems + problems) from None
    if problems:
        raise MigrationError(problems)
    return planned


HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def node_address(node, host):
    """The address another node reaches ``node`` at (it goes into authorized_keys and
    known_hosts): its InternalIP, which must be an IP address (each node reports its own),
    else ``host``, the inventory's, an IP address or a host name."""
    reported = internal_ip(node)
    name = (node.get("metadata") or {}).get("name")
    if reported is not None:
        try:
            return str(ipaddress.ip_address(reported))
        except ValueError:
            raise MigrationError([f"node {name} reports the InternalIP {reported!r}, which is not an IP address"]) \
                from None
    if not HOST_RE.match(host or ""):
        raise MigrationError([f"node {name}: the inventory's host {host!r} is neither an IP address nor a host name"])
    return host


def internal_ip(node):
    """A node's InternalIP, or None."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return address.get("address")
    return None


def address_home(address, nodes):
    """The node whose pod range (``spec.podCIDRs``) holds IPv4 ``address`` (its host-local
    reserves it), or None (``nodes``: {name: Node})."""
    try:
        ip = ipaddress.IPv4Address(address or "")
    except ValueError:
        return None
    for name, node in sorted(nodes.items()):
        spec = node.get("spec") or {}
        for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            network = ipaddress.ip_network(cidr, strict=False)
            if network.version == 4 and ip in network:
                return name
    return None


def address_routes(home, at, node_ips):
    """{node: its route of a kept address} while the pod lives on node ``at``: ``home``
    everywhere when that is the node of the address's range (its range's routes cover it);
    else ``local`` on ``at`` (into its bridge) and ``at``'s IP on every other node
    (``node_ips``: {node: IP})."""
    if at == home:
        return {name: "home" for name in node_ips}
    return {name: "local" if name == at else node_ips[at] for name in node_ips}
