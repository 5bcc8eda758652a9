# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a migration's payload goes from the source node to the target: one class per
transfer, with one interface the engine calls.

  problems()   at validate: why this transfer cannot be used (nothing has changed yet)
  prepare()    before the freeze: whatever the transfer needs set up (recording its undo:
               ``job.always_do(what, KIND, ...)``, carried out by its ``undo_KIND``)
  dump_args()  what the source's ``dump`` adds (the direct transfer streams the memory
               pages to the target as they are dumped)
  carry()      after the checkpoint: the payload onto the target, checked whole; returns
               {sha256, bytes, sent_bytes, attempts}
  finish()     past the commit point, before the source is ended: what must still come
               from it (post-copy: the memory pages the restored pod has not had yet)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.remote import (
    AUTHORIZED_KEYS,
    HELPER,
    NodeError,
)

TRANSFERS = ("direct", "share")
SHARES = ("dir", "smb")  # what the share transfer goes through
COPIES = ("eager", "lazy")  # the memory before the restore, or after it (post-copy, direct only)
LAZY_PIPE = 4 << 20  # CRIU's lazy page server grows a pipe to this (docs/migration.md)
# the open files a lazy dump's CRIU has besides its page pipes (measured here: about 30; a
# 32 MiB counter's dump failed at a limit of 40 and passed at 50, a 1 GiB one's at 530 and 560)
LAZY_SPARE_FILES = 48
CAP_SYS_RESOURCE = 24
PAGE = 4096


class Transfer:
    def __init__(self, job):
        self.job = job

    def problems(self):
        return []

    def prepare(self):
        # the source's watcher asks the target's verdict with the migration's key (watch.py)
        self.authorize([])

    def dump_args(self):
        return []

    def carry(self):
        raise NotImplementedError

    def finish(self):
        return None

    def authorize(self, names, listen=False):
        """The migration's one-time SSH key, made here and authorised on the target only from
        the source's address, only for its forced command (``podmigrate-node forced``:
        receive, a page server, the verdict) and to forward to one loopback port per name in
        ``names`` (where the target's page servers will listen; with ``listen``, the ports
        the key may forward from the target back to the source instead), until it expires; the
        private half and the target's host key written to the source. {name: port}."""
        job = self.job
        work = tempfile.mkdtemp(prefix="podmigrate-key-")
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"podmigrate-{job.id}",
                            "-f", f"{work}/key"], check=True)
            with open(f"{work}/key") as f:
                private = f.read()
            with open(f"{work}/key.pub") as f:
                public = f.read().strip()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        job.always_do("remove the one-time key", "key", node=job.target.name)
        host_key = job.target.run("cat /etc/ssh/ssh_host_ed25519_key.pub").split()
        # the ports the key may forward to: where the target's page servers listen, one per
        # container (their tunnels open before the freeze, all at once); and when the key
        # expires, in the target's own time (as sshd reads expiry-time): when the migration's
        # staged pod gives up too and the source's watcher (which asks the verdict with it)
        # has had its turn, should nobody remove the key
        lifetime = 3 * job.timeout + job.node_deadline + 60
        ports, expiry = json.loads(job.target.run(
            f"python3 -c 'import json, socket, time; s = [socket.socket() for _ in range({len(names)})]; "
            "[x.bind((\"127.0.0.1\", 0)) for x in s]; print(json.dumps([[x.getsockname()[1] for x in s], "
            f"time.strftime(\"%Y%m%d%H%M\", time.localtime(time.time() + {lifetime}))]))'"))
        forward = "".join(f',{"permitlisten" if listen else "permitopen"}="127.0.0.1:{port}"' for port in ports)
        entry = (f'restrict{",port-forwarding" + forward if ports else ""},from="{job.source_ip}",'
                 f'expiry-time="{expiry}",command="{HELPER} forced" {public}')
        job.target.run(add_key_command(AUTHORIZED_KEYS), stdin=(entry + "\n").encode())
        job.source.run(f"umask 077; cat > {job.directory}/key", stdin=private.encode())
        job.source.run(f"umask 077; cat > {job.directory}/known_hosts",
                       stdin=f"{job.target_ip} {host_key[0]} {host_key[1]}\n".encode())
        return dict(zip(names, ports, strict=True))

    def undo_key(self, node):
        self.job.nodes[node].run(remove_key_command(AUTHORIZED_KEYS, self.job.id))


class Direct(Transfer):
    """Source to target over SSH with a one-time key: the memory pages to the target's CRIU
    page server as they are dumped (`dump --to`), the rest right after the dump as a tar +
    zstd stream (`dump --send`, into the target's `receive`), sha256 checked, retried. The
    SSH sessions of both open before the freeze."""

    def prepare(self):
        # a pod that keeps its name keeps its pages on the source too (for a rollback once its
        # source pod is deleted: engine.Migration.replace): none stream
        self.ports = self.authorize([] if self.job.keeps_name else self.job.containers)

    def ssh_args(self):
        return ["--to", self.job.target_ip, "--key", f"{self.job.directory}/key",
                "--known-hosts", f"{self.job.directory}/known_hosts"]

    def dump_args(self):
        # the rest of the payload goes right after the dump, through an SSH session the dump
        # session opened before the freeze
        ports = [a for name, port in self.ports.items() for a in ("--port", f"{name}={port}")]
        return [*self.ssh_args(), "--send", *ports]

    def carry(self):
        job = self.job
        sent = job.capture.answer(job.timeout)
        return {"sha256": sent["sha256"], "bytes": sent["bytes"], "sent_bytes": sent["wire_bytes"],
                "attempts": sent["attempts"]}


class Lazy(Direct):
    """Post-copy (``copy=lazy``): the direct transfer without the memory pages. Each
    container's CRIU on the source serves them (``runc checkpoint --lazy-pages``, the pod
    still frozen); the target's runtime restores the container at once and CRIU's lazy-pages
    daemon there fetches its pages as the restored processes touch them, and the rest in the
    background, through an SSH tunnel the source opens before the freeze (the migration's
    key may listen on one loopback port per container there). The source is ended only once
    every page has been served (finish); if it or the link dies before, the pod is lost."""

    def problems(self):
        job = self.job
        found = []
        if job.keeps_name:
            found.append("copy=lazy cannot move a pod that keeps its name (a StatefulSet's): its source is "
                         "deleted before its restore, and the memory post-copy would fetch with it")
        size, bounding, nofile = job.source.run("cat /proc/sys/fs/pipe-max-size; "
                                                "sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status; "
                                                "ulimit -Hn").split()
        if int(bounding, 16) >> CAP_SYS_RESOURCE & 1:
            return found  # CRIU grows its pipe and raises its own limit of open files
        if int(size) < LAZY_PIPE:
            found.append(f"copy=lazy: node {job.source.name} cannot serve pages lazily: CRIU's lazy page server "
                         f"needs a {LAZY_PIPE >> 20} MiB pipe, over fs.pipe-max-size ({int(size)}) without "
                         "CAP_SYS_RESOURCE (not in the node's bounding set); raise fs.pipe-max-size to "
                         f"{LAZY_PIPE} there, or use copy=eager")
        # each container's CRIU holds its memory in pipes until it is served, 4 MiB in each
        # (two descriptors); the dump raises its limit of open files to the hard one
        memory = max(job.container_memory.values(), default=job.memory_bytes)
        needed = 2 * -(-memory // LAZY_PIPE) + LAZY_SPARE_FILES
        if nofile != "unlimited" and needed > int(nofile):
            found.append(f"copy=lazy: node {job.source.name} cannot hold {memory >> 20} MiB of a container's memory "
                         f"in CRIU's page pipes: they take about {needed} open files (two per {LAZY_PIPE >> 20} MiB), "
                         f"over the hard limit of root's sessions there ({nofile}), which CRIU cannot raise "
                         "without CAP_SYS_RESOURCE; raise that limit, or use copy=eager")
        return found

    def prepare(self):
        self.ports = self.authorize(self.job.containers, listen=True)

    def dump_args(self):
        return [*super().dump_args(), "--lazy"]

    def finish(self):
        """Every page served (the source's dump session says so once each container's page
        server has ended) and received (each lazy-pages daemon on the target ended well);
        {seconds}. Else the restored pod's memory is incomplete: NodeError."""
        job = self.job
        served = job.capture.answer(job.timeout)
        failed = [f"{name}: its page server ended with {code}" for name, code in served["served"].items() if code]
        exits = f"{job.directory}/payload/*/lazy-pages.exit"
        # each daemon writes its exit code right after its last page (the source's server ends first)
        waited = job.target.run(f"for i in $(seq 300); do ls {exits} 2>/dev/null | wc -l | "
                                f"grep -qx {len(job.containers)} && break; sleep 0.1; done; grep -H . {exits}",
                                check=False)
        codes = {line.split("/")[-2]: line.rsplit(":", 1)[1] for line in waited.split()}
        failed += [f"{name}: CRIU's lazy-pages daemon ended with {codes.get(name, 'nothing (still running)')}"
                   for name in job.containers if codes.get(name) != "0"]
        if failed:
            raise NodeError("post-copy failed: " + "; ".join(failed))
        # what the daemons fetched: "<pid>-<uffd>: Found N pages to be handled by UFFD" (CRIU's log)
        found = job.target.run(f"cat {job.directory}/payload/*/restore-work/lazy-pages.log 2>/dev/null | "
                               "sed -n 's/.* Found \\([0-9]*\\) pages to be handled by UFFD.*/\\1/p'", check=False)
        return {"seconds": served["seconds"], "bytes": sum(int(n) for n in found.split()) * PAGE}


def copy_problems(copy, transfer):
    """Why ``copy`` cannot go with ``transfer`` (whatever the pod), or nothing."""
    if copy not in COPIES:
        return [f"copy {copy!r} is not one of {', '.join(COPIES)}"]
    if copy == "lazy" and transfer != "direct":
        return ["copy=lazy (post-copy) needs transfer=direct: the target fetches the pages from the source"]
    return []


def add_key_command(path):
    """The shell command that appends the key entry on its stdin to ``path``. Two migrations
    to one node at once change that file together; the lock beside it makes each change
    whole (``sed -i`` writes a new file and renames it over the old one: an entry appended
    to the old one meanwhile would be lost)."""
    return f"umask 077; mkdir -p {os.path.dirname(path)}; flock {path}.lock sh -c 'cat >> {path}'"


def remove_key_command(path, migration_id):
    """The shell command that removes migration ``migration_id``'s key entry from ``path``."""
    return f"flock {path}.lock sed -i '/ podmigrate-{migration_id}$/d' {path}"


class DirShare(Transfer):
    """One tar file through a directory both nodes mount (`pack`, a copy, `unpack`)."""

    def prepare(self):
        super().prepare()
        # the target must see what the source writes: a directory of the same name on
        # each node is not yet a share
        job = self.job
        self.share = f"{job.share_dir}/{job.id}"
        quoted = shlex.quote(self.share)
        job.always_do("remove the share's files", "share_files", node=job.source.name, path=self.share)
        job.source.run(f"install -d -m 0700 {quoted} && echo {job.id} > {quoted}/probe")
        seen = job.target.run(f"cat {quoted}/probe", check=False).strip()
        if seen != job.id:
            raise NodeError(f"{job.target.name} does not see what {job.source.name} writes to {job.share_dir}: "
                            "is the share mounted on both?")

    def undo_share_files(self, node, path):
        self.job.nodes[node].run(f"rm -rf {shlex.quote(path)}")

    def carry(self):
        job = self.job
        packed = json.loads(job.source.helper("pack", job.id, timeout=job.timeout))
        received = shlex.quote(f"{self.share}/payload.tar")
        job.source.run(f"set -e; cp {packed['path']} {received}.part; sync {received}.part; "
                       f"mv {received}.part {received}", timeout=job.timeout)
        job.target.helper("unpack", job.id, f"{self.share}/payload.tar", "--sha256", packed["sha256"],
                          timeout=job.timeout)
        return {"sha256": packed["sha256"], "bytes": packed["bytes"], "sent_bytes": packed["bytes"], "attempts": 1}


class SmbShare(Transfer):
    """One tar file through an SMB share (Azure Files, Samba) the node helper reaches with an
    SMB client library: uploaded, read back from the share, then downloaded, size and sha256
    checked."""

    def problems(self):
        found = []
        for node in (self.job.source, self.job.target):
            try:
                node.helper("smb-check")
            except NodeError as exc:
                found.append(f"node {node.name} cannot use the SMB share: {exc}")
        return found

    def prepare(self):
        super().prepare()
        # the target must read what the source writes to the share, checked as a checkpoint is
        job = self.job
        job.always_do("remove the share's files", "smb_files", node=job.source.name)
        probe = f"{job.directory}/probe"
        job.source.run(f"echo {job.id} > {probe}")
        self.copy(probe, "probe", probe)

    def undo_smb_files(self, node):
        self.job.nodes[node].helper("smb-rm", self.job.id)

    def copy(self, path, name, dest):
        """The source's file ``path`` to the target's ``dest`` through the share: uploaded,
        read back there, and taken only whole, its size and sha256 as sent."""
        job = self.job
        remote = f"{job.id}/{name}"
        sent = json.loads(job.source.helper("smb-put", path, remote, timeout=job.timeout).strip().splitlines()[-1])
        job.target.helper("smb-get", remote, dest, "--sha256", sent["sha256"], "--size", sent["bytes"],
                          timeout=job.timeout)
        return sent

    def carry(self):
        job = self.job
        packed = json.loads(job.source.helper("pack", job.id, timeout=job.timeout))
        received = f"{job.directory}/payload.tar"
        sent = self.copy(packed["path"], "payload.tar", received)
        job.target.helper("unpack", job.id, received, "--sha256", packed["sha256"], timeout=job.timeout)
        return {"sha256": sent["sha256"], "bytes": sent["bytes"], "sent_bytes": sent["wire_bytes"], "attempts": 1}


def choose(job, transfer, share, copy="eager"):
    """The transfer named ``transfer`` (and, for ``share``, what it goes through; for
    ``direct``, ``copy``: the memory before the restore or after)."""
    if transfer == "direct":
        return Lazy(job) if copy == "lazy" else Direct(job)
    return SmbShare(job) if share == "smb" else DirShare(job)
