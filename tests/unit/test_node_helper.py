"""The node helper's own parts, run for real here: the checkpoint layer it writes, its
manifest endpoint over loopback HTTP, and a zstd stream through `receive`."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request

import pytest
from helpers import ROOT

HELPER = ROOT / "roles" / "migration_node" / "files" / "podmigrate-node"


def load_helper():
    loader = importlib.machinery.SourceFileLoader("podmigrate_node", str(HELPER))
    spec = importlib.util.spec_from_loader("podmigrate_node", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


node = load_helper()


def checkpoint_archive(path, pages=b"\x5a" * 300_000):
    config = {"id": "c1", "rootfsImageRef": "sha256:" + "a" * 64, "rootfsImageName": "localhost/x/counter:1"}
    with tarfile.open(path, "w") as tar:
        for name, data in (("spec.dump", b"{}"), ("config.dump", json.dumps(config).encode()),
                           ("checkpoint/pages-1.img", pages), ("rootfs-diff.tar", b"\0" * 10240)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return config


def test_the_layer_is_the_archive_with_only_the_base_image_reference_changed(tmp_path):
    archive = tmp_path / "checkpoint.tar"
    config = checkpoint_archive(archive)
    with open(archive, "rb") as f:
        member, dump = node.checkpoint_config(str(archive), f)
        parts, size = node.layer_parts(f, member, dump, "127.0.0.1:5017/x/counter@sha256:" + "b" * 64)
        layer = node.Segments(parts).read()
        digests = node.archive_and_layer_digests(f, parts)
    assert dump == config and len(layer) == size
    assert digests == (hashlib.sha256(archive.read_bytes()).hexdigest(), hashlib.sha256(layer).hexdigest())
    with tarfile.open(fileobj=io.BytesIO(layer)) as new, tarfile.open(archive) as old:
        assert new.getnames() == old.getnames()
        for member in old.getmembers():
            data = new.extractfile(member.name).read()
            if member.name == "config.dump":
                assert json.loads(data) == dict(config, rootfsImageRef="127.0.0.1:5017/x/counter@sha256:" + "b" * 64)
            else:
                assert data == old.extractfile(member).read()


def test_a_file_without_config_dump_is_not_a_checkpoint(tmp_path):
    archive = tmp_path / "other.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("empty"))
    with open(archive, "rb") as f, pytest.raises(ValueError, match="not a kubelet checkpoint"):
        node.checkpoint_config(str(archive), f)


@pytest.fixture
def manifests(tmp_path, monkeypatch):
    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    stored = {}
    for kind, data in (("manifest", {"schemaVersion": 2, "mediaType": node.MEDIA_MANIFEST, "config": {}, "layers": []}),
                       ("bare", {"schemaVersion": 2, "config": {}, "layers": []}),
                       ("config", {"architecture": "amd64", "config": {"Env": ["TOKEN=secret"]}}),
                       ("layer", b"secret process memory")):
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        stored[kind] = (f"sha256:{digest}", raw)
    monkeypatch.setattr(node, "CONTENT_STORE", str(tmp_path / "blobs"))
    server = node.http.server.ThreadingHTTPServer(("127.0.0.1", 0), node.ManifestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", stored
    server.shutdown()


def test_the_manifest_endpoint_serves_manifests_by_digest(manifests):
    url, stored = manifests
    digest, raw = stored["manifest"]
    assert urllib.request.urlopen(f"{url}/v2/").status == 200
    answer = urllib.request.urlopen(f"{url}/v2/x/counter/manifests/{digest}")
    assert answer.read() == raw
    assert answer.headers["Content-Type"] == node.MEDIA_MANIFEST
    assert answer.headers["Docker-Content-Digest"] == digest


def test_a_manifest_without_a_media_type_is_served_as_one(manifests):
    url, stored = manifests
    answer = urllib.request.urlopen(f"{url}/v2/x/manifests/{stored['bare'][0]}")
    assert answer.headers["Content-Type"] == node.MEDIA_MANIFEST


@pytest.mark.parametrize("path", ["/v2/x/manifests/LAYER", "/v2/x/manifests/CONFIG", "/v2/x/blobs/LAYER",
                                  "/v2/x/manifests/latest", "/v2/x/manifests/sha256:" + "0" * 64])
def test_the_manifest_endpoint_never_serves_layers_configs_tags_or_unknown_blobs(manifests, path):
    url, stored = manifests
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + path.replace("LAYER", stored["layer"][0]).replace("CONFIG", stored["config"][0]))
    assert err.value.code == 404


def test_receive_writes_the_decompressed_stream_root_only_and_reports_its_checksum(tmp_path):
    (tmp_path / "m1").mkdir(mode=0o700)
    data = os.urandom(200_000) + b"\0" * 500_000
    compressed = subprocess.run(["zstd", "-1", "-c"], input=data, capture_output=True, check=True).stdout
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path))
    res = subprocess.run([sys.executable, str(HELPER), "receive", "m1", "counter"], input=compressed,
                         capture_output=True, env=env, check=True)
    answer = json.loads(res.stdout)
    part = tmp_path / "m1" / "counter.part"
    assert part.read_bytes() == data
    assert part.stat().st_mode & 0o777 == 0o600
    assert answer == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "wire_bytes": len(compressed)}


def test_a_cut_stream_is_reported_as_such(tmp_path):
    (tmp_path / "m1").mkdir(mode=0o700)
    compressed = subprocess.run(["zstd", "-1", "-c"], input=os.urandom(300_000), capture_output=True,
                                check=True).stdout
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path))
    res = subprocess.run([sys.executable, str(HELPER), "receive", "m1", "counter"], input=compressed[:100_000],
                         capture_output=True, env=env, check=False)
    assert res.returncode != 0 and b"cut" in res.stderr


@pytest.mark.parametrize("command", ["rm -rf /", "receive ../x counter", "receive m1 ../../etc/passwd", ""])
def test_the_forced_command_only_receives_into_a_migration_directory(tmp_path, command):
    env = dict(os.environ, PODMIGRATE_MIGRATIONS=str(tmp_path), SSH_ORIGINAL_COMMAND=command)
    res = subprocess.run([sys.executable, str(HELPER), "forced"], input=b"", capture_output=True, env=env, check=False)
    assert res.returncode != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "repo"), [
    ("localhost/podmigrate/counter:1", "podmigrate/counter"),
    ("127.0.0.1:5017/podmigrate/counter@sha256:" + "a" * 64, "podmigrate/counter"),
    ("docker.io/library/redis:7", "library/redis"),
    ("redis", "redis"),
    ("registry:5000/team/app:v1.2", "team/app"),
])
def test_the_repository_of_an_image_name(name, repo):
    assert node.repository(name) == repo
