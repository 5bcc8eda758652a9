"""Shared test helpers: the project's paths and real ansible-playbook runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "collections"
# the node helper's sources (its package and podmigrate_runtime.py), as its archive holds them
NODE_FILES = ROOT / "roles" / "migration_node" / "files"
for path in (COLLECTIONS, NODE_FILES):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

VENV_BIN = Path(sys.executable).parent


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.output = proc.stdout

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counts per host: {"host": {"ok": 3, "changed": 0, ...}}."""
        hosts = {}
        text = self.output.split("PLAY RECAP")[-1]
        for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", text, re.MULTILINE):
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return hosts

    def changed(self) -> int:
        return sum(h.get("changed", 0) for h in self.recap().values())


# a new user's fresh shell: the system's python3, no .venv on PATH, no activation
FRESH = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

# a cluster whose API server is not there: nothing listens on port 9 of loopback
NOWHERE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: not-a-token}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def run_playbook(playbook: str, inventory: Path | str | None = None, extra_vars: dict | None = None,
                 user: int | None = None, timeout: int = 1200, options: tuple[str, ...] = ()) -> PlaybookRun:
    """Run a real ansible-playbook from the project root (with ``options``, --check say);
    never raises on failure."""
    cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / playbook), *options]
    if inventory is not None:
        cmd += ["-i", str(inventory)]
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", f"{key}={value}"]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if user is not None:
        home = Path(f"/tmp/podmigrate-test-home-{user}")
        home.mkdir(exist_ok=True)
        os.chown(home, user, user)
        env.update(HOME=str(home), ANSIBLE_LOCAL_TEMP=f"{home}/.ansible/tmp",
                   ANSIBLE_REMOTE_TMP=f"{home}/.ansible/tmp")
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    proc.stdout = proc.stdout + proc.stderr
    return PlaybookRun(proc)
