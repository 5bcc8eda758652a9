"""The seed-fork role refuses to download what it has no sha256 for (real ansible-playbook, localhost, no nodes)."""

from __future__ import annotations

import pytest
from helpers import run_playbook

PLAY = """
- name: The seed-fork node role with the defaults
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Include it
      ansible.builtin.include_role:
        name: seed_fork_node
"""

MANDATORY = {"seed_fork_node_kubelet_sha256", "seed_fork_node_kubeadm_sha256"}
MANDATORY_ON_WORKERS = {"seed_fork_node_criu_key_sha256", "seed_fork_node_containerd_source_sha256"}
KNOWN = {"seed_fork_node_go_sha256", "seed_fork_node_cni_plugins_sha256", "seed_fork_node_crictl_sha256",
         "seed_fork_node_kubectl_sha256"}


@pytest.mark.parametrize("worker", [True, False])
def test_the_role_names_every_missing_sha256_before_doing_anything(tmp_path, worker):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    run = run_playbook(str(playbook), extra_vars={"seed_fork_node_worker": str(worker).lower()})
    assert run.rc != 0, run.output
    assert "TASK [seed_fork_node : Every download has a sha256]" in run.output
    failed = run.output.split("Every download has a sha256")[-1]
    missing = MANDATORY | (MANDATORY_ON_WORKERS if worker else set())
    for name in missing:
        assert name in failed, (name, failed)
    for name in KNOWN | (set() if worker else MANDATORY_ON_WORKERS):
        assert name not in failed, (name, failed)
    assert run.changed() == 0
