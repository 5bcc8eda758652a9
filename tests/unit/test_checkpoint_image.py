"""The benchmark's checkpoint image (scripts/checkpoint_image.py), written for real here
and read back as ctr would import it."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import checkpoint_image


def test_the_image_is_the_checkpoint_with_config_dump_naming_the_base_by_digest(tmp_path):
    archive = tmp_path / "checkpoint.tar"
    pages = b"\x5a" * 300_000
    with tarfile.open(archive, "w") as tar:
        for name, data in (("config.dump", json.dumps({"id": "c1", "rootfsImageRef": "sha256:" + "a" * 64}).encode()),
                           ("checkpoint/pages-1.img", pages)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    base = "10.0.0.250:5000/podmigrate-bench/counter@sha256:" + "b" * 64
    out = io.BytesIO()
    checkpoint_image.write(str(archive), "10.0.0.250:5000/x/app:1", "counter", base, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.tar"]  # its working copy is gone
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as oci:
        blob = lambda d: oci.extractfile(f"blobs/sha256/{d.split(':')[1]}").read()  # noqa: E731
        index = json.loads(oci.extractfile("index.json").read())
        (entry,) = index["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == "10.0.0.250:5000/x/app:1"
        manifest = json.loads(blob(entry["digest"]))
        assert manifest["annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"] == "counter"
        (layer,) = manifest["layers"]
        data = blob(layer["digest"])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"] and len(data) == layer["size"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert json.loads(tar.extractfile("config.dump").read()) == {"id": "c1", "rootfsImageRef": base}
        assert tar.extractfile("checkpoint/pages-1.img").read() == pages
