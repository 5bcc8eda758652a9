"""podmigrate: move running pods between nodes with their memory, and look after the local nodes.

  podmigrate migrate NAMESPACE/NAME [--to NODE] [--json] ...   move a pod (runs migrate.yml)
  podmigrate drain NODE [--migrate-only] [--json] ...          empty a node by migrating its pods
                                                               (runs drain.yml)
  podmigrate recover [NAMESPACE/NAME] [--json]                 finish or roll back migrations whose
                                                               controller went away
  podmigrate reports [ID] [--json]                             past migrations
  podmigrate nodes [--json]                                    the local nodes' state
  podmigrate env                                               shell lines: PATH, KUBECONFIG

Exit codes of `migrate` (of `drain`: 0 drained, 1 not drained, 3 refused, 7 a pod lost):
  0  migrated, or already on the target
  1  failed before it changed anything (no cluster, an unreachable node...)
  2  usage error
  3  refused, nothing changed (every reason listed)
  4  failed and rolled back: the source pod runs on
  5  rolled back, but something was left behind (listed; `podmigrate recover` finishes it)
  6  migrated, but something was left behind (listed)
  7  lost (--copy lazy only): post-copy failed after the commit; both copies were ended

The cluster is the default inventory's (ansible.cfg: the local nodes), its state (the
kubeconfig, the reports) in .podmigrate/; ANSIBLE_INVENTORY and PODMIGRATE_STATE_DIR
name another.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
import shlex
import subprocess
import sys
import tempfile

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ansible_collections.podmigrate.cluster.plugins.module_utils import localnodes
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import progress

OK, NOT_STARTED, USAGE, REFUSED, ROLLED_BACK, ROLLED_BACK_LEFTOVERS, MIGRATED_LEFTOVERS, LOST = range(8)


def state_dir():
    return os.environ.get("PODMIGRATE_STATE_DIR") or os.path.join(PROJECT, ".podmigrate")


def version():
    with open(os.path.join(PROJECT, "collections/ansible_collections/podmigrate/cluster/galaxy.yml")) as f:
        number = next(line.split(":", 1)[1].strip() for line in f if line.startswith("version:"))
    commit = subprocess.run(["git", "-C", PROJECT, "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return f"podmigrate {number}" + (f" ({commit})" if commit else "")


# ------------------------------------------------------------------ env
def cmd_env(args):
    """Shell lines that put the project's tools on PATH (.venv's ansible-playbook and Python,
    scripts/ with podmigrate, the built kubectl) and point KUBECONFIG at the cluster's
    kubeconfig. Use: eval "$(scripts/podmigrate env)"."""
    paths = [os.path.join(PROJECT, ".venv", "bin"), os.path.join(PROJECT, "scripts")]
    kubectl = sorted(glob.glob(os.path.join(PROJECT, ".podmigrate/cache/artifacts/kubernetes-v*/bin/kubectl")))
    if kubectl:
        paths.append(os.path.dirname(kubectl[-1]))
    else:
        print("# podmigrate env: no kubectl built yet (make artifacts)", file=sys.stderr)
    print(f"export PATH={shlex.quote(os.pathsep.join(paths))}:\"$PATH\"")
    print(f"export KUBECONFIG={shlex.quote(os.path.join(args.state_dir, 'kubeconfig'))}")
    if os.environ.get("PODMIGRATE_STATE_DIR"):
        print(f"export PODMIGRATE_STATE_DIR={shlex.quote(args.state_dir)}")
    return OK


# ------------------------------------------------------------------ nodes
def cmd_nodes(args):
    """The local nodes (systemd-nspawn machines) and their bridge: state and process ids."""
    nodes = [n.status() for n in localnodes.list_nodes(args.state_dir)]
    record = os.path.join(args.state_dir, "local-provider.json")
    bridge = None
    if os.path.exists(record):
        with open(record) as f:
            bridge = json.load(f).get("bridge")
    if args.json:
        print(json.dumps({"bridge": bridge, "nodes": nodes}, indent=2))
        return OK
    if not nodes:
        print(f"no local nodes under {args.state_dir}")
        return OK
    print(f"bridge: {bridge or '-'}")
    print(f"{'NODE':<14}{'STATE':<12}{'NSPAWN PID':<12}{'INIT PID':<10}")
    for n in nodes:
        print(f"{n['name']:<14}{n['state']:<12}{n['pid'] or '-'!s:<12}{n['init_pid'] or '-'!s:<10}")
    return OK


# ------------------------------------------------------------------ migrate
def cmd_migrate(args):
    """Move a running pod to another node with its memory: runs migrate.yml (the same engine)
    and shows its progress while it works: each phase, and the bytes moved with their rate
    and the time left (a bar on a terminal). Ends with the migration's summary, or why it
    failed and what became of the pod; the exit code says which (podmigrate --help)."""
    extra = {"pod": args.pod, "transfer": args.transfer, "copy": args.copy, "timeout": args.timeout,
             "node_deadline": args.node_deadline,
             "lock_seconds": args.lock_seconds, "keep_address": not args.new_address}
    if args.to:
        extra["target"] = args.to
    if args.share:
        extra["share"] = args.share
    result = run_migrate_playbook(with_identity(extra, args), args)
    code, outcome = exit_code(result)
    report = result.get("report") or {}
    # a failure's own words (what became of the pod); else the summary of the move
    message = (result.get("msg") if result.get("failed") else report.get("summary") or report.get("message")) or ""
    if args.json:
        print(json.dumps({"result": outcome, "exit_code": code, "message": message, "report": report}, indent=2))
        return code
    print(message, file=sys.stderr if result.get("failed") else sys.stdout)
    for error in report.get("cleanup_errors") or []:
        print(f"left behind: {error}", file=sys.stderr)
    if report.get("report"):
        print(f"report: {report['report']}  (podmigrate reports {report['id']})")
    return code


def cmd_drain(args):
    """Empty a node by migration (runs drain.yml): cordon it, then migrate every pod on it
    that can move, a few at once, each to a node with room that its rules allow. A pod
    that cannot move is evicted as kubectl drain does (its PodDisruptionBudgets decide),
    unless --migrate-only; a pod no controller would start again is evicted only with
    --force. DaemonSet pods and static pods stay. Prints what became of every pod and why;
    the node stays cordoned (kubectl uncordon NODE). With --copy lazy each pod moves with
    post-copy where it can (else eagerly, saying why). Exit code 0 when drained, 1 when a pod
    other than those that belong to the node is still on it, 3 when refused, 7 when
    post-copy lost a pod."""
    extra = {"node": args.node, "migrate_only": args.migrate_only, "force": args.force, "parallel": args.parallel,
             "eviction_timeout": args.eviction_timeout, "transfer": args.transfer, "copy": args.copy,
             "timeout": args.timeout,
             "node_deadline": args.node_deadline, "lock_seconds": args.lock_seconds,
             "keep_address": not args.new_address}
    if args.share:
        extra["share"] = args.share
    result = run_migrate_playbook(with_identity(extra, args), args, playbook="drain.yml")
    report = result.get("report") or {}
    code = drain_exit_code(result)
    if args.json:
        print(json.dumps({"result": report.get("result"), "exit_code": code, "message": result.get("msg") or
                          report.get("summary"), "report": report}, indent=2))
        return code
    for pod in report.get("pods") or []:
        moved = pod["outcome"] == "moved"
        where = f" to {pod['to']} as {pod['now']}, frozen {pod['downtime_seconds']:.2f} s" if moved else ""
        why = pod.get("why") or (f"copy=eager: {pod['eager_because']}" if pod.get("eager_because") else "")
        print(f"{pod['pod']}: {pod['outcome']}{where}" + (f" ({why})" if why else ""))
    print(result.get("msg") if result.get("failed") else report.get("summary"),
          file=sys.stderr if result.get("failed") else sys.stdout)
    return code


def drain_exit_code(result):
    """A drain's exit code, from the module's result."""
    report = result.get("report") or {}
    if (report.get("counts") or {}).get("lost"):
        return LOST
    if report.get("result") == "drained":
        return OK
    if report.get("result") == "refused" or (result.get("msg") or "").startswith("refused"):
        return REFUSED
    return NOT_STARTED


def cmd_recover(args):
    """Finish or roll back the migrations whose controller went away (killed, its machine or
    its SSH lost), of one pod or of every pod, from the journal each left in its pod's
    Lease (runs migrate.yml -e recover=true). A migration still renewing its Lease is
    waited for until it lapses (30 s after its last renewal unless
    --lock-seconds said otherwise, and 5 s more), then refused: its controller still runs.
    Each goes forward when it passed its commit point or its restored pod runs from the
    checkpoint, else back to the source pod; either way what it left on the nodes goes.
    Exit code 0 when nothing is left, 3 when refused, 1 when a recovery failed (what it
    could not do stays in the journal: run it again)."""
    result = run_migrate_playbook(with_identity({"recover": True, **({"pod": args.pod} if args.pod else {})}, args),
                                  args)
    reports = result.get("reports") or []
    if result.get("failed"):
        code = REFUSED if (result.get("msg") or "").startswith("refused") else NOT_STARTED
    else:
        code = NOT_STARTED if any(r.get("left_for_recover") for r in reports) else OK
    if args.json:
        print(json.dumps({"exit_code": code, "message": result.get("msg") or (result.get("report") or {}).get(
            "summary"), "reports": reports}, indent=2))
        return code
    if result.get("failed"):
        print(result.get("msg"), file=sys.stderr)
    elif not reports:
        print("nothing to recover")
    for report in reports:
        print(f"{report['summary']}\n  why: {report['recovery']['why']}")
        for what in report.get("left_for_recover") or []:
            print(f"  still left: {what}", file=sys.stderr)
        if report.get("report"):
            print(f"  report: {report['report']}")
    return code


def with_identity(extra, args):
    """``extra`` with the kubeconfig and context the engine is to use, where asked for
    (kubectl migrate's --kubeconfig, --context); else migrate.yml's own choice."""
    return {**extra, **{key: getattr(args, key) for key in ("kubeconfig", "context") if getattr(args, key, None)}}


def run_migrate_playbook(extra, args, playbook="migrate.yml"):
    """The engine's task's result of ``playbook`` run with ``extra``, its progress shown."""
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="podmigrate-") as work:
        path = os.path.join(work, "progress")
        open(path, "w").close()
        ansible = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        command = [ansible if os.path.exists(ansible) else "ansible-playbook", playbook, "-e", json.dumps(extra)]
        if args.inventory:
            command += ["-i", args.inventory]
        follower = progress.Follower(path, out).start()
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", PODMIGRATE_PROGRESS_FILE=path)
        run = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False, env=env)
        follower.finish()
    result = task_result(run.stdout)
    if result is None:  # the playbook failed before its migrate task (an inventory, a variable...)
        result = {"failed": True, "msg": (run.stdout[-3000:] + run.stderr[-2000:]).strip()}
    return result


def exit_code(result):
    """(exit code, result) of the migrate task's result (the module's report, or its failure)."""
    report = result.get("report") or {}
    outcome = report.get("result")
    if outcome is None:  # failed before the engine had a report: a bad name is a refusal
        outcome = "refused" if (result.get("msg") or "").startswith("refused") else "not started"
    leftovers = bool(report.get("cleanup_errors"))
    if outcome == "migrated":
        return (MIGRATED_LEFTOVERS if leftovers else OK), outcome
    if outcome == "rolled back":
        return (ROLLED_BACK_LEFTOVERS if leftovers else ROLLED_BACK), outcome
    return {"already there": OK, "refused": REFUSED, "lost": LOST}.get(outcome, NOT_STARTED), outcome


def task_result(output):
    """The migrate task's result, from the playbook's JSON output (the json callback's
    document, wherever other callbacks print around it); None when it never ran."""
    start = output.find('{\n    "custom_stats"')
    if start < 0:
        start = output.find("{")
    try:
        plays = json.JSONDecoder().raw_decode(output, max(start, 0))[0]["plays"]
    except (ValueError, KeyError, TypeError):
        return None
    for play in plays:
        for task in play["tasks"]:
            result = next(iter(task["hosts"].values()), {})
            if "report" in result or result.get("failed"):
                return result
    return None


# ------------------------------------------------------------------ reports
def cmd_reports(args):
    """Past migrations, newest last: id, pod, nodes, result, downtime (how long the pod was
    frozen) and total time; with an ID (or a unique start of one, or `last`), that
    migration's report: its phases, bytes and errors."""
    reports = load_reports(os.path.join(args.state_dir, "reports"))
    if args.id:
        chosen = [r for r in reports if r.get("id", "").startswith(args.id)] if args.id != "last" else reports[-1:]
        if len(chosen) != 1:
            print(f"podmigrate reports: {len(chosen) or 'no'} migration(s) match {args.id!r}", file=sys.stderr)
            return USAGE
        report = chosen[0]
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            show_report(report)
        return OK
    if args.json:
        print(json.dumps(reports, indent=2))
        return OK
    if not reports:
        print(f"no migrations recorded under {args.state_dir}/reports")
        return OK
    print(f"{'ID':<22}{'POD':<28}{'NODES':<20}{'RESULT':<14}{'DOWNTIME':>9}{'TOTAL':>9}")
    for r in reports:
        nodes = f"{r.get('source', '?')} -> {r.get('target', '?')}"
        print(f"{r.get('id', '?'):<22}{r.get('pod', '?'):<28}{nodes:<20}{r.get('result', '?'):<14}"
              f"{_seconds(r.get('frozen_seconds')):>9}{_seconds(r.get('total_seconds')):>9}")
    return OK


def load_reports(directory):
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            with open(path) as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue  # being written, or not a report
    return sorted(found, key=lambda r: r.get("id", ""))


def show_report(r):
    print(r.get("summary") or f"{r.get('pod')}: {r.get('result')}")
    print(f"id {r.get('id')}  pod {r.get('pod')}  {r.get('source', '?')} -> {r.get('target', '?')}  "
          f"result {r.get('result')}  transfer {r.get('transfer')}")
    if r.get("restored_pod"):
        print(f"restored pod {r['restored_pod']}")
    print(f"downtime (frozen) {_seconds(r.get('frozen_seconds'))}, total {_seconds(r.get('total_seconds'))}; "
          f"checkpoint {r.get('checkpoint_bytes', 0) / 2**20:.1f} MiB, sent {r.get('sent_bytes', 0) / 2**20:.1f} MiB")
    for name, seconds in (r.get("phases") or {}).items():
        print(f"  {name:<12}{seconds:>9.2f} s")
    for key in ("error", "message"):
        if r.get(key):
            print(f"{key}: {r[key]}")
    for problem in r.get("problems") or []:
        print(f"  refused: {problem}")
    for error in r.get("cleanup_errors") or []:
        print(f"  left behind: {error}")


def _seconds(value):
    return "-" if value is None else f"{value:.2f} s"


# ------------------------------------------------------------------ main
class Formatter(argparse.RawDescriptionHelpFormatter):
    """The docstrings as written, and every option's default (where it has one)."""

    def _get_help_string(self, action):
        shown = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in shown:
            shown += " (default: %(default)s)"
        return shown


def add_command(sub, name, func, summary):
    """Subcommand ``name`` of ``sub`` that runs ``func``, its whole docstring as its help."""
    p = sub.add_parser(name, help=summary, description=inspect.cleandoc(func.__doc__), formatter_class=Formatter)
    p.set_defaults(func=func)
    return p


def migration_options(p, target=True):
    """The options of a move (podmigrate migrate, kubectl migrate pod; without --to, of a drain)."""
    if target:
        p.add_argument("--to", metavar="NODE", help="target node (default: the Ready node with the most room)")
    p.add_argument("--transfer", choices=["direct", "share"], default="direct",
                   help="direct: node to node over SSH, the memory streamed as it is dumped; share: one "
                   "archive through a share both nodes reach")
    p.add_argument("--copy", choices=["eager", "lazy"], default="eager",
                   help="eager: the memory on the target before the restore; lazy (post-copy, direct only): "
                   "the pod restored at once and its memory fetched after, on demand; if the source node or "
                   "the link fails before the last page, the pod is lost" + (
                       "" if target else " (a pod post-copy cannot move, a StatefulSet's, moves eagerly)"))
    p.add_argument("--share", choices=["dir", "smb"],
                   help="what --transfer share goes through (default: smb when the inventory configures an "
                   "SMB share, else a directory both nodes mount)")
    p.add_argument("--timeout", type=int, default=600, metavar="SECONDS",
                   help="the most each of checkpoint, transfer and restore may take before a rollback")
    p.add_argument("--node-deadline", type=int, default=120, metavar="SECONDS",
                   help="should this controller die and no one run podmigrate recover: how long after its last "
                   "word the source node settles the migration by itself (as the target's verdict says)")
    p.add_argument("--lock-seconds", type=int, default=30, metavar="SECONDS",
                   help="should this controller die: how long after its last renewal (every 5 s) the pod's lock "
                   "lapses, so that podmigrate recover or the pod's next migration can take it over (at least 15)")
    p.add_argument("--new-address", action="store_true",
                   help="give the restored pod a new IP address from its node's range (by default it keeps the "
                   "source's, where the pod network allows it: docs/migration.md)")


def drain_options(p):
    """The options of a drain (podmigrate drain, kubectl migrate drain)."""
    p.add_argument("--migrate-only", action="store_true", help="leave the pods that cannot move instead of "
                   "evicting them")
    p.add_argument("--force", action="store_true", help="evict also a pod that cannot move and that no "
                   "controller would start again (it is deleted for good)")
    p.add_argument("--parallel", type=int, default=2, metavar="N", help="migrations at once")
    p.add_argument("--eviction-timeout", type=int, default=300, metavar="SECONDS",
                   help="how long to keep asking to evict a pod its PodDisruptionBudget protects")
    migration_options(p, target=False)


def parser():
    top = argparse.ArgumentParser(prog="podmigrate", description=__doc__, formatter_class=Formatter)
    top.add_argument("--version", action="version", version=version())
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, summary):
        return add_command(sub, name, func, summary)

    p = command("migrate", cmd_migrate, "move a running pod to another node, its memory intact")
    p.add_argument("pod", metavar="NAMESPACE/NAME", help="the pod (NAME alone: in default); a pod moved "
                   "before is found by its original name too")
    migration_options(p)
    p.add_argument("-i", "--inventory", help="Ansible inventory (default: ANSIBLE_INVENTORY, else ansible.cfg's: "
                   "the local cluster)")
    p.add_argument("--json", action="store_true", help="print the result and the report as JSON on stdout "
                   "(the progress goes to stderr)")

    p = command("drain", cmd_drain, "empty a node by migrating its pods, their memory intact")
    p.add_argument("node", metavar="NODE", help="the node to empty")
    drain_options(p)
    p.add_argument("-i", "--inventory", help="Ansible inventory (default: ANSIBLE_INVENTORY, else ansible.cfg's: "
                   "the local cluster)")
    p.add_argument("--json", action="store_true", help="print the result and the report as JSON on stdout")

    p = command("recover", cmd_recover, "finish or roll back migrations whose controller went away")
    p.add_argument("pod", nargs="?", metavar="NAMESPACE/NAME", help="only this pod's (default: every pod's)")
    p.add_argument("-i", "--inventory", help="Ansible inventory (default: ANSIBLE_INVENTORY, else ansible.cfg's: "
                   "the local cluster)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON on stdout")

    p = command("reports", cmd_reports, "list past migrations, or show one")
    p.add_argument("id", nargs="?", metavar="ID", help="a migration's id, the start of one, or `last`")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")

    p = command("nodes", cmd_nodes, "show the state of the local nodes")
    p.add_argument("--json", action="store_true", help="print the state as JSON")

    command("env", cmd_env, "print shell lines setting PATH and KUBECONFIG (eval \"$(scripts/podmigrate env)\")")
    for name in ("reports", "nodes", "env"):
        sub.choices[name].add_argument("--state-dir", default=state_dir(), help="the cluster's state directory "
                            "(PODMIGRATE_STATE_DIR, else .podmigrate/ in the project)")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    return args.func(args)
