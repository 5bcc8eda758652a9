"""The seed_fork_cluster role's kubeadm configuration, rendered by Ansible from the role's
defaults, is the original tutorial's conf.yaml exactly (no v1.19 fork can run here)."""

from __future__ import annotations

import stat
import textwrap

import yaml
from helpers import ROOT, run_playbook

# Adrian Stobbe, "[Tutorial]: Kubernetes stateful pod migration", section "Kubeadm init"
TUTORIAL_CONF = """\
apiServer:
  timeoutForControlPlane: 4m0s
apiVersion: kubeadm.k8s.io/v1beta2
imageRepository: sadrian99
kind: ClusterConfiguration
kubernetesVersion: v1.19.16
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
nodeRegistration:
  criSocket: "/run/containerd/containerd.sock"
"""


def render(tmp_path, **extra):
    playbook = tmp_path / "render.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Render the seed-fork kubeadm configuration
          hosts: localhost
          connection: local
          gather_facts: false
          vars:
            ansible_python_interpreter: "{{ ansible_playbook_python }}"
          tasks:
            - name: The role's config entry point
              ansible.builtin.include_role:
                name: seed_fork_cluster
                tasks_from: config
        """))
    out = tmp_path / "conf.yaml"
    run = run_playbook(str(playbook), "localhost,", {"seed_fork_cluster_config_path": str(out), **extra})
    assert run.rc == 0, run.output
    return run, out


def test_the_kubeadm_configuration_is_the_tutorials(tmp_path):
    run, out = render(tmp_path)
    assert out.read_text() == TUTORIAL_CONF
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert run.changed() == 1
    # as kubeadm reads it: a ClusterConfiguration and an InitConfiguration
    cluster, init = yaml.safe_load_all(out.read_text())
    assert cluster["kubernetesVersion"] == "v1.19.16" and cluster["imageRepository"] == "sadrian99"
    assert init["nodeRegistration"]["criSocket"] == "/run/containerd/containerd.sock"


def test_a_second_render_changes_nothing(tmp_path):
    render(tmp_path)
    run, _ = render(tmp_path)
    assert run.changed() == 0


def test_the_configuration_follows_its_variables(tmp_path):
    _, out = render(tmp_path, seed_fork_cluster_image_repository="registry.example/fork",
                    seed_fork_cluster_kubernetes_version="v1.19.15")
    text = out.read_text()
    assert "imageRepository: registry.example/fork\n" in text
    assert "kubernetesVersion: v1.19.15\n" in text
    assert text != TUTORIAL_CONF


def test_the_role_refuses_an_unpinned_cni_manifest_before_changing_anything(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(textwrap.dedent(f"""\
        all:
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
            podmigrate_state_dir: {tmp_path}
          children:
            control_plane:
              hosts:
                localhost:
        """))
    playbook = tmp_path / "cluster.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: The seed-fork cluster
          hosts: control_plane
          gather_facts: false
          roles:
            - seed_fork_cluster
        """))
    run = run_playbook(str(playbook), inventory)
    assert run.rc != 0
    assert "seed_fork_cluster_cni_manifest_sha256 is not set" in run.output
    assert run.changed() == 0
    assert "Kubeadm init" not in run.output


def test_the_join_configuration_is_the_tutorials_join_command(tmp_path):
    playbook = tmp_path / "join.yml"
    out = tmp_path / "join.yaml"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Render the seed-fork join configuration
          hosts: localhost
          connection: local
          gather_facts: false
          vars:
            ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
            seed_fork_cluster_cri_socket: /run/containerd/containerd.sock
            seed_fork_cluster_endpoint: 192.168.0.7:6443
            seed_fork_cluster_join_token: abcdef.0123456789abcdef
            seed_fork_cluster_join_ca_hash: sha256:{"0" * 64}
          tasks:
            - name: The role's join template
              ansible.builtin.template:
                src: {ROOT}/roles/seed_fork_cluster/templates/join.yaml.j2
                dest: {out}
                mode: "0600"
        """))
    run = run_playbook(str(playbook), "localhost,")
    assert run.rc == 0, run.output
    # `kubeadm join 192.168.0.7:6443 --token ... --discovery-token-ca-cert-hash sha256:...
    #  --cri-socket "/run/containerd/containerd.sock"` as kubeadm v1beta2 reads it
    assert yaml.safe_load(out.read_text()) == {
        "apiVersion": "kubeadm.k8s.io/v1beta2", "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"apiServerEndpoint": "192.168.0.7:6443",
                                         "token": "abcdef.0123456789abcdef",
                                         "caCertHashes": ["sha256:" + "0" * 64]}},
        "nodeRegistration": {"criSocket": "/run/containerd/containerd.sock"}}
