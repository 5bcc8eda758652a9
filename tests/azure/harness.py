"""The fake ARM endpoint (a child process) and real ansible runs pointed at it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))

import fakearm

SUBSCRIPTION = "00000000-0000-0000-0000-00000000feed"
TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT_ID = "00000000-0000-0000-0000-0000000000cc"
SECRET = "fake-arm-secret-never-logged"  # noqa: S105 (a test credential for the fake endpoint)


class PlaybookRun:
    """The outcome of one ansible-playbook run."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counts per host: {"host": {"ok": 3, "changed": 0, ...}}."""
        text = self.output.split("PLAY RECAP")[-1]
        return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
                for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", text, re.MULTILINE)}


class FakeArm:
    """A running fake ARM endpoint (a child process) and the environment that points Azure SDKs at it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        ca, cert, key = fakearm.make_certificate(workdir / "tls")
        port_file = workdir / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fakearm.py"), "--port", "0", "--port-file", str(port_file),
             "--cert", str(cert), "--key", str(key), "--subscription", SUBSCRIPTION, "--tenant", TENANT,
             "--client-id", CLIENT_ID, "--secret", SECRET],
            stdout=subprocess.DEVNULL, stderr=(workdir / "server.log").open("w"))
        deadline = time.time() + 20
        while not (port_file.exists() and port_file.read_text()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"fake ARM did not start: {(workdir / 'server.log').read_text()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.netguard_log = workdir / "netguard.log"
        home = workdir / "home"  # no ~/.azure of whoever runs the tests
        home.mkdir(exist_ok=True)
        proxy = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AZURE_", "ANSIBLE_AZURE_", "ARM_")) and k.lower() not in
               ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "requests_ca_bundle", "ssl_cert_file")}
        env.update({
            "HOME": str(home),
            "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": "", "no_proxy": "",
            "REQUESTS_CA_BUNDLE": str(ca), "SSL_CERT_FILE": str(ca),
            "PYTHONPATH": str(HERE / "netguard"), "PODMIGRATE_NETGUARD_LOG": str(self.netguard_log),
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            # the fake's VM addresses are not ours to reach: no SSH client may ever start
            "ANSIBLE_SSH_EXECUTABLE": "/bin/false",
            # absolute: async_status expands "~" from the password database, not from HOME
            "ANSIBLE_ASYNC_DIR": str(workdir / "ansible-async"),
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"), "ANSIBLE_REMOTE_TMP": str(workdir / "ansible-tmp"),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        })
        self.env_without_credentials = dict(env)
        self.env = dict(env, AZURE_SUBSCRIPTION_ID=SUBSCRIPTION, AZURE_TENANT=TENANT,
                        AZURE_CLIENT_ID=CLIENT_ID, AZURE_SECRET=SECRET)

    # -- control channel (plain HTTP on the same loopback port)
    def _control(self, path: str, method: str = "GET", body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_fake{path}", data=data, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def log(self) -> list[dict]:
        return self._control("/log")

    def clear_log(self) -> None:
        self._control("/clear-log")

    def state(self) -> dict:
        return self._control("/state")

    def arm(self, method: str, path: str, body: dict | None = None):
        """An ARM call straight into the fake's rules (used to seed resources that are not ours)."""
        try:
            return self._control(f"/arm{path}", method, body)
        except urllib.error.HTTPError as err:
            return json.loads(err.read() or b"null")

    def writes(self) -> list[dict]:
        return [e for e in self.log() if e["host"] == fakearm.ARM_HOST and e["method"] in ("PUT", "PATCH", "DELETE")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- real ansible runs with the fake's environment
    def playbook(self, playbook: str, *args: str, extra_vars: dict | None = None, env: dict | None = None,
                 inventory: str = "inventories/azure", timeout: int = 600) -> PlaybookRun:
        cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / playbook), "-i", str(ROOT / inventory), *args]
        for key, value in (extra_vars or {}).items():
            cmd += ["-e", json.dumps({key: value})]
        proc = subprocess.run(cmd, cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return PlaybookRun(proc)

    def inventory(self) -> dict:
        proc = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(ROOT / "inventories/azure"), "--list"],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120, check=True)
        return json.loads(proc.stdout)
