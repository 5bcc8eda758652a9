# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Refusing new connections forwarded to a pod IP while it moves."""

from __future__ import annotations

import shlex
import subprocess

from podmigrate_node.common import FENCE_CHAIN, migration_dir


def _fence_rules(ip, mid):
    comment = ["-m", "comment", "--comment", f"podmigrate:{mid}"]
    return [["-d", ip, "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", *comment,
             "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-d", ip, "-m", "conntrack", "--ctstate", "NEW", *comment, "-j", "REJECT"]]


def cmd_fence(args):
    migration_dir(args.migration)
    for rule in reversed(_fence_rules(args.ip, args.migration)):
        if subprocess.run(["iptables", "-C", FENCE_CHAIN, *rule], capture_output=True).returncode != 0:
            subprocess.run(["iptables", "-I", FENCE_CHAIN, "1", *rule], check=True)


def cmd_unfence(args):
    migration_dir(args.migration)
    rules = subprocess.run(["iptables", "-S", FENCE_CHAIN], check=True, capture_output=True, text=True).stdout
    for line in rules.splitlines():
        if f'podmigrate:{args.migration}"' in line or f"podmigrate:{args.migration} " in line + " ":
            words = shlex.split(line)
            subprocess.run(["iptables", "-D", *words[1:]], check=True)
