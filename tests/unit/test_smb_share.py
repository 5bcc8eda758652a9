"""The node helper's SMB commands against a real Samba server (Debian's smbd, SMB3, a user
and a password) in a network namespace of its own: what it uploads is on the share whole
and checked before any node may take it; an interrupted upload is never taken."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from smbserver import SambaServer

SUBDIR = "podmigrate/migrations"


@pytest.fixture(scope="module")
def samba(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the SMB tests need root (a network namespace, smbd)")
    work = tmp_path_factory.mktemp("samba")
    server = SambaServer(work / "server", "pms-smb", "pms-smb0", "10.213.252.2/24", host_address="10.213.252.1/24")
    try:
        (server.share_dir / SUBDIR).mkdir(parents=True)
        yield server
    finally:
        server.stop()
    assert server.gone(), "the Samba server's namespace or veth is left"
    assert server.pids() == []


@pytest.fixture
def helper(samba, tmp_path, node_helper):
    """Run the helper as the engine does on a node, its smb.json naming the server."""
    config = tmp_path / "smb.json"
    config.write_text(json.dumps(samba.settings(SUBDIR)))
    config.chmod(0o600)
    env = {**os.environ, "PODMIGRATE_SMB_CONFIG": str(config), "PODMIGRATE_SMB_LIBRARY": str(tmp_path / "none")}

    def run(*args, check=True, **kw):
        res = subprocess.run([sys.executable, str(node_helper), *map(str, args)], env=env, capture_output=True,
                             text=True, timeout=120, check=False, **kw)
        if check:
            assert res.returncode == 0, res.stderr
        return res

    run.env = env
    run.config = config
    return run


def on_share(samba, *names):
    return samba.share_dir / SUBDIR / "/".join(names)


def test_an_archive_goes_through_the_share_whole_and_checked(samba, helper, tmp_path):
    archive = tmp_path / "counter.tar"
    archive.write_bytes(os.urandom(24 << 20))
    expected = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert json.loads(helper("smb-check").stdout) == {"share": f"//{samba.ip}/migrations/{SUBDIR}"}

    sent = json.loads(helper("smb-put", archive, "m1/counter.tar").stdout)
    assert (sent["sha256"], sent["bytes"]) == (expected, 24 << 20)
    # on the share under its final name only, byte for byte
    assert sorted(p.name for p in on_share(samba, "m1").iterdir()) == ["counter.tar"]
    assert hashlib.sha256(on_share(samba, "m1", "counter.tar").read_bytes()).hexdigest() == expected

    dest = tmp_path / "received.tar"
    got = json.loads(helper("smb-get", "m1/counter.tar", dest, "--sha256", expected, "--size", 24 << 20).stdout)
    assert got == {"sha256": expected, "bytes": 24 << 20}
    assert dest.read_bytes() == archive.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o600

    assert json.loads(helper("smb-rm", "m1").stdout) == {"removed": True}
    assert not on_share(samba, "m1").exists()
    assert json.loads(helper("smb-rm", "m1").stdout) == {"removed": False}


def test_an_interrupted_upload_is_refused_and_never_taken(samba, helper, tmp_path, node_helper):
    # the uploader reads the archive from a pipe: it is killed with part of it on the share
    fifo = tmp_path / "archive"
    os.mkfifo(fifo)
    uploader = subprocess.Popen([sys.executable, str(node_helper), "smb-put", str(fifo), "m2/counter.tar"],
                                env=helper.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = on_share(samba, "m2", "counter.tar.part")
    chunk = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(fifo, "wb") as pipe:
        for _ in range(8):
            pipe.write(chunk)
            digest.update(chunk)
        pipe.flush()
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 4 << 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part.exists() and part.stat().st_size >= 4 << 20, "the upload never reached the share"
        uploader.send_signal(signal.SIGKILL)
        uploader.wait(timeout=30)
    assert uploader.returncode == -signal.SIGKILL
    assert not on_share(samba, "m2", "counter.tar").exists()

    dest = tmp_path / "received.tar"
    # not even with the size and checksum the share's partial file has
    partial = part.read_bytes()
    for sha, size in ((digest.hexdigest(), 8 << 20), (hashlib.sha256(partial).hexdigest(), len(partial))):
        res = helper("smb-get", "m2/counter.tar", dest, "--sha256", sha, "--size", size, check=False)
        assert res.returncode != 0
        assert "only an unfinished m2/counter.tar.part: its upload never completed" in res.stderr
        assert not dest.exists() and not (tmp_path / "received.tar.part").exists()
    helper("smb-rm", "m2")


def test_a_wrong_checksum_or_size_or_a_changed_file_is_refused(samba, helper, tmp_path):
    archive = tmp_path / "counter.tar"
    archive.write_bytes(os.urandom(3 << 20))
    sent = json.loads(helper("smb-put", archive, "m3/counter.tar").stdout)
    dest = tmp_path / "received.tar"

    res = helper("smb-get", "m3/counter.tar", dest, "--sha256", "0" * 64, "--size", sent["bytes"], check=False)
    assert res.returncode != 0 and f"not the sent {'0' * 64}" in res.stderr
    assert not dest.exists() and not (tmp_path / "received.tar.part").exists()

    res = helper("smb-get", "m3/counter.tar", dest, "--sha256", sent["sha256"], "--size", sent["bytes"] + 1,
                 check=False)
    assert res.returncode != 0 and f"has {sent['bytes']} bytes, not the sent {sent['bytes'] + 1}" in res.stderr
    assert not dest.exists()

    # one byte changed on the share after the upload
    stored = on_share(samba, "m3", "counter.tar")
    with open(stored, "r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 1]))
    res = helper("smb-get", "m3/counter.tar", dest, "--sha256", sent["sha256"], "--size", sent["bytes"], check=False)
    assert res.returncode != 0 and f"not the sent {sent['sha256']}" in res.stderr
    assert not dest.exists() and not (tmp_path / "received.tar.part").exists()

    res = helper("smb-get", "m3/missing.tar", dest, "--sha256", sent["sha256"], "--size", sent["bytes"], check=False)
    assert res.returncode != 0 and "m3/missing.tar is not on the share" in res.stderr
    helper("smb-rm", "m3")


def test_a_wrong_password_is_refused_without_being_printed(samba, helper):
    settings = json.loads(helper.config.read_text())
    settings["password"] = "not-" + samba.password
    helper.config.write_text(json.dumps(settings))
    res = helper("smb-check", check=False)
    assert res.returncode != 0
    assert f"//{samba.ip}/migrations/{SUBDIR}" in res.stderr and "Traceback" not in res.stderr
    assert samba.password not in res.stderr + res.stdout and settings["password"] not in res.stderr + res.stdout


def test_no_share_configured_is_said_plainly(helper, tmp_path):
    helper.config.unlink()
    res = helper("smb-check", check=False)
    assert res.returncode != 0
    assert "no SMB share is configured on this node" in res.stderr
