#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_helper
short_description: Build podmigrate's node helper, one executable file, from its modules
description:
  - Builds the C(podmigrate-node) helper as a Python zip archive of the C(podmigrate_node)
    package and C(podmigrate_runtime.py) found in O(src), and writes it to O(dest) (mode
    0700, for the owner only) when its bytes differ from what O(dest) holds.
  - With O(archive=evictions), builds the eviction webhook the same way instead, from the
    collection's C(module_utils) in O(src) (the migration engine, run as its
    C(migration/evictions.py)).
  - The archive is the same byte for byte for the same sources, so its sha256 is the
    helper's version (what C(podmigrate-node version) prints and the migrate module expects).
  - Runs where the sources are (the controller); copy O(dest) to the nodes afterwards.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  src:
    description: The directory holding C(podmigrate_node/) and C(podmigrate_runtime.py).
    type: path
    required: true
  dest:
    description: Where the archive is written.
    type: path
    required: true
  archive:
    description: Which archive to build.
    type: str
    choices: [helper, evictions]
    default: helper
"""

EXAMPLES = r"""
- name: The node helper, built on the controller
  podmigrate.cluster.node_helper:
    src: "{{ role_path }}/files"
    dest: /srv/pm/build/podmigrate-node
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
digest:
  description: The sha256 of the archive, the helper's version.
  returned: always
  type: str
"""

import hashlib
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper


def main():
    module = AnsibleModule(
        argument_spec={"src": {"type": "path", "required": True}, "dest": {"type": "path", "required": True},
                       "archive": {"type": "str", "choices": ["helper", "evictions"], "default": "helper"}},
        supports_check_mode=True,
    )
    src, dest = module.params["src"], module.params["dest"]
    try:
        data = nodehelper.build(src, module.params["archive"])
    except OSError as exc:
        module.fail_json(msg=f"cannot build the {module.params['archive']} archive from {src}: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with open(dest, "rb") as f:
            same = f.read() == data and os.stat(dest).st_mode & 0o777 == 0o700
    except OSError:
        same = False
    if not same and not module.check_mode:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        fd, part = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", prefix=".podmigrate-node.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(part, 0o700)
        os.rename(part, dest)
    module.exit_json(changed=not same, digest=digest)


if __name__ == "__main__":
    main()
