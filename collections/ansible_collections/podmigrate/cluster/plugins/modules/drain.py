#!/usr/bin/python
# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drain
short_description: Empty a node by migrating its pods, their memory intact
description:
  - Cordons I(node), then migrates every pod on it that can move with podmigrate's
    migration engine (C(module_utils/migration/engine.py)), I(parallel) at once, each to the
    node its plan picks (Ready, not cordoned, its taints tolerated, its placement rules
    met, room for its requests, its memory and its checkpoint).
  - A pod that cannot move is evicted through the Eviction API, as C(kubectl drain) does
    (its PodDisruptionBudgets decide; one that allows no disruption is waited for up to
    I(eviction_timeout), then the pod is left); with I(migrate_only) it is left. A pod no
    controller would start again is evicted only with I(force).
  - A DaemonSet's pod and a static pod's mirror are left alone. A migration that fails
    rolls back and its pod stays where it is (never evicted instead).
  - With I(copy=lazy) each pod moves with post-copy where it can; one it cannot (a
    StatefulSet's, or a node whose CRIU cannot serve pages lazily) moves with eager copy,
    and its entry says why. A pod post-copy loses (its source or the link failed before
    its last page) fails the drain, its outcome C(lost).
  - Reports what became of every pod (moved and where, with its downtime; evicted; left;
    failed) and why. A second run changes nothing.
  - In check mode it cordons nothing and says what each pod would do.
  - C(docs/drain.md).
version_added: "0.2.0"
author: podmigrate contributors (!UNKNOWN)
extends_documentation_fragment: podmigrate.cluster.engine
options:
  node:
    description: The node to empty (its Kubernetes name).
    type: str
    required: true
  migrate_only:
    description: Leave the pods that cannot move on the node instead of evicting them.
    type: bool
    default: false
  force:
    description: Evict also a pod that cannot move and that no controller would start again elsewhere.
    type: bool
    default: false
  parallel:
    description: How many migrations at once.
    type: int
    default: 2
  eviction_timeout:
    description: Seconds to keep asking to evict a pod a PodDisruptionBudget protects.
    type: int
    default: 300
"""

EXAMPLES = r"""
- name: Empty pm-w1 by migration
  podmigrate.cluster.drain:
    node: pm-w1
    kubeconfig: .podmigrate/engine.kubeconfig
    nodes:
      pm-w1: {host: 10.213.0.21, key: .podmigrate/ssh/id_ed25519}
      pm-w2: {host: 10.213.0.22, key: .podmigrate/ssh/id_ed25519}
"""

RETURN = r"""
report:
  description:
    - C(result) (C(drained) when only pods that belong to the node are left on it, else
      C(not drained)), C(summary), C(counts) and C(pods), one entry per pod on the node
      with its C(outcome) (C(moved), C(evicted), C(left), C(failed), C(lost)), C(why), and
      for a move C(to), C(now) (the restored pod), C(downtime_seconds), C(migration),
      C(copy) and, where post-copy could not have the pod, C(eager_because).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import plan
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.controller import ARGUMENT_SPEC, Controller
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.drain import Drain, staying


def main():
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "migrate_only": {"type": "bool", "default": False},
            "force": {"type": "bool", "default": False},
            "parallel": {"type": "int", "default": 2},
            "eviction_timeout": {"type": "int", "default": 300},
            **ARGUMENT_SPEC,
        },
        supports_check_mode=True,
    )
    p = module.params
    ctl = Controller(module)
    drain = None
    try:
        drain = Drain(ctl.connect(), ctl.nodes, p["node"], migrate_only=p["migrate_only"], force=p["force"],
                      parallel=p["parallel"], eviction_timeout=p["eviction_timeout"], **ctl.migration_options())
        report = drain.preview() if module.check_mode else drain.run()
    except plan.MigrationError as exc:
        module.fail_json(msg="refused, nothing changed: " + "; ".join(exc.problems), problems=exc.problems,
                         report={"result": "refused"})
    except Exception as exc:
        module.fail_json(msg=f"drain of {p['node']} failed: {type(exc).__name__}: {exc}",
                         changed=bool(drain and drain.changed), report={"result": "failed"})
    if module.check_mode:
        module.exit_json(changed=report["changes"], report=report)
    lost = [e for e in report["pods"] if e["outcome"] == "lost"]
    if lost:
        module.fail_json(msg=report["summary"] + "; post-copy lost: " + "; ".join(
            f"{e['pod']}: {e.get('why', '')}" for e in lost), changed=drain.changed, report=report)
    if report["result"] == "not drained":
        module.fail_json(msg=report["summary"] + "; not drained: " + "; ".join(
            f"{e['pod']} {e['outcome']}: {e.get('why', '')}" for e in staying(report["pods"])),
            changed=drain.changed, report=report)
    module.exit_json(changed=drain.changed, report=report)


if __name__ == "__main__":
    main()
