"""The project's own Python environment for the scripts in this directory.

A script run from any shell (``scripts/bench``, ``scripts/podmigrate``) starts under
whatever ``python3`` PATH finds first, which lacks the packages ``scripts/setup`` put in
``.venv``. ``use()`` runs the script again with ``.venv``'s Python, and puts ``.venv/bin``
(ansible-playbook and the other tools) first on PATH for what it starts.
"""

from __future__ import annotations

import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(PROJECT, ".venv")


def use():
    python = os.path.join(VENV, "bin", "python")
    if not os.access(python, os.X_OK):
        sys.exit(f"{os.path.basename(sys.argv[0])}: {VENV} is missing; run `make setup` (scripts/setup) first")
    bin_dir = os.path.join(VENV, "bin")
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])  # noqa: S606 (this script again)
