"""testinfra checks of what the node roles (kernel, containerd, criu, kubernetes, migration_node) left
on every node of the session cluster.

site.yml's first run is these roles' converge and `test_a_second_run_changes_nothing_and_leaves_nodes_running`
their idempotence, so the checks run on the nodes the suite already has instead of on a node of their own.
"""

from __future__ import annotations

import json
import os

import pytest
import testinfra
from ansible_collections.podmigrate.cluster.plugins.module_utils import nodehelper
from helpers import NODE_FILES, VENV_BIN

from integration.nodes import NODES

pytestmark = pytest.mark.nodes


@pytest.fixture(scope="module")
def ansible_on_path():
    """testinfra reads the inventory with the ansible-inventory it finds on PATH: the project's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module", params=sorted(NODES))
def host(request, cluster, ansible_on_path):
    """A node of the session cluster, reached over SSH with the inventory's key and known_hosts."""
    return testinfra.get_host(f"ansible://{request.param}", ansible_inventory=str(cluster["inventory"]))


def test_containerd_is_running_enabled_and_new_enough(host):
    service = host.service("containerd")
    assert service.is_running and service.is_enabled
    version = host.check_output("containerd --version").split()[2].lstrip("v")
    assert tuple(int(x) for x in version.split("+")[0].split(".")[:2]) >= (2, 1)
    assert host.socket("unix:///run/containerd/containerd.sock").is_listening


def test_containerd_config_is_the_roles(host):
    config = host.file("/etc/containerd/config.toml")
    assert config.mode == 0o644
    assert "version = 3" in config.content_string
    assert "SystemdCgroup = false" in config.content_string
    assert 'sandbox = "localhost/podmigrate/pause:3.10.1"' in config.content_string
    # the node cannot lower an OOM score (no CAP_SYS_RESOURCE): the role probed and restricted it
    assert "restrict_oom_score_adj = true" in config.content_string


def test_containerd_writes_checkpoints_to_disk_not_to_the_tmpfs(host):
    # CRIU's checkpoint images go to containerd's TMPDIR: the node's /tmp is a small tmpfs
    assert host.file("/var/lib/containerd/tmp").mode == 0o700
    pid = host.check_output("systemctl show -p MainPID --value containerd")
    assert "TMPDIR=/var/lib/containerd/tmp" in host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ").split()


def test_only_containerd_and_runc_come_from_sid(host):
    pins = host.file("/etc/apt/preferences.d/podmigrate-containerd").content_string
    assert "Pin: release n=sid\nPin-Priority: 100" in pins
    assert host.package("bash").version.split(".")[0] == "5"  # still trixie's bash
    assert host.package("containerd").version.startswith("2.1.")
    assert host.package("runc").version.startswith("1.3.")


def test_criu_works_and_runc_uses_the_roles_options(host):
    assert host.run("criu check").stdout.strip() == "Looks good."
    assert host.file("/etc/criu/default.conf").contains("^tcp-close$")
    assert not host.file("/etc/criu/runc.conf").contains("tcp-close")
    assert host.file("/etc/criu/runc.conf").contains("^skip-in-flight$")


def test_the_cri_plugins_are_loaded(host):
    # Running containers is tested in tests/integration/test_runtime.py.
    plugins = host.check_output("ctr plugins ls")
    assert any(line.startswith("io.containerd.cri.v1") and line.rstrip().endswith("ok")
               for line in plugins.splitlines()), plugins


ARTIFACT_IMAGES = ("kube-apiserver:v1.34.2", "kube-controller-manager:v1.34.2", "kube-scheduler:v1.34.2",
                   "etcd:3.6.5-0", "coredns:v1.12.1", "pause:3.10.1")


def test_kubernetes_binaries_are_the_pinned_release(host):
    for command in ("kubeadm version -o short", "kubectl version --client -o json", "kubelet --version",
                    "kube-proxy --version"):
        assert "v1.34.2" in host.check_output(f"/usr/local/bin/{command}"), command


def test_kubelet_is_enabled_with_kubeadms_drop_in(host):
    assert host.service("kubelet").is_enabled
    drop_in = host.file("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf").content_string
    assert "--config=/var/lib/kubelet/config.yaml" in drop_in
    assert "ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS" in drop_in


def test_cluster_images_are_in_containerd_and_pinned(host):
    listed = host.check_output("ctr --namespace k8s.io images list")
    for image in ARTIFACT_IMAGES:
        line = next((li for li in listed.splitlines() if li.startswith(f"localhost/podmigrate/{image} ")), None)
        assert line is not None, (image, listed)
        assert "io.cri-containerd.pinned=pinned" in line, line
    assert host.file("/var/lib/podmigrate/images").mode == 0o700


def test_checkpoints_are_root_only_and_forwarding_is_on(host):
    checkpoints = host.file("/var/lib/kubelet/checkpoints")
    assert checkpoints.is_directory and checkpoints.mode == 0o700 and checkpoints.user == "root"
    assert host.file("/proc/sys/net/ipv4/ip_forward").content_string.strip() == "1"


def test_the_migration_helper_and_podmigrates_runtime_handler(host):
    for name in ("podmigrate-node", "podmigrate_runtime.py", "podmigrate_cni.py"):
        helper = host.file(f"/usr/local/libexec/podmigrate/{name}")
        assert helper.is_file and helper.mode == 0o755 and helper.user == "root"
    # podmigrate's CNI plugin, chained after the bridge with the pods' annotations
    plugin = host.file("/opt/cni/bin/podmigrate-address")
    assert plugin.is_symlink and plugin.linked_to == "/usr/local/libexec/podmigrate/podmigrate_cni.py"
    conflist = json.loads(host.file("/etc/cni/net.d/10-podmigrate.conflist").content_string)
    assert [p["type"] for p in conflist["plugins"]][:2] == ["bridge", "podmigrate-address"]
    assert conflist["plugins"][1]["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}
    # the helper built from this checkout's modules, its runtime beside it
    assert host.check_output("/usr/local/libexec/podmigrate/podmigrate-node version") == \
        nodehelper.digest(str(NODE_FILES))
    assert host.file("/var/lib/podmigrate/migrations").mode == 0o700
    keys = host.file("/etc/podmigrate/authorized_keys")
    assert keys.mode == 0o600 and keys.user == "root"
    sshd = host.check_output("sshd -T")
    assert "/etc/podmigrate/authorized_keys" in sshd
    # beside, not instead of, the node's own SSH settings
    assert "passwordauthentication no" in sshd and "permitrootlogin without-password" in sshd
    # containerd's podmigrate handler: runc's shim running the runtime in place of runc,
    # with the restore annotation passed into the OCI spec
    dump = host.check_output("containerd config dump")
    handler = dump.split("containerd.runtimes.podmigrate]", 1)[1].split("containerd.runtimes.runc]", 1)[0]
    assert "runtime_type = 'io.containerd.runc.v2'" in handler
    assert "pod_annotations = ['podmigrate.io/restore']" in handler
    assert "BinaryName = '/usr/local/libexec/podmigrate/podmigrate_runtime.py'" in handler
    # an ordinary command goes straight to runc
    assert host.check_output("/usr/local/libexec/podmigrate/podmigrate_runtime.py --version") == \
        host.check_output("runc --version")
