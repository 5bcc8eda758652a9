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
extends_documentation_fragment: podmigrate.cluster.engine
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
        Lease. A Lease still renewed is waited for until it lapses (its I(lock_seconds) after
        its last renewal, and 5 s more), then refused, as its controller still runs.
      - Forward when the migration passed its commit point or its restored pod runs from
        the checkpoint, else back to the source pod; either way everything it left on the
        nodes is removed.
    type: bool
    default: false
  target:
    description:
      - Node to move it to; empty to pick the Ready node with the most room (memory, then
        CPU) that the pod may run on.
    type: str
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


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine, plan, seedfork
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.controller import ARGUMENT_SPEC, Controller


def main():
    module = AnsibleModule(
        argument_spec={
            "pod": {"type": "str"},
            "recover": {"type": "bool", "default": False},
            "target": {"type": "str"},
            "profile": {"type": "str", "choices": list(plan.PROFILES), "default": plan.UPSTREAM},
            **ARGUMENT_SPEC,
        },
        required_if=[("recover", False, ["pod"])],
        supports_check_mode=True,
    )
    p = module.params
    ctl = Controller(module)
    job = None
    if p["recover"]:
        recover(module, ctl)
    try:
        namespace, name = engine.parse_pod(p["pod"])
        api = ctl.connect()
        engine_class = seedfork.migration_class(p["profile"])
        job = engine_class(api, ctl.nodes, namespace, name, target=p["target"] or None, **ctl.migration_options())
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


def recover(module, ctl):
    p = module.params
    namespace = name = None
    if p["pod"]:
        namespace, name = engine.parse_pod(p["pod"])
    if module.check_mode:
        api = ctl.connect()
        left = engine.unfinished(api, namespace, name)
        module.exit_json(changed=bool(left), reports=[], report={
            "result": "would recover" if left else "nothing to recover", "unfinished": left,
            "summary": "would recover: " + "; ".join(left) if left else "nothing to recover"})
    try:
        api = ctl.connect()
        reports = engine.recover(api, ctl.nodes, namespace, name, report_dir=p["report_dir"], progress=ctl.progress,
                                 helper_digest=ctl.helper_digest)
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
