"""The OCI image writer: digests are content addresses and the same input gives the same image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils import ociimage


def layer():
    return (ociimage.Layer().file("app/run.sh", "#!/bin/sh\necho hi\n", 0o755)
            .symlink("bin/sh", "/app/busybox").dir("tmp", 0o1777))


def test_same_input_same_digest_and_every_digest_is_the_content_hash(tmp_path):
    a = ociimage.write_archive(str(tmp_path / "a.tar"), "localhost/x:1", [layer()], {"Cmd": ["/app/run.sh"]})
    b = ociimage.write_archive(str(tmp_path / "b.tar"), "localhost/x:1", [layer()], {"Cmd": ["/app/run.sh"]})
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    index, blobs = ociimage.read_archive(str(tmp_path / "a.tar"))
    for digest, data in blobs.items():
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    entry = index["manifests"][0]
    assert entry["digest"] == a
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x:1"


def test_manifest_config_and_layers_agree(tmp_path):
    digest = ociimage.write_archive(str(tmp_path / "i.tar"), "localhost/x:1", [layer()],
                                    {"Entrypoint": ["/app/run.sh"]}, annotations={"k": "v"})
    _, blobs = ociimage.read_archive(str(tmp_path / "i.tar"))
    manifest = json.loads(blobs[digest])
    config = json.loads(blobs[manifest["config"]["digest"]])
    assert manifest["annotations"] == {"k": "v"}
    assert config["config"] == {"Entrypoint": ["/app/run.sh"]}
    (desc,) = manifest["layers"]
    raw = gzip.decompress(blobs[desc["digest"]])
    assert desc["size"] == len(blobs[desc["digest"]])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members)  # parents before children, stable order
    assert members["app"].isdir() and members["bin"].isdir()
    assert members["app/run.sh"].mode == 0o755 and members["app/run.sh"].mtime == 0
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/app/busybox"
    assert members["tmp"].mode == 0o1777


def test_uncompressed_layers_and_raw_layer_bytes(tmp_path):
    raw = layer().tar_bytes()
    digest = ociimage.write_archive(str(tmp_path / "i.tar"), "localhost/raw:1", [raw], compress=False)
    _, blobs = ociimage.read_archive(str(tmp_path / "i.tar"))
    (desc,) = json.loads(blobs[digest])["layers"]
    assert desc["mediaType"] == ociimage.MEDIA_LAYER_TAR and blobs[desc["digest"]] == raw


@pytest.mark.parametrize("bad", ["", "/", "../etc/passwd", "a/../../b"])
def test_paths_outside_the_layer_are_refused(bad):
    with pytest.raises(ValueError, match="bad path"):
        ociimage.Layer().file(bad, b"x")
