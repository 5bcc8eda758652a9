"""Offline stand-in for the get-pip.py script that ansible-test bootstraps pip with.

ansible-test creates each sanity test's virtual environment without pip and runs a
get-pip.py from ~/.ansible/test/cache/get_pip_<version>.py in it, downloading that file
from a host of Ansible's CI first when it is missing. That host is not reachable from
this project's machines; the Python package index is. scripts/ansible-sanity puts this
file at that path instead: it does what get-pip.py does, with the pip wheel that ships
with Python itself (ensurepip's, or Debian's python-wheels) in place of the one
get-pip.py embeds, so the pip version ansible-test asks for (and nothing else) is
installed from the package index.

Arguments are get-pip.py's: pip install options and requirements, plus --no-setuptools
and --no-wheel, which say not to add setuptools and wheel (ansible-test passes both).
"""

from __future__ import annotations

import glob
import os
import sys

# scripts/ansible-sanity refreshes a cached copy that carries this line, and leaves any other file alone
MARKER = "podmigrate: ansible-test get-pip stand-in"


def bundled_pip_wheel() -> str:
    import ensurepip

    places = [
        os.path.join(os.path.dirname(ensurepip.__file__), "_bundled"),
        "/usr/share/python-wheels",  # Debian's python3-pip-whl
    ]
    for place in places:
        wheels = sorted(glob.glob(os.path.join(place, "pip-*.whl")))
        if wheels:
            return wheels[-1]
    sys.exit(f"no pip wheel shipped with Python was found (looked in {', '.join(places)})")


def main() -> int:
    args = sys.argv[1:]
    extras = []
    if "--no-setuptools" not in args:
        extras.append("setuptools")
    if "--no-wheel" not in args:
        extras.append("wheel")
    args = [a for a in args if a not in ("--no-setuptools", "--no-wheel")]
    sys.path.insert(0, bundled_pip_wheel())
    from pip._internal.cli.main import main as pip_main

    return pip_main(["install", "--upgrade", "--force-reinstall", *args, *extras])


if __name__ == "__main__":
    sys.exit(main())
