#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate
short_description: Move a running pod to another node with its memory (checkpoint and restore)
description:
  - Runs podmigrate's migration engine (C(module_utils/migration/engine.py)) on the controller, which
    talks to the API server and reaches the nodes over SSH.
  - Refuses with every problem listed, changing nothing, when the pod cannot move. Any later
    failure rolls back to the source pod, which is frozen from its checkpoint until the
    restored one is verified, and thawed on a rollback.
  - The phases are described in C(docs/migration.md).
  - Writes a JSON report with per-phase timings under I(report_dir).
  - One migration of a pod at a time (a Lease per pod, renewed while it runs). Each change
    is written into the Lease's journal before it is made; a migration whose controller
    went away is finished or rolled back from it by I(recover), or by the next migration
    of the pod.
  - In check mode it only validates, changing nothing (no lock taken, nothing written on a
    node or in the cluster), and returns the plan in I(report) (C(result) C(would migrate),
    or the refusal); with I(recover), the migrations it would recover.
version_added: "0.1.0"
author: podmigrate contributors (!UNKNOWN)
options:
  pod:
    description:
      - The pod, C(NAMESPACE/NAME) (or C(NAME) in C(default)).
      - Required unless I(recover); with it, only that pod's migration is recovered.
    type: str
  recover:
    description:
      - Instead of a migration, finish or roll back every migration left unfinished (of
        I(pod), else of any pod), whose controller went away, from the journal in its
        Lease. A Lease still renewed is waited for until it lapses (about 35 s), then
        refused, as its controller still runs.
      - Forward when the migration passed its commit point or its restored pod runs from
        the checkpoint, else back to the source pod; either way everything it left on the
        nodes is removed.
    type: bool
    default: false
  target:
    description: Node to move it to; empty to pick a Ready node with room.
    type: str
  transfer:
    description: How checkpoints travel from the source node to the target.
    type: str
    choices: [direct, share]
    default: direct
  share:
    description:
      - For C(transfer=share), what the checkpoints go through.
      - C(dir) is I(share_dir), a directory every node mounts.
      - C(smb) is the SMB share (Azure Files, Samba) each node's helper reaches with the
        smbprotocol library, as configured on the node by the migration_node role
        (C(migration_node_smb_server)). The source uploads each archive and reads it back
        from the share; the target takes it only when it is there whole, with the size and
        sha256 sent, and checks both again after its download, before any restore starts.
        Both nodes are checked to reach the share before anything changes.
    type: str
    choices: [dir, smb]
    default: dir
  share_dir:
    description: For C(transfer=share) and C(share=dir), the directory every node mounts.
    type: str
    default: /var/lib/podmigrate/share
  nodes:
    description:
      - How to reach each node over SSH, by Kubernetes node name, as Ansible reaches it
        (C(host), C(user), C(port), C(key), C(ssh_args)), and whether Ansible becomes root there
        (C(become), C(become_method), C(become_user)); the engine's node commands then run
        through C(sudo -n). A node reached as another user than root without become, or with
        a become method other than sudo, is refused before anything changes.
    type: dict
    required: true
  kubeconfig:
    description: Kubeconfig of the cluster.
    type: path
    required: true
  context:
    description: Context of the kubeconfig to use (default its current context).
    type: str
  helper:
    description:
      - The directory of the node helper's sources (C(podmigrate_node/) and
        C(podmigrate_runtime.py), roles/migration_node/files); a node whose helper is not the
        one built from them is refused.
    type: path
  report_dir:
    description: Directory of the JSON reports.
    type: path
  progress_file:
    description:
      - File the engine appends its progress to while it runs, one JSON object per line
        (C(module_utils/migration/progress.py)); default the file named by the environment
        variable C(PODMIGRATE_PROGRESS_FILE), which the C(podmigrate.cluster.progress)
        callback sets to show the progress in the playbook's output.
    type: path
  timeout:
    description: Seconds allowed to each of checkpoint, transfer and restore.
    type: int
    default: 600
  node_deadline:
    description:
      - Seconds after the controller's last word (its lock's heartbeat, every few seconds)
        when the source node settles the migration by itself, should no controller ever come
        back (C(podmigrate-node watch); C(docs/migration.md)).
    type: int
    default: 120
  profile:
    description:
      - The cluster's runtime profile (C(podmigrate_profile)). C(upstream) freezes the pod,
        checkpoints it with runc and CRIU on its node and restores it through the
        C(podmigrate) RuntimeClass (C(docs/migration.md)).
      - C(seed-fork) migrates as the original tutorial does on its forked Kubernetes v1.19
        (C(docs/seed-fork.md)) by creating the clone pod (C(spec.clonePod) naming
        the source, the same containers, C(restartPolicy=Never)) on the target and waiting
        until it runs; the source is deleted only then. I(transfer), I(share_dir) and
        I(helper) do not apply (the fork moves the checkpoint through its own share).
    type: str
    choices: [upstream, seed-fork]
    default: upstream
"""

EXAMPLES = r"""
- name: Move default/counter to pm-w2
  podmigrate.cluster.migrate:
    pod: default/counter
    target: pm-w2
    kubeconfig: .podmigrate/kubeconfig
    nodes:
      pm-w1: {host: 10.213.0.21, key: .podmigrate/ssh/id_ed25519}
      pm-w2: {host: 10.213.0.22, key: .podmigrate/ssh/id_ed25519}
"""

RETURN = r"""
report:
  description: The migration report (phases in seconds, bytes, result, restored pod).
  returned: always
  type: dict
reports:
  description: With I(recover), the report of each migration recovered (its C(recovery) says what was
    decided and why).
  returned: when recover
  type: list
  elements: dict
"""


import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine, plan, remote, seedfork
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import transfer as transfers


def main():
    module = AnsibleModule(
        argument_spec={
            "pod": {"type": "str"},
            "recover": {"type": "bool", "default": False},
            "target": {"type": "str"},
            "transfer": {"type": "str", "choices": list(transfers.TRANSFERS), "default": "direct"},
            "share": {"type": "str", "choices": list(transfers.SHARES), "default": "dir"},
            "share_dir": {"type": "str", "default": "/var/lib/podmigrate/share"},
            "nodes": {"type": "dict", "required": True},
            "kubeconfig": {"type": "path", "required": True},
            "context": {"type": "str"},
            "helper": {"type": "path"},
            "report_dir": {"type": "path"},
            "progress_file": {"type": "path"},
            "timeout": {"type": "int", "default": 600},
            "node_deadline": {"type": "int", "default": engine.NODE_DEADLINE},
            "profile": {"type": "str", "choices": list(plan.PROFILES), "default": plan.UPSTREAM},
        },
        required_if=[("recover", False, ["pod"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        from kubernetes import config
    except ImportError:
        module.fail_json(msg="the kubernetes Python client is needed on the controller (requirements.txt)")

    def connect():
        return config.new_client_from_config(config_file=p["kubeconfig"], context=p["context"])

    # where the progress goes: the file asked for (scripts/podmigrate), else the one the
    # podmigrate.cluster.progress callback follows for the playbook's output
    progress_file = p["progress_file"] or os.environ.get("PODMIGRATE_PROGRESS_FILE")

    def progress(event):
        if progress_file:
            try:
                with open(progress_file, "a") as f:
                    f.write(json.dumps(event) + "\n")
            except OSError:
                pass  # whoever followed it went away: the migration goes on

    # the version of the helper built from the controller's sources (what the nodes must run)
    helper_digest = nodehelper.digest(p["helper"]) if p["helper"] else None
    node_keys = ("host", "user", "port", "key", "ssh_args", "become", "become_method", "become_user")
    specs = {name: {k: v for k, v in spec.items() if k in node_keys and v is not None}
             for name, spec in p["nodes"].items()}
    problems = [x for name, spec in specs.items() for x in remote.connection_problems(name, **spec)]
    if problems:
        module.fail_json(msg="refused, nothing changed: " + "; ".join(problems), problems=problems, report={})
    nodes = {name: remote.Node(name, **spec) for name, spec in specs.items()}
    job = None
    if p["recover"]:
        recover(module, connect, nodes, progress, helper_digest)
    try:
        namespace, name = engine.parse_pod(p["pod"])
        api = connect()
        engine_class = seedfork.migration_class(p["profile"])
        job = engine_class(api, nodes, namespace, name, target=p["target"] or None, transfer=p["transfer"],
                           share_dir=p["share_dir"], share=p["share"], report_dir=p["report_dir"],
                           progress=progress, helper_digest=helper_digest, timeout=p["timeout"],
                           node_deadline=p["node_deadline"])
        if module.check_mode:  # validate only, and say what would happen
            report = job.plan_only()
            module.exit_json(changed=report["result"] == "would migrate", report=report)
        report = job.run()
    except plan.MigrationError as exc:
        module.fail_json(msg="refused, nothing changed: " + "; ".join(exc.problems), problems=exc.problems,
                         report=job.report if job else {})
    except Exception as exc:
        if p["profile"] == plan.SEED_FORK:
            # the error says what became of the source (the fork may have stopped it)
            module.fail_json(msg=f"migration failed: {exc}", report=job.report if job else {})
        if job is not None and job.report.get("result") == "taken over":
            module.fail_json(msg=f"migration stopped: {exc}; the controller that took it over finishes it",
                             report=job.report)
        if job is None or not job.changed:
            module.fail_json(msg=f"migration failed before it changed anything: {exc}",
                             report=job.report if job else {})
        left = job.report.get("left_for_recover")
        if left:
            source = "the source pod stays frozen (its restored pod is not gone yet)" if "thaw the source" in left \
                else "the source pod runs on"
            module.fail_json(msg=f"migration failed: {exc}; {source}, as its rollback could not yet do: "
                             f"{', '.join(left)}; run podmigrate recover once that can be done", report=job.report)
        module.fail_json(msg=f"migration failed and was rolled back; the source pod runs on: {exc}",
                         report=job.report)
    module.exit_json(changed=report["result"] == "migrated", report=report)


def recover(module, connect, nodes, progress, helper_digest):
    p = module.params
    namespace = name = None
    if p["pod"]:
        namespace, name = engine.parse_pod(p["pod"])
    if module.check_mode:
        api = connect()
        left = engine.unfinished(api, namespace, name)
        module.exit_json(changed=bool(left), reports=[], report={
            "result": "would recover" if left else "nothing to recover", "unfinished": left,
            "summary": "would recover: " + "; ".join(left) if left else "nothing to recover"})
    try:
        api = connect()
        reports = engine.recover(api, nodes, namespace, name, report_dir=p["report_dir"], progress=progress,
                                 helper_digest=helper_digest)
    except plan.MigrationError as exc:
        module.fail_json(msg="refused, nothing changed: " + "; ".join(exc.problems), problems=exc.problems,
                         report={"result": "refused"})
    except Exception as exc:
        module.fail_json(msg=f"recovery failed: {exc}; what it could not do stays in the Lease's journal: "
                         "run it again", report={"result": "not recovered"})
    summary = "; ".join(r["summary"] + f" ({r['recovery']['why']})" for r in reports if r.get("recovery")) or \
        "nothing to recover"
    module.exit_json(changed=bool(reports), reports=reports,
                     report={"result": "recovered", "summary": summary, "reports": len(reports)})


if __name__ == "__main__":
    main()
