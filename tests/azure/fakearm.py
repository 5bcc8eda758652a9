"""A local, in-memory stand-in for Azure Resource Manager and the Entra ID token endpoint.

It listens on 127.0.0.1 only and is used as the HTTPS proxy of the process under test
(``HTTPS_PROXY=http://127.0.0.1:PORT``): the Azure SDKs keep their real endpoints
(``management.azure.com``, ``login.microsoftonline.com``), open a CONNECT tunnel to this
server, and speak TLS inside it to a certificate made by the tests for those names (trusted
through ``REQUESTS_CA_BUNDLE``). Nothing is ever forwarded: a CONNECT to any other host is
refused and recorded, so a test can prove that no request was meant for anything else.

The rules it follows are ARM's, for the calls the azure.azcollection modules and the
azure_rm inventory plugin make:

- PUT is create-or-update: 201 on create, 200 on update. Network and compute writes are
  long-running: ``Azure-AsyncOperation`` + ``Location`` headers, the operation reports
  ``InProgress`` once, then ``Succeeded``. Storage account create answers 202 + ``Location``.
- GET of a missing resource (or of a resource in a missing group) is 404 with ARM's error body.
- References (subnet, NSG, public IP, backend pool, NIC...) must exist when a resource is
  written (400 ``InvalidResourceReference``), and a resource still referenced by another
  cannot be deleted (400 ``InUseResourceCannotBeDeleted``).
- DELETE is 202 + polling (200/204 when already gone); deleting a resource group removes
  every resource in it.
- Back-references ARM computes are computed here too: a load balancer's backend pool lists
  the NIC IP configurations that joined it; a NIC names its VM; a route table lists the
  subnets that use it (its ``subnets`` is read-only: a PUT's copy is ignored).
- A route to a VirtualAppliance needs its next hop address (400 ``InvalidRoute``).
- Every management request needs a bearer token issued by the fake token endpoint for the
  expected client id and secret.

Plain HTTP requests to the proxy port under ``/_fake/`` are the test's control channel
(the request log, the stored resources, seeding resources that are "not ours").

Run standalone: ``python tests/azure/fakearm.py --port 8443 --cert c.pem --key k.pem``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import ipaddress
import json
import socketserver
import ssl
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ARM_HOST = "management.azure.com"
LOGIN_HOST = "login.microsoftonline.com"
HOSTS = (ARM_HOST, LOGIN_HOST)

# Network child collections that live inside their parent's properties.
CHILD_COLLECTIONS = {
    "microsoft.network/virtualnetworks": ["subnets"],
    "microsoft.network/networksecuritygroups": ["securityRules", "defaultSecurityRules"],
    "microsoft.network/loadbalancers": ["frontendIPConfigurations", "backendAddressPools", "loadBalancingRules",
                                        "probes", "inboundNatRules", "outboundRules", "inboundNatPools"],
    "microsoft.network/networkinterfaces": ["ipConfigurations"],
    "microsoft.network/routetables": ["routes"],
}
ROLE_ASSIGNMENTS_CASED = "/providers/Microsoft.Authorization/roleAssignments"
ROLE_ASSIGNMENTS = ROLE_ASSIGNMENTS_CASED.lower()
# Resource types whose writes are long-running operations with Azure-AsyncOperation.
ASYNC_NAMESPACES = ("microsoft.network", "microsoft.compute")
VM_SIZES = ["Standard_B2s", "Standard_D2ds_v4", "Standard_D4ds_v4", "Standard_E16-4ds_v4", "Standard_E8ds_v4"]
IMAGE_VERSIONS = ["20.04.202401010", "22.04.202401010", "22.04.202402150", "24.04.202402150"]


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a leaf certificate for the Azure host names; returns (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podmigrate fake ARM test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in HOSTS] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ARM_HOST)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _lower(s: str) -> str:
    return s.lower().rstrip("/")


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _walk_ids(obj, skip_prefix: str):
    """Every ARM resource id referenced anywhere in obj (except ids inside skip_prefix)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "id" and isinstance(value, str) and value.lower().startswith("/subscriptions/"):
                if not _lower(value).startswith(_lower(skip_prefix)):
                    yield value
            else:
                yield from _walk_ids(value, skip_prefix)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk_ids(item, skip_prefix)


class Arm:
    """The in-memory resource store and ARM's rules."""

    def __init__(self, subscription: str, tenant: str, client_id: str, secret: str):
        self.subscription, self.tenant, self.client_id, self.secret = subscription, tenant, client_id, secret
        self.lock = threading.RLock()
        self.groups: dict[str, dict] = {}
        self.resources: dict[str, dict] = {}  # lower(id) -> resource (top-level and nested, not network children)
        self.operations: dict[str, dict] = {}
        self.tokens: set[str] = set()
        self.log: list[dict] = []
        self.refused: list[str] = []
        self.next_public = 10
        self.keys: dict[str, list[dict]] = {}
        self.assignments: dict[str, dict] = {}  # lower(id) -> role assignment

    # ---------------------------------------------------------------- helpers
    def _group(self, name: str) -> dict:
        group = self.groups.get(name.lower())
        if group is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
        return group

    def _split(self, path: str) -> dict:
        """Parse /subscriptions/s/resourceGroups/g/providers/ns/t1/n1[/t2/n2...] (and collections)."""
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        info: dict = {"parts": parts}
        if len(parts) < 2 or parts[0].lower() != "subscriptions":
            return info
        if parts[1].lower() != self.subscription.lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{parts[1]}' could not be found.")
        rest = parts[2:]
        if rest[:1] and rest[0].lower() == "resourcegroups":
            if len(rest) >= 2:
                info["group"] = rest[1]
            rest = rest[2:]
        if rest[:1] and rest[0].lower() == "providers" and len(rest) >= 2:
            info["namespace"] = rest[1]
            pairs = rest[2:]
            info["segments"] = pairs
        elif rest:
            info["tail"] = rest
        return info

    def _type_of(self, namespace: str, segments: list[str]) -> str:
        return "/".join([namespace, *segments[0::2]])

    def _lookup(self, rid: str) -> dict | None:
        """A stored resource, or a network child inside its parent, by id."""
        key = _lower(rid)
        if key in self.resources:
            return self.resources[key]
        for parent_key, parent in self.resources.items():
            if key.startswith(parent_key + "/"):
                for coll in CHILD_COLLECTIONS.get(parent["type"].lower(), []):
                    for child in parent.get("properties", {}).get(coll, []) or []:
                        if _lower(child.get("id", "")) == key:
                            return child
        return None

    def _check_references(self, rid: str, body: dict) -> None:
        for ref in _walk_ids(body.get("properties", {}), rid):
            if self._lookup(ref) is None:
                raise ArmError(400, "InvalidResourceReference",
                               f"Resource {ref} referenced by resource {rid} was not found.")

    def _referrers(self, rid: str) -> list[str]:
        key = _lower(rid)
        found = []
        for other_key, other in self.resources.items():
            if other_key == key or other_key.startswith(key + "/"):
                continue
            for ref in _walk_ids(other.get("properties", {}), other["id"]):
                if _lower(ref) == key or _lower(ref).startswith(key + "/"):
                    found.append(other["id"])
                    break
        return found

    def _public_ip(self) -> str:
        self.next_public += 1
        return f"20.50.100.{self.next_public}"

    def _private_ip(self, subnet_id: str) -> str:
        subnet = self._lookup(subnet_id)
        prefix = subnet["properties"].get("addressPrefix") or subnet["properties"]["addressPrefixes"][0]
        used = set()
        for res in self.resources.values():
            if res["type"].lower() != "microsoft.network/networkinterfaces":
                continue
            for ipc in res["properties"].get("ipConfigurations", []):
                used.add(ipc["properties"].get("privateIPAddress"))
        for host in list(ipaddress.ip_network(prefix).hosts())[3:]:  # Azure reserves .1-.3
            if str(host) not in used:
                return str(host)
        raise ArmError(400, "SubnetIsFull", f"Subnet {subnet_id} has no free address.")

    # ---------------------------------------------------------------- normalising writes
    def _normalise(self, rid: str, rtype: str, body: dict, old: dict | None) -> dict:
        name = rid.rstrip("/").split("/")[-1]
        res = {"id": rid, "name": name, "type": rtype}
        for key in ("location", "tags", "sku", "kind", "zones", "identity", "plan", "zones"):
            if key in body:
                res[key] = copy.deepcopy(body[key])
            elif old and key in old:
                res[key] = copy.deepcopy(old[key])
        if "location" in res:
            res["location"] = res["location"].replace(" ", "").lower()
        props = copy.deepcopy(body.get("properties", {}) or {})
        ltype = rtype.lower()
        namespace = ltype.split("/")[0]
        if namespace == "microsoft.network":
            res["etag"] = _etag()
            props["resourceGuid"] = (old or {}).get("properties", {}).get("resourceGuid", str(uuid.uuid4()))
        # network children: ids, etags, types, kept when a parent PUT omits them
        for coll in CHILD_COLLECTIONS.get(ltype, []):
            if props.get(coll) is None and old is not None and coll in old.get("properties", {}):
                props[coll] = copy.deepcopy(old["properties"][coll])
            for child in props.get(coll, []) or []:
                child["id"] = f"{rid}/{coll}/{child['name']}"
                child["etag"] = res.get("etag", _etag())
                child["type"] = f"{rtype}/{coll}"
                child.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if ltype == "microsoft.network/networksecuritygroups":
            props["defaultSecurityRules"] = [
                {"name": n, "id": f"{rid}/defaultSecurityRules/{n}", "type": f"{rtype}/defaultSecurityRules",
                 "properties": {"protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
                                "sourceAddressPrefix": src, "destinationAddressPrefix": dst, "access": acc,
                                "priority": prio, "direction": d, "provisioningState": "Succeeded",
                                "description": n}}
                for n, src, dst, acc, prio, d in [
                    ("AllowVnetInBound", "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Inbound"),
                    ("AllowAzureLoadBalancerInBound", "AzureLoadBalancer", "*", "Allow", 65001, "Inbound"),
                    ("DenyAllInBound", "*", "*", "Deny", 65500, "Inbound"),
                    ("AllowVnetOutBound", "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Outbound"),
                    ("AllowInternetOutBound", "*", "Internet", "Allow", 65001, "Outbound"),
                    ("DenyAllOutBound", "*", "*", "Deny", 65500, "Outbound")]]
        if ltype == "microsoft.network/publicipaddresses":
            old_ip = (old or {}).get("properties", {}).get("ipAddress")
            props["ipAddress"] = old_ip or self._public_ip()
            props.setdefault("publicIPAddressVersion", "IPv4")
            props.setdefault("publicIPAllocationMethod", "Static" if res.get("sku", {}).get("name") == "Standard"
                             else "Dynamic")
            props.setdefault("idleTimeoutInMinutes", 4)
            dns = props.get("dnsSettings")
            if dns and dns.get("domainNameLabel"):
                dns["fqdn"] = f"{dns['domainNameLabel']}.{res['location']}.cloudapp.azure.com"
        if ltype == "microsoft.network/networkinterfaces":
            old_ips = {c["name"]: c["properties"].get("privateIPAddress")
                       for c in (old or {}).get("properties", {}).get("ipConfigurations", [])}
            for i, ipc in enumerate(props.get("ipConfigurations", [])):
                p = ipc["properties"]
                p.setdefault("privateIPAllocationMethod", "Dynamic")
                p.setdefault("privateIPAddressVersion", "IPv4")
                p.setdefault("primary", i == 0)
                if p["privateIPAllocationMethod"] == "Dynamic" or not p.get("privateIPAddress"):
                    p["privateIPAddress"] = old_ips.get(ipc["name"]) or self._private_ip(p["subnet"]["id"])
            props.setdefault("macAddress", (old or {}).get("properties", {}).get("macAddress")
                             or "00-0D-3A-" + "-".join(f"{b:02X}" for b in uuid.uuid4().bytes[:3]))
            props.setdefault("enableAcceleratedNetworking", False)
            props.setdefault("enableIPForwarding", False)
            props.setdefault("dnsSettings", {"dnsServers": [], "appliedDnsServers": []})
            props.setdefault("primary", True)
        if ltype == "microsoft.network/routetables":
            props.pop("subnets", None)  # read-only: ARM computes it from the subnets that use the table
            props.setdefault("disableBgpRoutePropagation", False)
            for route in props.get("routes", []) or []:
                p = route["properties"]
                if p.get("nextHopType") == "VirtualAppliance" and not p.get("nextHopIpAddress"):
                    raise ArmError(400, "InvalidRoute", f"Route {route['name']} of type VirtualAppliance "
                                                        "needs a next hop IP address.")
        if ltype == "microsoft.compute/virtualmachines":
            props["vmId"] = (old or {}).get("properties", {}).get("vmId", str(uuid.uuid4()))
            kind = (res.get("identity") or {}).get("type", "None")
            if "SystemAssigned" in kind:
                before = ((old or {}).get("identity") or {}).get("principalId")
                res["identity"] = dict(res["identity"], principalId=before or str(uuid.uuid4()), tenantId=self.tenant)
            else:
                res.pop("identity", None)
            os_profile = props.get("osProfile", {})
            os_profile.pop("adminPassword", None)  # ARM never returns secrets
            os_profile.pop("customData", None)
            storage = props.setdefault("storageProfile", {})
            image = storage.get("imageReference")
            if image and image.get("version"):
                image["exactVersion"] = image["version"]
            os_disk = storage.setdefault("osDisk", {})
            os_disk.setdefault("name", f"{name}_OsDisk_1_{uuid.uuid4().hex}")
            os_disk.setdefault("osType", "Linux")
            os_disk.setdefault("createOption", "FromImage")
            os_disk.setdefault("diskSizeGB", 30)
            os_disk.setdefault("deleteOption", "Detach")
            md = os_disk.setdefault("managedDisk", {})
            group_id = rid.split("/providers/")[0]
            disk_id = f"{group_id}/providers/Microsoft.Compute/disks/{os_disk['name']}"
            md["id"] = disk_id
            if _lower(disk_id) not in self.resources:
                self.resources[_lower(disk_id)] = {
                    "id": disk_id, "name": os_disk["name"], "type": "Microsoft.Compute/disks",
                    "location": res.get("location"), "zones": res.get("zones"),
                    "sku": {"name": md.get("storageAccountType", "Standard_LRS")},
                    "properties": {"diskSizeGB": os_disk["diskSizeGB"], "osType": "Linux",
                                   "provisioningState": "Succeeded", "diskState": "Attached",
                                   "creationData": {"createOption": "FromImage"}}}
            storage.setdefault("dataDisks", [])
        if ltype == "microsoft.storage/storageaccounts":
            acct = name
            props.setdefault("primaryEndpoints", {s: f"https://{acct}.{s}.core.windows.net/"
                                                  for s in ("blob", "file", "queue", "table")})
            props.setdefault("primaryLocation", res.get("location"))
            props.setdefault("statusOfPrimary", "available")
            props.setdefault("creationTime", datetime.datetime.now(datetime.UTC).isoformat())
            props.setdefault("encryption", {"keySource": "Microsoft.Storage",
                                            "services": {"blob": {"enabled": True}, "file": {"enabled": True}}})
            props.setdefault("supportsHttpsTrafficOnly", True)
            props.setdefault("minimumTlsVersion", "TLS1_0")
            props.setdefault("allowBlobPublicAccess", False)
            props.setdefault("networkAcls", {"bypass": "AzureServices", "defaultAction": "Allow",
                                             "virtualNetworkRules": [], "ipRules": []})
            self.keys.setdefault(_lower(rid), [
                {"keyName": f"key{i}", "value": uuid.uuid4().hex + uuid.uuid4().hex, "permissions": "FULL"}
                for i in (1, 2)])
        if ltype.endswith("/fileservices/shares"):
            props.setdefault("accessTier", "TransactionOptimized")
            props.setdefault("enabledProtocols", "SMB")
            props.setdefault("lastModifiedTime", datetime.datetime.now(datetime.UTC).isoformat())
            res["etag"] = f'"0x8D{uuid.uuid4().hex[:13].upper()}"'
        props["provisioningState"] = "Succeeded"
        res["properties"] = props
        return res

    def _view(self, res: dict) -> dict:
        """A resource as GET returns it, with the back-references ARM computes."""
        out = copy.deepcopy(res)
        ltype = res["type"].lower()
        if ltype == "microsoft.network/loadbalancers":
            for pool in out["properties"].get("backendAddressPools", []):
                members = []
                for nic in self.resources.values():
                    if nic["type"].lower() != "microsoft.network/networkinterfaces":
                        continue
                    for ipc in nic["properties"].get("ipConfigurations", []):
                        pools = ipc["properties"].get("loadBalancerBackendAddressPools") or []
                        if any(_lower(p["id"]) == _lower(pool["id"]) for p in pools):
                            members.append({"id": ipc["id"]})
                if members:
                    pool["properties"]["backendIPConfigurations"] = members
        if ltype == "microsoft.network/networkinterfaces":
            for vm in self.resources.values():
                if vm["type"].lower() == "microsoft.compute/virtualmachines":
                    nics = vm["properties"].get("networkProfile", {}).get("networkInterfaces", [])
                    if any(_lower(n["id"]) == _lower(res["id"]) for n in nics):
                        out["properties"]["virtualMachine"] = {"id": vm["id"]}
        if ltype == "microsoft.network/routetables":
            users = [{"id": subnet["id"]} for vnet in self.resources.values()
                     if vnet["type"].lower() == "microsoft.network/virtualnetworks"
                     for subnet in vnet["properties"].get("subnets", [])
                     if _lower(((subnet.get("properties") or {}).get("routeTable") or {}).get("id", ""))
                     == _lower(res["id"])]
            if users:
                out["properties"]["subnets"] = users
        if ltype == "microsoft.network/publicipaddresses":
            for other in self.resources.values():
                for coll in CHILD_COLLECTIONS.get(other["type"].lower(), []):
                    for child in other["properties"].get(coll, []) or []:
                        pip = child.get("properties", {}).get("publicIPAddress")
                        if pip and _lower(pip["id"]) == _lower(res["id"]):
                            out["properties"]["ipConfiguration"] = {"id": child["id"]}
        return out

    def _instance_view(self, res: dict) -> dict:
        return {"statuses": [
            {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
            {"code": "PowerState/running", "level": "Info", "displayStatus": "VM running"}],
            "computerName": res["properties"].get("osProfile", {}).get("computerName")}

    # ---------------------------------------------------------------- operations
    def _operation(self, kind: str, on_done=None, result=None, polls: int = 1) -> str:
        op = uuid.uuid4().hex
        self.operations[op] = {"kind": kind, "polls": polls, "on_done": on_done, "result": result}
        return op

    def _poll(self, op_id: str, style: str):
        op = self.operations.get(op_id)
        if op is None:
            raise ArmError(404, "OperationNotFound", f"Operation {op_id} not found.")
        if op["polls"] > 0:
            op["polls"] -= 1
            if style == "async":
                return 200, {"status": "InProgress"}, self._op_headers(op_id)
            return 202, None, self._op_headers(op_id)
        if op["on_done"] is not None:
            op["on_done"]()
            op["on_done"] = None
        if style == "async":
            return 200, {"status": "Succeeded"}, {}
        result = op["result"]() if callable(op["result"]) else op["result"]
        return (200, result, {}) if result is not None else (204, None, {})

    def _op_headers(self, op_id: str, async_op: bool = True) -> dict:
        base = f"https://{ARM_HOST}/subscriptions/{self.subscription}/providers/Fake.Operations"
        headers = {"Location": f"{base}/operationResults/{op_id}?api-version=2024-01-01",
                   "retry-after-ms": "20"}
        if async_op:
            headers["Azure-AsyncOperation"] = f"{base}/operations/{op_id}?api-version=2024-01-01"
        return headers

    # ---------------------------------------------------------------- dispatch
    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object, dict]:
        with self.lock:
            if ROLE_ASSIGNMENTS in path.lower():
                return self._role_assignment(method, path, query, body)
            info = self._split(path)
            parts = info["parts"]
            if len(parts) >= 5 and parts[2] == "providers" and parts[3] == "Fake.Operations":
                return self._poll(parts[5] if len(parts) > 5 else "", "async" if parts[4] == "operations" else "loc")
            if "group" in info and "namespace" not in info and "tail" not in info:
                return self._group_op(method, info["group"], body)
            if "group" not in info and len(parts) == 3 and parts[2].lower() == "resourcegroups":
                return 200, {"value": [copy.deepcopy(g) for g in self.groups.values()]}, {}
            if info.get("tail") and info["tail"][0].lower() == "resources":
                return 200, {"value": self._list_resources(info.get("group"))}, {}
            if "namespace" in info:
                return self._provider_op(method, info, query, body)
            raise ArmError(404, "NotFound", f"No route for {method} {path}")

    def principals(self) -> set[str]:
        return {(r.get("identity") or {}).get("principalId") for r in self.resources.values()} - {None}

    def _role_assignment(self, method: str, path: str, query: dict, body: dict | None):
        """Role assignments (Microsoft.Authorization) at a scope: PUT once (ARM refuses to
        change one), GET, DELETE, and the list at a scope. The scope must exist, the
        principal must be an identity the fake made; a principal deleted since keeps its
        assignments (as in Azure: nothing removes them but a DELETE)."""
        at = path.lower().index(ROLE_ASSIGNMENTS)
        scope, rest = path[:at].rstrip("/"), path[at + len(ROLE_ASSIGNMENTS):].strip("/")
        in_group = scope.count("/") == 4 and self.groups.get(scope.split("/")[4].lower())
        if self._lookup(scope) is None and not in_group:
            raise ArmError(404, "ResourceNotFound", f"The scope {scope} does not exist.")
        if not rest:
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", method)
            return 200, {"value": [copy.deepcopy(a) for a in self.assignments.values()
                                   if _lower(a["properties"]["scope"]) == _lower(scope)]}, {}
        key = _lower(f"{scope}{ROLE_ASSIGNMENTS}/{rest}")
        current = self.assignments.get(key)
        if method == "GET":
            if current is None:
                raise ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{rest}' is not found.")
            return 200, copy.deepcopy(current), {}
        if method == "DELETE":
            if current is None:
                return 204, None, {}
            return 200, copy.deepcopy(self.assignments.pop(key)), {}
        if method != "PUT":
            raise ArmError(405, "MethodNotAllowed", method)
        props = (body or {}).get("properties") or {}
        role, principal = props.get("roleDefinitionId", ""), props.get("principalId", "")
        definitions = f"/subscriptions/{self.subscription}/providers/microsoft.authorization/roledefinitions/"
        if not role.lower().startswith(definitions):
            raise ArmError(400, "InvalidRoleDefinitionId", f"The role definition ID '{role}' is not valid.")
        if principal not in self.principals():
            raise ArmError(400, "PrincipalNotFound",
                           f"Principal {principal} does not exist in the directory {self.tenant}.")
        if current is not None:
            if (current["properties"]["principalId"], _lower(current["properties"]["roleDefinitionId"])) != \
                    (principal, _lower(role)):
                raise ArmError(400, "RoleAssignmentUpdateNotPermitted",
                               "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")
            return 201, copy.deepcopy(current), {}
        if any((a["properties"]["principalId"], _lower(a["properties"]["roleDefinitionId"]),
                _lower(a["properties"]["scope"])) == (principal, _lower(role), _lower(scope))
               for a in self.assignments.values()):
            raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
        self.assignments[key] = {
            "id": f"{scope}{ROLE_ASSIGNMENTS_CASED}/{rest}", "name": rest,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"roleDefinitionId": role, "principalId": principal,
                           "principalType": props.get("principalType", "ServicePrincipal"), "scope": scope}}
        return 201, copy.deepcopy(self.assignments[key]), {}

    def _summary(self, res: dict) -> dict:
        out = {k: res[k] for k in ("id", "name", "type", "location", "tags", "sku", "kind", "zones") if k in res}
        out.setdefault("tags", {})
        return out

    def _list_resources(self, group: str | None) -> list[dict]:
        if group is not None:
            self._group(group)
        prefix = f"/subscriptions/{self.subscription}/resourcegroups/{group.lower()}/" if group else ""
        return [self._summary(r) for k, r in sorted(self.resources.items())
                if k.startswith(prefix) and r["id"].count("/") == 8]

    def _group_op(self, method: str, name: str, body: dict | None):
        key = name.lower()
        rid = f"/subscriptions/{self.subscription}/resourceGroups/{name}"
        if method == "HEAD":
            return (204 if key in self.groups else 404), None, {}
        if method == "GET":
            return 200, copy.deepcopy(self._group(name)), {}
        if method in ("PUT", "PATCH"):
            old = self.groups.get(key)
            if method == "PATCH" and old is None:
                self._group(name)
            if method == "PUT" and not (body or {}).get("location"):
                raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
            group = {"id": old["id"] if old else rid, "name": old["name"] if old else name,
                     "type": "Microsoft.Resources/resourceGroups",
                     "location": ((old or {}).get("location") or body["location"]).replace(" ", "").lower(),
                     "tags": (body or {}).get("tags", (old or {}).get("tags", {}) if method == "PATCH" else {}),
                     "properties": {"provisioningState": "Succeeded"}}
            if old and method == "PUT" and body["location"].replace(" ", "").lower() != old["location"]:
                raise ArmError(409, "InvalidResourceGroupLocation",
                               f"Invalid resource group location '{body['location']}'.")
            self.groups[key] = group
            return (200 if old else 201), copy.deepcopy(group), {}
        if method == "DELETE":
            if key not in self.groups:
                return 404, {"error": {"code": "ResourceGroupNotFound",
                                       "message": f"Resource group '{name}' could not be found."}}, {}
            prefix = _lower(rid) + "/"

            def remove():
                for k in [k for k in self.resources if k.startswith(prefix)]:
                    del self.resources[k]
                self.groups.pop(key, None)
            op = self._operation("delete-group", on_done=remove, result=None)
            headers = self._op_headers(op, async_op=False)
            return 202, None, headers
        raise ArmError(405, "MethodNotAllowed", method)

    def _provider_op(self, method: str, info: dict, query: dict, body: dict | None):
        ns, seg = info["namespace"], info["segments"]
        group = info.get("group")
        # subscription-level helpers
        if group is None:
            lseg = [s.lower() for s in seg]
            if ns.lower() == "microsoft.compute" and lseg[:1] == ["locations"] and lseg[2:3] == ["vmsizes"]:
                return 200, {"value": [{"name": n, "numberOfCores": 2, "memoryInMB": 8192} for n in VM_SIZES]}, {}
            if ns.lower() == "microsoft.compute" and lseg[:1] == ["locations"] and "versions" in lseg:
                sku = seg[lseg.index("skus") + 1]
                return 200, [{"name": v, "location": seg[1],
                              "id": f"/Subscriptions/{self.subscription}/Providers/Microsoft.Compute/Locations/"
                                    f"{seg[1]}/Publishers/x/ArtifactTypes/VMImage/Offers/x/Skus/{sku}/Versions/{v}"}
                             for v in IMAGE_VERSIONS], {}
            if ns.lower() == "microsoft.storage" and lseg == ["checknameavailability"]:
                name = (body or {}).get("name", "")
                taken = any(r["name"].lower() == name.lower()
                            and r["type"].lower() == "microsoft.storage/storageaccounts"
                            for r in self.resources.values())
                return 200, {"nameAvailable": not taken, **({"reason": "AlreadyExists",
                                                            "message": "The storage account name is already taken."}
                                                           if taken else {})}, {}
            if len(seg) == 1 and method == "GET":
                rtype = f"{ns}/{seg[0]}".lower()
                return 200, {"value": [self._view(r) for r in self.resources.values()
                                       if r["type"].lower() == rtype]}, {}
            raise ArmError(404, "NotFound", f"No route for {method} {ns}/{'/'.join(seg)}")
        self._group(group)
        prefix = f"/subscriptions/{self.subscription}/resourceGroups/{group}/providers/{ns}"
        # collection list (odd number of segments): .../type  or .../type/name/childtype
        if len(seg) % 2 == 1:
            if method == "POST" and len(seg) == 3:  # action on a resource: .../type/name/action
                return self._action(f"{prefix}/{seg[0]}/{seg[1]}", seg[2])
            if method == "GET" and len(seg) == 3 and seg[2].lower() == "instanceview":
                res = self._existing(f"{prefix}/{seg[0]}/{seg[1]}")
                return 200, self._instance_view(res), {}
            parent_id = f"{prefix}/{'/'.join(seg[:-1])}" if len(seg) > 1 else prefix
            if len(seg) > 1:
                parent = self._existing(parent_id)
                coll = seg[-1]
                for c in CHILD_COLLECTIONS.get(parent["type"].lower(), []):
                    if c.lower() == coll.lower():
                        return 200, {"value": copy.deepcopy(parent["properties"].get(c, []))}, {}
            rtype = self._type_of(ns, [*seg, ""]).lower().rstrip("/")
            items = [self._view(r) for k, r in self.resources.items()
                     if r["type"].lower() == rtype and k.startswith(_lower(parent_id) + "/")]
            return 200, {"value": items}, {}
        rid = f"{prefix}/{'/'.join(seg)}"
        rtype = self._type_of(ns, seg)
        # a network child (subnet, rule...) lives inside its parent
        if len(seg) >= 4:
            parent_id = f"{prefix}/{'/'.join(seg[:-2])}"
            parent = self.resources.get(_lower(parent_id))
            colls = CHILD_COLLECTIONS.get(parent["type"].lower(), []) if parent else []
            match = [c for c in colls if c.lower() == seg[-2].lower()]
            if match:
                return self._child_op(method, parent, match[0], seg[-1], body, expand=query.get("$expand"))
        if method == "GET":
            res = self._existing(rid)
            view = self._view(res)
            if rtype.lower() == "microsoft.compute/virtualmachines" and "instanceview" in \
                    (query.get("$expand") or "").lower():
                view["properties"]["instanceView"] = self._instance_view(res)
            return 200, view, {}
        if method == "PUT":
            return self._put(rid, rtype, body or {})
        if method == "PATCH":
            res = self._existing(rid)
            merged = copy.deepcopy(res)
            for key, value in (body or {}).items():
                if key == "properties":
                    merged["properties"].update(value)
                else:
                    merged[key] = value
            self.resources[_lower(rid)] = self._normalise(res["id"], res["type"], merged, res)
            return 200, self._view(self.resources[_lower(rid)]), {}
        if method == "DELETE":
            return self._delete(rid, rtype)
        raise ArmError(405, "MethodNotAllowed", method)

    def _existing(self, rid: str) -> dict:
        res = self.resources.get(_lower(rid))
        if res is None:
            rtype = "/".join(rid.split("/providers/")[1].split("/")[0:2]) if "/providers/" in rid else "resource"
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{rtype}/{rid.split('/')[-1]}' under resource group "
                           f"'{rid.split('/')[4]}' was not found.")
        return res

    def _put(self, rid: str, rtype: str, body: dict):
        key = _lower(rid)
        old = self.resources.get(key)
        nested = rid.count("/") > 8
        if nested:
            self._existing("/".join(rid.split("/")[:9]))
        elif not body.get("location") and not rtype.lower().endswith("/fileservices/shares"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        if rtype.lower() == "microsoft.compute/virtualmachines":
            size = body.get("properties", {}).get("hardwareProfile", {}).get("vmSize")
            if size not in VM_SIZES:
                raise ArmError(400, "InvalidParameter", f"The value {size} provided for the VM size is not valid.")
        res = self._normalise(old["id"] if old else rid, rtype, body, old)
        self._check_references(res["id"], res)
        self.resources[key] = res
        status = 200 if old else 201
        ns = rtype.split("/")[0].lower()
        if ns in ASYNC_NAMESPACES:
            op = self._operation("put")
            shown = copy.deepcopy(self._view(res))
            shown["properties"]["provisioningState"] = "Updating" if old else "Creating"
            return status, shown, self._op_headers(op)
        if rtype.lower() == "microsoft.storage/storageaccounts" and not old:
            op = self._operation("create-storage", result=lambda: self._view(self.resources[key]))
            return 202, None, self._op_headers(op, async_op=False)
        return status, self._view(res), {}

    def _delete(self, rid: str, rtype: str):
        key = _lower(rid)
        res = self.resources.get(key)
        if res is None:
            return 204, None, {}
        users = self._referrers(rid)
        if users:
            raise ArmError(400, "InUseResourceCannotBeDeleted",
                           f"Resource {rid} is in use by {', '.join(users)} and cannot be deleted.")

        def remove():
            for k in [k for k in self.resources if k == key or k.startswith(key + "/")]:
                del self.resources[k]
        if rtype.lower() == "microsoft.storage/storageaccounts" or rid.count("/") > 8:
            remove()
            return 200, None, {}
        op = self._operation("delete", on_done=remove)
        return 202, None, self._op_headers(op)

    def _child_op(self, method: str, parent: dict, coll: str, name: str, body: dict | None, expand=None):
        children = parent["properties"].setdefault(coll, [])
        current = next((c for c in children if c["name"].lower() == name.lower()), None)
        if method == "GET":
            if current is None:
                raise ArmError(404, "NotFound", f"Resource {parent['id']}/{coll}/{name} not found.")
            return 200, copy.deepcopy(current), {}
        if method == "PUT":
            child = {"name": current["name"] if current else name, "properties": (body or {}).get("properties", {})}
            new_children = [c for c in children if c is not current] + [child]
            new_parent = copy.deepcopy(parent)
            new_parent["properties"][coll] = new_children
            normalised = self._normalise(parent["id"], parent["type"], new_parent, parent)
            self._check_references(parent["id"], normalised)
            self.resources[_lower(parent["id"])] = normalised
            shown = next(c for c in normalised["properties"][coll] if c["name"] == child["name"])
            op = self._operation("put")
            return (200 if current else 201), copy.deepcopy(shown), self._op_headers(op)
        if method == "DELETE":
            if current is None:
                return 204, None, {}
            users = self._referrers(current["id"])
            if users:
                raise ArmError(400, "InUseSubnetCannotBeDeleted", f"{current['id']} is in use by {users}.")
            children.remove(current)
            op = self._operation("delete")
            return 202, None, self._op_headers(op)
        raise ArmError(405, "MethodNotAllowed", method)

    def _action(self, rid: str, action: str):
        res = self._existing(rid)
        if action.lower() == "listkeys" and res["type"].lower() == "microsoft.storage/storageaccounts":
            return 200, {"keys": self.keys[_lower(rid)]}, {}
        raise ArmError(404, "NotFound", f"Unknown action {action}")

    # ---------------------------------------------------------------- batch (inventory plugin)
    def batch(self, body: dict) -> dict:
        responses = []
        for req in body.get("requests", []):
            url = urllib.parse.urlsplit(req["url"])
            query = dict(urllib.parse.parse_qsl(url.query))
            try:
                status, content, _ = self.handle(req.get("httpMethod", "GET"), url.path, query, None)
            except ArmError as err:
                status, content = err.status, {"error": {"code": err.code, "message": err.message}}
            responses.append({"name": req.get("name"), "httpStatusCode": status, "headers": {},
                              "content": content})
        return {"responses": responses}

    # ---------------------------------------------------------------- login
    def login(self, method: str, path: str, form: dict) -> tuple[int, object]:
        parts = path.strip("/").split("/")
        if path.endswith("/v2.0/.well-known/openid-configuration"):
            tenant = parts[0]
            base = f"https://{LOGIN_HOST}/{tenant}"
            return 200, {"token_endpoint": f"{base}/oauth2/v2.0/token",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                         "issuer": f"https://{LOGIN_HOST}/{tenant}/v2.0",
                         "jwks_uri": f"{base}/discovery/v2.0/keys",
                         "response_types_supported": ["code", "id_token", "token"],
                         "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]}
        if method == "POST" and path.endswith("/oauth2/v2.0/token"):
            if parts[0] != self.tenant or form.get("client_id") != self.client_id or \
                    form.get("client_secret") != self.secret:
                return 401, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret provided."}
            token = uuid.uuid4().hex
            self.tokens.add(token)
            return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}
        return 404, {"error": "not_found", "error_description": path}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_CONNECT(self):
        host, _, port = self.path.partition(":")
        if host not in HOSTS or port != "443":
            with self.server.arm.lock:
                self.server.arm.refused.append(self.path)
            self.send_response(403, "Forbidden: the fake ARM endpoint forwards nothing")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True
            return
        self.send_response(200, "Connection Established")
        self.end_headers()
        tls = self.server.ssl_context.wrap_socket(self.connection, server_side=True)
        self.connection = self.request = tls
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)
        self.tunnel_host = host
        self.close_connection = False

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload, headers: dict | None = None):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self):
        raw = self._body()
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        arm = self.server.arm
        host = getattr(self, "tunnel_host", None)
        if host is None:
            return self._control(url.path, raw)
        if host == LOGIN_HOST:
            form = dict(urllib.parse.parse_qsl(raw.decode())) if raw else {}
            status, payload = arm.login(self.command, url.path, form)
            with arm.lock:
                arm.log.append({"host": host, "method": self.command, "path": url.path, "status": status})
            return self._send(status, payload)
        auth = self.headers.get("Authorization", "")
        body = json.loads(raw) if raw else None
        if not auth.startswith("Bearer ") or auth[7:] not in arm.tokens:
            status, payload, headers = 401, {"error": {"code": "AuthenticationFailed",
                                                       "message": "Authentication failed."}}, {}
        elif url.path == "/batch":
            status, payload, headers = 200, arm.batch(body or {}), {}
        elif url.path.startswith("/metadata/endpoints"):
            status, payload, headers = 200, [{"name": "AzureCloud", "resourceManager": f"https://{ARM_HOST}/",
                                              "authentication": {"loginEndpoint": f"https://{LOGIN_HOST}",
                                                                 "audiences": [f"https://{ARM_HOST}/"]}}], {}
        else:
            try:
                status, payload, headers = arm.handle(self.command, url.path, query, body)
            except ArmError as err:
                status, payload, headers = err.status, {"error": {"code": err.code, "message": err.message}}, {}
            except Exception as err:  # a bug in the fake: say so loudly
                status, payload, headers = 500, {"error": {"code": "FakeArmBug", "message": repr(err)}}, {}
        with arm.lock:
            arm.log.append({"t": time.time(), "host": host, "method": self.command, "path": url.path,
                            "status": status, "api_version": query.get("api-version"), "body": body})
        self._send(status, payload, headers)

    def _control(self, path: str, raw: bytes):
        arm = self.server.arm
        if path == "/metadata/identity/oauth2/token":
            return self._identity()
        with arm.lock:
            if path == "/_fake/log":
                return self._send(200, arm.log)
            if path == "/_fake/state":
                return self._send(200, {"groups": arm.groups,
                                        "resources": {r["id"]: arm._view(r) for r in arm.resources.values()},
                                        "role_assignments": list(arm.assignments.values()),
                                        "refused": arm.refused})
            if path == "/_fake/clear-log":
                arm.log.clear()
                return self._send(200, {})
            if path.startswith("/_fake/arm/"):
                # seed through ARM's own rules, without a token: resources "not ours"
                body = json.loads(raw) if raw else None
                try:
                    status, payload, _ = arm.handle(self.command, path[len("/_fake/arm"):], {}, body)
                    for op in list(arm.operations):  # finish at once
                        while arm.operations[op]["polls"] >= 0 and arm.operations[op]["on_done"]:
                            arm._poll(op, "async")
                        arm.operations.pop(op)
                except ArmError as err:
                    status, payload = err.status, {"error": {"code": err.code, "message": err.message}}
                return self._send(status, payload)
        return self._send(404, {"error": "no such control path"})

    def _identity(self):
        """The instance metadata service's token of a VM's managed identity (plain HTTP, as
        on 169.254.169.254): only with the header Metadata: true, for ARM's resource."""
        arm = self.server.arm
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if self.headers.get("Metadata") != "true":
            status, payload = 400, {"error": "invalid_request",
                                    "error_description": "Required metadata header not specified"}
        elif query.get("resource", "").rstrip("/") != f"https://{ARM_HOST}" or not query.get("api-version"):
            status, payload = 400, {"error": "invalid_resource", "error_description": repr(query)}
        else:
            token = uuid.uuid4().hex
            with arm.lock:
                arm.tokens.add(token)
            status, payload = 200, {"access_token": token, "token_type": "Bearer", "expires_in": "86399",
                                    "resource": query["resource"]}
        with arm.lock:
            arm.log.append({"t": time.time(), "host": "imds", "method": self.command,
                            "path": "/metadata/identity/oauth2/token", "status": status})
        self._send(status, payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _dispatch


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, cert: Path, key: Path, arm: Arm):
        super().__init__(("127.0.0.1", port), Handler)
        self.arm = arm
        self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl_context.load_cert_chain(str(cert), str(key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--subscription", default="00000000-0000-0000-0000-00000000feed")
    parser.add_argument("--tenant", default="00000000-0000-0000-0000-0000000000aa")
    parser.add_argument("--client-id", default="00000000-0000-0000-0000-0000000000cc")
    parser.add_argument("--secret", default="fake-arm-secret")
    parser.add_argument("--port-file", help="write the listening port here once ready")
    args = parser.parse_args()
    arm = Arm(args.subscription, args.tenant, args.client_id, args.secret)
    server = FakeServer(args.port, Path(args.cert), Path(args.key), arm)
    if args.port_file:
        Path(args.port_file).write_text(str(server.server_address[1]))
    print(f"fake ARM listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
