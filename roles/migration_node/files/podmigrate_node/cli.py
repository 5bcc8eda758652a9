# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helper's command line."""

from __future__ import annotations

import argparse
import hashlib
import os
import zipfile

from podmigrate_node import __doc__ as usage
from podmigrate_node.address import cmd_address, cmd_addresses
from podmigrate_node.common import fail
from podmigrate_node.dump import cmd_dump
from podmigrate_node.fence import cmd_fence, cmd_unfence
from podmigrate_node.pod import cmd_images_present, cmd_kill, cmd_restored, cmd_thaw
from podmigrate_node.preflight import cmd_memory, cmd_preflight
from podmigrate_node.settle import cmd_settle
from podmigrate_node.smb import cmd_smb_check, cmd_smb_get, cmd_smb_put, cmd_smb_rm
from podmigrate_node.stream import cmd_forced, cmd_pack, cmd_page_server, cmd_receive, cmd_unpack
from podmigrate_node.verdict import cmd_end_restored, cmd_verdict
from podmigrate_node.watch import cmd_extend, cmd_forget, cmd_watch


def self_digest():
    """The helper's version: the sha256 of the archive it runs from (built by module_utils.
    nodehelper), when the runtime and the CNI plugin installed beside it are the ones the
    archive holds; else says which part is stale."""
    archive = getattr(__loader__, "archive", None)
    if not archive:
        fail("not run from the helper's archive: it has no version")
    with open(archive, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with zipfile.ZipFile(archive) as z:
        for name, part in (("podmigrate_runtime.py", "runtime"), ("podmigrate_cni.py", "cni-plugin")):
            try:
                with open(os.path.join(os.path.dirname(archive), name), "rb") as f:
                    installed = f.read()
            except OSError:
                installed = None
            if installed != z.read(name):
                return f"{digest}-stale-{part}"
    return digest


# each command and its arguments: NAME positional, NAME* any number of them; --OPT an option,
# --OPT! required, --OPT+ repeatable, --OPT? a flag, --OPT:int / :float its type, =VALUE its default
COMMANDS = {
    "version": (lambda _args: print(self_digest()), ""),
    "images-present": (cmd_images_present, "refs*"),
    "preflight": (cmd_preflight, "uid"),
    "memory": (cmd_memory, "uid"),
    "thaw": (cmd_thaw, "uid"),
    "dump": (cmd_dump, "uid migration --volume+ --to --key --known-hosts --port+ --send? --lazy?"),
    "page-server": (cmd_page_server, "migration name port:int"),
    "receive": (cmd_receive, "migration name"),
    "forced": (cmd_forced, ""),
    "pack": (cmd_pack, "migration"),
    "unpack": (cmd_unpack, "migration tar --sha256!"),
    "kill": (cmd_kill, "uid migration --wait:float=10"),
    "restored": (cmd_restored, "migration uid --claim?"),
    "end-restored": (cmd_end_restored, "migration --wait:float=30"),
    "verdict": (cmd_verdict, "migration --wait:float=30"),
    "extend": (cmd_extend, "migration --seconds:float=120"),
    "forget": (cmd_forget, "migration"),
    "watch": (cmd_watch, "migration uid namespace name --poll:float=2"),
    "settle": (cmd_settle, "migration --wait:float=600 --grace:float=5"),
    "fence": (cmd_fence, "ip migration"),
    "unfence": (cmd_unfence, "migration"),
    "address": (cmd_address, "ip --route --hold? --release?"),
    "addresses": (cmd_addresses, ""),
    "smb-check": (cmd_smb_check, ""),
    "smb-put": (cmd_smb_put, "file name"),
    "smb-get": (cmd_smb_get, "name dest --sha256! --size:int!"),
    "smb-rm": (cmd_smb_rm, "name"),
}
TYPES = {"int": int, "float": float}


def add_arguments(parser, spec):
    for word in spec.split():
        word, _, default = word.partition("=")
        required, many, repeat, flag = (word.endswith(c) for c in "!*+?")
        word, _, kind = word.rstrip("!*+?").partition(":")
        kw = {"type": TYPES[kind]} if kind else {}
        if word.startswith("--"):
            kw.update(required=required, **({"action": "append", "default": []} if repeat else {}),
                      **({"action": "store_true"} if flag else {}))
            if default:
                kw["default"] = kw.get("type", str)(default)
        elif many:
            kw["nargs"] = "*"
        parser.add_argument(word, **kw)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="podmigrate-node", description=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, spec) in COMMANDS.items():
        command = sub.add_parser(name)
        add_arguments(command, spec)
        command.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)
