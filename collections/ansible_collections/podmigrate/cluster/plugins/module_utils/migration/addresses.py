# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IP addresses migrated pods keep, given back once no pod holds them.

A migration that keeps the pod's address (engine.Migration.move_address) leaves two
things on the nodes: on the node of the address's range, host-local's reservation of it
held for the pod (so no new pod there gets it), and on every node a record and a /32
route to the node the pod lives on (``podmigrate-node addresses`` lists both). When the
pod ends on its home node, podmigrate's CNI plugin gives the reservation back there and
then. When it ends elsewhere, no node can tell the home node: the sweep does, run by the
eviction webhook's service every ``SWEEP_SECONDS`` (roles/migration_webhook). It lists
what the nodes hold first and the pods second: a pod that held an address when the nodes
were asked is then either still listed (the address stays) or gone for good.
"""

from __future__ import annotations

import json

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.manifest import ADDRESS_ANNOTATION

SWEEP_SECONDS = 15


def in_use(pods):
    """The addresses ``pods`` (dicts) hold: of every pod not ended, its IPs and the address
    its annotation says it keeps (a restored pod before its network is up)."""
    used = set()
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        used.update(entry.get("ip") for entry in status.get("podIPs") or [])
        used.add(status.get("podIP"))
        used.add(((pod.get("metadata") or {}).get("annotations") or {}).get(ADDRESS_ANNOTATION))
    used.discard(None)
    return used


def stale(listings, used):
    """{node: [address...]} of what each node holds (``listings``: {node: its helper's
    ``addresses``}) for an address no pod uses."""
    found = {}
    for name, listing in sorted(listings.items()):
        addresses = sorted(set(listing.get("held") or []) | set(listing.get("routes") or {}))
        left = [address for address in addresses if address not in used]
        if left:
            found[name] = left
    return found


def sweep(api_client, nodes, log=lambda line: None):
    """Every node's reservation, record and route of an address no pod holds any more
    removed; {node: [address...]} of what was."""
    from kubernetes import client

    listings = {name: json.loads(node.helper("addresses", timeout=60)) for name, node in sorted(nodes.items())}
    pods = api_client.sanitize_for_serialization(client.CoreV1Api(api_client).list_pod_for_all_namespaces().items)
    found = stale(listings, in_use(pods))
    for name, addresses in found.items():
        for address in addresses:
            nodes[name].helper("address", address, "--release", "--route", "home", timeout=60)
            log(f"address {address}: no pod holds it any more; given back on {name}")
    return found
