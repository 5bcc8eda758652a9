# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A checkpoint image, as the upstream recipe builds it with buildah, for the benchmark.

  python3 - ARCHIVE NAME CONTAINER BASE < checkpoint_image.py | ctr -n k8s.io images import -

Writes to stdout an OCI image layout (tar) named NAME whose one layer is the kubelet's
checkpoint ARCHIVE, annotated with the container's name as CRI-O and containerd read it.
containerd 2.1's restore pulls the base image by the reference config.dump records, which
is a bare image id (containerd issues 11901, 12876); the layer's config.dump names BASE
(the base image by digest in the registry) instead, as a recipe with a registry must.
`scripts/bench` runs it on the source node (its `registry` method); migrations
do not use checkpoint images. Standard library only: it runs with the node's python3.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile

ANNOTATIONS = ("org.criu.checkpoint.container.name", "io.kubernetes.cri-o.annotations.checkpoint.name")


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar, name, data=None, path=None):
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, 0
    if path is None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.size = os.path.getsize(path)
    with open(path, "rb") as f:
        tar.addfile(info, f)


def rebased(archive, base, out_path):
    """A copy of the checkpoint ARCHIVE whose config.dump names the base image BASE; its sha256."""
    digest = hashlib.sha256()

    class Hashing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            digest.update(data)
            return self.f.write(data)

    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(archive) as src, \
            tarfile.open(fileobj=Hashing(f), mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            if member.name.lstrip("./") == "config.dump":
                dump = json.loads(src.extractfile(member).read())
                data = json.dumps(dict(dump, rootfsImageRef=base)).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return "sha256:" + digest.hexdigest()


def write(archive, name, container, base, out):
    layer_path = archive + ".layer"
    try:
        layer = rebased(archive, base, layer_path)
        _write(layer_path, layer, name, container, out)
    finally:
        if os.path.exists(layer_path):
            os.unlink(layer_path)


def _write(archive, layer, name, container, out):
    config = _json({"architecture": "amd64", "os": "linux", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [layer]}, "created": "1970-01-01T00:00:00Z"})
    annotations = dict.fromkeys(ANNOTATIONS, container)
    manifest = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                                 "size": len(config)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                                  "size": os.path.getsize(archive)}],
                      "annotations": annotations})
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "digest": _digest(manifest), "size": len(manifest),
                                  "annotations": {"io.containerd.image.name": name,
                                                  "org.opencontainers.image.ref.name": name}}]})
    with tarfile.open(fileobj=out, mode="w|") as tar:
        _add(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(tar, f"blobs/sha256/{layer.split(':')[1]}", path=archive)
        _add(tar, f"blobs/sha256/{_digest(config).split(':')[1]}", config)
        _add(tar, f"blobs/sha256/{_digest(manifest).split(':')[1]}", manifest)
        _add(tar, "index.json", index)


if __name__ == "__main__":
    write(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.stdout.buffer)
