"""The Azure provider, end to end, against a local ARM-compatible endpoint.

Real ansible-playbook and ansible-inventory runs, the real azure.azcollection modules and
inventory plugin, the real Azure SDKs and MSAL over real HTTPS: only the far end is local
(tests/azure/fakearm.py). The tests run in order and share one fake endpoint:
bad input -> check mode -> provision -> wiring -> rerun -> inventory -> teardown.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from harness import SECRET, SUBSCRIPTION, FakeArm

RG = "podmigrate-rg"
RG_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}"
NET = f"{RG_ID}/providers/Microsoft.Network"
COMPUTE = f"{RG_ID}/providers/Microsoft.Compute"
ADMIN_CIDR = "203.0.113.7/32"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"  # Azure's built-in role's id


@pytest.fixture(scope="module")
def fake_arm(tmp_path_factory):
    server = FakeArm(tmp_path_factory.mktemp("fakearm"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def cluster_vars(state_dir) -> dict:
    # One worker keeps the run short; the zone split of two workers is shown by the plan test.
    return {"podmigrate_state_dir": str(state_dir), "azure_infra_admin_source_cidr": ADMIN_CIDR,
            "azure_infra_worker_count": 1, "azure_infra_checkpoint_share": True}


def _resource(state: dict, rid: str) -> dict | None:
    return next((r for k, r in state["resources"].items() if k.lower() == rid.lower()), None)


def _unsafe(value):
    """ansible-inventory marks template-unsafe strings; take the plain value."""
    return value.get("__ansible_unsafe") if isinstance(value, dict) and "__ansible_unsafe" in value else value


def _assert_no_outbound(fake: FakeArm) -> None:
    lines = fake.netguard_log.read_text().splitlines() if fake.netguard_log.exists() else []
    assert [line for line in lines if line.startswith("blocked")] == []
    assert fake.state()["refused"] == []


@pytest.mark.parametrize(("extra", "env_key", "message"), [
    ({"azure_infra_worker_vm_size": "E16-4ds-v4"}, "env", "is not an Azure VM size"),
    ({"azure_infra_pod_cidr": "192.168.128.0/17"}, "env", "overlapping address ranges"),
    ({"azure_infra_subnet_cidr": "10.1.0.0/24"}, "env", "must lie inside the VNet"),
    ({"azure_infra_admin_source_cidr": "0.0.0.0/0"}, "env", "the whole internet (0.0.0.0/0) is refused"),
    ({"azure_infra_admin_source_cidr": ""}, "env", "set azure_infra_admin_source_cidr"),
    ({}, "no-credentials", "no Azure credentials found"),
])
def test_bad_input_is_refused_before_anything_is_made(fake_arm, cluster_vars, extra, env_key, message):
    env = fake_arm.env if env_key == "env" else fake_arm.env_without_credentials
    fake_arm.clear_log()
    # The static part of the Azure inventory (its group_vars make the provider azure); the
    # azure_rm plugin is left out to keep these runs short: the checks never reach Azure.
    run = fake_arm.playbook("playbooks/provision.yml", extra_vars={**cluster_vars, **extra}, env=env,
                            inventory="inventories/azure/hosts.yml")
    assert run.rc != 0
    assert message in " ".join(run.output.split()), run.output[-3000:]
    assert run.recap()["localhost"]["failed"] == 1
    # Not a single management call was made: no write, and not even a read.
    assert [e for e in fake_arm.log() if e["host"] == "management.azure.com"] == []
    assert fake_arm.state()["groups"] == {}


def test_check_mode_shows_the_plan_and_creates_nothing(fake_arm, cluster_vars):
    fake_arm.clear_log()
    run = fake_arm.playbook("site.yml", "--check", extra_vars={**cluster_vars, "azure_infra_worker_count": 2})
    assert run.rc == 0, run.output[-3000:]
    text = " ".join(run.output.split())
    for line in [f"resource group {RG} in westeurope",
                 f"TCP 22 and 6443 from {ADMIN_CIDR}",
                 "virtual network podmigrate-vnet 192.168.0.0/16, subnet podmigrate-subnet 192.168.0.0/24",
                 "public IP podmigrate-api-pip (Standard, static, DNS label podmigrate-api)",
                 "idle timeout 15 min, TCP reset, no outbound SNAT",
                 "VM podmigrate-cp1 (control_plane, Standard_D2ds_v4)",
                 "VM podmigrate-w1 (workers, Standard_E16-4ds_v4, zone 1)",
                 "VM podmigrate-w2 (workers, Standard_E16-4ds_v4, zone 2)",
                 "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"]:
        assert line in text
    assert fake_arm.writes() == []
    assert fake_arm.state()["groups"] == {}
    # the resource group was looked up through the real SDK (a GET answered 404)
    assert any(e["method"] == "GET" and e["path"].lower() == RG_ID.lower() and e["status"] == 404
               for e in fake_arm.log())
    assert "skipping: no hosts matched" in run.output  # nothing to reach yet


def test_provision_creates_everything_in_dependency_order(fake_arm, cluster_vars, state_dir):
    fake_arm.clear_log()
    run = fake_arm.playbook("playbooks/provision.yml", extra_vars=cluster_vars)
    assert run.rc == 0, run.output[-4000:]
    assert run.recap()["localhost"]["failed"] == 0

    puts = [e["path"].lower() for e in fake_arm.writes() if e["method"] == "PUT"]
    storage = f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/".lower()

    def first(suffix: str) -> int:
        matches = [i for i, p in enumerate(puts) if p.endswith(suffix.lower())]
        assert matches, f"no PUT of {suffix} in {puts}"
        return matches[0]

    order = [first(RG_ID), first("/networkSecurityGroups/podmigrate-nsg"), first("/routeTables/podmigrate-pod-routes"),
             first("/virtualNetworks/podmigrate-vnet"), first("/subnets/podmigrate-subnet"),
             first("/publicIPAddresses/podmigrate-api-pip"),
             first("/loadBalancers/podmigrate-api-lb"), first("/publicIPAddresses/podmigrate-cp1-pip"),
             first("/networkInterfaces/podmigrate-cp1-nic"), first("/virtualMachines/podmigrate-cp1"),
             first("/fileServices/default/shares/checkpoints")]
    assert order == sorted(order), puts
    assert first("/networkInterfaces/podmigrate-w1-nic") < first("/virtualMachines/podmigrate-w1")
    assert next(p for p in puts if p.startswith(storage)).count("/") == 8  # the account before its share

    # every long-running write was polled to completion through Azure-AsyncOperation
    log = fake_arm.log()
    assert any("/providers/Fake.Operations/operations/" in e["path"] for e in log)
    # every management call carried a token the fake's token endpoint issued for the service principal
    assert [e for e in log if e["status"] == 401] == []
    assert any(e["path"].endswith("/oauth2/v2.0/token") and e["status"] == 200 for e in log)

    state = fake_arm.state()
    ours = [r for r in state["resources"].values() if r["type"] != "Microsoft.Compute/disks"
            and r["id"].count("/") == 8]
    assert len(ours) == 12  # nsg, route table, vnet, 3 public IPs, lb, 2 NICs, 2 VMs, storage account: nothing else
    for res in ours:
        assert res["tags"]["podmigrate-cluster"] == "podmigrate", res["id"]
        assert res["tags"]["podmigrate-role"] in ("network", "api", "control_plane", "workers", "storage")
    assert state["groups"][RG]["tags"]["podmigrate-cluster"] == "podmigrate"

    # the guard was armed in the module processes and nothing tried to leave the loopback
    armed = [line for line in fake_arm.netguard_log.read_text().splitlines() if line.startswith("armed")]
    assert any("AnsiballZ_azure_rm_virtualmachine" in line for line in armed)
    _assert_no_outbound(fake_arm)
    # the secret of the service principal never shows
    assert SECRET not in run.output
    record = json.loads((state_dir / "azure" / "infra.json").read_text())
    assert record["api_server"]["fqdn"] == "podmigrate-api.westeurope.cloudapp.azure.com"


def test_network_and_load_balancer_wiring(fake_arm, state_dir):
    state = fake_arm.state()
    lb = _resource(state, f"{NET}/loadBalancers/podmigrate-api-lb")
    pip = _resource(state, f"{NET}/publicIPAddresses/podmigrate-api-pip")
    assert lb["sku"]["name"] == "Standard" and pip["sku"]["name"] == "Standard"
    assert pip["properties"]["publicIPAllocationMethod"] == "Static"
    assert pip["properties"]["dnsSettings"]["domainNameLabel"] == "podmigrate-api"

    props = lb["properties"]
    [frontend] = props["frontendIPConfigurations"]
    assert frontend["properties"]["publicIPAddress"]["id"].lower() == pip["id"].lower()
    [pool] = props["backendAddressPools"]
    members = [m["id"].lower() for m in pool["properties"].get("backendIPConfigurations", [])]
    assert members == [f"{NET}/networkInterfaces/podmigrate-cp1-nic/ipConfigurations/ipconfig1".lower()]
    [probe] = props["probes"]
    assert probe["properties"]["protocol"] == "Tcp" and probe["properties"]["port"] == 6443
    [rule] = props["loadBalancingRules"]
    r = rule["properties"]
    assert (r["protocol"], r["frontendPort"], r["backendPort"]) == ("Tcp", 6443, 6443)
    assert r["idleTimeoutInMinutes"] == 15
    assert r["enableTcpReset"] is True
    assert r["disableOutboundSnat"] is True
    assert r["probe"]["id"].lower() == probe["id"].lower()
    assert r["backendAddressPool"]["id"].lower() == pool["id"].lower()
    assert r["frontendIPConfiguration"]["id"].lower() == frontend["id"].lower()

    nsg = _resource(state, f"{NET}/networkSecurityGroups/podmigrate-nsg")
    rules = {x["name"]: x["properties"] for x in nsg["properties"]["securityRules"]}
    assert {(p["destinationPortRange"], p["sourceAddressPrefix"], p["access"]) for p in rules.values()} == \
        {("22", ADMIN_CIDR, "Allow"), ("6443", ADMIN_CIDR, "Allow")}
    vnet = _resource(state, f"{NET}/virtualNetworks/podmigrate-vnet")
    assert vnet["properties"]["addressSpace"]["addressPrefixes"] == ["192.168.0.0/16"]
    [subnet] = vnet["properties"]["subnets"]
    assert subnet["properties"]["addressPrefix"] == "192.168.0.0/24"
    assert subnet["properties"]["networkSecurityGroup"]["id"].lower() == nsg["id"].lower()
    # the pod network crosses VMs through the subnet's route table (its routes come with the cluster)
    table = fake_arm.arm("GET", f"{NET}/routeTables/podmigrate-pod-routes")
    assert subnet["properties"]["routeTable"]["id"].lower() == table["id"].lower()
    assert [s["id"].lower() for s in table["properties"]["subnets"]] == [subnet["id"].lower()]
    assert table["properties"].get("routes", []) == []
    assert table["tags"]["podmigrate-cluster"] == "podmigrate"
    for host in ("podmigrate-cp1", "podmigrate-w1"):
        assert _resource(state, f"{NET}/networkInterfaces/{host}-nic")["properties"]["enableIPForwarding"] is True
    # each VM's identity may change that table's routes (a kept pod address's), nothing else
    identities = [_resource(state, f"{COMPUTE}/virtualMachines/{host}")["identity"]
                  for host in ("podmigrate-cp1", "podmigrate-w1")]
    assert all(i["type"] == "SystemAssigned" and i["principalId"] for i in identities)
    assert sorted((a["properties"]["principalId"], a["properties"]["scope"].lower(),
                   a["properties"]["roleDefinitionId"].lower()) for a in state["role_assignments"]) == \
        sorted((i["principalId"], table["id"].lower(), f"/subscriptions/{SUBSCRIPTION}/providers/"
                "microsoft.authorization/roledefinitions/" + NETWORK_CONTRIBUTOR) for i in identities)

    cp = _resource(state, f"{COMPUTE}/virtualMachines/podmigrate-cp1")["properties"]
    w1 = _resource(state, f"{COMPUTE}/virtualMachines/podmigrate-w1")
    assert cp["hardwareProfile"]["vmSize"] == "Standard_D2ds_v4"
    assert w1["properties"]["hardwareProfile"]["vmSize"] == "Standard_E16-4ds_v4"
    assert w1["zones"] == ["1"]
    linux = cp["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    pubkey = (state_dir / "azure" / "ssh" / "id_ed25519.pub").read_text().split()[1]
    assert pubkey in linux["ssh"]["publicKeys"][0]["keyData"]
    assert cp["storageProfile"]["imageReference"]["offer"] == "0001-com-ubuntu-server-jammy"
    # the worker NIC is not in the API pool
    w1_nic = _resource(state, f"{NET}/networkInterfaces/podmigrate-w1-nic")
    assert not w1_nic["properties"]["ipConfigurations"][0]["properties"].get("loadBalancerBackendAddressPools")

    # the share credentials: kept 0600 for the nodes, equal to the account's key
    creds_file = state_dir / "azure" / "checkpoint-share.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    account = next(r for r in state["resources"].values() if r["type"] == "Microsoft.Storage/storageAccounts")
    assert creds["account"] == account["name"] and creds["share"] == "checkpoints"
    assert creds["unc"] == f"//{account['name']}.file.core.windows.net/checkpoints"
    assert len(creds["password"]) == 64


def test_second_run_changes_nothing(fake_arm, cluster_vars):
    fake_arm.clear_log()
    run = fake_arm.playbook("playbooks/provision.yml", extra_vars=cluster_vars)
    assert run.rc == 0, run.output[-4000:]
    assert run.recap()["localhost"]["changed"] == 0, run.output[-4000:]
    assert fake_arm.writes() == []
    _assert_no_outbound(fake_arm)


def _node(name: str, pod_cidr: str, address: str) -> dict:
    """A Node object as the API server returns it (the fields the routes are made from, and others)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}]}}


def test_pod_routes_follow_the_nodes(fake_arm, cluster_vars, tmp_path):
    # What site.yml does once the cluster has given out the pod ranges (playbooks/cluster.yml
    # reads the Nodes from the API server, which is not here; the Node objects are given).
    play = tmp_path / "pod_routes.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    "    - ansible.builtin.include_role: {name: azure_infra, tasks_from: pod_routes}\n")
    state = fake_arm.state()
    addr = {h: _resource(state, f"{NET}/networkInterfaces/{h}-nic")["properties"]["ipConfigurations"][0]
            ["properties"]["privateIPAddress"] for h in ("podmigrate-cp1", "podmigrate-w1")}
    nodes = [_node("podmigrate-cp1", "10.244.0.0/24", addr["podmigrate-cp1"]),
             _node("podmigrate-w1", "10.244.1.0/24", addr["podmigrate-w1"])]
    table_id = f"{NET}/routeTables/podmigrate-pod-routes"

    def routes() -> dict:
        table = fake_arm.arm("GET", table_id)
        return {r["name"]: (r["properties"]["addressPrefix"], r["properties"]["nextHopType"],
                            r["properties"].get("nextHopIpAddress")) for r in table["properties"].get("routes", [])}

    def run(node_list: list[dict]):
        return fake_arm.playbook(str(play), inventory="inventories/azure/hosts.yml",
                                 extra_vars={**cluster_vars, "azure_infra_k8s_nodes": node_list})

    fake_arm.clear_log()
    first = run(nodes)
    assert first.rc == 0, first.output[-3000:]
    assert routes() == {"pods-podmigrate-cp1": ("10.244.0.0/24", "VirtualAppliance", addr["podmigrate-cp1"]),
                        "pods-podmigrate-w1": ("10.244.1.0/24", "VirtualAppliance", addr["podmigrate-w1"])}
    # a rerun writes nothing
    fake_arm.clear_log()
    again = run(nodes)
    assert again.rc == 0, again.output[-3000:]
    assert again.recap()["localhost"]["changed"] == 0
    assert fake_arm.writes() == []

    # someone else's route stays; a node that left loses its route, the others keep theirs
    fake_arm.arm("PUT", f"{table_id}/routes/to-onprem",
                 {"properties": {"addressPrefix": "172.16.0.0/12", "nextHopType": "VirtualNetworkGateway"}})
    fake_arm.clear_log()
    gone = run(nodes[:1])
    assert gone.rc == 0, gone.output[-3000:]
    assert routes() == {"pods-podmigrate-cp1": ("10.244.0.0/24", "VirtualAppliance", addr["podmigrate-cp1"]),
                        "to-onprem": ("172.16.0.0/12", "VirtualNetworkGateway", None)}
    assert [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in fake_arm.writes()] == \
        [("DELETE", "pods-podmigrate-w1")]

    # a node whose address is outside the subnet (or whose range is outside the pods') is refused
    # before any route is written
    fake_arm.clear_log()
    bad = run([*nodes, _node("podmigrate-w9", "10.244.9.0/24", "10.0.0.9")])
    assert bad.rc != 0
    assert "node podmigrate-w9: pod range '10.244.9.0/24' must lie inside 10.244.0.0/16 and its InternalIP " \
           "'10.0.0.9' inside the subnet 192.168.0.0/24; no route was changed" in " ".join(bad.output.split())
    assert fake_arm.writes() == []
    fake_arm.arm("DELETE", f"{table_id}/routes/to-onprem")
    _assert_no_outbound(fake_arm)


def _seed_other_cluster_vm(fake: FakeArm) -> None:
    """A running VM of another podmigrate cluster in the same subscription."""
    other = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/other-rg"
    fake.arm("PUT", other, {"location": "westeurope"})
    fake.arm("PUT", f"{other}/providers/Microsoft.Network/virtualNetworks/v",
             {"location": "westeurope", "properties": {"addressSpace": {"addressPrefixes": ["10.9.0.0/16"]},
                                                       "subnets": [{"name": "s",
                                                                    "properties": {"addressPrefix": "10.9.0.0/24"}}]}})
    fake.arm("PUT", f"{other}/providers/Microsoft.Network/networkInterfaces/other-cp1-nic",
             {"location": "westeurope", "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
                 "subnet": {"id": f"{other}/providers/Microsoft.Network/virtualNetworks/v/subnets/s"}}}]}})
    vm = fake.arm("PUT", f"{other}/providers/Microsoft.Compute/virtualMachines/other-cp1", {
        "location": "westeurope", "tags": {"podmigrate-cluster": "other", "podmigrate-role": "control_plane"},
        "identity": {"type": "SystemAssigned"},
        "properties": {"hardwareProfile": {"vmSize": "Standard_D2ds_v4"}, "osProfile": {
            "computerName": "other-cp1", "adminUsername": "azureuser", "linuxConfiguration": {}},
            "networkProfile": {"networkInterfaces": [
                {"id": f"{other}/providers/Microsoft.Network/networkInterfaces/other-cp1-nic"}]}}})
    assert vm["name"] == "other-cp1", vm


def test_inventory_groups_the_vms_with_their_addresses(fake_arm):
    _seed_other_cluster_vm(fake_arm)
    inv = fake_arm.inventory()
    assert inv["control_plane"]["hosts"] == ["podmigrate-cp1"]
    assert inv["workers"]["hosts"] == ["podmigrate-w1"]
    assert sorted(inv["nodes"]["children"]) == ["control_plane", "workers"]
    state = fake_arm.state()
    hostvars = inv["_meta"]["hostvars"]
    for host in ("podmigrate-cp1", "podmigrate-w1"):
        pip = _resource(state, f"{NET}/publicIPAddresses/{host}-pip")["properties"]["ipAddress"]
        nic = _resource(state, f"{NET}/networkInterfaces/{host}-nic")
        private = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
        assert _unsafe(hostvars[host]["ansible_host"]) == pip
        assert _unsafe(hostvars[host]["podmigrate_node_private_ip"]) == private
        # where the node's helper writes a kept pod address's route (migration_node_cloud)
        table = f"{NET}/routeTables/podmigrate-pod-routes"
        assert _unsafe(hostvars[host]["podmigrate_route_table"]).lower() == table.lower()
        assert private.startswith("192.168.0.")
    assert "localhost" in inv["ungrouped"]["hosts"]
    assert "other-cp1" not in hostvars  # another cluster's VM is not ours to configure


def test_teardown_deletes_ours_and_nothing_else(fake_arm, cluster_vars):
    # Resources that are not ours: another group with another cluster's resource,
    # and an untagged public IP that someone put into our group.
    sub = f"/subscriptions/{SUBSCRIPTION}"
    fake_arm.arm("PUT", f"{sub}/resourcegroups/someone-else", {"location": "westeurope"})
    theirs = f"{sub}/resourceGroups/someone-else/providers/Microsoft.Network/publicIPAddresses/their-ip"
    fake_arm.arm("PUT", theirs, {"location": "westeurope", "tags": {"podmigrate-cluster": "other"},
                                 "sku": {"name": "Standard"}, "properties": {}})
    stranger = f"{NET}/publicIPAddresses/not-ours"
    fake_arm.arm("PUT", stranger, {"location": "westeurope", "sku": {"name": "Standard"}, "properties": {}})
    # and someone's role assignment on our route table (another cluster's VM's identity)
    table = f"{NET}/routeTables/podmigrate-pod-routes"
    other_vm = _resource(fake_arm.state(),
                         f"{sub}/resourceGroups/other-rg/providers/Microsoft.Compute/virtualMachines/other-cp1")
    theirs_grant = fake_arm.arm("PUT", f"{table}/providers/Microsoft.Authorization/roleAssignments/"
                                       "0b5e55ed-0000-4000-8000-000000000001", {"properties": {
                                           "principalId": other_vm["identity"]["principalId"],
                                           "roleDefinitionId": f"{sub}/providers/Microsoft.Authorization/"
                                                               f"roleDefinitions/{NETWORK_CONTRIBUTOR}"}})
    assert theirs_grant["name"] == "0b5e55ed-0000-4000-8000-000000000001", theirs_grant
    ours_grants = [a["id"].lower() for a in fake_arm.state()["role_assignments"] if a["id"] != theirs_grant["id"]]
    assert len(ours_grants) == 2

    fake_arm.clear_log()
    run = fake_arm.playbook("playbooks/teardown.yml", extra_vars=cluster_vars)
    assert run.rc == 0, run.output[-4000:]
    text = " ".join(run.output.split())
    assert "Microsoft.Compute/virtualMachines podmigrate-cp1" in text
    assert "Microsoft.Network/loadBalancers podmigrate-api-lb" in text
    assert f"kept resource group {RG}, it holds resources that are not ours: not-ours" in text

    state = fake_arm.state()
    left = sorted(state["resources"])
    left = [r for r in left if "/resourcegroups/other-rg/" not in r.lower()]
    assert [r.lower() for r in left] == sorted([theirs.lower(), stranger.lower()])
    assert RG in state["groups"] and "someone-else" in state["groups"]
    # dependants went first (ARM refuses to delete what is still referenced)
    deletes = [e["path"].lower() for e in fake_arm.writes() if e["method"] == "DELETE"]
    assert not [e for e in fake_arm.log() if e["method"] == "DELETE" and e["status"] >= 400]

    def at(suffix: str) -> int:
        return next(i for i, p in enumerate(deletes) if p.endswith(suffix.lower()))
    assert at("/virtualMachines/podmigrate-cp1") < at("/networkInterfaces/podmigrate-cp1-nic") \
        < at("/loadBalancers/podmigrate-api-lb") < at("/publicIPAddresses/podmigrate-api-pip")
    assert at("/virtualNetworks/podmigrate-vnet") < at("/networkSecurityGroups/podmigrate-nsg")
    assert at("/virtualNetworks/podmigrate-vnet") < at("/routeTables/podmigrate-pod-routes")
    assert at("/disks/podmigrate-cp1-osdisk") > at("/virtualMachines/podmigrate-cp1")
    # our role assignments went too (Azure keeps them when their identity or scope goes), first
    assert all(at(grant.split(NET.lower())[1]) < at("/routeTables/podmigrate-pod-routes") for grant in ours_grants)
    assert state["role_assignments"] == [theirs_grant]

    # Once the stranger is gone and the group holds only ours, teardown deletes the group in one
    # call and ARM takes its contents with it (two resources of ours are put back to show it).
    fake_arm.arm("DELETE", stranger)
    tags = {"podmigrate-cluster": "podmigrate", "podmigrate-role": "network"}
    fake_arm.arm("PUT", f"{NET}/networkSecurityGroups/podmigrate-nsg", {"location": "westeurope", "tags": tags})
    fake_arm.arm("PUT", f"{NET}/publicIPAddresses/podmigrate-api-pip",
                 {"location": "westeurope", "tags": tags, "sku": {"name": "Standard"}, "properties": {}})
    fake_arm.clear_log()
    run = fake_arm.playbook("playbooks/teardown.yml", extra_vars=cluster_vars)
    assert run.rc == 0, run.output[-4000:]
    text = " ".join(run.output.split())
    assert f"resource group {RG} deleted" in text
    assert "Microsoft.Network/networkSecurityGroups podmigrate-nsg" in text
    assert [(e["method"], e["path"].lower()) for e in fake_arm.writes()] == [("DELETE", RG_ID.lower())]
    state = fake_arm.state()
    assert RG not in state["groups"]
    assert [r.lower() for r in state["resources"] if "/resourcegroups/other-rg/" not in r.lower()] == [theirs.lower()]
    assert fake_arm.arm("GET", RG_ID)["error"]["code"] == "ResourceGroupNotFound"

    run = fake_arm.playbook("playbooks/teardown.yml", extra_vars=cluster_vars)
    assert run.rc == 0, run.output[-4000:]
    assert run.recap()["localhost"]["changed"] == 0
    assert f"resource group {RG} does not exist" in " ".join(run.output.split())
    # every module of the role asks the subscription azure_infra_subscription_id names (the
    # role's module_defaults), not only the one of the environment's credentials
    other = "0f0f0f0f-0000-4000-8000-00000000000a"
    fake_arm.clear_log()
    run = fake_arm.playbook("playbooks/teardown.yml", extra_vars={**cluster_vars, "azure_infra_subscription_id": other})
    assert run.rc == 0, run.output[-4000:]
    # (the inventory plugin, which is not the role's, lists the VMs of the environment's)
    asked = [e["path"].lower() for e in fake_arm.log() if f"/resourcegroups/{RG.lower()}" in e["path"].lower()]
    assert asked and all(p.startswith(f"/subscriptions/{other}/") for p in asked), asked
    _assert_no_outbound(fake_arm)
