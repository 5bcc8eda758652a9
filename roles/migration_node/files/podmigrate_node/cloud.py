# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kept address's route in the cloud's network, where the node's own routes are not enough.

On Azure the virtual network delivers a packet by its destination address, whatever the
sending VM's routes say: a pod address that lives away from the node of its range needs a
route of its own (a /32 to the VM it lives on) in the route table on the subnet, beside the
route per node's pod range (roles/azure_infra, pod_routes.yml). The node the pod lives on
writes it when it takes the address (``address --route local``); the node of the address's
range removes it when the address comes home or is given back (``--route home``). Either is
a helper command the engine, a recovery, the source node's watcher and the sweep already
run, so the cloud's route follows the nodes' routes wherever they change.

The node's configuration (``CONFIG``, written by the node roles on Azure; absent elsewhere,
and then nothing here runs):
  {"azure": {"route_table": "/subscriptions/…/routeTables/NAME", "node_ip": "10.…",
             "identity_endpoint": IMDS's token URL (default), "client_id": of a user-assigned
             identity (optional), "management": ARM's URL (default)}}
The VM's managed identity signs the calls (a token from the instance metadata service,
never written anywhere); it needs write and delete on the route table's routes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from podmigrate_node.common import fail

CONFIG = os.environ.get("PODMIGRATE_CLOUD", "/etc/podmigrate/cloud.json")
IMDS_URL = "http://169.254.169.254/metadata/identity/oauth2/token"
MANAGEMENT = "https://management.azure.com"
API_VERSION = "2023-09-01"  # Microsoft.Network's, for routes
WAIT_SECONDS = 300  # ARM's long-running operation on a route: seconds usually, never this long


def config():
    """The node's cloud configuration, or None (no cloud route to keep)."""
    try:
        with open(CONFIG) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        fail(f"{CONFIG}: {exc}")


def route_name(address):
    """The route's name in the table: never ``pods-…`` (a node's range: pod_routes.yml's)."""
    return "address-" + str(ipaddress.IPv4Address(address)).replace(".", "-")


def http_url(url, where):
    """``url``, which urllib is given to open: only http(s), else the helper fails saying where
    it came from."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        fail(f"{where}: not an http(s) URL: {url!r}")
    return url


class Azure:
    """The subnet's route table, through ARM's REST API as the VM's managed identity."""

    def __init__(self, conf):
        self.table = conf["route_table"].rstrip("/")
        self.node_ip = str(ipaddress.IPv4Address(conf["node_ip"]))
        self.identity = http_url(conf.get("identity_endpoint") or IMDS_URL, CONFIG)
        self.client_id = conf.get("client_id")
        self.management = http_url((conf.get("management") or MANAGEMENT).rstrip("/"), CONFIG)
        self._token = None

    def token(self):
        if self._token is None:
            query = {"api-version": "2018-02-01", "resource": self.management + "/"}
            if self.client_id:
                query["client_id"] = self.client_id
            request = urllib.request.Request(  # noqa: S310 - http(s) only (__init__)
                f"{self.identity}?{urllib.parse.urlencode(query)}", headers={"Metadata": "true"})
            # the metadata service is the VM's own: never through a proxy
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(request, timeout=30) as response:
                    self._token = json.load(response)["access_token"]
            except (OSError, ValueError, KeyError) as exc:
                fail(f"no token from the VM's managed identity ({self.identity}): {exc}")
        return self._token

    def call(self, method, url, body=None):
        """(status, JSON body or None, headers) of one ARM call; an error status fails but 404."""
        http_url(url, "Azure")  # ARM's own too (a long-running operation's)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310 - http(s) only
            "Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http(s) only
                raw = response.read()
                return response.status, json.loads(raw) if raw else None, response.headers
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return 404, None, exc.headers
            said = exc.read().decode(errors="replace")[-500:]
            fail(f"Azure refused {method} {urllib.parse.urlsplit(url).path}: {exc.code} {said}")
        except OSError as exc:
            fail(f"Azure could not be reached for {method} {urllib.parse.urlsplit(url).path}: {exc}")

    def wait(self, headers, what):
        """Until ARM's long-running operation behind a response (its ``headers``) has ended:
        Azure-AsyncOperation's status, else Location's 202s; neither: it has."""
        operation, location = headers.get("Azure-AsyncOperation"), headers.get("Location")
        deadline = time.monotonic() + WAIT_SECONDS
        while operation or location:
            status, body, more = self.call("GET", operation or location)
            state = (body or {}).get("status", "InProgress") if operation else \
                ("InProgress" if status == 202 else "Succeeded")
            if state == "Succeeded":
                return
            if state in ("Failed", "Canceled"):
                fail(f"Azure: {what}: {state} {(body or {}).get('error') or ''}")
            if time.monotonic() > deadline:
                fail(f"Azure: {what}: still {state} after {WAIT_SECONDS} s")
            time.sleep(min(5.0, float(more.get("Retry-After") or 1)))

    def url(self, address):
        return f"{self.management}{self.table}/routes/{route_name(address)}?api-version={API_VERSION}"

    def route_here(self, address):
        """The route of ``address`` to this node (made or changed)."""
        body = {"properties": {"addressPrefix": f"{ipaddress.IPv4Address(address)}/32",
                               "nextHopType": "VirtualAppliance", "nextHopIpAddress": self.node_ip}}
        status, _, headers = self.call("PUT", self.url(address), body)
        if status == 404:
            fail(f"Azure: no route table {self.table}")
        if status in (200, 201):
            self.wait(headers, f"the route of {address} to {self.node_ip}")

    def route_home(self, address):
        """The route of ``address`` removed (its range's route covers it): none is fine."""
        status, _, headers = self.call("DELETE", self.url(address))
        if status in (200, 202):
            self.wait(headers, f"the removal of the route of {address}")


def provider():
    """The cloud's routes of this node, or None where there is no cloud to tell."""
    conf = config()
    if not conf:
        return None
    if "azure" in conf:
        return Azure(conf["azure"])
    fail(f"{CONFIG}: no cloud it knows ({', '.join(sorted(conf))})")
