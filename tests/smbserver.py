"""A real Samba server (Debian's smbd) for the tests, in a network namespace of its own.

Everything it uses is private to one test directory: its configuration, lock, state,
cache and password files, the shared directory. It speaks SMB3 only, on port 445 of the
namespace, with one user and a password, as Azure Files does. Stopping it ends every
process in the namespace (smbd forks, and starts samba-dcerpcd on demand) and removes
the namespace and its veth.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SHARE = "migrations"
USER = "podmigrate"


def _run(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, **kw)


class SambaServer:
    def __init__(self, work: Path, netns: str, host_if: str, address: str, host_address: str | None = None,
                 bridge: str | None = None):
        """``address`` (CIDR) inside ``netns``; the host end ``host_if`` gets ``host_address``
        (CIDR) or is enslaved to ``bridge``."""
        if not shutil.which("smbd"):
            raise RuntimeError("smbd is missing: install Debian's samba (scripts/debian-packages.txt)")
        self.work, self.netns, self.host_if = work, netns, host_if
        self.ip = address.split("/")[0]
        self.password = secrets.token_urlsafe(16)
        self.share_dir = work / "share"
        self.proc = None
        for sub in ("lock", "state", "cache", "private", "pid", "ncalrpc", "share"):
            (work / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (work / "users.map").write_text(f"root = {USER}\n")
        self.conf = work / "smb.conf"
        self.conf.write_text(f"""[global]
    server role = standalone server
    workgroup = PODMIGRATE
    security = user
    map to guest = never
    restrict anonymous = 2
    server min protocol = SMB3
    # as Azure Files over the internet: a client that does not encrypt is refused
    server smb encrypt = required
    smb ports = 445
    interfaces = {self.ip}
    bind interfaces only = yes
    username map = {work}/users.map
    passdb backend = tdbsam:{work}/private/passdb.tdb
    lock directory = {work}/lock
    state directory = {work}/state
    cache directory = {work}/cache
    private dir = {work}/private
    pid directory = {work}/pid
    ncalrpc dir = {work}/ncalrpc
    log file = {work}/log.%m
    log level = 1
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    disable netbios = yes

[{SHARE}]
    path = {self.share_dir}
    read only = no
    valid users = root
""")
        try:
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
            if bridge:
                _run("ip", "link", "set", host_if, "master", bridge)
            else:
                _run("ip", "addr", "add", host_address, "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "-n", netns, "addr", "add", address, "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")
            _run("smbpasswd", "-c", str(self.conf), "-a", "-s", "root",
                 input=f"{self.password}\n{self.password}\n".encode())
            self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "smbd", "--foreground", "--no-process-group",
                                          "-s", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         # smbd ends by signalling its whole process group: its own
                                         start_new_session=True)
            self.wait_listening()
        except BaseException:
            self.stop()
            raise

    def wait_listening(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smbd ended ({self.proc.returncode}): {self.log()}")
            try:
                with socket.create_connection((self.ip, 445), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"smbd does not listen on {self.ip}:445: {self.log()}")

    def log(self):
        return " | ".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.work.glob("log.*")))

    def settings(self, path=""):
        """What the node helper reads from /etc/podmigrate/smb.json."""
        return {"server": self.ip, "share": SHARE, "path": path, "username": USER, "password": self.password,
                "port": 445}

    def pids(self):
        res = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
        return [int(p) for p in res.stdout.split()]

    def stop(self):
        # every process in the namespace is one this server started
        for attempt in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if attempt < 25 else signal.SIGKILL)
            time.sleep(0.1)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def gone(self):
        """True when nothing of the server is left: no process, namespace or veth."""
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        link = subprocess.run(["ip", "link", "show", "dev", self.host_if], capture_output=True, check=False)
        return self.netns not in netns.split() and link.returncode != 0

