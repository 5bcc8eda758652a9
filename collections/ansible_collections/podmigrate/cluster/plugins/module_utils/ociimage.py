# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write OCI image archives without a registry or a container engine.

An archive is an OCI image layout in a tar (``oci-layout``, ``index.json``,
``blobs/sha256/...``) that ``ctr images import`` reads; the image's name is the
``io.containerd.image.name`` annotation of its index entry. Everything is written
deterministically (fixed mtimes, owners and order), so the same inputs give the same
digests and importing an unchanged image changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
EPOCH = 0


class Layer:
    """A filesystem layer built from entries: files from bytes or host paths, dirs, links."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755):
        self.entries[_norm(path)] = ("dir", None, mode)
        return self

    def file(self, path, data, mode=0o644):
        self.entries[_norm(path)] = ("file", data if isinstance(data, bytes) else data.encode(), mode)
        return self

    def host_file(self, path, source, mode=None):
        with open(source, "rb") as f:
            data = f.read()
        return self.file(path, data, mode if mode is not None else os.stat(source).st_mode & 0o7777)

    def symlink(self, path, target):
        self.entries[_norm(path)] = ("symlink", target, 0o777)
        return self

    def tar_bytes(self):
        """The layer as an uncompressed tar: parents first, sorted, owned by root, mtime 0."""
        paths = set(self.entries)
        for p in list(paths):
            parent = os.path.dirname(p)
            while parent:
                if parent not in self.entries:
                    self.entries[parent] = ("dir", None, 0o755)
                parent = os.path.dirname(parent)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _norm(path):
    path = path.strip("/")
    if not path or ".." in path.split("/"):
        raise ValueError(f"bad path in layer: {path!r}")
    return path


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(name, layers, config=None, annotations=None, compress=True, arch="amd64"):
    """Build an image; return (blobs {digest: bytes}, index dict, manifest digest).

    layers: Layer objects or raw layer tar bytes, bottom first.
    config: the image config's ``config`` section (Entrypoint, Cmd, Env, WorkingDir...).
    annotations: manifest annotations (e.g. the ones containerd reads on a checkpoint image).
    """
    blobs, descs, diff_ids = {}, [], []
    for layer in layers:
        raw = layer.tar_bytes() if isinstance(layer, Layer) else layer
        diff_ids.append(sha256(raw))
        blob = gzip.compress(raw, compresslevel=6, mtime=EPOCH) if compress else raw
        digest = sha256(blob)
        blobs[digest] = blob
        descs.append({"mediaType": MEDIA_LAYER_GZIP if compress else MEDIA_LAYER_TAR,
                      "digest": digest, "size": len(blob)})
    image_config = {
        "architecture": arch, "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "podmigrate", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_blob = _json(image_config)
    blobs[sha256(config_blob)] = config_blob
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": descs,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_blob = _json(manifest)
    manifest_digest = sha256(manifest_blob)
    blobs[manifest_digest] = manifest_blob
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest_blob),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }],
    }
    return blobs, index, manifest_digest


def write_archive(path, name, layers, config=None, annotations=None, compress=True):
    """Write the image as an OCI layout tar at ``path`` (atomically); return the manifest digest."""
    blobs, index, digest = build(name, layers, config, annotations, compress)
    members = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", _json(index))]
    members += [(f"blobs/sha256/{d.split(':', 1)[1]}", blobs[d]) for d in sorted(blobs)]
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for dname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for mname, data in members:
            info = tarfile.TarInfo(mname)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return digest


def read_archive(path):
    """(index, {digest: bytes}) of an OCI layout tar; used to verify what was written."""
    blobs, index = {}, None
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if member.name == "index.json":
                index = json.loads(data)
            elif member.name.startswith("blobs/sha256/"):
                blobs["sha256:" + member.name.rsplit("/", 1)[1]] = data
    return index, blobs
