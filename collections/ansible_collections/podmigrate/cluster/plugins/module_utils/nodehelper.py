# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node helper as one file, built from its modules: a Python zip archive of the
``podmigrate_node`` package, ``podmigrate_runtime.py`` and ``podmigrate_cni.py``
(roles/migration_node/files).
The eviction webhook (roles/migration_webhook) is one such file too: the collection's
module_utils (the migration engine), run as ``migration/evictions.py``.

The archive is byte for byte the same wherever and whenever it is built from the same
sources (entries sorted, stored uncompressed, with fixed dates and modes), so its sha256
is the helper's version: the controller computes it from its own sources and the engine
refuses a node whose helper reports another one.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

PACKAGE = "podmigrate_node"
RUNTIME = "podmigrate_runtime.py"
CNI_PLUGIN = "podmigrate_cni.py"
SHEBANG = b"#!/usr/bin/python3\n"
ENTRY = b"from podmigrate_node.cli import main\n\nmain()\n"
ENGINE_ROOT = "ansible_collections/podmigrate/cluster/plugins/module_utils"
EVICTIONS_ENTRY = (b"from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.evictions "
                   b"import main\n\nmain()\n")
EPOCH = (1980, 1, 1, 0, 0, 0)


def sources(files_dir):
    """{name in the archive: path} of the helper's sources under ``files_dir``."""
    package = os.path.join(files_dir, PACKAGE)
    found = {f"{PACKAGE}/{name}": os.path.join(package, name)
             for name in os.listdir(package) if name.endswith(".py")}
    if f"{PACKAGE}/cli.py" not in found:
        raise FileNotFoundError(f"{package} holds no node helper (no cli.py)")
    for name in (RUNTIME, CNI_PLUGIN):
        found[name] = os.path.join(files_dir, name)
    return found


def engine_sources(module_utils_dir):
    """{name in the archive: path} of the collection's module_utils (``module_utils_dir``),
    under the package path they are imported by."""
    found = {}
    for root, dirs, files in os.walk(module_utils_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found[f"{ENGINE_ROOT}/{os.path.relpath(path, module_utils_dir)}"] = path
    if f"{ENGINE_ROOT}/migration/evictions.py" not in found:
        raise FileNotFoundError(f"{module_utils_dir} holds no migration engine (no migration/evictions.py)")
    # every directory a regular package (zipimport finds no namespace packages), first on the
    # path the archive runs with
    parts = ENGINE_ROOT.split("/")
    return {**{"/".join(parts[:i]) + "/__init__.py": os.devnull for i in range(1, len(parts) + 1)}, **found}


def build(files_dir, archive="helper"):
    """The archive's bytes: the node helper from ``files_dir`` (roles/migration_node/files),
    or with ``archive="evictions"`` the eviction webhook from the collection's module_utils."""
    if archive == "evictions":
        return _archive(engine_sources(files_dir), EVICTIONS_ENTRY)
    return _archive(sources(files_dir), ENTRY)


def _archive(sources_by_name, entry):
    out = io.BytesIO()
    out.write(SHEBANG)
    members = {name: _read(path) for name, path in sources_by_name.items()}
    members["__main__.py"] = entry
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, wherever it is built
            archive.writestr(info, members[name])
    return out.getvalue()


def digest(files_dir):
    """The version the helper built from ``files_dir`` reports."""
    return hashlib.sha256(build(files_dir)).hexdigest()


def _read(path):
    with open(path, "rb") as f:
        return f.read()
