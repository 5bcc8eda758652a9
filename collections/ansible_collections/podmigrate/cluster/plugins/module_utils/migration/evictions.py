# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evictions turned into migrations: the admission webhook behind ``kubectl drain``.

A pod that opts in (annotation ``podmigrate.io/eviction: migrate``) is migrated instead of
evicted whenever anything asks the Eviction API to evict it (``kubectl drain``, the cluster
autoscaler, ``podmigrate drain``'s own eviction of what it could not move). The API server
sends every eviction (a ``pods/eviction`` CREATE) to this webhook first, which answers:

- not an opted-in pod (or a pod that ended, or gone, or a dry run): allowed, the eviction
  goes on as without podmigrate;
- an opted-in pod: refused with ``429 Too Many Requests``, what ``kubectl drain`` (and the
  autoscaler) take as "try again later", while a migration of the pod starts (the target
  its plan picks; ``parallel`` at once); the message says which, and how the last attempt
  ended if it failed or was refused. Once the pod has moved, the retried eviction finds
  no pod of that name (404: ``kubectl drain`` counts it done) — or, for a StatefulSet's
  pod, which keeps its name, the pod running elsewhere, moved off the node the eviction
  was about: answered ``404`` too, saying where it went;
- the webhook is reached by the API server only (it listens on the control-plane node's
  loopback) with the cluster CA's certificate; roles/migration_webhook explains its
  failurePolicy.

The same service gives back the IP addresses migrated pods kept once no pod holds them
(addresses.py).

The server is this module run as a program (a zip archive built by module_utils.
nodehelper, installed by roles/migration_webhook): ``python3 podmigrate-evictions CONFIG``.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import (
    addresses,
    engine,
    manifest,
    plan,
    remote,
)

OPT_IN = "podmigrate.io/eviction"
MIGRATE = "migrate"
AUTOSCALER_TAINT = "ToBeDeletedByClusterAutoscaler"


def answer(uid, allowed=True, code=None, reason=None, message=None):
    """The AdmissionReview (v1) response."""
    response = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "reason": reason, "message": message}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def being_drained(node):
    """Whether ``node`` (a dict) is being emptied: cordoned, or marked by the autoscaler."""
    spec = node.get("spec") or {}
    return bool(spec.get("unschedulable")) or any(t.get("key") == AUTOSCALER_TAINT for t in spec.get("taints") or [])


class Evictions:
    """The webhook's decisions, and the migrations it runs (threads, ``parallel`` at once)."""

    def __init__(self, api_client, nodes, parallel=2, log=None, **migration):
        from kubernetes import client

        self.api_client = engine.bounded(api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.nodes = nodes
        self.slots = threading.Semaphore(max(1, parallel))
        self.migration = migration  # transfer, timeout, report_dir, helper_digest... for each engine.Migration
        self.log = log or (lambda line: None)
        self.lock = threading.Lock()
        self.running = {}  # (namespace, name): the migration's id, while it runs or waits for a slot
        self.last = {}  # (namespace, name): how the last migration of the pod ended, when not moved

    def review(self, review):
        """The AdmissionReview answer to the AdmissionReview ``review`` (dicts)."""
        request = review.get("request") or {}
        uid = request.get("uid", "")
        if request.get("operation") != "CREATE" or request.get("subResource") != "eviction" or request.get("dryRun"):
            return answer(uid)
        namespace, name = request.get("namespace"), request.get("name")
        pod = self.read(lambda: self.core.read_namespaced_pod(name, namespace))
        if pod is None or (pod["metadata"].get("annotations") or {}).get(OPT_IN) != MIGRATE or \
                (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return answer(uid)
        key = (namespace, name)
        moved = self.moved_off(pod)
        if moved:
            return answer(uid, False, 404, "NotFound", moved)
        with self.lock:
            running = self.running.get(key)
            if running is None:
                running = self.running[key] = self.start(pod)
            last = self.last.get(key)
        said = (f"podmigrate is migrating pod {namespace}/{name} off node {pod['spec'].get('nodeName')} instead "
                f"of evicting it (migration {running}): evict it again once it has moved")
        if last:
            said += f"; the last attempt: {last}"
        return answer(uid, False, 429, "TooManyRequests", said)

    def moved_off(self, pod):
        """Why an eviction of ``pod``, one that keeps its name (a StatefulSet's), finds nothing
        to evict: it was moved off a node being drained, to another, or None. (An eviction
        names a pod, not its node: it was for the pod that ran there.)"""
        came_from = (pod["metadata"].get("annotations") or {}).get(manifest.ORIGINAL_NODE)
        if not came_from or came_from == pod["spec"].get("nodeName") or \
                manifest.RESTORE_ANNOTATION not in (pod["metadata"].get("annotations") or {}):
            return None
        node = self.read(lambda: self.core.read_node(came_from))
        if node is None or not being_drained(node):
            return None
        meta = pod["metadata"]
        return (f"pod {meta['namespace']}/{meta['name']} was migrated off node {came_from} to "
                f"{pod['spec'].get('nodeName')} (migration {meta['annotations'][manifest.RESTORE_ANNOTATION]}): "
                f"nothing of it is left on {came_from} to evict")

    def read(self, call):
        """``call``'s object as a dict, or None when it is not found."""
        from kubernetes.client.rest import ApiException

        try:
            return self.api_client.sanitize_for_serialization(call())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def start(self, pod):
        """A migration of ``pod`` started (a thread: it waits for a slot); its id."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        job = engine.Migration(self.api_client, engine.own_connections(self.nodes), meta["namespace"], meta["name"],
                               **self.migration)

        def run():
            outcome = None
            try:
                with self.slots:
                    report = job.run()
                self.log(report.get("summary", ""))
            except plan.MigrationError as exc:
                outcome = f"refused: {exc}"
            except Exception as exc:
                outcome = f"{job.report.get('result', 'failed')}: {exc}"
            if outcome:
                self.log(f"{key[0]}/{key[1]}: {outcome}")
            with self.lock:
                self.running.pop(key, None)
                if outcome:
                    self.last[key] = outcome
                else:
                    self.last.pop(key, None)

        threading.Thread(target=run, name=f"migrate-{job.id}", daemon=True).start()
        self.log(f"eviction of {key[0]}/{key[1]}: migrating it instead ({job.id})")
        return job.id


class Handler(BaseHTTPRequestHandler):
    evictions = None  # set by serve()

    def do_POST(self):  # http.server calls it so
        try:
            review = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            body = json.dumps(self.evictions.review(review)).encode()
            status = 200
        except Exception as exc:  # the API server applies the failurePolicy
            body, status = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), 500
            self.log_message("%s", body.decode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        say(fmt % args)


def say(line):
    """A line of the service's log (its stderr, the journal)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def serve(config):
    """Serve the webhook as ``config`` (the JSON the role writes) says, until killed."""
    from kubernetes import config as kubeconfig

    api_client = kubeconfig.new_client_from_config(config_file=config["kubeconfig"])
    nodes = {name: remote.Node(name, **spec) for name, spec in config["nodes"].items()}

    def log(line):
        say(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}")

    threading.Thread(target=sweep_addresses, args=(api_client, nodes, log), name="addresses", daemon=True).start()
    Handler.evictions = Evictions(api_client, nodes, parallel=int(config.get("parallel", 2)), log=log,
                                  **config.get("migration") or {})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config["cert"], config["key"])
    server = ThreadingHTTPServer((config.get("address", "127.0.0.1"), int(config["port"])), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    log(f"serving evictions on https://{config.get('address', '127.0.0.1')}:{config['port']}")
    server.serve_forever()


def sweep_addresses(api_client, nodes, log, seconds=addresses.SWEEP_SECONDS):
    """The addresses migrated pods kept, given back once no pod holds them (addresses.py),
    every ``seconds``, for as long as the service runs."""
    while True:
        try:
            addresses.sweep(api_client, nodes, log)
        except Exception as exc:  # a node or the API server away: the next sweep
            log(f"the sweep of kept addresses failed: {type(exc).__name__}: {exc}")
        time.sleep(seconds)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: podmigrate-evictions CONFIG.json")
    with open(argv[0]) as f:
        serve(json.load(f))
