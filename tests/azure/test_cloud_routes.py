"""A kept address's route in Azure's route table, written by the node helper as the VM's
managed identity (roles/migration_node/files/podmigrate_node/cloud.py), against the fake
ARM endpoint and its instance metadata service: the real helper code, real HTTPS through
the proxy, a token from the metadata endpoint, ARM's long-running operations."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from harness import ROOT, SUBSCRIPTION, FakeArm

RG = "podmigrate-rg"
TABLE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.Network/routeTables/"
         "podmigrate-pod-routes")
HELPER = ROOT / "roles" / "migration_node" / "files"
ADDRESS = "10.244.1.5"


@pytest.fixture(scope="module")
def fake_arm(tmp_path_factory):
    server = FakeArm(tmp_path_factory.mktemp("fakearm-routes"))
    try:
        assert server.arm("PUT", f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RG}", {"location": "westeurope"})
        server.arm("PUT", TABLE, {"location": "westeurope", "properties": {"routes": [
            {"name": "pods-worker-1", "properties": {
                "addressPrefix": "10.244.1.0/24", "nextHopType": "VirtualAppliance",
                "nextHopIpAddress": "10.0.0.5"}}]}})
        yield server
    finally:
        server.stop()


def cloud(fake, tmp_path, call, node_ip="10.0.0.6", table=TABLE, identity=None):
    """``call`` ("route_here ADDRESS" or "route_home ADDRESS") by the helper's cloud module in
    a process of its own, configured as a node on Azure is: no Azure credentials in its
    environment, a token only from the (fake) metadata service."""
    conf = tmp_path / "cloud.json"
    identity = identity or f"http://127.0.0.1:{fake.port}/metadata/identity/oauth2/token"
    conf.write_text(json.dumps({"azure": {"route_table": table, "node_ip": node_ip, "identity_endpoint": identity}}))
    method, address = call.split()
    code = f"from podmigrate_node import cloud; getattr(cloud.provider(), {method!r})({address!r})"
    env = dict(fake.env_without_credentials, PODMIGRATE_CLOUD=str(conf),
               PYTHONPATH=f"{HELPER}:{fake.env['PYTHONPATH']}")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def routes(fake):
    return {r["name"]: r["properties"] for r in fake.arm("GET", TABLE)["properties"]["routes"]}


def test_the_node_a_kept_address_lives_on_routes_it_to_itself_and_its_home_node_removes_the_route(fake_arm, tmp_path):
    fake_arm.clear_log()
    done = cloud(fake_arm, tmp_path, f"route_here {ADDRESS}")
    assert done.returncode == 0, done.stderr
    route = routes(fake_arm)["address-10-244-1-5"]
    assert route["addressPrefix"] == f"{ADDRESS}/32"
    assert route["nextHopType"] == "VirtualAppliance" and route["nextHopIpAddress"] == "10.0.0.6"
    log = fake_arm.log()
    assert [e["host"] for e in log][:1] == ["imds"] and log[0]["status"] == 200
    writes = fake_arm.writes()
    assert [(w["method"], w["path"]) for w in writes] == [("PUT", f"{TABLE}/routes/address-10-244-1-5")]
    assert any("Fake.Operations/operations/" in e["path"] for e in log), "the operation was not waited for"
    token_calls = [e for e in log if e["host"] == "imds"]
    assert len(token_calls) == 1  # one token for all of a command's calls
    # the pod moves on: the route is changed, not doubled; the node ranges' routes untouched
    assert cloud(fake_arm, tmp_path, f"route_here {ADDRESS}", node_ip="10.0.0.7").returncode == 0
    now = routes(fake_arm)
    assert now["address-10-244-1-5"]["nextHopIpAddress"] == "10.0.0.7"
    assert sorted(now) == ["address-10-244-1-5", "pods-worker-1"]
    # home again (or given back): removed; a second removal finds none and is fine
    assert cloud(fake_arm, tmp_path, f"route_home {ADDRESS}").returncode == 0
    assert sorted(routes(fake_arm)) == ["pods-worker-1"]
    done = cloud(fake_arm, tmp_path, f"route_home {ADDRESS}")
    assert done.returncode == 0, done.stderr
    assert sorted(routes(fake_arm)) == ["pods-worker-1"]
    guard = fake_arm.netguard_log.read_text().splitlines() if fake_arm.netguard_log.exists() else []
    assert [line for line in guard if line.startswith("blocked")] == [] and fake_arm.state()["refused"] == []


def test_a_route_azure_cannot_write_fails_the_helper_saying_why_and_shows_no_token(fake_arm, tmp_path):
    done = cloud(fake_arm, tmp_path, f"route_here {ADDRESS}", table=TABLE.replace("pod-routes", "no-such-table"))
    assert done.returncode == 1 and "podmigrate-node: Azure" in done.stderr, done.stderr
    assert "no-such-table" in done.stderr
    assert not re.search(r"[0-9a-f]{32}", done.stderr + done.stdout)  # the fake's tokens' shape
    # no metadata service (not a VM with an identity): said so, nothing written
    fake_arm.clear_log()
    done = cloud(fake_arm, tmp_path, f"route_here {ADDRESS}", identity="http://127.0.0.1:9/metadata/identity/oauth2/token")
    assert done.returncode == 1 and "no token from the VM's managed identity" in done.stderr, done.stderr
    assert fake_arm.writes() == [] and "address-10-244-1-5" not in routes(fake_arm)
