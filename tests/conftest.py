"""pytest configuration: puts the project's collection on sys.path (see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NODE_FILES, ROOT, run_playbook  # noqa: F401 - re-exported for tests that import it from here


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def node_helper(tmp_path_factory) -> Path:
    """The node helper as the migration_node role installs it: one file, built from the
    project's sources (podmigrate_runtime.py and podmigrate_cni.py beside it, as on a node)."""
    from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper

    files = NODE_FILES
    where = tmp_path_factory.mktemp("helper")
    helper = where / "podmigrate-node"
    helper.write_bytes(nodehelper.build(str(files)))
    helper.chmod(0o755)
    for name in ("podmigrate_runtime.py", "podmigrate_cni.py"):
        (where / name).write_bytes((files / name).read_bytes())
    return helper
