"""A migrated pod's address, on a node made of two network namespaces of the test's own (a
"node" with a bridge, a "pod" with eth0 on it): podmigrate's CNI plugin run as containerd
runs it, and the helper's `address` commands, with the real `ip` and real packets."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from helpers import NODE_FILES

PLUGIN = NODE_FILES / "podmigrate_cni.py"
KEPT = "10.250.1.7"  # from the range of another node
OWN = "10.250.2.5"  # what host-local gave the pod on this node


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def node(tmp_path):
    """{"host", "pod": namespace names, "netns": the pod's path, "env": the plugin's, "prev":
    the bridge plugin's result, "tmp"}; everything removed after."""
    tag = secrets.token_hex(3)
    host, pod = f"pmt-cnih-{tag}", f"pmt-cnip-{tag}"
    for name in (host, pod):
        sh("ip", "netns", "add", name)
    try:
        def in_host(*a):
            return sh("ip", "netns", "exec", host, *a)

        in_host("ip", "link", "add", "br0", "type", "bridge")
        in_host("ip", "addr", "add", "10.250.2.1/24", "dev", "br0")
        in_host("ip", "link", "add", "vh", "type", "veth", "peer", "name", "eth0", "netns", pod)
        in_host("ip", "link", "set", "vh", "master", "br0")
        for link in ("br0", "vh", "lo"):
            in_host("ip", "link", "set", link, "up")
        for cmd in (["addr", "add", f"{OWN}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["link", "set", "lo", "up"], ["route", "add", "default", "via", "10.250.2.1"]):
            sh("ip", "-n", pod, *cmd)
        (tmp_path / "addresses").mkdir()
        (tmp_path / "networks" / "podmigrate").mkdir(parents=True)
        prev = {"cniVersion": "1.0.0",
                "interfaces": [{"name": "br0", "mac": "aa"}, {"name": "vh", "mac": "bb"},
                               {"name": "eth0", "mac": "cc", "sandbox": f"/var/run/netns/{pod}"}],
                "ips": [{"address": f"{OWN}/24", "gateway": "10.250.2.1", "interface": 2}],
                "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
        env = dict(os.environ, PODMIGRATE_ADDRESSES=str(tmp_path / "addresses"),
                   PODMIGRATE_MIGRATIONS=str(tmp_path / "migrations"),
                   PODMIGRATE_CNI_RESERVATIONS=str(tmp_path / "networks"))
        yield {"host": host, "pod": pod, "netns": f"/var/run/netns/{pod}", "env": env, "prev": prev,
               "tmp": tmp_path}
    finally:
        for name in (host, pod):
            sh("ip", "netns", "del", name, check=False)


def plugin(node, command, annotations=None, sandbox="c0ffee"):
    conf = {"cniVersion": "1.0.0", "name": "podmigrate", "type": "podmigrate-address", "bridge": "br0",
            "prevResult": node["prev"],
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": annotations or {}}}
    env = dict(node["env"], CNI_COMMAND=command, CNI_NETNS=node["netns"], CNI_IFNAME="eth0",
               CNI_CONTAINERID=sandbox, CNI_PATH="/opt/cni/bin")
    done = subprocess.run(["ip", "netns", "exec", node["host"], sys.executable, str(PLUGIN)],
                          input=json.dumps(conf), capture_output=True, text=True, env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def routes(namespace):
    return json.loads(sh("ip", "-n", namespace, "-j", "route", "show").stdout)


SERVE = ("import socket, sys; s = socket.socket(); s.settimeout(3); "
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7777)); s.listen(); "
         "print('ready', flush=True); c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()")
CALL = ("import socket, sys; c = socket.create_connection((sys.argv[1], 7777), timeout=3); "
        "print(c.recv(64).decode())")


def exchange(server_ns, client_ns, address):
    """The address a server in ``server_ns`` saw a client from ``client_ns`` connect from, to
    ``address`` port 7777 (TCP); None when no connection was made."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVE],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        done = sh("ip", "netns", "exec", client_ns, sys.executable, "-c", CALL, address, check=False)
        return done.stdout.strip() if done.returncode == 0 else None
    finally:
        server.kill()
        server.wait()


def test_an_ordinary_pod_passes_through_unchanged(node):
    code, result = plugin(node, "ADD")
    assert code == 0 and result == node["prev"]
    assert not [r for r in routes(node["host"]) if r["dst"].startswith("10.250.1.")]


def test_a_restored_pod_gets_its_kept_address_first_and_as_the_source_of_its_routes(node):
    (node["tmp"] / "addresses" / KEPT).write_text("local\n")
    code, result = plugin(node, "ADD", {"podmigrate.io/ip": KEPT})
    assert code == 0, result
    assert result["ips"][0] == {"address": f"{KEPT}/32", "gateway": "10.250.2.1", "interface": 2}
    assert result["ips"][1]["address"] == f"{OWN}/24"
    default = next(r for r in routes(node["pod"]) if r["dst"] == "default")
    assert default["prefsrc"] == KEPT
    # what a dump records of the pod's addresses: the kept one first, as its routes' source
    sys.path.insert(0, str(NODE_FILES))
    import podmigrate_runtime

    assert podmigrate_runtime.netns_addresses(node["netns"]) == [KEPT, OWN]
    assert next(r for r in routes(node["pod"]) if r["dst"] == "10.250.2.0/24")["prefsrc"] == KEPT
    # the node routes it into its bridge (its record says it lives here), and packets get there
    assert {"dst": KEPT, "dev": "br0"}.items() <= next(r for r in routes(node["host"]) if r["dst"] == KEPT).items()
    assert exchange(node["pod"], node["host"], KEPT) == "10.250.2.1"
    # and what the pod sends comes from its kept address: to its node, and beyond its gateway
    assert exchange(node["host"], node["pod"], "10.250.2.1") == KEPT
    sh("ip", "-n", node["host"], "addr", "add", "10.250.9.1/32", "dev", "lo")
    assert exchange(node["host"], node["pod"], "10.250.9.1") == KEPT
    # an older sandbox of the pod on this node, removed by the kubelet: nothing of this one's goes
    code, _ = plugin(node, "DEL", {"podmigrate.io/ip": KEPT}, sandbox="01d")
    assert code == 0 and exchange(node["pod"], node["host"], KEPT) == "10.250.2.1"
    # gone for good: the route, the record and podmigrate's reservation of it go
    held = node["tmp"] / "networks" / "podmigrate" / KEPT
    held.write_text("podmigrate-kept\r\neth0")
    code, _ = plugin(node, "DEL", {"podmigrate.io/ip": KEPT})
    assert code == 0
    assert not [r for r in routes(node["host"]) if r["dst"] == KEPT]
    assert not held.exists() and not (node["tmp"] / "addresses" / KEPT).exists()


def test_a_staged_pod_gets_no_route_until_the_address_lives_on_its_node(node):
    staged = node["tmp"] / "migrations" / "m1"
    staged.mkdir(parents=True)
    (staged / "address-expected").touch()
    code, _ = plugin(node, "ADD", {"podmigrate.io/ip": KEPT, "podmigrate.io/restore": "m1"})
    assert code == 0
    assert not [r for r in routes(node["host"]) if r["dst"] == KEPT]
    assert exchange(node["pod"], node["host"], KEPT) is None


KNOCK = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 7777), timeout=1)\n"
         "except OSError as exc:\n    print(type(exc).__name__)")


SEND = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[2], 0))\ntry:\n"
        "    s.sendto(b'x', (sys.argv[1], 7777))\n    print('sent')\nexcept OSError as exc:\n"
        "    print(type(exc).__name__)")


def test_a_pod_restored_here_has_its_network_held_until_its_runtime_lifts_the_hold(node):
    """Until every container is restored, a packet to the pod is dropped, not refused: a
    client's retransmission then finds its connection's restored socket, not a reset."""
    (node["tmp"] / "migrations" / "m2").mkdir(parents=True)
    (node["tmp"] / "addresses" / KEPT).write_text("local\n")
    code, result = plugin(node, "ADD", {"podmigrate.io/ip": KEPT, "podmigrate.io/restore": "m2"})
    assert code == 0, result
    # nothing listens in the pod: held, the client hears nothing (a timeout, not a refusal)
    knock = ["ip", "netns", "exec", node["host"], sys.executable, "-c", KNOCK, KEPT]
    assert sh(*knock).stdout.strip() == "TimeoutError"
    assert exchange(node["pod"], node["host"], KEPT) is None

    def send(mark):
        return sh("ip", "netns", "exec", node["pod"], sys.executable, "-c", SEND, "10.250.2.1", mark).stdout.strip()

    # nothing leaves it either, but CRIU's own packets (its mark): its restore of a connection
    # its peer had half-closed replays that FIN through a raw socket, and fails if refused
    assert send("0") == "PermissionError"
    assert send("0xC114") == "sent"
    sys.path.insert(0, str(NODE_FILES))
    import podmigrate_runtime

    podmigrate_runtime.release_network(node["netns"])
    assert sh(*knock).stdout.strip() == "ConnectionRefusedError"
    assert exchange(node["pod"], node["host"], KEPT) == "10.250.2.1"
    podmigrate_runtime.release_network(node["netns"])  # again: nothing to lift, no error
    # a migration abandoned here (its abort file): a pod created for it is not held
    (node["tmp"] / "migrations" / "m2" / "abort").touch()
    sh("ip", "-n", node["pod"], "addr", "del", f"{KEPT}/32", "dev", "eth0")
    sh("ip", "netns", "exec", node["pod"], "iptables", "-F")
    code, result = plugin(node, "ADD", {"podmigrate.io/ip": KEPT, "podmigrate.io/restore": "m2"})
    assert code == 0, result
    assert sh(*knock).stdout.strip() == "ConnectionRefusedError"


def test_a_pod_started_again_on_a_node_without_records_is_routed_there(node):
    """A node that rebooted has lost its records (they live in /run, as the routes do); the
    kubelet starts the moved pod there again, its migration long over."""
    code, _ = plugin(node, "ADD", {"podmigrate.io/ip": KEPT, "podmigrate.io/restore": "m0"})
    assert code == 0
    assert exchange(node["pod"], node["host"], KEPT) == "10.250.2.1"


def test_a_pod_whose_address_moved_on_keeps_the_reservation(node):
    """The source pod of a second migration is deleted after its address was routed on."""
    (node["tmp"] / "addresses" / KEPT).write_text("10.250.2.9\n")
    held = node["tmp"] / "networks" / "podmigrate" / KEPT
    held.write_text("podmigrate-kept\r\neth0")
    code, _ = plugin(node, "DEL", {"podmigrate.io/ip": KEPT})
    assert code == 0 and held.exists() and (node["tmp"] / "addresses" / KEPT).exists()


def test_an_address_that_is_not_ipv4_is_refused(node):
    code, result = plugin(node, "ADD", {"podmigrate.io/ip": "fd00::1"})
    assert code == 1 and "not an IPv4 address" in result["msg"]


def helper(node, node_helper, *args, env=None):
    conflist = node["tmp"] / "10-podmigrate.conflist"
    conflist.write_text(json.dumps({"name": "podmigrate", "plugins": [
        {"type": "bridge", "bridge": "br0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.2.0/24"}]]}},
        {"type": "podmigrate-address", "bridge": "br0"}]}))
    env = dict(node["env"], PODMIGRATE_CONFLIST=str(conflist), **(env or {}))
    return subprocess.run(["ip", "netns", "exec", node["host"], sys.executable, str(node_helper), *args],
                          capture_output=True, text=True, env=env)


def test_the_helper_routes_an_address_and_holds_and_releases_its_reservation(node, node_helper):
    assert helper(node, node_helper, "address", KEPT, "--route", "local").returncode == 0
    assert next(r for r in routes(node["host"]) if r["dst"] == KEPT)["dev"] == "br0"
    assert helper(node, node_helper, "address", KEPT, "--route", "10.250.2.9").returncode == 0
    route = next(r for r in routes(node["host"]) if r["dst"] == KEPT)
    assert route["gateway"] == "10.250.2.9"
    reservation = node["tmp"] / "networks" / "podmigrate" / KEPT
    reservation.write_bytes(b"4f1d0c\r\neth0")
    assert helper(node, node_helper, "address", KEPT, "--hold").returncode == 0
    assert reservation.read_bytes() == b"podmigrate-kept\r\neth0"
    listing = json.loads(helper(node, node_helper, "addresses").stdout)
    assert listing["routes"] == {KEPT: "10.250.2.9"} and listing["held"] == [KEPT]
    assert listing["network"]["name"] == "podmigrate" and listing["network"]["bridge"] == "br0"
    assert helper(node, node_helper, "address", KEPT, "--hold").returncode == 0  # held already: kept as it is
    assert reservation.read_bytes() == b"podmigrate-kept\r\neth0"
    assert helper(node, node_helper, "address", KEPT, "--release", "--route", "home").returncode == 0
    assert not reservation.exists()
    assert not [r for r in routes(node["host"]) if r["dst"] == KEPT]
    assert json.loads(helper(node, node_helper, "addresses").stdout)["routes"] == {}
    # no reservation to hold (the source's sandbox went first, host-local gave it back):
    # reserved anew as podmigrate's, so that no new pod of this node gets it
    assert helper(node, node_helper, "address", KEPT, "--hold").returncode == 0
    assert reservation.read_bytes() == b"podmigrate-kept\r\neth0"
    assert helper(node, node_helper, "address", KEPT, "--release").returncode == 0 and not reservation.exists()
    # a reservation of host-local's own (a pod's sandbox) is never released by podmigrate
    reservation.write_bytes(b"4f1d0c\r\neth0")
    assert helper(node, node_helper, "address", KEPT, "--release").returncode == 0
    assert reservation.read_bytes() == b"4f1d0c\r\neth0"


def test_on_a_cloud_node_the_route_of_the_node_an_address_lives_on_and_of_its_home_node_go_to_the_cloud_too(
        node, node_helper):
    """With a cloud configuration (cloud.py; Azure's route table, tested against the fake
    ARM in tests/azure/test_cloud_routes.py), taking an address here and giving one of
    this node's range back home are the cloud's business too; routing an address via
    another node, or home on a node whose range it is not, are not. Here the cloud's
    metadata service is not there: the calls that reach for it fail, saying so."""
    conf = node["tmp"] / "cloud.json"
    conf.write_text(json.dumps({"azure": {"route_table": "/subscriptions/s/resourceGroups/g/providers/"
                                          "Microsoft.Network/routeTables/t", "node_ip": "10.0.0.6",
                                          "identity_endpoint": "http://127.0.0.1:9/token"}}))
    env = {"PODMIGRATE_CLOUD": str(conf)}
    for address, to, cloud in ((KEPT, "local", True), (OWN, "home", True), (KEPT, "10.250.2.9", False),
                               (KEPT, "home", False)):
        done = helper(node, node_helper, "address", address, "--route", to, env=env)
        if cloud:
            assert done.returncode == 1 and "no token from the VM's managed identity" in done.stderr, (address, to)
        else:
            assert done.returncode == 0, (address, to, done.stderr)
    conf.write_text("{}")  # no cloud (every local node): nothing asked of one
    assert helper(node, node_helper, "address", OWN, "--route", "home", env=env).returncode == 0


HOST_LOCAL = "/usr/lib/cni/host-local"  # the node's allocator (Debian's containernetworking-plugins)


def host_local(node, command, container="newpod"):
    """host-local itself over the one address KEPT, in the test's reservations (as the
    bridge plugin runs it for a pod's sandbox)."""
    conf = {"cniVersion": "1.0.0", "name": "podmigrate",
            "ipam": {"type": "host-local", "dataDir": str(node["tmp"] / "networks"),
                     "ranges": [[{"subnet": "10.250.1.0/24", "rangeStart": KEPT, "rangeEnd": KEPT}]]}}
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=node["netns"],
               CNI_IFNAME="eth0", CNI_PATH=os.path.dirname(HOST_LOCAL))
    return subprocess.run([HOST_LOCAL], input=json.dumps(conf), capture_output=True, text=True, env=env)


def test_a_held_address_is_never_handed_to_another_pod_and_is_again_once_released(node, node_helper):
    """While a migrated pod holds its address elsewhere, the node of its range never gives it
    to a new pod (host-local, the real allocator, finds it taken); given back, it does."""
    reservation = node["tmp"] / "networks" / "podmigrate" / KEPT
    reservation.write_bytes(b"4f1d0c\r\neth0")  # the source pod's sandbox
    assert helper(node, node_helper, "address", KEPT, "--hold").returncode == 0
    # the source pod goes: host-local frees what its sandbox holds, and this is not its any more
    assert host_local(node, "DEL", container="4f1d0c").returncode == 0
    assert reservation.read_bytes() == b"podmigrate-kept\r\neth0"
    taken = host_local(node, "ADD")
    assert taken.returncode != 0 and "no IP addresses available" in taken.stdout + taken.stderr, taken
    # the migrated pod ended: given back, and the next pod gets it
    assert helper(node, node_helper, "address", KEPT, "--release").returncode == 0
    given = host_local(node, "ADD")
    assert given.returncode == 0, given
    assert json.loads(given.stdout)["ips"][0]["address"] == f"{KEPT}/24"
