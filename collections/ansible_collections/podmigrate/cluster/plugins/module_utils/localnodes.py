# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local test-cluster nodes: systemd-nspawn machines on a private bridge.

Pure Python (no Ansible imports) so that the Ansible modules, the
``scripts/podmigrate`` CLI and pytest all use the same code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import time

NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
# Linux interface names are at most 15 bytes; systemd-nspawn names the host
# side of a node's veth "vb-<machine>", so a 12-character name always fits.
IFNAME_MAX = 15

# What the node's systemd needs from its container manager on this host
# (see docs/local-nodes.md): no seccomp filter (runc inside needs the
# session keyring), writable /proc/sys and /sys, and cgroup v1 allowed.
NSPAWN_ENV = {
    "SYSTEMD_SECCOMP": "0",
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1",
}


def node_name_error(name):
    """Return why ``name`` cannot be a node name, or None."""
    if not NODE_NAME_RE.match(name or ""):
        return (
            f"node name {name!r} is not valid: use 1-12 characters, lower-case "
            "letters, digits and '-', starting with a letter (it becomes the "
            "hostname and the veth 'vb-<name>')"
        )
    return None


def nspawn_argv(name, root, bridge, binds=()):
    """The command line that boots node ``name`` from ``root`` on ``bridge``, with
    ``binds`` ("HOST:NODE" directories) mounted into it."""
    return [
        "systemd-nspawn",
        "--directory", root,
        "--machine", name,
        "--hostname", name,
        "--register=no",
        "--keep-unit",
        "--boot",
        "--capability=all",
        "--network-bridge", bridge,
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--console=read-only",
        "--kill-signal=SIGRTMIN+3",
        *(f"--bind={b}" for b in binds),
        "--",
        # systemd >= 256 refuses cgroup v1 unless told otherwise; this host
        # only has cgroup v1 (hybrid), which we must not re-layout.
        "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1",
    ]


def nspawn_env(base=None):
    env = dict(os.environ if base is None else base)
    env.update(NSPAWN_ENV)
    return env


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_cmdline(pid):
    raw = _read(f"/proc/{pid}/cmdline")
    if not raw:
        return []
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def nspawn_processes():
    """Every running systemd-nspawn on this host: [{pid, machine, root}]."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = proc_cmdline(entry)
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
            continue
        found.append({"pid": int(entry), **parse_nspawn_argv(argv)})
    return found


def parse_nspawn_argv(argv):
    """Machine name and root directory from a systemd-nspawn command line."""
    out = {"machine": None, "root": None}
    keys = {"--machine": "machine", "-M": "machine", "--directory": "root", "-D": "root"}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg in keys and i + 1 < len(argv):
            out[keys[arg]] = argv[i + 1]
            i += 2
            continue
        for opt, key in keys.items():
            if opt.startswith("--") and arg.startswith(opt + "="):
                out[key] = arg[len(opt) + 1:]
        i += 1
    return out


def children(pid):
    raw = _read(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in raw.split()] if raw else []


# -- each node's own cgroups -------------------------------------------------
# systemd-nspawn gives a node a cgroup namespace rooted where nspawn itself runs, and
# on this host's cgroup v1 hierarchies that is their root: without a tree of its own,
# every node's kubelet would manage one shared /kubepods, and each kubelet removes the
# pod cgroups it does not know (its orphan cleanup), empty container cgroups of other
# nodes' pods included -- a container being restored loses its cgroup before runc can
# join it ("openat2 .../cgroup.procs: no such file or directory"). A VM has a cgroup
# root of its own; so does a local node: nspawn starts inside ``podmigrate-<name>``, a
# child of our own cgroup in every hierarchy.
CGROUP_MOUNTS = "/sys/fs/cgroup"


def cgroup_dirs(mountinfo, proc_cgroup):
    """The directory of a process's cgroup in each hierarchy mounted under /sys/fs/cgroup,
    from the text of its /proc/PID/mountinfo and /proc/PID/cgroup."""
    mounts = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5 or os.path.commonpath([fields[4], CGROUP_MOUNTS]) != CGROUP_MOUNTS:
            continue
        fstype, _source, superopts = line.split(" - ", 1)[1].split()[:3]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            key = ",".join(sorted(o for o in superopts.split(",") if o not in ("rw", "ro")))
        else:
            continue
        mounts.setdefault(key, (fields[3], fields[4]))
    dirs = []
    for line in proc_cgroup.splitlines():
        _hid, controllers, path = line.split(":", 2)
        key = ",".join(sorted(c for c in controllers.split(",") if c))
        # a v1 mount lists every option of its hierarchy; its controllers are among them
        found = mounts.get(key) or next((m for k, m in mounts.items()
                                         if key and set(key.split(",")) <= set(k.split(","))), None)
        if found is None:
            continue
        root, mountpoint = found
        if root != "/" and path != root and not path.startswith(root + "/"):
            continue  # this process's cgroup is outside what the mount shows
        rel = path[len(root):] if root != "/" else path
        dirs.append(os.path.normpath(mountpoint + "/" + rel.lstrip("/")))
    return sorted(set(dirs))


def own_cgroup_dirs():
    """This process's cgroup directory in each hierarchy (``cgroup_dirs`` of itself)."""
    return cgroup_dirs(_read("/proc/self/mountinfo").decode(), _read("/proc/self/cgroup").decode())


def node_cgroups(name, base_dirs):
    """The cgroup directories node ``name`` runs in, one per hierarchy."""
    return [os.path.join(d, f"podmigrate-{name}") for d in base_dirs]


def make_cgroups(dirs):
    """Create the cgroups ``dirs`` (their parents exist); a new cpuset gets its parent's
    CPUs and memory nodes, without which no process may join it."""
    for path in dirs:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            mine = os.path.join(path, knob)
            if os.path.exists(mine) and not (_read(mine) or b"").strip():
                with open(mine, "wb") as f:
                    f.write(_read(os.path.join(os.path.dirname(path), knob)) or b"")


def joiner(dirs):
    """A ``preexec_fn``: the new process joins the cgroups ``dirs`` before it execs."""
    def join():
        for path in dirs:
            fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, b"0")  # 0: the writing process itself
            finally:
                os.close(fd)
    return join


def release_cgroup(path):
    """Thaw the cgroup ``path`` if it is frozen, and kill what is left in it. A stopped node
    may leave processes frozen in a freezer cgroup of its own (a migration's frozen source
    whose controller died): they hold their cgroups, and a signal waits until they thaw."""
    state = os.path.join(path, "freezer.state")
    if (_read(state) or b"THAWED").strip() != b"THAWED":
        with contextlib.suppress(OSError), open(state, "wb") as f:
            f.write(b"THAWED")
    for line in (_read(os.path.join(path, "cgroup.procs")) or b"").split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line), signal.SIGKILL)


def remove_cgroups(dirs, timeout=15):
    """Remove the cgroup trees ``dirs``, deepest first; their processes are ending, so
    a busy cgroup is tried again until ``timeout``; what is still in one is thawed and
    killed (``release_cgroup``). Raises NodeError if one stays."""
    deadline = time.monotonic() + timeout
    for top in dirs:
        while os.path.isdir(top):
            busy = []
            for path, _subdirs, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    busy.append(f"{path}: {exc.strerror}")
                    release_cgroup(path)
            if not busy:
                break
            if time.monotonic() > deadline:
                raise NodeError("cgroups still in use after the node stopped: " + "; ".join(busy[:3]))
            time.sleep(0.2)


class Node:
    """One local node: its directory holds ``rootfs/``, ``nspawn.pid``, ``console.log``."""

    def __init__(self, name, node_dir, bridge=None, binds=()):
        self.name = name
        self.binds = list(binds)
        self.dir = os.path.abspath(node_dir)
        self.root = os.path.join(self.dir, "rootfs")
        self.bridge = bridge
        self.pidfile = os.path.join(self.dir, "nspawn.pid")
        self.logfile = os.path.join(self.dir, "console.log")
        # the cgroups it was started in, for stop() to remove
        self.cgroupfile = os.path.join(self.dir, "cgroups.json")

    # -- process --------------------------------------------------------
    def pid(self):
        """PID of this node's systemd-nspawn if it is running, else None."""
        pid, recorded = read_pidfile(self.pidfile)
        argv = proc_cmdline(pid) if pid else []
        if argv != recorded or not argv or os.path.basename(argv[0]) != "systemd-nspawn":
            return None
        info = parse_nspawn_argv(argv)
        if info["machine"] != self.name or os.path.abspath(info["root"] or "") != self.root:
            return None
        return pid

    def init_pid(self):
        """PID (on the host) of the node's systemd, PID 1 inside it."""
        pid = self.pid()
        if pid is None:
            return None
        kids = children(pid)
        return kids[0] if kids else None

    def nsenter(self, argv, timeout=30):
        init = self.init_pid()
        if init is None:
            raise NodeError(f"node {self.name} is not running")
        cmd = ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def system_state(self):
        """systemd's own word for the node: running, degraded, starting... or 'stopped'."""
        if self.init_pid() is None:
            return "stopped"
        try:
            res = self.nsenter(["systemctl", "is-system-running"], timeout=10)
        except (subprocess.TimeoutExpired, NodeError):
            return "unknown"
        return res.stdout.strip() or "unknown"

    def start(self, timeout=120):
        """Boot the node; return True if it was started, False if it already ran."""
        if self.pid() is not None:
            return False
        if not os.path.isfile(os.path.join(self.root, "etc", "os-release")):
            raise NodeError(f"node {self.name}: no root filesystem at {self.root}")
        cgroups = node_cgroups(self.name, own_cgroup_dirs())
        write_json(self.cgroupfile, cgroups)
        make_cgroups(cgroups)
        proc = spawn_detached(nspawn_argv(self.name, self.root, self.bridge, self.binds), self.pidfile, self.logfile,
                              nspawn_env(), preexec_fn=joiner(cgroups))
        self.wait_booted(timeout, proc)
        return True

    def wait_booted(self, timeout, proc=None):
        deadline = time.monotonic() + timeout
        state = "stopped"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise NodeError(
                    f"node {self.name}: systemd-nspawn exited with {proc.returncode}; "
                    f"see {self.logfile}:\n{self.log_tail()}"
                )
            state = self.system_state()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise NodeError(
            f"node {self.name} did not finish booting in {timeout}s (systemd says {state!r}); "
            f"see {self.logfile}:\n{self.log_tail()}"
        )

    def stop(self, timeout=60):
        """Power the node off (SIGTERM makes nspawn ask systemd to shut down) and remove
        its cgroups."""
        stopped = terminate(self.pid, timeout)
        raw = _read(self.cgroupfile)
        if raw is not None:
            remove_cgroups(json.loads(raw))
            os.unlink(self.cgroupfile)
        return stopped

    def log_tail(self, lines=20):
        raw = _read(self.logfile) or b""
        return "\n".join(raw.decode(errors="replace").splitlines()[-lines:])

    def status(self):
        pid = self.pid()
        return {
            "name": self.name,
            "dir": self.dir,
            "pid": pid,
            "init_pid": self.init_pid() if pid else None,
            "state": self.system_state() if pid else "stopped",
        }


def read_pidfile(path):
    """(pid, argv) recorded by ``spawn_detached``, or (None, None)."""
    raw = _read(path)
    try:
        rec = json.loads(raw) if raw else {}
        return int(rec["pid"]), list(rec["argv"])
    except (ValueError, KeyError, TypeError):
        return None, None


def spawn_detached(argv, pidfile, logfile, env=None, preexec_fn=None):
    """Start ``argv`` in a session of its own, stdio on ``logfile``, so it outlives us."""
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True, preexec_fn=preexec_fn,
        )
    write_json(pidfile, {"pid": proc.pid, "argv": list(argv)})
    return proc


def write_json(path, value):
    """Write ``value`` to ``path`` as JSON, replacing it whole."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def terminate(pid_of, timeout):
    """SIGTERM the process ``pid_of()`` names, SIGKILL after ``timeout``; False if none ran."""
    pid = pid_of()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = False
    while pid_of() is not None:
        if not killed and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = True
        _reap(pid)
        time.sleep(0.1)
    return True


def _reap(pid):
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class Daemon:
    """A detached helper process of ours, known by its pid file and exact command line.

    The pid file records the command line it was started with; a live process only
    counts as ours while its command line is still exactly that.
    """

    def __init__(self, pidfile, argv=None, logfile=None, env=None):
        self.pidfile = pidfile
        self.argv = list(argv) if argv is not None else None
        self.logfile = logfile or os.path.splitext(pidfile)[0] + ".log"
        self.env = env

    def pid(self):
        pid, argv = read_pidfile(self.pidfile)
        return pid if pid and proc_cmdline(pid) == argv else None

    def running_as_wanted(self):
        argv = read_pidfile(self.pidfile)[1]
        return self.pid() is not None and argv == self.argv

    def start(self, settle=0.5):
        """Start it, or restart it if it runs with another command line; True if it did.

        Raises NodeError if it has not started, or has exited again, ``settle`` seconds on.
        """
        if self.running_as_wanted():
            return False
        self.stop()
        proc = spawn_detached(self.argv, self.pidfile, self.logfile, self.env)
        deadline = time.monotonic() + 5
        settled = None
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (_read(self.logfile) or b"").decode(errors="replace").splitlines()[-10:]
                raise NodeError(f"{self.argv[0]} did not start (exit {proc.poll()}); "
                                f"{self.logfile}:\n" + "\n".join(tail))
            if self.pid() is not None:  # its command line shows once exec is done
                settled = settled or time.monotonic() + settle
                if time.monotonic() >= settled:
                    return True
            time.sleep(0.01)

    def stop(self, timeout=10):
        return terminate(self.pid, timeout)


class NodeError(Exception):
    pass


def list_nodes(state_dir):
    """The nodes whose directories exist under ``state_dir``/nodes."""
    base = os.path.join(state_dir, "nodes")
    if not os.path.isdir(base):
        return []
    return [Node(n, os.path.join(base, n)) for n in sorted(os.listdir(base))
            if os.path.isdir(os.path.join(base, n))]


# -- host network -------------------------------------------------------------

def ip_json(*args):
    res = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return []
    return json.loads(res.stdout)


def validate(nodes, subnet, gateway, bridge, routes, running):
    """Everything wrong with a requested set of local nodes, as messages.

    nodes: [{"name", "address", "groups", "root"}]; subnet "10.x.y.0/24"; gateway the
    host's address on the bridge; routes: ``ip -j route`` entries; running:
    ``nspawn_processes()``.
    """
    errors = []
    if not nodes:
        errors.append("no nodes requested: the inventory's control_plane and workers "
                      "groups are empty (at least one control-plane node is needed)")
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        return [*errors, f"local_nodes_subnet {subnet!r} is not a network: {exc}"]
    if len(bridge) > IFNAME_MAX or not re.match(r"^[A-Za-z0-9_-]+$", bridge):
        errors.append(f"bridge name {bridge!r} is not a valid interface name (max {IFNAME_MAX})")
    try:
        gw = ipaddress.ip_address(gateway)
    except ValueError:
        return [*errors, f"local_nodes_gateway {gateway!r} is not an address"]
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        errors.append(f"gateway {gateway} is not a host address in {subnet}")

    seen_addr = {str(gw): "the host's bridge address"}
    cp = [n["name"] for n in nodes if "control_plane" in n.get("groups", [])]
    if nodes and not cp:
        errors.append("no node in the control_plane group")
    for node in nodes:
        name = node["name"]
        err = node_name_error(name)
        if err:
            errors.append(err)
        groups = node.get("groups", [])
        if "control_plane" in groups and "workers" in groups:
            errors.append(f"node {name} is in both control_plane and workers")
        try:
            addr = ipaddress.ip_address(node.get("address") or "")
        except ValueError:
            errors.append(f"node {name}: ansible_host {node.get('address')!r} is not an IP address")
            continue
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            errors.append(f"node {name}: address {addr} is not a host address in {subnet}")
        if str(addr) in seen_addr:
            errors.append(f"node {name}: address {addr} is already used by {seen_addr[str(addr)]}")
        seen_addr[str(addr)] = f"node {name}"

    for route in routes:
        dst = route.get("dst")
        if route.get("dev") == bridge or not dst or dst == "default":
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == net.version and other.overlaps(net):
            errors.append(f"subnet {subnet} is already in use on this host: route {dst} "
                          f"via dev {route.get('dev')}; choose another local_nodes_subnet")

    roots = {n["name"]: n.get("root") for n in nodes}
    for proc in running:
        if proc["machine"] in roots and roots[proc["machine"]] != proc.get("root"):
            errors.append(f"node name {proc['machine']} clashes with a machine already "
                          f"running from {proc['root']} (pid {proc['pid']})")
    return errors


def detect_debian_mirror(texts):
    """The Debian archive URL this host's apt uses, from sources files' text."""
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri.rstrip("/")
            elif line.startswith("deb ") and "security" not in line:
                parts = re.sub(r"\[[^\]]*\]", " ", line).split()
                if len(parts) >= 2 and "://" in parts[1]:
                    return parts[1].rstrip("/")
    return None


def host_debian_mirror():
    paths = ["/etc/apt/sources.list"]
    d = "/etc/apt/sources.list.d"
    if os.path.isdir(d):
        paths += [os.path.join(d, f) for f in sorted(os.listdir(d))
                  if f.endswith((".sources", ".list"))]
    texts = []
    for p in paths:
        raw = _read(p)
        if raw:
            texts.append(raw.decode(errors="replace"))
    return detect_debian_mirror(texts)
