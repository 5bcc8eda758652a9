"""pytest configuration: puts the project's collection on sys.path (see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, run_playbook  # noqa: F401 - re-exported for tests that import it from here


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
