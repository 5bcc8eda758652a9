#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: debian_mirror
short_description: The Debian archive URL the host's apt is configured with
description:
  - Reads C(/etc/apt/sources.list) and C(/etc/apt/sources.list.d/*) (one-line and
    deb822 formats) and returns the first non-security archive URL, so that images
    built on this host use the same mirror as its apt. Changes nothing.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options: {}
"""

EXAMPLES = r"""
- name: Find the mirror
  podmigrate.cluster.debian_mirror:
  register: mirror
"""

RETURN = r"""
url:
  description: The archive URL, without a trailing slash.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.localnodes import host_debian_mirror


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    url = host_debian_mirror()
    if not url:
        module.fail_json(msg="no Debian archive found in this host's apt sources; "
                             "set local_nodes_debian_mirror")
    module.exit_json(changed=False, url=url)


if __name__ == "__main__":
    main()
