# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migrated pod's IP address on this node: where the node routes it, and, on the node
whose range it belongs to, host-local's reservation of it (podmigrate_cni.py is the other
half: the CNI plugin that puts the address on the restored pod)."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os

from podmigrate_node import cloud
from podmigrate_node.common import fail

CONFLIST = os.environ.get("PODMIGRATE_CONFLIST", "/etc/cni/net.d/10-podmigrate.conflist")
PLUGIN = "podmigrate-address"


def cni():
    import podmigrate_cni

    return podmigrate_cni


def network():
    """{"name", "bridge", "keeps": whether the plugin is chained, "ranges": host-local's
    subnets} of the node's pod network."""
    try:
        with open(CONFLIST) as f:
            conf = json.load(f)
    except (OSError, ValueError):
        return {"name": None, "bridge": None, "keeps": False, "ranges": []}
    plugins = conf.get("plugins") or []
    types = {plugin.get("type"): plugin for plugin in plugins}
    bridge = (types.get("bridge") or {}).get("bridge")
    ranges = [entry["subnet"] for plugin in plugins for group in (plugin.get("ipam") or {}).get("ranges") or []
              for entry in group if "subnet" in entry]
    return {"name": conf.get("name"), "bridge": bridge, "ranges": ranges,
            "keeps": PLUGIN in types and bool(bridge) and os.access(os.path.join("/opt/cni/bin", PLUGIN), os.X_OK)}


def _address(value):
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        fail(f"not an IPv4 address: {value!r}")


def route(address, to):
    """The node's record and route of ``address``: ``local`` (into the bridge: the pod
    lives here), ``home`` (no record, no route of its own: the node's range routes cover it
    where the pod lives on the node of its range) or a node's IP (the pod lives there)."""
    plugin, net = cni(), network()
    os.makedirs(plugin.ADDRESSES, mode=0o755, exist_ok=True)
    path = os.path.join(plugin.ADDRESSES, address)
    if to == "home":
        plugin.ip("route", "del", f"{address}/32", check=False)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        clouds = cloud.provider()
        if clouds and _in(address, net["ranges"]):
            clouds.route_home(address)  # the cloud's route too: the range's covers it (cloud.py)
        return
    if to == "local":
        if not net["bridge"]:
            fail(f"{CONFLIST} names no bridge")
        plugin.ip("route", "replace", f"{address}/32", "dev", net["bridge"])
        clouds = cloud.provider()
        if clouds:
            clouds.route_here(address)  # the cloud's network delivers it here too (cloud.py)
    else:
        plugin.ip("route", "replace", f"{address}/32", "via", _address(to))
    _write(path, to + "\n")


def _in(address, subnets):
    """Whether ``address`` lies in one of ``subnets`` (the node's pod ranges: network())."""
    for subnet in subnets:
        with contextlib.suppress(ValueError):
            if ipaddress.IPv4Address(address) in ipaddress.ip_network(subnet, strict=False):
                return True
    return False


def _network_name():
    return network()["name"] or "podmigrate"


def _reservations():
    """host-local's directory of the node's pod network (its reservations, its lock)."""
    return os.path.join(cni().RESERVATIONS, _network_name())


def hold(address):
    """host-local's reservation of ``address`` kept for the migrated pod: its content made
    podmigrate's, so that the source sandbox's deletion does not release it. If the source
    sandbox went first and host-local gave the address back (a recovery that goes forward
    after the source node's watcher deleted the source pod), it is reserved anew, under
    host-local's lock: no pod of this node holds it then, and none may get it."""
    plugin = cni()
    directory = _reservations()
    lock_path, path = os.path.join(directory, "lock"), os.path.join(directory, address)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, newline="") as f:  # as host-local wrote it: "ID\r\nIFNAME"
                content = f.read()
        except FileNotFoundError:
            content = None
        if content is not None and content.split()[:1] == [plugin.HELD]:
            return  # held since an earlier migration of the pod
        lines = (content or "").splitlines()  # the sandbox's id, its interface
        _write(path, f"{plugin.HELD}\r\n{lines[1] if len(lines) > 1 else 'eth0'}")


def _write(path, content):
    with open(path + ".part", "w", newline="") as f:
        f.write(content)
    os.replace(path + ".part", path)


def listing():
    """{"network": network(), "routes": {address: record}, "held": [addresses]} of this node."""
    plugin = cni()
    routes = {}
    for name in sorted(os.listdir(plugin.ADDRESSES)) if os.path.isdir(plugin.ADDRESSES) else []:
        try:
            routes[str(ipaddress.IPv4Address(name))] = plugin.record(name)
        except ValueError:
            continue  # a .sandbox or .part file
    held = []
    directory = _reservations()
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        try:
            with open(os.path.join(directory, name)) as f:
                if f.read().split()[:1] == [plugin.HELD]:
                    held.append(name)
        except OSError:
            continue
    return {"network": network(), "routes": routes, "held": held}


def cmd_address(args):
    address = _address(args.ip)
    if args.route:
        route(address, args.route if args.route in ("local", "home") else _address(args.route))
    if args.hold:
        hold(address)
    if args.release:  # no pod holds it any more (the sweep, module_utils/migration/addresses.py)
        cni().release(_network_name(), address)


def cmd_addresses(_args):
    print(json.dumps(listing()))
