# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source node's own deadline: a migration whose controller never comes back does not
leave its pod frozen or fenced for ever.

The engine starts ``watch`` on the source (a transient systemd service, so it outlives
the SSH session) as the migration begins, and pushes its deadline on with ``extend``
while it lives (every few seconds, from its lock's heartbeat). Once the deadline has
passed, no dump is under way and ``podmigrate recover`` has not ended the migration
(which removes its directory, and with it the watcher), the watcher settles the pod by
itself, the way the target's verdict (verdict.py) says, and asks it through the
migration's one-time key:

- nothing frozen (the controller died before the freeze, or after a rollback's thaw): the
  fence is lifted; the target's staged pod is abandoned (it gives up restoring).
- frozen, verdict ``abandoned``: the pod is thawed and goes on where it stopped.
- frozen, verdict ``restored``: the restored pod is the live copy. The source pod is
  deleted with the node's own (the kubelet's) credentials, which may delete only pods
  bound to this node, and its frozen processes are killed without running again.
- the target unreachable: the pod stays frozen, asked again every few seconds; it is
  never thawed on a guess.
- the source pod deleted so that the restored pod could take its name (a StatefulSet's
  pod: the engine marks it ``source-deleted`` first): nothing is done here alone, as
  only a controller can create the pod again; the files (this node's copy of the
  checkpoint) stay for ``podmigrate recover``.

Then the source's files of the migration (its memory among them) are removed. What is left
(the Lease's journal, the target's staged pod, the key) is ``podmigrate recover``'s, which
follows the same verdict.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse

from podmigrate_node.common import fail, migration_dir, runtime
from podmigrate_node.fence import cmd_unfence
from podmigrate_node.pod import end_frozen, is_frozen, resume, running
from podmigrate_node.settle import dumping, processes_of
from podmigrate_node.stream import migration_ssh

# (the engine, for a pod that keeps its name) the source pod object is being deleted: this
# node's copy of the checkpoint is the pod's own until the restored pod runs
SOURCE_DELETED = "source-deleted"
KUBELET_CONF = os.environ.get("PODMIGRATE_KUBELET_CONF", "/etc/kubernetes/kubelet.conf")


def deadline_lock(directory):
    """The migration's lock (the runtime's gate: a flock on its directory, which makes no
    file in it). Yields whether the directory is still there."""
    return runtime().gate(directory)


def cmd_forget(args):
    """The migration's files on this node removed, under its deadline lock: neither
    ``extend`` nor the watcher writes into the directory while it is emptied."""
    directory = migration_dir(args.migration)
    try:
        with deadline_lock(directory):
            subprocess.run(["rm", "-rf", "--", directory], check=True)
    except FileNotFoundError:
        pass


def cmd_extend(args):
    """The controller lives: the watcher's deadline set to --seconds from now (this node's
    clock). Refused once the watcher has taken over (its deadline passed)."""
    directory = migration_dir(args.migration)
    gone = f"migration {args.migration} has nothing on this node"
    try:
        with deadline_lock(directory) as there:
            if not there:
                fail(gone)
            if os.path.exists(os.path.join(directory, "expired")):
                fail(f"migration {args.migration}: this node's deadline passed; its watcher settles the migration")
            until = time.time() + args.seconds
            with open(os.path.join(directory, "deadline.part"), "w") as f:
                f.write(f"{until:.3f}\n")
            os.replace(os.path.join(directory, "deadline.part"), os.path.join(directory, "deadline"))
    except FileNotFoundError:
        fail(gone)
    print(json.dumps({"until": round(until)}))


def due(directory):
    """The deadline passed (marked ``expired``, so that no controller extends it any more);
    False once the directory is gone (``forget``: the migration ended)."""
    try:
        with deadline_lock(directory) as there:
            return there and expired(directory)
    except FileNotFoundError:
        return False


def expired(directory):
    """(due, holding the deadline lock.)"""
    if os.path.exists(os.path.join(directory, "expired")):
        return True
    try:
        with open(os.path.join(directory, "deadline")) as f:
            until = float(f.read().strip())
    except (OSError, ValueError):
        return False
    if time.time() < until:
        return False
    with open(os.path.join(directory, "expired"), "w"):
        pass
    return True


def kubelet_request(method, path, body=None, conf=KUBELET_CONF):
    """(status, parsed body) of an API request made as this node (its kubelet's kubeconfig:
    the server, the cluster's CA, the kubelet's client certificate)."""
    with open(conf) as f:
        text = f.read()

    def field(name):
        m = re.search(rf"^\s*{name}:\s*(\S+)\s*$", text, re.M)
        if not m:
            raise ValueError(f"{conf} has no {name}")
        return m.group(1).strip("'\"")

    server = urllib.parse.urlsplit(field("server"))
    context = ssl.create_default_context(cadata=base64.b64decode(field("certificate-authority-data")).decode())
    context.load_cert_chain(field("client-certificate"), field("client-key"))
    conn = http.client.HTTPSConnection(server.hostname, server.port or 443, context=context, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data or b"{}")
    except ValueError:
        return response.status, {"message": data.decode(errors="replace")[:300]}


def delete_own_pod(namespace, name, uid):
    """The source pod deleted (at once; only the one with ``uid``) as this node: True when it
    is gone, whether by this call or before."""
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(name)}"
    status, answer = kubelet_request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                                      "gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
    if status in (200, 202, 404, 409):  # 409: a newer pod of that name, not ours
        return True
    raise OSError(f"deleting pod {namespace}/{name} as this node: {status} {answer.get('message', '')}")


def ask_target(directory, migration):
    """The target's verdict, through the migration's one-time key (every transfer has one),
    or None (the target unreachable, or no key yet: the controller died before it made it)."""
    key, known_hosts = os.path.join(directory, "key"), os.path.join(directory, "known_hosts")
    try:
        with open(known_hosts) as f:
            target = f.read().split()[0]
    except (OSError, IndexError):
        return None, "no one-time key to the target (its controller died before it made one)"
    res = subprocess.run([*migration_ssh(key, known_hosts), f"root@{target}", f"verdict {migration}"],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        return None, f"the target {target} did not answer: {res.stderr.strip()[-300:]}"
    return json.loads(res.stdout.strip().splitlines()[-1]).get("verdict"), None


def settle_alone(args, directory):
    """One try at settling the pod without its controller: the outcome, or None to try again."""
    if os.path.exists(os.path.join(directory, SOURCE_DELETED)):
        say("the source pod was deleted so that its restored pod could take its name: only podmigrate recover "
            "restores it (from this node's copy of the checkpoint) or commits it; the files stay for it")
        return None
    live = running(args.uid)
    frozen = [c for c in live if is_frozen(c["freezer"])]
    verdict, why = ask_target(directory, args.migration)
    if not frozen:
        outcome = "nothing frozen: fence lifted"
    elif verdict == "abandoned":
        resume(live)
        outcome = "the target abandoned it: thawed, the source pod goes on"
    elif verdict == "restored":
        if not delete_own_pod(args.namespace, args.name, args.uid):
            return None
        ended = end_frozen(args.uid, directory, 10)
        outcome = f"the target runs it restored: the source pod deleted, its frozen processes killed ({ended})"
    else:
        say(f"the pod stays frozen: {why or f'the verdict is {verdict}'}; asking again")
        return None
    cmd_unfence(args)
    return outcome


def say(msg):
    print(f"podmigrate-node watch: {msg}", file=sys.stderr, flush=True)


def cmd_watch(args):
    """(Source; a transient service the engine starts.) Until the migration's directory is
    gone: once its deadline passed and no dump runs, settle the pod alone (settle_alone),
    then remove the migration's files here."""
    directory = migration_dir(args.migration)
    while os.path.isdir(directory):
        if due(directory) and not dumping(processes_of(args.migration)):
            try:
                outcome = settle_alone(args, directory)
            except Exception as exc:  # the next try, later: the pod stays as it is meanwhile
                say(f"could not settle it yet: {type(exc).__name__}: {exc}")
                outcome = None
            if outcome:
                say(f"migration {args.migration} settled without its controller: {outcome}")
                cmd_forget(args)
                return
        time.sleep(args.poll)
