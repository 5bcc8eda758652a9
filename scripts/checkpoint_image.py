# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A checkpoint image, as the upstream recipe builds it with buildah, for the benchmark.

  python3 - ARCHIVE NAME CONTAINER < checkpoint_image.py | ctr -n k8s.io images import -

Writes to stdout an OCI image layout (tar) named NAME whose one layer is the kubelet's
checkpoint ARCHIVE as it is, annotated with the container's name as CRI-O and containerd
read it. `scripts/bench` runs it on the source node (its `registry` method); migrations
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


def write(archive, name, container, out):
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    layer = "sha256:" + digest.hexdigest()
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
    write(sys.argv[1], sys.argv[2], sys.argv[3], sys.stdout.buffer)
