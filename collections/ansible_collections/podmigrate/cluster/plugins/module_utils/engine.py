# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration engine: moves a running pod to another node with its memory.

Used by the ``podmigrate.cluster.migrate`` module (``migrate.yml``) and by
``scripts/podmigrate migrate``. It talks to the API server with the ``kubernetes`` client
and to the nodes over SSH, running the ``podmigrate-node`` helper the migration_node role
installs. Phases, in order (each timed, each reported as an Event on the pod):

  validate    every refusal, before anything changes (module_utils.migration.plan), and
              what CRIU could not dump in the pod's processes (module_utils.preflight)
  prepare     migration directories, the one-time SSH key for the direct stream
  fence       new connections to the source pod refused, established ones drained:
              nothing the source acknowledges after its checkpoint can be lost
  checkpoint  the kubelet checkpoint API, through the API server's node proxy
  transfer    direct: source -> target over SSH, zstd, sha256 checked, retried;
              share: through a directory both nodes mount, or an SMB share (Azure
              Files) the node helper reaches with an SMB client library: uploaded,
              read back from the share, then downloaded, size and sha256 checked
  import      a checkpoint image per container in the target's containerd
  restore     the restored pod on the target (labels kept, checkpoint images)
  verify      Running, every container restored by CRI (not started afresh), Ready
  commit      the source pod deleted; only now is the source given up

Any failure before the commit rolls back: the restored pod and images are removed, the
fence lifted; the source never stopped. Checkpoint files are removed on both nodes in
every case.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time

from ansible_collections.podmigrate.cluster.plugins.module_utils import migration, preflight

HELPER = "/usr/local/libexec/podmigrate/podmigrate-node"
MIGRATIONS = "/var/lib/podmigrate/migrations"
AUTHORIZED_KEYS = "/etc/podmigrate/authorized_keys"
CHECKPOINT_REPOSITORY = "localhost/podmigrate-checkpoint"
TRANSFERS = ("direct", "share")
SHARES = ("dir", "smb")  # what the share transfer goes through
# the name the pod's emptyDir volumes travel under (no container has a dot in its name)
VOLUMES = "volumes.emptydir"


class NodeError(Exception):
    pass


class AlreadyThere(Exception):
    """The pod was moved to the target before: nothing to do."""


class Node:
    """A node reached over SSH as Ansible reaches it."""

    def __init__(self, name, host, user="root", port=None, key=None, ssh_args=""):
        self.name, self.host, self.user = name, host, user
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if port:
            self.options += ["-p", str(port)]
        if key:
            self.options += ["-i", key]
        self.options += shlex.split(ssh_args or "")

        self.control = None

    def multiplex(self, directory):
        """Share one SSH connection between the commands of a migration (each new
        connection costs a handshake, and the pod is fenced meanwhile)."""
        self.control = directory

    def close(self):
        if self.control:
            subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", f"{self.user}@{self.host}"],
                           capture_output=True, timeout=30, check=False)
            self.control = None

    def ssh_options(self):
        if not self.control:
            return self.options
        return [*self.options, "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}/%C",
                "-o", "ControlPersist=300"]

    def run(self, command, stdin=None, timeout=600, check=True):
        res = subprocess.run(["ssh", *self.ssh_options(), f"{self.user}@{self.host}", command], input=stdin,
                             capture_output=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise NodeError(f"{self.name}: `{command}` failed ({res.returncode}): "
                            f"{res.stderr.decode(errors='replace').strip()[-600:]}")
        return res.stdout.decode(errors="replace")

    def helper(self, *args, **kw):
        return self.run(" ".join([HELPER, *(shlex.quote(str(a)) for a in args)]), **kw)


class Migration:
    def __init__(self, api_client, nodes, namespace, name, target=None, transfer="direct",
                 share_dir="/var/lib/podmigrate/share", share="dir", report_dir=None, progress=None,
                 helper_digest=None, timeout=600):
        from kubernetes import client  # imported here: the pure parts need no client

        self.client = client
        self.core = client.CoreV1Api(api_client)
        self.api_client = api_client
        self.nodes = nodes
        self.namespace, self.name, self.target_name = namespace, name, target
        self.transfer = transfer
        self.share_dir = share_dir
        self.smb = transfer == "share" and share == "smb"
        self.report_dir = report_dir
        self.progress = progress or (lambda msg: None)
        self.helper_digest = helper_digest
        self.timeout = timeout
        self.id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.directory = f"{MIGRATIONS}/{self.id}"  # on both nodes
        self.report = {"id": self.id, "pod": f"{namespace}/{name}", "transfer": transfer, "phases": {},
                       **({"share": share} if transfer == "share" else {}),
                       "containers": {}, "result": "running"}
        self.undo = []
        self.pod = self.source = self.target = None
        self.restored_name = None

    # ------------------------------------------------------------ helpers
    def log(self, msg):
        self.progress(f"[{self.id}] {msg}")

    def phase(self, name, func, *args):
        self.log(f"{name} ...")
        started = time.monotonic()
        try:
            result = func(*args)
        finally:
            self.report["phases"][name] = round(time.monotonic() - started, 3)
        self.log(f"{name}: {self.report['phases'][name]:.2f} s")
        self.event(f"Migration{name.capitalize()}", f"{name} done in {self.report['phases'][name]:.2f} s")
        return result

    def event(self, reason, message, pod_name=None, kind="Normal"):
        pod_name = pod_name or self.name
        try:
            self.core.create_namespaced_event(self.namespace, self.client.CoreV1Event(
                metadata=self.client.V1ObjectMeta(generate_name=f"{pod_name}.podmigrate."),
                involved_object=self.client.V1ObjectReference(kind="Pod", namespace=self.namespace,
                                                              name=pod_name, api_version="v1"),
                reason=reason, message=f"migration {self.id}: {message}", type=kind,
                source=self.client.V1EventSource(component="podmigrate"),
                first_timestamp=_now(), last_timestamp=_now(), count=1))
        except Exception as exc:
            self.log(f"could not record event {reason}: {exc}")

    def as_dict(self, obj):
        return self.api_client.sanitize_for_serialization(obj)

    # ------------------------------------------------------------ phases
    def observe(self):
        """The pod (or the pod it was moved to before), the nodes, the pods on each node
        and the namespace's claims, as plain dicts."""
        from kubernetes.client.rest import ApiException

        try:
            self.core.read_namespace(self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise migration.MigrationError([f"namespace {self.namespace!r} not found"]) from None
            raise
        try:
            pod = self.as_dict(self.core.read_namespaced_pod(self.name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            # a pod moved before runs under a new name that records this one
            moved = [p for p in self.as_dict(self.core.list_namespaced_pod(self.namespace).items)
                     if ((p["metadata"].get("annotations") or {}).get(migration.ORIGINAL_NAME) == self.name)]
            if not moved:
                raise migration.MigrationError([f"pod {self.namespace}/{self.name} not found"]) from None
            pod = max(moved, key=lambda p: p["metadata"].get("creationTimestamp") or "")
            self.name = pod["metadata"]["name"]
            if self.target_name and pod["spec"].get("nodeName") == self.target_name:
                self.report.update(source=self.target_name, target=self.target_name, current=self.name)
                raise AlreadyThere(
                    f"{self.namespace}/{self.name} (moved before) already runs on {self.target_name}") from None
        nodes = {n["metadata"]["name"]: n for n in self.as_dict(self.core.list_node().items)}
        pods_by_node = {}
        for p in self.as_dict(self.core.list_pod_for_all_namespaces().items):
            pods_by_node.setdefault((p.get("spec") or {}).get("nodeName"), []).append(p)
        claims = {c["metadata"]["name"]: c for c in self.as_dict(
            self.core.list_namespaced_persistent_volume_claim(self.namespace).items)}
        return pod, nodes, pods_by_node, claims

    def validate(self):
        problems = []
        pod, nodes, pods_by_node, claims = self.observe()
        try:
            source, target = migration.plan(pod, nodes, pods_by_node, claims, self.target_name)
        except migration.MigrationError as exc:
            problems += exc.problems
            source, target = (pod.get("spec") or {}).get("nodeName"), None
        if self.transfer not in TRANSFERS:
            problems.append(f"transfer {self.transfer!r} is not one of {', '.join(TRANSFERS)}")
        if self.transfer == "share" and self.report["share"] not in SHARES:
            problems.append(f"share {self.report['share']!r} is not one of {', '.join(SHARES)}")
        for role, name in (("source", source), ("target", target)):
            if name and name not in self.nodes:
                problems.append(f"{role} node {name} is not in the inventory: no way to reach it over SSH")
        if problems:
            raise migration.MigrationError(problems)
        self.pod = pod
        self.source, self.target = self.nodes[source], self.nodes[target]
        self.source_ip = migration.internal_ip(nodes[source]) or self.source.host
        self.target_ip = migration.internal_ip(nodes[target]) or self.target.host
        self.report.update(source=source, target=target)
        for node in (self.source, self.target):
            digest = node.helper("version", check=False).strip()
            if self.helper_digest and digest != self.helper_digest:
                raise migration.MigrationError([f"node {node.name}: the podmigrate-node helper is missing or stale "
                                                "(run site.yml, or playbooks/nodes.yml, again)"])
        # what CRIU would refuse to dump, found before the fence (CRIU itself finds it only in the dump)
        problems += preflight.problems(json.loads(self.source.helper("preflight", pod["metadata"]["uid"])))
        if self.smb:
            for node in (self.source, self.target):
                try:
                    node.helper("smb-check")
                except NodeError as exc:
                    problems.append(f"node {node.name} cannot use the SMB share: {exc}")
        if problems:
            raise migration.MigrationError(problems)
        self.containers = [c["name"] for c in pod["spec"]["containers"]]
        self.volumes = [v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v]
        self.pod_ip = (pod.get("status") or {}).get("podIP")

    def prepare(self):
        directory = self.directory
        for node in (self.source, self.target):
            node.run(f"install -d -m 0700 {MIGRATIONS} {directory}")
            self.undo.append(("remove files", lambda n=node: n.run(f"rm -rf {directory}", check=False)))
        if self.transfer == "direct":
            work = tempfile.mkdtemp(prefix="podmigrate-key-")
            try:
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"podmigrate-{self.id}",
                                "-f", f"{work}/key"], check=True)
                with open(f"{work}/key") as f:
                    private = f.read()
                with open(f"{work}/key.pub") as f:
                    public = f.read().strip()
            finally:
                shutil.rmtree(work, ignore_errors=True)
            host_key = self.target.run("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
            entry = (f'restrict,from="{self.source_ip}",command="{HELPER} forced" {public}')
            self.target.run(f"umask 077; mkdir -p {os.path.dirname(AUTHORIZED_KEYS)}; "
                            f"cat >> {AUTHORIZED_KEYS}", stdin=(entry + "\n").encode())
            self.undo.append(("remove the one-time key", lambda: self.target.run(
                f"sed -i '/ podmigrate-{self.id}$/d' {AUTHORIZED_KEYS}", check=False)))
            self.source.run(f"umask 077; cat > {directory}/key", stdin=private.encode())
            self.source.run(f"umask 077; cat > {directory}/known_hosts",
                            stdin=f"{self.target_ip} {host_key[0]} {host_key[1]}\n".encode())
        elif self.smb:
            # the target must read what the source writes to the share, checked as a checkpoint is
            self.undo.append(("remove the share's files", lambda: self.source.helper("smb-rm", self.id, check=False)))
            probe = f"{directory}/probe"
            self.source.run(f"echo {self.id} > {probe}")
            self.share_copy(probe, "probe", probe)
        else:
            # the target must see what the source writes: a directory of the same name on
            # each node is not yet a share
            self.share = f"{self.share_dir}/{self.id}"
            quoted = shlex.quote(self.share)
            self.source.run(f"install -d -m 0700 {quoted} && echo {self.id} > {quoted}/probe")
            self.undo.append(("remove the share's files", lambda: self.source.run(f"rm -rf {quoted}", check=False)))
            seen = self.target.run(f"cat {quoted}/probe", check=False).strip()
            if seen != self.id:
                raise NodeError(f"{self.target.name} does not see what {self.source.name} writes to {self.share_dir}: "
                                "is the share mounted on both?")

    def fence(self):
        if not self.pod_ip:
            return
        self.undo.append(("lift the fence", lambda: self.source.helper("unfence", self.id, check=False)))
        self.source.helper("fence", self.pod_ip, self.id)
        drained = json.loads(self.source.helper("drain", self.pod_ip, "--timeout", "5"))
        self.report["established_after_drain"] = drained["established"]

    def checkpoint(self):
        from kubernetes.client.rest import ApiException

        self.archives = {}
        # whatever the kubelet writes for this pod from now on, even if its answer is lost
        pattern = shlex.quote(f"checkpoint-{self.name}_{self.namespace}-*")
        marker = f"{self.directory}/checkpoint-started"
        self.source.run(f"touch {marker}")
        self.undo.append(("remove the kubelet's archives", lambda: self.source.run(
            f"find /var/lib/kubelet/checkpoints -maxdepth 1 -name {pattern} -newer {marker} -delete", check=False)))
        for container in self.containers:
            # through the API server, which proxies with its kubelet client certificate: the
            # kubelet authenticates and authorises it (no anonymous access needed); the
            # kubelet's own limit is its runtimeRequestTimeout
            try:
                answer = self.core.connect_post_node_proxy_with_path(
                    self.source.name, f"checkpoint/{self.namespace}/{self.name}/{container}",
                    _request_timeout=self.timeout, _preload_content=False)
            except ApiException as exc:
                said = (exc.body or exc.reason or "").strip()
                raise NodeError(f"checkpoint of {container} failed ({exc.status}): {said}"
                                + self.criu_log(said)) from None
            items = json.loads(answer.read()).get("items") or []
            if len(items) != 1:
                raise NodeError(f"the kubelet answered the checkpoint of {container} with {items}")
            archive = items[0]
            size = int(self.source.run(f"stat -c %s {shlex.quote(archive)}"))
            self.archives[container] = archive
            self.report["containers"].setdefault(container, {})["checkpoint_bytes"] = size
        if self.volumes:
            # right after the checkpoints, while the fence keeps the volumes as the processes left them
            path = f"{self.directory}/{VOLUMES}"
            packed = json.loads(self.source.helper("pack-volumes", self.pod["metadata"]["uid"], path, *self.volumes))
            self.archives[VOLUMES] = path
            self.report["volumes"] = {"names": self.volumes, "bytes": packed["bytes"]}

    def criu_log(self, said):
        """What the CRIU log the runtime names in its error says (gone with the container)."""
        found = re.search(r"path= ?(/\S+/criu-dump\.log)", said)
        if not found:
            return ""
        log = shlex.quote(found.group(1))
        # its first errors say why; its end, where it stopped
        said = self.source.run(f"grep -m 6 'Error' {log}; echo ...; tail -n 3 {log}", check=False).strip()
        return f"\nCRIU's log:\n{said}" if said != "..." else ""

    def move(self):
        directory = self.directory
        self.received = {}
        for container, archive in self.archives.items():
            if self.transfer == "direct":
                sent = json.loads(self.source.helper(
                    "send", archive, "--to", self.target_ip, "--key", f"{directory}/key",
                    "--known-hosts", f"{directory}/known_hosts", "--migration", self.id,
                    "--name", container, timeout=self.timeout).strip().splitlines()[-1])
                self.received[container] = (f"{directory}/{container}.part", sent["sha256"])
            elif self.smb:
                sent = self.share_copy(archive, f"{container}.tar", f"{directory}/{container}.tar")
                self.received[container] = (f"{directory}/{container}.tar", sent["sha256"])
            else:
                sent = json.loads(self.source.run(
                    f"set -e; f={shlex.quote(self.share)}/{container}.tar; cp {shlex.quote(archive)} $f.part; "
                    f"sync $f.part; s=$(sha256sum < $f.part | cut -d' ' -f1); mv $f.part $f; "
                    f"echo \"{{\\\"sha256\\\": \\\"$s\\\", \\\"bytes\\\": $(stat -c %s $f)}}\"",
                    timeout=self.timeout))
                sent["wire_bytes"] = sent["bytes"]
                self.received[container] = (f"{self.share}/{container}.tar", sent["sha256"])
            entry = self.report["volumes"] if container == VOLUMES else self.report["containers"][container]
            entry.update(sha256=sent["sha256"], sent_bytes=sent["wire_bytes"], attempts=sent.get("attempts", 1))

    def share_copy(self, path, name, dest):
        """The source's file ``path`` to the target's ``dest`` through the SMB share: uploaded,
        read back there, and taken only whole, its size and sha256 as sent."""
        remote = f"{self.id}/{name}"
        sent = json.loads(self.source.helper("smb-put", path, remote, timeout=self.timeout).strip().splitlines()[-1])
        self.target.helper("smb-get", remote, dest, "--sha256", sent["sha256"], "--size", sent["bytes"],
                           timeout=self.timeout)
        return sent

    def import_images(self):
        self.images = {}
        for container, (path, sha) in self.received.items():
            if container == VOLUMES:
                continue
            ref = f"{CHECKPOINT_REPOSITORY}/{self.namespace}.{self.name}.{container}:{self.id}".lower()
            self.undo.append(("remove the checkpoint image", lambda r=ref: self.target.helper("remove-image", r)))
            out = json.loads(self.target.helper("image", path, "--container", container, "--name", ref,
                                                "--sha256", sha, timeout=self.timeout).strip().splitlines()[-1])
            self.images[container] = ref
            self.report["containers"][container]["base_image"] = out["base"]

    def restore(self):
        fill = self.target.helper("sandbox-image").strip() if self.volumes else None
        manifest = migration.restored_pod(self.pod, self.target.name, self.images, self.id.rsplit("-", 1)[1], fill)
        self.restored_name = manifest["metadata"]["name"]
        self.undo.append(("delete the restored pod", self.delete_restored))
        created = self.as_dict(self.core.create_namespaced_pod(self.namespace, manifest))
        self.report["restored_pod"] = f"{self.namespace}/{self.restored_name}"
        if self.volumes:
            self.wait_fill_running()
            path, sha = self.received[VOLUMES]
            self.target.helper("fill-volumes", created["metadata"]["uid"], path, "--sha256", sha)

    def wait_fill_running(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pod = self.as_dict(self.core.read_namespaced_pod(self.restored_name, self.namespace))
            for s in (pod.get("status") or {}).get("initContainerStatuses") or []:
                if s.get("name") == migration.FILL_CONTAINER and "running" in (s.get("state") or {}):
                    return
            time.sleep(0.1)
        raise NodeError(f"restored pod {self.restored_name}: its {migration.FILL_CONTAINER} init container never ran")

    def delete_restored(self):
        from kubernetes.client.rest import ApiException

        try:
            self.core.delete_namespaced_pod(self.restored_name, self.namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.wait_gone(self.restored_name)

    def wait_gone(self, name, timeout=120):
        from kubernetes.client.rest import ApiException

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.core.read_namespaced_pod(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(0.2)
        raise NodeError(f"pod {self.namespace}/{name} still exists after {timeout} s")

    def wait_running(self, what="restored pod"):
        """The restored pod once Running with every container ready and none restarted."""
        deadline = time.monotonic() + self.timeout
        while True:
            pod = self.as_dict(self.core.read_namespaced_pod(self.restored_name, self.namespace))
            problem = migration.restored_problem(pod, self.containers)
            if problem is None:
                return pod
            if problem.startswith("failed:") or time.monotonic() > deadline:
                raise NodeError(f"{what} {self.restored_name}: {problem.removeprefix('failed: ')}")
            time.sleep(0.1)

    def verify(self):
        pod = self.wait_running()
        uid = pod["metadata"]["uid"]
        restored = json.loads(self.target.helper("restored", uid))
        fresh = [c for c in self.containers if not restored.get(c)]
        if fresh:
            raise NodeError(f"restored pod {self.restored_name}: container(s) {', '.join(fresh)} "
                            "started afresh instead of from their checkpoint")

    def commit(self):
        self.core.delete_namespaced_pod(self.name, self.namespace)
        self.wait_gone(self.name)

    # ------------------------------------------------------------ driver
    def run(self):
        started = time.monotonic()
        committed = False
        control = tempfile.mkdtemp(prefix="podmigrate-ssh-")
        for node in self.nodes.values():
            node.multiplex(control)
        try:
            self.execute()
            committed = True
            self.report["result"] = "migrated"
        except AlreadyThere as exc:
            self.report.update(result="already there", message=str(exc))
        except migration.MigrationError as exc:
            self.report.update(result="refused", error=str(exc), problems=exc.problems)
            raise
        except Exception as exc:
            self.report.update(result="rolled back", error=f"{type(exc).__name__}: {exc}")
            self.log(f"failed: {exc}; rolling back")
            self.event("MigrationFailed", f"rolled back: {exc}", kind="Warning")
            raise
        finally:
            self.cleanup()
            for node in self.nodes.values():
                node.close()
            shutil.rmtree(control, ignore_errors=True)
            self.report["total_seconds"] = round(time.monotonic() - started, 3)
            self.summarize()
            self.write_report()
            if committed:
                self.event("MigrationDone", self.report["summary"], pod_name=self.restored_name)
        return self.report

    def execute(self):
        """The phases up to and including the commit (the seed-fork profile has its own)."""
        self.phase("validate", self.validate)
        self.event("MigrationStarted", f"moving to {self.target.name} ({self.transfer} transfer)")
        self.phase("prepare", self.prepare)
        fenced = time.monotonic()
        self.phase("fence", self.fence)
        self.phase("checkpoint", self.checkpoint)
        self.phase("transfer", self.move)
        self.phase("import", self.import_images)
        self.phase("restore", self.restore)
        self.phase("verify", self.verify)
        self.report["fenced_seconds"] = round(time.monotonic() - fenced, 3)
        # the commit point: from here the restored pod stays; the fence goes once the source is gone
        self.undo = [u for u in self.undo if u[0] != "delete the restored pod"]
        self.phase("commit", self.commit)

    def cleanup(self):
        errors = []
        for what, undo in reversed(self.undo):
            try:
                undo()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        self.undo = []
        if errors:
            self.report["cleanup_errors"] = errors
            self.log("cleanup left: " + "; ".join(errors))

    def summarize(self):
        volumes = self.report.get("volumes") or {}
        raw = sum(c.get("checkpoint_bytes", 0) for c in self.report["containers"].values()) + volumes.get("bytes", 0)
        sent = sum(c.get("sent_bytes", 0) for c in self.report["containers"].values()) + volumes.get("sent_bytes", 0)
        transfer = self.report["phases"].get("transfer")
        self.report.update(checkpoint_bytes=raw, sent_bytes=sent)
        if transfer:
            self.report["throughput_mib_s"] = round(raw / transfer / 2**20, 1)
        if self.report["result"] == "already there":
            self.report["summary"] = self.report["message"]
            return
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in self.report["phases"].items())
        self.report["summary"] = (f"{self.report['pod']} {self.report.get('source', '?')} -> "
                                  f"{self.report.get('target', '?')}: {self.report['result']} in "
                                  f"{self.report.get('total_seconds', 0):.2f} s ({phases}); "
                                  f"checkpoint {raw / 2**20:.1f} MiB, sent {sent / 2**20:.1f} MiB")

    def write_report(self):
        if not self.report_dir:
            return
        os.makedirs(self.report_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.report_dir, f"{self.id}.json")
        with open(path, "w") as f:
            json.dump(self.report, f, indent=2, sort_keys=True)
        self.report["report"] = path


def _now():
    import datetime

    return datetime.datetime.now(datetime.UTC)


def parse_pod(ref):
    m = re.match(r"^(?:([a-z0-9-]+)/)?([a-z0-9.-]+)$", ref or "")
    if not m:
        raise migration.MigrationError([f"pod {ref!r} is not NAMESPACE/NAME"])
    return m.group(1) or "default", m.group(2)
