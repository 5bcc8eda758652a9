"""kubectl migrate: podmigrate as a kubectl plugin (scripts/kubectl-migrate, on PATH after
`eval "$(scripts/podmigrate env)"`), with kubectl's conventions and podmigrate's engine.

  kubectl migrate pod NAME [-n NAMESPACE] [--to NODE] [-o json] [--kubeconfig FILE] [--context NAME]
  kubectl migrate drain NODE [--migrate-only] [--force] [--copy lazy] [-o json] [--kubeconfig FILE]
                             [--context NAME]
  kubectl migrate recover [NAME] [-n NAMESPACE] [-o json]
  kubectl migrate reports [ID] [-o json]

`pod` runs the same migration as `podmigrate migrate` (migrate.yml) and exits with its
codes (podmigrate --help); `drain` empties a node as `podmigrate drain` (drain.yml) does.
The namespace is -n, else the context's, else default. The engine talks to the API
server as its own identity (.podmigrate/engine.kubeconfig) unless --kubeconfig (and
--context) name another; it reaches the nodes through the Ansible inventory (-i, else
ANSIBLE_INVENTORY, else ansible.cfg's).
"""

from __future__ import annotations

import argparse
import os

import podmigrate_cli
from podmigrate_cli import Formatter


def namespace_of(args):
    """-n, else the namespace of the kubeconfig's context (--context, else its current one), else default."""
    if args.namespace:
        return args.namespace
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=args.kubeconfig or None)
    except (config.ConfigException, OSError, TypeError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == args.context), None) if args.context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def cmd_pod(args):
    """Move a running pod to another node, its memory intact (podmigrate migrate)."""
    args.pod, args.json = f"{namespace_of(args)}/{args.name}", args.output == "json"
    return podmigrate_cli.cmd_migrate(args)


def cmd_drain(args):
    """Empty a node by migrating its pods, their memory intact (podmigrate drain)."""
    args.json = args.output == "json"
    return podmigrate_cli.cmd_drain(args)


def cmd_recover(args):
    """Finish or roll back the migrations whose controller went away (podmigrate recover):
    of the pod NAME, else of every pod."""
    args.pod = f"{namespace_of(args)}/{args.name}" if args.name else None
    args.json = args.output == "json"
    return podmigrate_cli.cmd_recover(args)


def cmd_reports(args):
    """Past migrations, or the one with ID (podmigrate reports)."""
    args.json = args.output == "json"
    return podmigrate_cli.cmd_reports(args)


def parser():
    top = argparse.ArgumentParser(prog="kubectl migrate", description=__doc__, formatter_class=Formatter)
    top.add_argument("--version", action="version", version=podmigrate_cli.version())
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, summary):
        p = podmigrate_cli.add_command(sub, name, func, summary)
        p.add_argument("-o", "--output", choices=["text", "json"], default="text",
                       help="json: the result and the report as JSON on stdout (progress on stderr)")
        return p

    def cluster_options(p, namespace=True):
        if namespace:
            p.add_argument("-n", "--namespace", help="the pod's namespace (default: the context's, else default)")
        p.add_argument("--kubeconfig", help="kubeconfig the engine uses (default: its own identity, "
                       ".podmigrate/engine.kubeconfig)")
        p.add_argument("--context", help="context of that kubeconfig (default: its current context)")
        p.add_argument("-i", "--inventory", help="Ansible inventory that reaches the nodes (default: "
                       "ANSIBLE_INVENTORY, else ansible.cfg's: the local cluster)")

    p = command("pod", cmd_pod, "move a running pod to another node, its memory intact")
    p.add_argument("name", metavar="NAME", help="the pod (a pod moved before is found by its original name too)")
    cluster_options(p)
    podmigrate_cli.migration_options(p)

    p = command("drain", cmd_drain, "empty a node by migrating its pods, their memory intact")
    p.add_argument("node", metavar="NODE", help="the node to empty")
    cluster_options(p, namespace=False)
    podmigrate_cli.drain_options(p)

    p = command("recover", cmd_recover, "finish or roll back migrations whose controller went away")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this pod's (default: every pod's)")
    cluster_options(p)

    p = command("reports", cmd_reports, "list past migrations, or show one")
    p.add_argument("id", nargs="?", metavar="ID", help="a migration's id, the start of one, or `last`")
    p.add_argument("--state-dir", default=podmigrate_cli.state_dir(), help="the cluster's state directory "
                   "(PODMIGRATE_STATE_DIR, else .podmigrate/ in the project)")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    if getattr(args, "kubeconfig", None):  # migrate.yml runs from the project directory
        args.kubeconfig = os.path.abspath(args.kubeconfig)
    return args.func(args)
