#!/usr/bin/python3 -IS
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""podmigrate's CNI plugin ``podmigrate-address``: a migrated pod keeps its IP address.

Chained after ``bridge`` (host-local IPAM) in the node's network (roles/cluster_network).
For an ordinary pod it passes the previous result on unchanged. For a pod whose annotation
``podmigrate.io/ip`` names an address (the migration engine sets it on the pod it restores:
the source pod's IPv4 address, from another node's range), containerd hands the pod's
annotations to the plugin (its capability ``io.kubernetes.cri.pod-annotations``) and

  ADD  puts that address (/32) on the pod's interface and makes it the source of the
       pod's routes, and puts it first in the result: the kubelet reports it as the pod's
       IP (the address host-local gave stays on the interface, unused, and is released
       with the pod as ever). The node routes the address into its bridge where the
       node's record says the address lives here (``/run/podmigrate/addresses/IP``,
       written by ``podmigrate-node address IP --route``), or has no record (a node that
       rebooted: the kubelet starts the pod again), but not for a pod its migration staged
       here before the source was frozen, which gets no traffic meant for the source.
       The network of a pod its migration restores here is held (every packet dropped)
       until the runtime has restored its every container: a client's packet that came
       before its connection's socket was back would be refused (a reset); dropped, it is
       sent again and finds the socket.
  DEL  of the sandbox that had the address last on this node (ADD records it: the
       kubelet tears an older sandbox's network down again when it removes it, after the
       pod came back to the node) removes the node's route of the address into the
       bridge, if it has one. Unless the
       node's record says the address has moved on to another node (a migration routed it
       there before deleting this pod), the pod is gone for good: the record goes and, on
       the node whose range the address belongs to, host-local's reservation of it that
       ``podmigrate-node address-hold`` kept for the migrated pod is released.

It runs the ``ip`` command; its own configuration names the bridge (``"bridge"``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
import sys

ANNOTATION = "podmigrate.io/ip"
RESTORE = "podmigrate.io/restore"  # the migration that restores the pod (the engine's annotation)
MIGRATIONS = os.environ.get("PODMIGRATE_MIGRATIONS", "/var/lib/podmigrate/migrations")
CAPABILITY = "io.kubernetes.cri.pod-annotations"
ADDRESSES = os.environ.get("PODMIGRATE_ADDRESSES", "/run/podmigrate/addresses")  # as the routes: until a reboot
RESERVATIONS = os.environ.get("PODMIGRATE_CNI_RESERVATIONS", "/var/lib/cni/networks")
HELD = "podmigrate-kept"  # host-local's reservation of an address a migrated pod holds elsewhere
VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]


class Failure(Exception):
    pass


def ip(*args, netns=None, check=True):
    command = (["nsenter", f"--net={netns}"] if netns else []) + ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise Failure(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def migration_of(conf):
    """The directory of the migration that restores the pod (its annotation
    ``podmigrate.io/restore``) on this node, or None for a pod no migration restores."""
    mid = ((conf.get("runtimeConfig") or {}).get(CAPABILITY) or {}).get(RESTORE) or ""
    if not mid or "/" in mid or mid.startswith("."):
        return None
    return os.path.join(MIGRATIONS, mid)


def staged(conf):
    """Whether the pod is a restored pod its migration staged on this node and has not yet
    routed its address to (the engine's ``address-expected`` without ``address-moved``)."""
    directory = migration_of(conf)
    return directory is not None and os.path.exists(os.path.join(directory, "address-expected")) and \
        not os.path.exists(os.path.join(directory, "address-moved"))


def restoring(conf):
    """Whether the pod is one its migration restores on this node now (the migration's files
    here, not abandoned): its network is held until its runtime has restored it."""
    directory = migration_of(conf)
    return directory is not None and os.path.isdir(directory) and \
        not os.path.exists(os.path.join(directory, "abort"))


def hold(netns):
    """The pod's network held (podmigrate_runtime.hold_network, installed beside this file)."""
    here = os.path.dirname(os.path.realpath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import podmigrate_runtime

    try:
        podmigrate_runtime.hold_network(netns)
    except subprocess.CalledProcessError as exc:
        raise Failure(f"could not hold the restored pod's network: {exc.stderr.strip()}") from None


def kept_address(conf):
    """The address the pod keeps (its annotation), or None."""
    value = ((conf.get("runtimeConfig") or {}).get(CAPABILITY) or {}).get(ANNOTATION)
    if not value:
        return None
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise Failure(f"annotation {ANNOTATION}: {value!r} is not an IPv4 address") from None
    return str(address)


def record(address):
    """Where the node's record says ``address`` lives: "local", a node's IP, or None."""
    try:
        with open(os.path.join(ADDRESSES, address)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def with_address(prev, address, ifname):
    """The previous result with ``address`` first, on the pod's interface ``ifname``, and
    the gateway of that interface's first address."""
    index = next((i for i, link in enumerate(prev.get("interfaces") or [])
                  if link.get("name") == ifname and link.get("sandbox")), None)
    if index is None:
        raise Failure(f"the previous result has no interface {ifname} in the pod")
    ips = [entry for entry in prev.get("ips") or [] if entry.get("interface") == index]
    gateway = next((entry["gateway"] for entry in ips if entry.get("gateway")), None)
    if gateway is None:
        raise Failure(f"the previous result has no gateway on {ifname}")
    first = {"address": f"{address}/32", "gateway": gateway, "interface": index}
    rest = [entry for entry in prev.get("ips") or [] if entry.get("address", "").split("/")[0] != address]
    return {**prev, "ips": [first, *rest]}, gateway, ips


def add(conf, netns, ifname, sandbox):
    prev = conf.get("prevResult") or {}
    address = kept_address(conf)
    if address is None:
        return prev
    result, gateway, own = with_address(prev, address, ifname)
    if restoring(conf):
        hold(netns)
    os.makedirs(ADDRESSES, mode=0o755, exist_ok=True)
    with open(os.path.join(ADDRESSES, f"{address}.sandbox"), "w") as f:
        f.write(sandbox + "\n")
    ip("addr", "replace", f"{address}/32", "dev", ifname, netns=netns)
    for entry in own:  # the subnet host-local's address is in, sourced from the kept address
        network = ipaddress.ip_interface(entry["address"]).network
        if network.version == 4:
            ip("route", "replace", str(network), "dev", ifname, "proto", "kernel", "scope", "link",
               "src", address, netns=netns)
    ip("route", "replace", "default", "via", gateway, "dev", ifname, "src", address, netns=netns)
    where = record(address)
    if where == "local" or (where is None and not staged(conf)):
        ip("route", "replace", f"{address}/32", "dev", conf["bridge"])
    return result


def release(network, address):
    """host-local's reservation of ``address`` in ``network`` removed, if podmigrate holds it
    (its content is HELD), under host-local's lock (also the helper's ``address --release``)."""
    directory = os.path.join(RESERVATIONS, network)
    try:
        lock = open(os.path.join(directory, "lock"), "a")  # noqa: SIM115 - held until the end
    except OSError:
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(directory, address)
        try:
            with open(path) as f:
                held = f.read().split()[:1] == [HELD]
        except OSError:
            return
        if held:
            os.remove(path)


def holder(address):
    """The sandbox that had ``address`` last on this node (its ADD), or None."""
    try:
        with open(os.path.join(ADDRESSES, f"{address}.sandbox")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def delete(conf, sandbox):
    address = kept_address(conf)
    if address is None or holder(address) not in (None, sandbox):
        # an older sandbox of the pod (the kubelet tears a dead sandbox's network down again
        # when it removes it): the address belongs to a newer one here now
        return
    ip("route", "del", f"{address}/32", "dev", conf["bridge"], check=False)
    if record(address) not in (None, "local"):
        return  # moved on to another node (the engine routed it there first): still held
    release(conf["name"], address)  # (on its home node; elsewhere host-local has no reservation of it)
    for name in (address, f"{address}.sandbox"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(ADDRESSES, name))


def main():
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": VERSIONS}))
        return 0
    conf = json.load(sys.stdin)
    try:
        if command == "ADD":
            print(json.dumps(add(conf, os.environ["CNI_NETNS"], os.environ.get("CNI_IFNAME", "eth0"),
                                 os.environ.get("CNI_CONTAINERID", ""))))
        elif command == "DEL":
            delete(conf, os.environ.get("CNI_CONTAINERID", ""))
        # CHECK, STATUS, GC: nothing of the plugin's own to check or collect
    except (Failure, KeyError, OSError) as exc:
        print(json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"), "code": 100,
                          "msg": "podmigrate-address: " + str(exc)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
