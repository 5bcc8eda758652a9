"""Real local nodes for the integration tests: constants and helpers.

Three nodes (one control plane, two workers) on a test bridge of their own, with a
state directory of their own, so a cluster built by `make demo` can keep running.
The base image cache is the project's, so it is built once per machine. The nodes
are shared by every integration test (conftest.py) and torn down at the end by the
real teardown.yml, which must leave nothing behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ansible_collections.podmigrate.cluster.plugins.module_utils import localnodes, ociimage
from helpers import ROOT

BRIDGE = "pmt-br0"
SUBNET = "10.213.250.0/24"
GATEWAY = "10.213.250.1"
NODES = {"pmt-cp": ("10.213.250.11", "control_plane"), "pmt-w1": ("10.213.250.21", "workers"),
         "pmt-w2": ("10.213.250.22", "workers")}
# A host of our own outside the nodes' bridge: a network namespace with a
# listener, to prove the nodes cannot reach what is not on their bridge.
DECOY_NS, DECOY_HOST_IF, DECOY_HOST_IP, DECOY_IP = "pmt-decoy", "pmt-dcy0", "10.213.251.1", "10.213.251.2"


def write_inventory(path: Path, state_dir: Path, nodes: dict, **overrides) -> Path:
    groups = {"control_plane": {}, "workers": {}}
    for name, (address, group) in nodes.items():
        groups[group][name] = {"ansible_host": address}
    lines = ["all:", "  hosts:", "    localhost:", "      ansible_connection: local",
             "      ansible_python_interpreter: '{{ ansible_playbook_python }}'",
             "  vars:", "    podmigrate_provider: local", f"    podmigrate_state_dir: {state_dir}",
             f"    podmigrate_cache_dir: {ROOT / '.podmigrate' / 'cache'}",
             f"    local_nodes_bridge: {overrides.get('bridge', BRIDGE)}",
             f"    local_nodes_subnet: {overrides.get('subnet', SUBNET)}",
             f"    local_nodes_gateway: {overrides.get('gateway', GATEWAY)}",
             "    migration_node_share_dir: /var/lib/podmigrate/share",
             "  children:", "    nodes:", "      vars:",
             "        ansible_user: root", "        ansible_python_interpreter: /usr/bin/python3",
             f"        ansible_ssh_private_key_file: {state_dir}/ssh/id_ed25519",
             f"        ansible_ssh_common_args: -o UserKnownHostsFile={state_dir}/ssh/known_hosts"
             " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
             f"        ansible_control_path_dir: {state_dir}/ssh/cp",
             "      children:"]
    for group, hosts in groups.items():
        lines += [f"        {group}:", "          hosts:" if hosts else "          hosts: {}"]
        for name, hv in hosts.items():
            lines += [f"            {name}:", f"              ansible_host: {hv['ansible_host']}"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def ssh_options(state_dir: Path) -> list[str]:
    """Options of ssh and scp: the generated key, checking the generated host key."""
    return ["-i", f"{state_dir}/ssh/id_ed25519", "-o", f"UserKnownHostsFile={state_dir}/ssh/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10"]


def ssh(state_dir: Path, address: str, command: str, timeout: int = 30) -> subprocess.CompletedProcess:
    """Run a command on a node over real SSH, checking the generated host key."""
    return subprocess.run(["ssh", *ssh_options(state_dir), f"root@{address}", command],
                          capture_output=True, text=True, timeout=timeout, check=False)


def node_run(cluster: dict, name: str, command: str, timeout: int = 60) -> str:
    """Run a command on the session cluster's node ``name``; it must succeed."""
    res = ssh(cluster["state"], NODES[name][0], command, timeout=timeout)
    assert res.returncode == 0, f"{name}: {command}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def scp(state_dir: Path, source: Path, address: str, dest: str) -> None:
    """Copy a file to a node over real SSH."""
    subprocess.run(["scp", "-q", *ssh_options(state_dir), str(source), f"root@{address}:{dest}"], check=True)


def write_redis_image(path: Path, name: str) -> None:
    """Debian's Redis server (package redis-tools, which scripts/setup installs) with the
    shared libraries ldd finds for it here, written by the project's OCI writer. It keeps
    everything in memory: no save points, no append-only file."""
    binary = "/usr/bin/redis-check-rdb"  # Debian's redis-server is this binary under another name
    layer = ociimage.Layer().host_file("usr/bin/redis-server", binary, 0o755).dir("tmp", 0o1777).dir("data")
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        lib = fields[2] if "=>" in fields and len(fields) > 2 else fields[0]
        if lib.startswith("/"):
            layer.host_file(lib, os.path.realpath(lib), 0o755)
    ociimage.write_archive(str(path), name, [layer], {
        "Entrypoint": ["/usr/bin/redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no",
                       "--bind", "0.0.0.0", "--dir", "/data"]})  # noqa: S104 (inside the pod's own network)


def write_busybox_image(path: Path, name: str, tools: tuple[str, ...]) -> None:
    """A static busybox image written by the project's OCI writer: busybox, a link per
    tool, a world-writable /tmp."""
    layer = ociimage.Layer().host_file("bin/busybox", "/bin/busybox", 0o755).dir("tmp", 0o1777)
    for tool in tools:
        layer.symlink(f"bin/{tool}", "busybox")
    ociimage.write_archive(str(path), name, [layer], {"Cmd": ["/bin/sh"]})


def our_processes(state_dir: Path) -> list[str]:
    """Every process on this host whose command line mentions the state directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(state_dir) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def our_mounts(state_dir: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(state_dir) in line]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def host_cgroup_mounts() -> list[str]:
    return sorted(line for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[2] in ("cgroup", "cgroup2") or line.split()[1] == "/sys/fs/cgroup")


def our_cgroups(names) -> list[str]:
    """The cgroups of the nodes ``names`` that exist on this host."""
    base = localnodes.own_cgroup_dirs()
    return [d for name in names for d in localnodes.node_cgroups(name, base) if os.path.exists(d)]


def can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
