# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nodes as the engine reaches them: SSH as Ansible reaches them, one connection shared
by the commands of a migration, and the node helper the migration_node role installs."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import subprocess
import time

HELPER = "/usr/local/libexec/podmigrate/podmigrate-node"
MIGRATIONS = "/var/lib/podmigrate/migrations"
AUTHORIZED_KEYS = "/etc/podmigrate/authorized_keys"


class NodeError(Exception):
    pass


BECOME_METHODS = ("sudo",)


def connection_problems(name, user="root", become=False, become_method="sudo", **_):
    """What keeps the engine from acting as root on a node reached as Ansible reaches it."""
    if become and become_method not in BECOME_METHODS:
        return [f"node {name}: become method {become_method} is not one the engine uses "
                f"({', '.join(BECOME_METHODS)}, with no password)"]
    if not become and user != "root":
        return [f"node {name}: reached as {user} without become, and the engine's commands on a node need root "
                "(set ansible_become for it, with passwordless sudo, as the Azure inventory does)"]
    return []


class Node:
    """A node reached over SSH as Ansible reaches it: its login user, and root through
    passwordless sudo when Ansible becomes root there (``become``)."""

    def __init__(self, name, host, user="root", port=None, key=None, ssh_args="", become=False,
                 become_method="sudo", become_user="root"):
        self.name, self.host, self.user = name, host, user
        # every command runs as become_user through `sudo -n` (never a password prompt: a
        # node that asks for one fails the command at once)
        self.become = ["sudo", "-n", "-u", become_user, "--"] if become and become_method == "sudo" else []
        # a node that stops answering is given up after 15 s (keep-alives), not waited for forever
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
                        "-o", "ServerAliveCountMax=3"]
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

    def argv(self, command):
        """The ssh command line that runs the shell ``command`` on the node (as root)."""
        if self.become:
            command = " ".join([*self.become, "sh", "-c", shlex.quote(command)])
        return ["ssh", *self.ssh_options(), f"{self.user}@{self.host}", command]

    def run(self, command, stdin=None, timeout=600, check=True):
        res = subprocess.run(self.argv(command), input=stdin, capture_output=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise NodeError(f"{self.name}: `{command}` failed ({res.returncode}): "
                            f"{res.stderr.decode(errors='replace').strip()[-2000:]}")
        return res.stdout.decode(errors="replace")

    def helper(self, *args, **kw):
        return self.run(self.helper_command(args), **kw)

    def helper_command(self, args):
        return " ".join([HELPER, *(shlex.quote(str(a)) for a in args)])

    def session(self, *args):
        """The helper run with ``args`` as a session: JSON lines each way (``Session``)."""
        return Session(self, self.helper_command(args))

    def pipe(self, command, other, other_command, timeout=600):
        """Run ``command`` here with its output fed to ``other_command`` on ``other``; the
        bytes that went through (they pass the controller, never a file)."""
        sender = subprocess.Popen(self.argv(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        receiver = subprocess.Popen(other.argv(other_command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        size = 0
        try:
            while chunk := sender.stdout.read(1 << 20):
                size += len(chunk)
                receiver.stdin.write(chunk)
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                receiver.stdin.close()
        received_err = receiver.stderr.read()
        receiver.wait(timeout=timeout)
        sent_err = sender.stderr.read()
        sender.wait(timeout=timeout)
        for node, proc, cmd, err in ((self, sender, command, sent_err), (other, receiver, other_command, received_err)):
            if proc.returncode != 0:
                raise NodeError(f"{node.name}: `{cmd}` failed ({proc.returncode}): "
                                f"{err.decode(errors='replace').strip()[-600:]}")
        return size


class Session:
    """A helper command that talks with the engine while it runs: it answers each step with
    one JSON line on its stdout; the end of its stdin tells it the engine has gone."""

    def __init__(self, node, command):
        self.node, self.command = node, command
        self.proc = subprocess.Popen(node.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.pending = b""  # what was read of its stdout past the last line answered

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self, timeout):
        """The next JSON line; a NodeError with the helper's message when it ended instead. Its
        stdout is read from the descriptor, never through a buffer that select() cannot see:
        two lines that arrived together are two answers, the second one waiting here."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                raise NodeError(f"{self.node.name}: `{self.command}` did not answer within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.pending += chunk
        line, self.pending = [*self.pending.split(b"\n", 1), b""][:2]
        if not line.strip():
            self.proc.wait(timeout=30)
            err = self.proc.stderr.read().decode(errors="replace").strip()[-2000:]
            raise NodeError(f"{self.node.name}: `{self.command}` failed ({self.proc.returncode}): {err}")
        return json.loads(line)

    def close(self):
        """Ends it (its stdin closed first: before the freeze that ends it with nothing frozen)."""
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
