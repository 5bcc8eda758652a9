"""The node helper's and the runtime's own parts, run for real here: a tar stream through
`receive`, writable-layer changes packed from a real overlay upper directory and applied
as overlayfs shows them, a runc command line taken apart, the freezer a process is in."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import podmigrate_runtime as runtime
import pytest
from helpers import NODE_FILES as FILES
from podmigrate_node import dump, pod


def tar_of(tree):
    """A tar stream of {name: bytes} files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_receive_unpacks_the_decompressed_stream_root_only_and_reports_its_checksum(tmp_path, node_helper):
    (tmp_path / "m1").mkdir(mode=0o700)
    stream = tar_of({"./counter/images/pages-1.img": os.urandom(200_000) + b"\0" * 500_000,
                     "./volumes.tar": b"v" * 1000})
    compressed = subprocess.run(["zstd", "-1", "-c"], input=stream, capture_output=True, check=True).stdout
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path))
    res = subprocess.run([sys.executable, str(node_helper), "receive", "m1", "payload"], input=compressed,
                         capture_output=True, env=env, check=True)
    answer = json.loads(res.stdout)
    payload = tmp_path / "m1" / "payload"
    assert (payload / "volumes.tar").read_bytes() == b"v" * 1000
    assert (payload / "counter" / "images" / "pages-1.img").stat().st_size == 700_000
    assert payload.stat().st_mode & 0o777 == 0o700 and not (tmp_path / "m1" / "payload.part").exists()
    assert answer == {"sha256": hashlib.sha256(stream).hexdigest(), "bytes": len(stream),
                      "wire_bytes": len(compressed)}


def test_a_cut_stream_is_reported_as_such_and_leaves_no_payload(tmp_path, node_helper):
    (tmp_path / "m1").mkdir(mode=0o700)
    stream = tar_of({"big": os.urandom(300_000)})
    compressed = subprocess.run(["zstd", "-1", "-c"], input=stream, capture_output=True, check=True).stdout
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path))
    res = subprocess.run([sys.executable, str(node_helper), "receive", "m1", "payload"], input=compressed[:100_000],
                         capture_output=True, env=env, check=False)
    assert res.returncode != 0 and b"cut" in res.stderr
    assert not (tmp_path / "m1" / "payload").exists()


@pytest.mark.parametrize("command", ["rm -rf /", "receive ../x payload", "receive m1 ../../etc/passwd", "",
                                     "page-server ../x app 4000", "page-server m1 ../app 4000",
                                     "page-server m1 app 4000; sh", "pack m1"])
def test_the_forced_command_only_receives_into_a_migration_directory(tmp_path, command, node_helper):
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path), SSH_ORIGINAL_COMMAND=command)
    res = subprocess.run([sys.executable, str(node_helper), "forced"], input=b"", capture_output=True, env=env,
                         check=False)
    assert res.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_pack_and_unpack_carry_the_payload_with_its_checksum(tmp_path, node_helper):
    payload = tmp_path / "m1" / "payload" / "app"
    payload.mkdir(parents=True)
    (payload / "rootfs.tar").write_bytes(b"r" * 4096)
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path))
    packed = json.loads(subprocess.run([sys.executable, str(node_helper), "pack", "m1"], capture_output=True, env=env,
                                       check=True).stdout)
    with open(packed["path"], "rb") as f:
        assert packed["sha256"] == hashlib.sha256(f.read()).hexdigest()
    (tmp_path / "m2").mkdir()
    bad = subprocess.run([sys.executable, str(node_helper), "unpack", "m2", packed["path"], "--sha256", "0" * 64],
                         capture_output=True, env=env, check=False)
    assert bad.returncode != 0 and not (tmp_path / "m2" / "payload").exists()
    subprocess.run([sys.executable, str(node_helper), "unpack", "m2", packed["path"], "--sha256", packed["sha256"]],
                   capture_output=True, env=env, check=True)
    assert (tmp_path / "m2" / "payload" / "app" / "rootfs.tar").read_bytes() == b"r" * 4096


@pytest.fixture
def overlay(tmp_path):
    """A real overlay mount: lower (the image), upper (the container's changes), merged."""
    dirs = {n: tmp_path / n for n in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir()
    (dirs["lower"] / "etc").mkdir()
    (dirs["lower"] / "etc" / "keep").write_text("image\n")
    (dirs["lower"] / "etc" / "gone").write_text("image\n")
    (dirs["lower"] / "cache").mkdir()
    (dirs["lower"] / "cache" / "old").write_text("image\n")
    (dirs["lower"] / "link").symlink_to("/etc")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}", str(dirs["merged"])],
                   check=True)
    yield dirs
    subprocess.run(["umount", str(dirs["merged"])], check=True)


def test_writable_layer_changes_come_back_as_overlayfs_showed_them(overlay, tmp_path):
    merged = overlay["merged"]
    (merged / "etc" / "new").write_text("written by the container\n")
    (merged / "etc" / "gone").unlink()
    subprocess.run(["rm", "-rf", str(merged / "cache")], check=True)
    (merged / "cache").mkdir()
    (merged / "cache" / "fresh").write_text("after\n")
    (merged / "link").unlink()
    (merged / "link").mkdir()
    (merged / "link" / "inside").write_text("not through the image's link\n")
    layer = tmp_path / "rootfs.tar"
    with open(layer, "wb") as out:
        runtime.pack_layer(str(overlay["upper"]), out)
    # a fresh container of the same image
    target = tmp_path / "target"
    subprocess.run(["cp", "-a", str(overlay["lower"]), str(target)], check=True)
    runtime.apply_layer(str(layer), str(target))
    assert (target / "etc" / "new").read_text() == "written by the container\n"
    assert (target / "etc" / "keep").read_text() == "image\n"
    assert not (target / "etc" / "gone").exists()
    assert sorted(os.listdir(target / "cache")) == ["fresh"]
    assert not (target / "link").is_symlink() and (target / "link" / "inside").exists()
    assert not os.path.exists("/etc/inside")


def test_a_layer_cannot_write_outside_the_rootfs(tmp_path):
    layer = tmp_path / "evil.tar"
    layer.write_bytes(tar_of({"../../outside": b"x"}))
    target = tmp_path / "root"
    target.mkdir()
    with pytest.raises(RuntimeError):
        runtime.apply_layer(str(layer), str(target))
    assert not (tmp_path / "outside").exists()


def test_a_runc_command_line_is_taken_apart_as_the_shim_writes_it():
    argv = ["--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json",
            "--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--no-pivot", "abc"]
    glob, command, rest = runtime.split(argv)
    assert command == "create" and glob == argv[:7]
    opts, cid = runtime.create_options(rest)
    assert cid == "abc" and opts == {"--bundle": "/b", "--pid-file": "/b/init.pid", "--no-pivot": True}


def test_only_a_container_of_a_migration_with_images_here_is_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MIGRATIONS", str(tmp_path))
    spec = {"annotations": {"podmigrate.io/restore": "m1", "io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": "app"}}
    assert runtime.restore_source(spec) is None
    (tmp_path / "m1" / "payload" / "app" / "images").mkdir(parents=True)
    assert runtime.restore_source(spec) == (str(tmp_path / "m1" / "payload"), "app")
    sandbox = {"annotations": dict(spec["annotations"], **{"io.kubernetes.cri.container-type": "sandbox"})}
    assert runtime.restore_source(sandbox) is None
    escape = {"annotations": dict(spec["annotations"], **{"podmigrate.io/restore": "../x"})}
    assert runtime.restore_source(escape) is None
    (tmp_path / "m1" / "payload" / "app" / "restored").write_text("abc")
    assert runtime.restore_source(spec) is None  # a restart starts from the image


@pytest.mark.parametrize(("cgroup", "expected"), [
    ("12:freezer:/kubepods/besteffort/pod1/c1\n0::/x\n", ("/cg/freezer/kubepods/besteffort/pod1/c1", 1)),
    ("0::/kubepods.slice/pod1/c1\n", ("/cg/kubepods.slice/pod1/c1", 2)),
])
def test_the_freezer_of_a_process(tmp_path, cgroup, expected):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(cgroup)
    assert pod.freezer_of(7, proc=str(tmp_path), cgroups="/cg") == expected


def test_the_upper_directory_of_a_container_rootfs(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("1 0 0:1 / /run/x/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/s/7/fs,workdir=/s/7/w\n"
                    "2 0 0:2 / /other rw - ext4 /dev/vda rw\n")
    assert pod.upper_dir("/run/x/rootfs", str(info)) == "/s/7/fs"
    with pytest.raises(ValueError):
        pod.upper_dir("/other", str(info))


@pytest.mark.parametrize(("ref", "stored"), [
    ("redis", "docker.io/library/redis:latest"),
    ("redis:7", "docker.io/library/redis:7"),
    ("team/app", "docker.io/team/app:latest"),
    ("localhost/podmigrate/counter:1", "localhost/podmigrate/counter:1"),
    ("registry:5000/app", "registry:5000/app:latest"),
    ("quay.io/x/y@sha256:" + "a" * 64, "quay.io/x/y@sha256:" + "a" * 64),
])
def test_an_image_reference_as_containerd_stores_it(ref, stored):
    assert pod.normalized(ref) == stored


def test_a_staged_container_waits_for_its_payload_and_gives_up_when_told(tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(runtime, "MIGRATIONS", str(tmp_path))
    spec = {"annotations": {"podmigrate.io/restore": "m1", "io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": "app"}}
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "expect").write_text(f"{time.time() + 60:.0f}\n")
    arrive = threading.Timer(0.3, lambda: (tmp_path / "m1" / "payload" / "app" / "images").mkdir(parents=True))
    arrive.start()
    started = time.monotonic()
    assert runtime.restore_source(spec) == (str(tmp_path / "m1" / "payload"), "app")
    assert time.monotonic() - started >= 0.25 and (tmp_path / "m1" / "waiting.app").exists()
    # abandoned: told so, or past its deadline; never an ordinary start in its place
    other = {"annotations": dict(spec["annotations"], **{"io.kubernetes.cri.container-name": "side"})}
    (tmp_path / "m1" / "abort").touch()
    with pytest.raises(runtime.Aborted):
        runtime.restore_source(other)
    (tmp_path / "m1" / "abort").unlink()
    (tmp_path / "m1" / "expect").write_text(f"{time.time() - 1:.0f}\n")
    with pytest.raises(runtime.Aborted):
        runtime.restore_source(other)


def test_an_abandoned_migration_restores_nothing_even_with_its_payload_here(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MIGRATIONS", str(tmp_path))
    spec = {"annotations": {"podmigrate.io/restore": "m1", "io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": "app"}}
    (tmp_path / "m1" / "payload" / "app" / "images").mkdir(parents=True)
    (tmp_path / "m1" / "abort").touch()
    with pytest.raises(runtime.Aborted):
        runtime.restore_source(spec)


def test_a_container_restored_by_an_abandoned_migration_is_not_restarted_afresh(tmp_path, monkeypatch):
    """Rolled back, a restored container the kubelet would restart (its processes were
    killed) must not start from its image beside the thawed source."""
    monkeypatch.setattr(runtime, "MIGRATIONS", str(tmp_path))
    spec = {"annotations": {"podmigrate.io/restore": "m1", "io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": "app"}}
    (tmp_path / "m1" / "payload" / "app" / "images").mkdir(parents=True)
    (tmp_path / "m1" / "payload" / "app" / "restored").write_text("c1")
    assert runtime.restore_source(spec) is None  # a restart after the restore: an ordinary create
    (tmp_path / "m1" / "abort").touch()
    with pytest.raises(runtime.Aborted):
        runtime.restore_source(spec)


def test_a_restore_waiting_for_the_gate_when_the_migration_is_abandoned_restores_nothing(tmp_path):
    """The runtime restores under the migration's gate (flock) and looks at ``abort`` once it
    holds it; ``end-restored`` writes ``abort`` and then takes the gate. A create that
    reached the gate while the rollback held it gives up, and never runs runc."""
    directory = tmp_path / "m1"
    (directory / "payload" / "app" / "images").mkdir(parents=True)
    (directory / "expect").write_text(f"{time.time() + 60:.0f}\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        "podmigrate.io/restore": "m1", "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "app"}}))
    called = tmp_path / "runc-called"
    fake_runc = tmp_path / "runc"  # only tells whether a restore was attempted
    fake_runc.write_text(f"#!/bin/sh\ntouch {called}\n")
    fake_runc.chmod(0o755)
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path), PODMIGRATE_RUNC=str(fake_runc),
               PODMIGRATE_RESTORED_DIR=str(tmp_path / "restored"))
    with runtime.gate(str(directory)):  # the rollback holds the gate
        create = subprocess.Popen([sys.executable, runtime.__file__, "create", "--bundle", str(bundle), "c1"],
                                  env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert create.poll() is None  # waiting at the gate
        (directory / "abort").touch()
    _, err = create.communicate(timeout=10)
    assert create.returncode == 1 and "abandoned" in err, err
    assert not called.exists()


def test_the_helper_is_one_file_whose_sha256_is_its_version(node_helper, tmp_path):
    from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper

    # the same bytes from a copy of the sources with other dates and another order on disk
    copy = tmp_path / "files"
    subprocess.run(["cp", "-r", str(FILES), str(copy)], check=True)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert nodehelper.build(str(copy)) == node_helper.read_bytes()
    version = subprocess.run([str(node_helper), "version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == hashlib.sha256(node_helper.read_bytes()).hexdigest() == nodehelper.digest(str(FILES))
    # a changed module is another version
    with open(copy / "podmigrate_node" / "fence.py", "a") as f:
        f.write("# changed\n")
    assert nodehelper.digest(str(copy)) != nodehelper.digest(str(FILES))


@pytest.mark.parametrize(("older", "part"), [("podmigrate_runtime.py", "runtime"), ("podmigrate_cni.py", "cni-plugin")])
def test_a_runtime_or_cni_plugin_beside_the_helper_that_is_not_its_own_is_reported_stale(node_helper, tmp_path,
                                                                                        older, part):
    (tmp_path / "podmigrate-node").write_bytes(node_helper.read_bytes())
    (tmp_path / "podmigrate-node").chmod(0o755)
    for name in ("podmigrate_runtime.py", "podmigrate_cni.py"):
        shutil.copy(FILES / name, tmp_path / name)
    version = subprocess.run([str(tmp_path / "podmigrate-node"), "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version == hashlib.sha256(node_helper.read_bytes()).hexdigest()
    (tmp_path / older).write_text("# an older one\n")
    version = subprocess.run([str(tmp_path / "podmigrate-node"), "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version.endswith(f"-stale-{part}")
    help_text = subprocess.run([str(node_helper), "--help"], capture_output=True, text=True, check=True).stdout
    assert "page-server ID NAME PORT" in help_text and "smb-get NAME DEST" in help_text


@pytest.mark.parametrize(("flags", "first"), [("fpu sse2 aes avx", "aes128-gcm@openssh.com"),
                                              ("fpu sse2 avx", "chacha20-poly1305@openssh.com")])
def test_the_stream_prefers_aes_gcm_only_where_the_cpu_has_aes_instructions(tmp_path, flags, first):
    from podmigrate_node import stream

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    argv = stream.migration_ssh("/k", "/h", cpuinfo=str(cpuinfo))
    ciphers = next(a for a in argv if a.startswith("Ciphers="))
    assert ciphers.removeprefix("Ciphers=").split(",")[0] == first
    # whichever comes first, ssh on this machine takes the list as it is
    assert subprocess.run(["ssh", "-G", "-o", ciphers, "x"], capture_output=True, check=True).returncode == 0


def test_bytes_waiting_in_a_named_pipe_two_containers_hold_are_dumped_once(tmp_path):
    uid = "0b5e0c43-6a55-4f5e-9d51-3c1f2a7b8e90"
    shared, own = tmp_path / "shared", tmp_path / "own"
    os.mkfifo(shared)
    os.mkfifo(own)
    # the pipes held open with bytes in them, as a frozen pod's processes hold them
    held = [os.open(shared, os.O_RDWR), os.open(own, os.O_RDWR)]
    try:
        os.write(held[0], b"1\n2\n")
        proc = tmp_path / "proc"
        for pid, cid, fifos in (("101", "aaaa", [shared]), ("102", "bbbb", [shared])):
            (proc / pid / "fd").mkdir(parents=True)
            (proc / pid / "cgroup").write_text(f"0::/kubepods/besteffort/pod{uid}/{cid}\n")
            for fd, path in enumerate(fifos, start=3):
                (proc / pid / "fd" / str(fd)).symlink_to(path)
        (proc / "101" / "fd" / "9").symlink_to("/dev/null")
        live = [{"id": "aaaa", "name": "writer"}, {"id": "bbbb", "name": "reader"}]
        fifos = dump.held_fifos(uid, live, proc=str(proc))
        assert list(fifos.values()) == [{"path": str(shared), "bytes": 4, "containers": ["writer", "reader"]}]
        # the first container keeps the bytes; the other's dump leaves them out
        assert dump.fifo_data_to_drop(fifos) == {"reader"}
        # nothing waits: nothing to leave out
        os.read(held[0], 4)
        assert dump.fifo_data_to_drop(dump.held_fifos(uid, live, proc=str(proc))) == set()
        # the reader holds a pipe of its own with bytes waiting as well: its dump cannot
        # leave out the shared bytes without losing its own, so the dump is refused
        os.write(held[0], b"3\n")
        os.write(held[1], b"x")
        (proc / "102" / "fd" / "4").symlink_to(own)
        with pytest.raises(SystemExit):
            dump.fifo_data_to_drop(dump.held_fifos(uid, live, proc=str(proc)))
    finally:
        for fd in held:
            os.close(fd)


def test_settle_ends_a_migrations_helper_processes_and_what_they_started_and_nothing_else(tmp_path):
    """Real processes: a helper of the migration (by its id on its command line) with a child,
    a forced-command helper (the id only in SSH_ORIGINAL_COMMAND) and another migration's
    helper; settle kills the first two trees and leaves the third."""
    from podmigrate_node import settle

    helper = tmp_path / "podmigrate-node"
    helper.write_text("import subprocess, sys, time\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)\n")
    mine = subprocess.Popen([sys.executable, str(helper), "dump", "uid", "20261204000000-aaaaaa"])
    forced = subprocess.Popen([sys.executable, str(helper), "forced"],
                              env={**os.environ, "SSH_ORIGINAL_COMMAND": "receive 20261204000000-aaaaaa payload"})
    other = subprocess.Popen([sys.executable, str(helper), "dump", "uid", "20261204000000-bbbbbb"])
    try:
        deadline = time.monotonic() + 10
        while (len(settle.processes_of("20261204000000-aaaaaa")) < 4
               or len(settle.processes_of("20261204000000-bbbbbb")) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = settle.processes_of("20261204000000-aaaaaa")
        assert {mine.pid, forced.pid} <= found and other.pid not in found and len(found) == 4
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            settle.cmd_settle(argparse.Namespace(migration="20261204000000-aaaaaa", wait=5, grace=0.5))
        assert json.loads(out.getvalue())["killed"] == 4
        assert mine.wait(10) == -9 and forced.wait(10) == -9
        assert other.poll() is None and len(settle.processes_of("20261204000000-bbbbbb")) == 2
        assert settle.processes_of("20261204000000-aaaaaa") == set()
    finally:
        for pid in settle.processes_of("20261204000000-bbbbbb"):  # its child too
            os.kill(pid, 9)
        for proc in (mine, forced, other):
            proc.kill()
            proc.wait()


def test_settle_waits_for_a_dump_under_way_and_kills_the_rest_first(tmp_path):
    """A runc checkpoint (CRIU dumping) under a migration's helper is spared until --wait:
    killed mid-dump CRIU could leave its parasite in the frozen process; the rest goes
    after --grace."""
    import threading

    from podmigrate_node import settle

    helper = tmp_path / "podmigrate-node"
    helper.write_text("import subprocess, sys, time\n"
                      f"subprocess.Popen(['bash', '-c', 'exec -a runc {sys.executable} -c \"import time; "
                      "time.sleep(60)\" checkpoint'])\ntime.sleep(60)\n")
    mine = subprocess.Popen([sys.executable, str(helper), "dump", "uid", "20261204000000-cccccc"])
    try:
        deadline = time.monotonic() + 10
        while not settle.dumping(settle.processes_of("20261204000000-cccccc")) and time.monotonic() < deadline:
            time.sleep(0.05)  # until bash has become the "runc checkpoint"
        found = settle.processes_of("20261204000000-cccccc")
        assert settle.dumping(found), [Path(f"/proc/{p}/cmdline").read_bytes() for p in found]
        (dump,) = settle.dumping(found)
        assert dump != mine.pid
        done = threading.Thread(target=settle.cmd_settle,
                                args=(argparse.Namespace(migration="20261204000000-cccccc", wait=3, grace=0.2),))
        done.start()
        # the helper above the dump is spared with it (orphaned, the dump would be lost sight of)
        time.sleep(1)
        assert mine.poll() is None and os.path.exists(f"/proc/{dump}")
        done.join(30)
        assert mine.wait(10) == -9
        assert not done.is_alive()
        assert settle.processes_of("20261204000000-cccccc") == set()
    finally:
        for pid in settle.processes_of("20261204000000-cccccc"):
            os.kill(pid, 9)
        mine.kill()
        mine.wait()


def helper_run(node_helper, tmp_path, *args):
    # runc stands in as /bin/true: no container runs here (the cluster tests kill real ones)
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path), PODMIGRATE_RUNC="/bin/true",
               PODMIGRATE_RESTORED_DIR=str(tmp_path / "restored-marks"))
    return subprocess.run([sys.executable, str(node_helper), *args], capture_output=True, text=True, env=env,
                          check=False)


def staged(tmp_path, restored):
    """A migration's directory on a target with a payload of two containers, those named in
    ``restored`` restored by the runtime."""
    directory = tmp_path / "m1"
    for name in ("app", "side"):
        (directory / "payload" / name / "images").mkdir(parents=True)
        (directory / "payload" / name / "images" / "pages-1.img").write_bytes(b"memory")
        if name in restored:
            (directory / "payload" / name / "restored").write_text(f"id-{name}")
    (directory / "pages").mkdir()
    return directory


def test_the_verdict_is_restored_only_when_every_container_is_and_then_never_changes(tmp_path, node_helper):
    directory = staged(tmp_path, ("app", "side"))
    # the engine's rollback may not abandon what was settled forward
    first = helper_run(node_helper, tmp_path, "verdict", "m1")
    assert json.loads(first.stdout)["verdict"] == "restored", first.stderr
    refused = helper_run(node_helper, tmp_path, "end-restored", "m1")
    assert refused.returncode != 0 and "settled forward" in refused.stderr
    assert json.loads(helper_run(node_helper, tmp_path, "verdict", "m1").stdout)["verdict"] == "restored"
    assert not (directory / "abort").exists()
    # the memory is gone, the runtime's marks stay (a restart is an ordinary create)
    assert not list(directory.rglob("*.img")) and not (directory / "pages").exists()
    assert (directory / "payload" / "app" / "restored").read_text() == "id-app"


def test_a_partly_restored_pod_is_abandoned_and_cannot_be_committed_after(tmp_path, node_helper):
    directory = staged(tmp_path, ("app",))
    answer = json.loads(helper_run(node_helper, tmp_path, "verdict", "m1").stdout)
    assert answer["verdict"] == "abandoned"
    assert (directory / "abort").exists() and not list(directory.rglob("*.img"))
    # the engine's verify, come too late, cannot claim it
    (directory / "payload" / "side" / "restored").write_text("id-side")
    with pytest.raises(SystemExit):
        from podmigrate_node import verdict
        verdict.claim("m1", str(directory))
    assert (directory / "verdict-abandoned").exists() and not (directory / "verdict-restored").exists()


@pytest.mark.parametrize(("moved", "expected"), [(False, "abandoned"), (True, "restored")])
def test_a_restored_pod_that_keeps_its_address_lives_only_once_its_address_moved(tmp_path, node_helper, moved,
                                                                                  expected):
    """Every container restored, but the engine had not yet routed the kept address to the
    target (its controller died in between): not the live copy, which nobody could reach."""
    directory = staged(tmp_path, ("app", "side"))
    (directory / "address-expected").touch()
    if moved:
        (directory / "address-moved").touch()
    assert json.loads(helper_run(node_helper, tmp_path, "verdict", "m1").stdout)["verdict"] == expected


def test_the_engines_rollback_abandons_it_first(tmp_path, node_helper):
    directory = staged(tmp_path, ("app", "side"))
    res = helper_run(node_helper, tmp_path, "end-restored", "m1")
    assert res.returncode == 0, res.stderr
    assert (directory / "abort").exists() and (directory / "verdict-abandoned").exists()
    assert json.loads(helper_run(node_helper, tmp_path, "verdict", "m1").stdout)["verdict"] == "abandoned"
    # a second rollback (podmigrate recover after a controller's) finds it done
    again = helper_run(node_helper, tmp_path, "end-restored", "m1")
    assert again.returncode == 0 and json.loads(again.stdout) == {"ended": []}, again.stderr


def test_the_rollback_removes_the_start_mark_of_a_restore_whose_start_containerd_abandoned(tmp_path, node_helper):
    """The kubelet stopped as the runtime restored a container: containerd abandons the call
    and the container's bundle, not its restored processes, and runc's list no longer shows
    whose it is. The rollback finds it by the migration's id its mark for ``start`` holds:
    killed, deleted from runc (nobody else would), its mark removed; another migration's
    container is left alone."""
    staged(tmp_path, ("app",))
    marks = tmp_path / "restored-marks"
    marks.mkdir()
    (marks / "c-app").write_text("app\nm1\n")
    (marks / "c-other").write_text("app\nm2\n")  # another migration's, still to start
    # runc, as it answers then: both containers listed, their bundles gone; c-app runs until killed
    calls, killed = tmp_path / "runc-calls", tmp_path / "killed"
    runc = tmp_path / "runc"
    runc.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$3" in
kill) touch {killed} ;;
list) s=running; [ -e {killed} ] && s=stopped
      echo '[{{"id": "c-app", "status": "'$s'", "bundle": "/gone/c-app"}},' \\
           ' {{"id": "c-other", "status": "running", "bundle": "/gone/c-other"}}]' ;;
esac
""")
    runc.chmod(0o755)
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path), PODMIGRATE_RUNC=str(runc),
               PODMIGRATE_RESTORED_DIR=str(marks))
    res = subprocess.run([sys.executable, str(node_helper), "end-restored", "m1"], capture_output=True, text=True,
                         env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"ended": ["c-app"]}
    assert sorted(p.name for p in marks.iterdir()) == ["c-other"]
    done = [line.split()[2:] for line in calls.read_text().splitlines() if "list" not in line]
    assert done == [["kill", "c-app", "KILL"], ["delete", "--force", "c-app"]], done


def test_the_source_nodes_deadline_is_pushed_on_until_it_passes_and_then_no_more(tmp_path, node_helper):
    from podmigrate_node import watch

    directory = tmp_path / "m1"
    directory.mkdir()
    res = helper_run(node_helper, tmp_path, "extend", "m1", "--seconds", "60")
    assert res.returncode == 0, res.stderr
    assert abs(json.loads(res.stdout)["until"] - (time.time() + 60)) < 5
    assert not watch.due(str(directory))
    helper_run(node_helper, tmp_path, "extend", "m1", "--seconds", "0")
    assert watch.due(str(directory)) and (directory / "expired").exists()
    # the watcher took over: a controller that comes back cannot push it on
    late = helper_run(node_helper, tmp_path, "extend", "m1", "--seconds", "60")
    assert late.returncode != 0 and "its watcher settles the migration" in late.stderr
    assert watch.due(str(directory))


def test_a_migrations_files_are_removed_whole_while_its_deadline_is_pushed_on(tmp_path, node_helper):
    """``forget`` empties the directory under the deadline lock, which makes no file in it
    (a lock file there came back while ``rm`` emptied it, and its rmdir failed: "Directory
    not empty", in a drain in CI): an ``extend`` meanwhile waits, then finds nothing; a
    watcher's ``due`` after it is False and makes nothing."""
    from podmigrate_node import watch

    directory = tmp_path / "m1"
    (directory / "pages").mkdir(parents=True)
    for i in range(200):
        (directory / "pages" / f"p{i}").write_bytes(b"x")
    with watch.deadline_lock(str(directory)) as there:
        assert there and sorted(p.name for p in directory.iterdir()) == ["pages"]
        forget = subprocess.Popen([sys.executable, str(node_helper), "forget", "m1"],
                                  env=dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path)))
        time.sleep(0.5)
        assert forget.poll() is None and (directory / "pages" / "p0").exists()  # waits for the lock
    assert forget.wait(30) == 0 and not directory.exists()
    late = helper_run(node_helper, tmp_path, "extend", "m1", "--seconds", "60")
    assert late.returncode != 0 and "has nothing on this node" in late.stderr
    assert not watch.due(str(directory)) and not directory.exists()
    assert helper_run(node_helper, tmp_path, "forget", "m1").returncode == 0  # nothing left: done


def test_a_restored_container_deleted_before_its_start_leaves_no_mark(tmp_path):
    """The runtime marks a restored container for its `start` (which then does nothing); one
    deleted without that start (its containerd stopped meanwhile, then a rollback) must not
    leave the mark behind."""
    marks = tmp_path / "restored"
    marks.mkdir()
    (marks / "c1").write_text("app")
    env = dict(os.environ, PODMIGRATE_RESTORED_DIR=str(marks), PODMIGRATE_RUNC="/bin/true")
    subprocess.run([sys.executable, runtime.__file__, "--root", "/run/x", "delete", "--force", "c1"], env=env,
                   check=True)
    assert not (marks / "c1").exists()


def test_the_eviction_webhook_is_one_file_of_the_engine_that_runs_without_ansible(tmp_path):
    from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper
    from helpers import COLLECTIONS

    module_utils = COLLECTIONS / "ansible_collections" / "podmigrate" / "cluster" / "plugins" / "module_utils"
    (module_utils / "__pycache__").mkdir(exist_ok=True)  # what a test run leaves is not part of it
    archive = tmp_path / "podmigrate-evictions"
    archive.write_bytes(nodehelper.build(str(module_utils), "evictions"))
    assert archive.read_bytes() == nodehelper.build(str(module_utils), "evictions")
    names = zipfile.ZipFile(archive).namelist()
    assert "ansible_collections/podmigrate/cluster/plugins/module_utils/migration/engine.py" in names
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    # the system's Python alone, isolated (no .venv, no ansible): it starts and says how to run it
    run = subprocess.run(["/usr/bin/python3", "-I", str(archive)], capture_output=True, text=True, check=False,
                         cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.strip() == "usage: podmigrate-evictions CONFIG.json", run.stderr


DUMPED_FILES = Path(__file__).parent / "data" / "criu-files-coredns.img"  # CRIU 4.2.1 dumped it on a node


def inet_sockets(path):
    """(family, type, state, source words, source port, destination words) of each inet
    socket in a CRIU files image, decoded here without the runtime's codec."""
    data, sockets = path.read_bytes(), []
    i = 8
    while i < len(data):
        size = int.from_bytes(data[i:i + 4], "little")
        fields = runtime._fields(data[i + 4:i + 4 + size])
        i += 4 + size
        for field, wire, value in fields:
            if (field, wire) == (4, 2):
                isk = runtime._fields(value)
                one = {f: v for f, _w, v in isk if f in (3, 4, 6, 7)}
                sockets.append((one[3], one[4], one[6], tuple(v for f, _w, v in isk if f == 11), one[7],
                                tuple(v for f, _w, v in isk if f == 12)))
    return sockets


def test_the_sockets_on_the_pods_old_address_move_to_its_new_one_and_nothing_else_changes(tmp_path):
    """CoreDNS dumped as it checked its upstream server holds a UDP socket bound to its pod's
    address and connected to that server (and its TCP connection to the API server); CRIU
    fails to bind them on a node where the pod has another address. The restore maps them,
    from the image as dumped each time; the listeners on :: and every other byte stay."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DUMPED_FILES, images / "files.img")
    before = inet_sockets(images / "files.img")
    old = runtime._words(ipaddress.ip_address("10.244.1.13"))
    moved = [s for s in before if s[3] == old]
    upstream, api = (runtime._words(ipaddress.ip_address(a)) for a in ("10.255.255.53", "10.96.0.1"))
    assert sorted((s[:3], s[5]) for s in moved) == [((2, 1, 1), api), ((2, 2, 1), upstream)]  # connected
    assert len([s for s in before if s[0] == 10 and s[3] == (0, 0, 0, 0)]) == 5  # listening on ::

    # 10.244.2.20 takes a byte more than 10.244.1.13 as a varint: the entries' sizes change
    for new in ("10.244.2.12", "10.244.2.20"):
        assert runtime.readdress(images, runtime.address_mapping(["10.244.1.13"], [new, "fd00::5"])) == 2
        after = inet_sockets(images / "files.img")
        assert after == [(*s[:3], runtime._words(ipaddress.ip_address(new)), *s[4:]) if s in moved else s
                         for s in before]
    assert (images / "files.img").stat().st_size == DUMPED_FILES.stat().st_size + 2
    assert (images / "files.img.dumped").read_bytes() == DUMPED_FILES.read_bytes()
    assert runtime.readdress(images, {}) == 0  # restored where it was dumped: as dumped again
    assert (images / "files.img").read_bytes() == DUMPED_FILES.read_bytes()


def test_an_address_maps_to_the_first_of_its_family_and_ipv4_also_in_its_ipv6_form():
    mapping = runtime.address_mapping(["10.244.2.12", "fd00::1"], ["fd00::2", "10.244.1.13", "10.244.1.14"])
    words = [runtime._words(ipaddress.ip_address(a)) for a in
             ("10.244.2.12", "10.244.1.13", "::ffff:10.244.2.12", "::ffff:10.244.1.13", "fd00::1", "fd00::2")]
    assert mapping == {words[0]: words[1], words[2]: words[3], words[4]: words[5]}
    assert runtime.address_mapping(["10.244.2.12"], ["10.244.2.12"]) == {}
    # a pod that kept its address on an earlier move has that node's too (second): it keeps it again
    assert runtime.address_mapping(["10.244.2.12", "10.244.1.20"], ["10.244.2.30", "10.244.2.12"]) == {}
    assert runtime.address_mapping(["10.244.2.12"], []) == {}


def test_the_runtime_reads_runcs_command_line_as_the_shim_gives_it_and_says_why_a_restore_failed(tmp_path, capsys):
    log = tmp_path / "log.json"
    argv = ["--root", "/run/containerd/runc/k8s.io", "--log", str(log), "--log-format", "json", "--systemd-cgroup",
            "create", "--bundle", "/b", "cid"]
    assert runtime.split(argv) == (argv[:7], "create", ["--bundle", "/b", "cid"])
    assert runtime.split(["--root", "/r"]) == (["--root", "/r"], None, [])
    assert runtime.global_options(argv[:7]) == ({"--root": "/run/containerd/runc/k8s.io", "--log": str(log),
                                                 "--log-format": "json", "--systemd-cgroup": True}, 7)
    runtime.tell_runtime_error(argv[:7], "restore failed\ninet: Can't bind")
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["level"], line["msg"]) == ("error", "restore failed | inet: Can't bind")
    # without a JSON log, on stderr
    runtime.tell_runtime_error(["--root", "/r"], "restore failed")
    assert capsys.readouterr().err == "podmigrate-runtime: restore failed\n"
