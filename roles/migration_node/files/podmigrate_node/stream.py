# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bytes between nodes: the payload as a tar stream over SSH (`send`, into `receive`), CRIU's page
server behind a migration's one-time key (`page-server`, `PageTunnel`), the source's lazy page
servers reached from the target the same way (`lazy-tunnel`, `LazyTunnel`), and the payload as
one tar file for the share transfer (`pack`/`unpack`)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time

from podmigrate_node.common import SAFE, du, fail, migration_dir, pump, runtime


def untar_part(final, fill):
    """Unpack the tar stream ``fill(out, digest, size)`` writes into ``final``.part (made
    afresh, root only); (part, whether tar took it whole, sha256 and size of the stream)."""
    part = final + ".part"
    subprocess.run(["rm", "-rf", "--", part], check=True)
    os.mkdir(part, 0o700)
    digest, size = hashlib.sha256(), [0]
    untar = subprocess.Popen(["tar", "-C", part, "--numeric-owner", "-xpf", "-"], stdin=subprocess.PIPE)
    with contextlib.suppress(BrokenPipeError):
        fill(untar.stdin, digest, size)
    with contextlib.suppress(BrokenPipeError):
        untar.stdin.close()
    return part, untar.wait() == 0, digest.hexdigest(), size[0]


def show_whole(part, final):
    """The unpacked ``part`` under its final name, only now."""
    subprocess.run(["rm", "-rf", "--", final], check=True)
    os.rename(part, final)


def cmd_receive(args):
    """Unpack a zstd-compressed tar stream on stdin into the migration's directory NAME
    (made whole under NAME.part first); print the sha256 and size of the tar stream."""
    directory = migration_dir(args.migration)
    if not SAFE.match(args.name) or not os.path.isdir(directory):
        fail(f"nowhere to receive {args.name!r} for migration {args.migration!r}")
    final = os.path.join(directory, args.name)
    wire = [0]
    unzstd = subprocess.Popen(["zstd", "-d", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def feed():
        try:
            pump(sys.stdin.buffer, unzstd.stdin, counter=wire)
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                unzstd.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    part, whole, sha, size = untar_part(final, lambda out, digest, size: pump(unzstd.stdout, out, digest, size))
    feeder.join()
    if unzstd.wait() != 0:
        fail("the stream was cut or is not zstd")
    if not whole:
        fail("the stream is not a whole tar archive")
    # memory pages a container's dump streamed to this node's page server join its images
    pages = os.path.join(directory, "pages")
    for name in sorted(os.listdir(pages)) if os.path.isdir(pages) else []:
        images = os.path.join(part, name, "images")
        if not os.path.isdir(images):
            fail(f"pages of {name} arrived, but not its other images")
        for entry in os.listdir(os.path.join(pages, name)):
            os.rename(os.path.join(pages, name, entry), os.path.join(images, entry))
    show_whole(part, final)
    print(json.dumps({"sha256": sha, "bytes": size, "wire_bytes": wire[0]}))


def migration_ssh(key, known_hosts, cpuinfo="/proc/cpuinfo"):
    """ssh with a migration's one-time key, to the target whose host key it was given. The
    cipher: AES-GCM first where the CPU has AES instructions (measured here: 1 GiB in 2.95 s
    against 3.95 s with OpenSSH's default, ChaCha20-Poly1305, which stays the fallback)."""
    with open(cpuinfo) as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    ciphers = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com" if "aes" in flags else \
        "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com"
    return ["ssh", "-i", key, "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "Compression=no",
            "-o", f"Ciphers={ciphers}"]


def open_receive(args, name):
    """An SSH session to the target's `receive` of ``name``, opened ahead of the send (its
    handshake then costs the migration nothing while the pod is frozen)."""
    ssh = [*migration_ssh(args.key, args.known_hosts), f"root@{args.to}", f"receive {args.migration} {name}"]
    return subprocess.Popen(ssh, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def send(args, directory, name, retries=3, level=1, opened=None):
    """DIRECTORY as a tar stream, zstd-compressed, into the target's `receive` of NAME (the
    first attempt through ``opened`` when given); retried; the checksums of both ends."""
    if not os.path.isdir(directory):
        fail(f"{directory} is not a directory")
    errors = []
    for attempt in range(1, retries + 1):
        started = time.monotonic()
        remote, opened = opened or open_receive(args, name), None
        tar = subprocess.Popen(["tar", "-C", directory, "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", f"-{level}", "-T0", "-q", "-c"], stdin=subprocess.PIPE, stdout=remote.stdin)
        remote.stdin.close()
        remote.stdin = None  # zstd has it now (communicate must not flush it)
        digest, size = hashlib.sha256(), [0]
        try:
            pump(tar.stdout, zstd.stdin, digest, size)
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                zstd.stdin.close()
        zstd.wait()
        out, err = remote.communicate()
        if tar.wait() != 0:
            fail(f"tar of {directory} failed")
        answer = None
        if remote.returncode == 0:
            try:
                answer = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                answer = None
        if answer and answer.get("sha256") == digest.hexdigest() and answer.get("bytes") == size[0]:
            return {"sha256": digest.hexdigest(), "bytes": size[0], "wire_bytes": answer["wire_bytes"],
                    "attempts": attempt, "seconds": round(time.monotonic() - started, 3), "errors": errors}
        errors.append(f"attempt {attempt}: " + (err.decode(errors="replace").strip()[-400:]
                                                 or f"checksum mismatch: sent {digest.hexdigest()}, got {answer}"))
        time.sleep(min(2 ** attempt, 10) * 0.5)
    fail(f"sending {directory} to {args.to} failed {retries} times: " + " | ".join(errors))


def cmd_forced(_args):
    """The forced command of a migration key: only `receive ID NAME`, `page-server ID NAME
    PORT`, `lazy-tunnel ID NAME PORT` and `verdict ID` (the source's watcher, its controller
    gone) are allowed."""
    words = shlex.split(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    if len(words) == 3 and words[0] == "receive":
        cmd_receive(argparse.Namespace(migration=words[1], name=words[2]))
    elif len(words) == 4 and words[0] == "page-server" and words[3].isdigit():
        cmd_page_server(argparse.Namespace(migration=words[1], name=words[2], port=int(words[3])))
    elif len(words) == 4 and words[0] == "lazy-tunnel" and words[3].isdigit():
        cmd_lazy_tunnel(argparse.Namespace(migration=words[1], name=words[2], port=int(words[3])))
    elif len(words) == 2 and words[0] == "verdict":
        from podmigrate_node.verdict import cmd_verdict

        cmd_verdict(argparse.Namespace(migration=words[1], wait=30.0))
    else:
        fail("this key may only receive a checkpoint")


def cmd_page_server(args):
    """CRIU's page server for one container's dump, on loopback PORT (the one port the
    migration's key may forward to): the pages land in the migration's pages/NAME, root
    only. Prints "ready" once it listens, and its size when the dump has ended."""
    directory = migration_dir(args.migration)
    if not SAFE.match(args.name) or not os.path.isdir(directory):
        fail(f"nowhere to receive pages of {args.name!r} for migration {args.migration!r}")
    pages = os.path.join(directory, "pages", args.name)
    os.makedirs(pages, mode=0o700)
    os.chmod(os.path.dirname(pages), 0o700)
    ready, status = os.pipe()
    log = os.path.join(directory, f"page-server-{args.name}.log")
    try:
        server = subprocess.Popen(["criu", "page-server", "--images-dir", pages, "--address", "127.0.0.1",
                                   "--port", str(args.port), "--status-fd", str(status), "-v4", "-o", log],
                                  pass_fds=[status], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        fail(f"cannot run CRIU: {exc}")
    os.close(status)

    def hang_up():  # the source's end of the session closed: no dump comes any more
        while os.read(0, 65536):  # the raw descriptor: no buffer lock held at exit
            pass
        if server.poll() is None:
            server.kill()

    threading.Thread(target=hang_up, daemon=True).start()
    if os.read(ready, 1) != b"\0":
        server.wait()
        fail(f"CRIU's page server did not start: {server.stderr.read().decode(errors='replace')[-400:]}"
             + runtime().criu_errors(log))
    print("ready", flush=True)
    if server.wait() != 0:
        fail(f"CRIU's page server failed ({server.returncode})" + runtime().criu_errors(log))
    print(json.dumps({"bytes": du(pages)}), flush=True)


def cmd_lazy_tunnel(args):
    """The target's end of a LazyTunnel: says "ready" and holds the session (and so the
    forward of loopback PORT to the source's lazy page server) until the source ends it."""
    if not SAFE.match(args.name) or not os.path.isdir(migration_dir(args.migration)):
        fail(f"no migration {args.migration!r} here for the pages of {args.name!r}")
    print("ready", flush=True)
    while os.read(0, 65536):
        pass


def free_port():
    """A loopback port nobody listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Tunnel:
    """An SSH session to the target with the migration's key that runs ``command`` there (its
    forced command checks it) and forwards one loopback port (``forward``: ssh's -L or -R
    argument, with ``local_port`` its end here). Open once the target's end says "ready"."""

    def __init__(self, args, forward, command, what):
        self.proc = subprocess.Popen(
            [*migration_ssh(args.key, args.known_hosts), "-o", "ExitOnForwardFailure=yes",
             *forward, f"root@{args.to}", command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(timeout=30)
            fail(f"{what}: {self.proc.stderr.read().strip()[-600:]}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LazyTunnel(Tunnel):
    """Post-copy: forwards the target's loopback ``port`` (where its ``criu lazy-pages`` asks
    for pages: the runtime's restore) to a free loopback port here, where this container's
    ``runc checkpoint --lazy-pages`` serves them. Encrypted, and nothing else reaches the page
    server: it listens on loopback only."""

    def __init__(self, args, name, port):
        self.local_port, self.remote_port = free_port(), port
        self.server = None  # runc checkpoint, once it serves the pages (dump.start_lazy)
        super().__init__(args, ["-R", f"127.0.0.1:{port}:127.0.0.1:{self.local_port}"],
                         f"lazy-tunnel {args.migration} {name} {port}",
                         f"the tunnel to the target for the pages of {name} did not open")


class PageTunnel(Tunnel):
    """Forwards a free loopback port here to the target's loopback port where `page-server`
    runs CRIU's page server for one container: the dump sends its memory pages through it as
    it reads them, encrypted, and writes none of them here."""

    def __init__(self, args, name, port):
        self.local_port = free_port()
        super().__init__(args, ["-L", f"127.0.0.1:{self.local_port}:127.0.0.1:{port}"],
                         f"page-server {args.migration} {name} {port}",
                         f"the target's page server for {name} did not start")

    def finish(self):
        """What the page server received, once it has ended (the session stays open until
        then: closing it stops the page server)."""
        import select

        # the dump has ended: the page server has all it will get and ends at once
        line = self.proc.stdout.readline() if select.select([self.proc.stdout], [], [], 60)[0] else ""
        self.proc.stdin.close()
        err = self.proc.stderr.read()
        self.proc.wait(timeout=60)
        if self.proc.returncode != 0 or not line.strip():
            fail(f"the target's page server failed: {err.strip()[-600:]}")
        return json.loads(line)

    def failure(self, wait=10):
        """What the target's page server said as it ended (a dump that failed may have failed
        because of it: its disk full, its CRIU failing)."""
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return ""
        return self.proc.stderr.read().strip()[-1500:]


def cmd_pack(args):
    """The payload as one tar file, payload.tar (the share transfer carries files)."""
    directory = migration_dir(args.migration)
    out = os.path.join(directory, "payload.tar")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    digest, size = hashlib.sha256(), [0]
    tar = subprocess.Popen(["tar", "-C", os.path.join(directory, "payload"), "--numeric-owner", "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    with os.fdopen(fd, "wb") as f:
        pump(tar.stdout, f, digest, size)
    if tar.wait() != 0:
        fail("tar of the payload failed")
    print(json.dumps({"path": out, "sha256": digest.hexdigest(), "bytes": size[0]}))


def cmd_unpack(args):
    """TAR (a payload.tar), its sha256 checked as it is read, into the migration's payload."""
    final = os.path.join(migration_dir(args.migration), "payload")
    with open(args.tar, "rb") as f:
        part, whole, sha, _size = untar_part(final, lambda out, digest, size: pump(f, out, digest, size))
    if not whole or sha != args.sha256:
        subprocess.run(["rm", "-rf", "--", part], check=True)
        fail(f"{args.tar}: sha256 {sha} is not the sent {args.sha256}, or not a whole tar")
    show_whole(part, final)
    print(json.dumps({"sha256": sha}))
