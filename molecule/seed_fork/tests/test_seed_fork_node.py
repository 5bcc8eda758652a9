"""testinfra checks of a worker the seed-fork profile prepared (run by molecule's verify step).

The expected files are the original tutorial's (adrianstobbe.com/posts/pod-migration/),
written out here independently of the role's templates; the downloads were the scenario's
stand-ins (fixtures.py). Every file and command is read in one round trip to the node
(testinfra through Ansible costs seconds per call).
"""

from __future__ import annotations

import base64
import json

import pytest

MANAGED = "# Ansible managed\n"

CONTAINERD_UNIT = """[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/bin/containerd

Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
# Comment TasksMax if your systemd version does not supports it.
# Only systemd 226 and above support this version.
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""

KUBELET_UNIT = """[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

DROP_IN = """# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
--kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the \
KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, \
the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS \
should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS \
--container-runtime-endpoint=/run/containerd/containerd.sock --v=9 --read-only-port=0 --anonymous-auth=true \
--authorization-mode=AlwaysAllow --container-runtime=remote
"""

KUBELET_CONFIG = """apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
resolvConf: /run/systemd/resolve/resolv.conf
rotateCertificates: true
runtimeRequestTimeout: 50m0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"""

# script/setup/install-cni's conflist, cniVersion corrected from 1.0.0 to 0.3.0
CONFLIST = {
    "cniVersion": "0.3.0",
    "name": "containerd-net",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "promiscMode": True,
         "ipam": {"type": "host-local",
                  "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "2001:4860:4860::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}

FSTAB_LINE = ("//pmfstorage.file.core.windows.net/checkpoints /var/lib/kubelet/migration cifs "
              "nofail,credentials=/etc/smbcredentials/pmfstorage.cred,serverino,cache=none,seal 0 0")


FILES = (
    "/etc/apt/sources.list.d/devel:tools:criu.list", "/etc/apt/keyrings/devel_tools_criu.asc",
    "/usr/bin/containerd", "/usr/local/bin/containerd", "/root/go/src/github.com/containerd/containerd/Makefile",
    "/etc/systemd/system/containerd.service", "/etc/containerd/config.toml",
    "/opt/cni/bin/bridge", "/opt/cni/bin/host-local", "/opt/cni/bin/loopback", "/opt/cni/bin/portmap",
    "/etc/cni/net.d/10-containerd-net.conflist",
    "/usr/bin/kubelet", "/usr/bin/kubeadm", "/usr/local/bin/kubectl", "/var/lib/kubelet",
    "/etc/systemd/system/kubelet.service", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "/var/lib/kubelet/config.yaml",
    "/etc/modules-load.d/containerd.conf", "/etc/modules-load.d/k8s.conf",
    "/etc/sysctl.d/99-kubernetes-cri.conf", "/etc/sysctl.d/k8s.conf", "/proc/sys/net/ipv4/ip_forward",
    "/usr/local/bin/crictl", "/var/lib/kubelet/check", "/mnt/stale",
    "/etc/fstab", "/etc/smbcredentials", "/etc/smbcredentials/pmfstorage.cred", "/var/lib/kubelet/migration",
)
COMMANDS = (
    "criu --version", "/usr/local/go/bin/go version", "/usr/bin/containerd --version",
    "/usr/bin/containerd config default", "/usr/bin/kubelet --version", "/usr/bin/kubeadm --version", "crictl",
    "apt-mark showhold", "dpkg-query --show --showformat='${Package}=${Version}\\n' criu containerd btrfs-progs "
    "libbtrfs-dev runc make cifs-utils", "systemctl show -P FragmentPath containerd",
    "systemctl is-enabled containerd kubelet", "systemctl is-active containerd kubelet",
    "findmnt --noheadings /var/lib/kubelet/migration",
)
PROBE = """
import json, os, stat, subprocess, sys
files, commands = json.loads(sys.argv[1])
out = {"files": {}, "commands": {}}
for path in files:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        out["files"][path] = None
        continue
    entry = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
             "type": "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"}
    if entry["type"] == "link":
        entry["target"] = os.readlink(path)
    elif entry["type"] == "file":
        with open(path, "rb") as f:
            entry["content"] = f.read().decode()
    out["files"][path] = entry
for command in commands:
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    out["commands"][command] = {"rc": proc.returncode, "stdout": proc.stdout}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def node(host):
    code = base64.b64encode(PROBE.encode()).decode()
    arg = base64.b64encode(json.dumps([FILES, COMMANDS]).encode()).decode()
    result = host.run(f"python3 -c \"import base64,sys; sys.argv[1:] = [base64.b64decode('{arg}').decode()]; "
                      f"exec(base64.b64decode('{code}'))\"")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def root_file(node, path, mode=0o644):
    """The content of a regular file owned by root with that mode."""
    f = node["files"][path]
    assert f is not None and f["type"] == "file", (path, f)
    assert (f["uid"], f["gid"], f["mode"]) == (0, 0, mode), (path, f["uid"], f["gid"], oct(f["mode"]))
    return f["content"]


def run(node, command):
    """A command's output (it must have succeeded)."""
    result = node["commands"][command]
    assert result["rc"] == 0, (command, result)
    return result["stdout"]


def packages(node):
    listing = run(node, COMMANDS[8])
    return dict(line.split("=", 1) for line in listing.splitlines())


def test_criu_is_3_16_1_from_the_criu_repository_and_held(node):
    assert run(node, "criu --version") == "Version: 3.16.1\n"
    assert packages(node)["criu"] == "3.16.1-1"
    assert "criu" in run(node, "apt-mark showhold").split()
    assert root_file(node, "/etc/apt/sources.list.d/devel:tools:criu.list") == (
        "deb [signed-by=/etc/apt/keyrings/devel_tools_criu.asc] http://10.213.248.1:18248/criu/xUbuntu_20.04/ /\n")
    assert "BEGIN PGP PUBLIC KEY BLOCK" in root_file(node, "/etc/apt/keyrings/devel_tools_criu.asc")


def test_go_1_17_8_is_in_usr_local_go(node):
    assert run(node, "/usr/local/go/bin/go version") == "go version go1.17.8 linux/amd64\n"


def test_the_fork_built_with_that_go_replaces_the_packaged_containerd(node):
    assert run(node, "/usr/bin/containerd --version") == (
        "containerd github.com/containerd/containerd 1.6.1+seed-fork checkpoint-zip\n")
    binary = root_file(node, "/usr/bin/containerd", 0o755)
    assert "built by go version go1.17.8 linux/amd64" in binary
    # make install put it in /usr/local/bin too; the source tree is in the tutorial's GOPATH
    assert root_file(node, "/usr/local/bin/containerd", 0o755) == binary
    assert node["files"]["/root/go/src/github.com/containerd/containerd/Makefile"]["type"] == "file"
    # the package stays installed but held, so an upgrade cannot put its binary back
    installed = packages(node)
    assert installed["containerd"].startswith("1.7.") and "containerd" in run(node, "apt-mark showhold").split()
    assert {"btrfs-progs", "libbtrfs-dev", "runc", "make"} <= installed.keys()


def test_containerd_has_the_tutorials_unit_and_default_config_and_is_not_started(node):
    assert root_file(node, "/etc/systemd/system/containerd.service") == (
        MANAGED + "# The unit of the original tutorial (the packaged one, running /usr/bin/containerd: the fork).\n"
        + CONTAINERD_UNIT)
    assert run(node, "systemctl show -P FragmentPath containerd") == "/etc/systemd/system/containerd.service\n"
    assert root_file(node, "/etc/containerd/config.toml") == run(node, "/usr/bin/containerd config default")
    # enabled, but not started: seed_fork_node_start_services is false (the stand-in cannot run)
    assert run(node, "systemctl is-enabled containerd kubelet") == "enabled\nenabled\n"
    assert node["commands"]["systemctl is-active containerd kubelet"]["stdout"] == "inactive\ninactive\n"


def test_cni_plugins_and_the_conflist_with_cni_version_0_3_0(node):
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        root_file(node, f"/opt/cni/bin/{plugin}", 0o755)
    conflist = root_file(node, "/etc/cni/net.d/10-containerd-net.conflist")
    assert json.loads(conflist) == CONFLIST
    assert conflist.startswith('{\n  "cniVersion": "0.3.0",\n') and "1.0.0" not in conflist


def test_forked_kubelet_and_kubeadm_with_the_tutorials_drop_in_and_config(node):
    version = "Kubernetes v1.19.0-beta.0.1015+b521fb5114995f-dirty\n"
    assert run(node, "/usr/bin/kubelet --version") == version
    assert run(node, "/usr/bin/kubeadm --version") == version
    root_file(node, "/usr/bin/kubelet", 0o755)
    root_file(node, "/usr/bin/kubeadm", 0o755)
    assert node["files"]["/usr/local/bin/kubectl"] is None  # control plane only
    assert root_file(node, "/etc/systemd/system/kubelet.service") == (
        MANAGED + "# The unit of the kubelet package the tutorial installed from apt.kubernetes.io.\n" + KUBELET_UNIT)
    assert root_file(node, "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf") == (
        MANAGED + "# The tutorial's drop-in: the package's, with the fork's flags. INSECURE: see the\n"
        "# seed-fork profile's warning (docs/seed-fork.md).\n" + DROP_IN)
    assert root_file(node, "/var/lib/kubelet/config.yaml") == (
        MANAGED + "# The tutorial's kubelet configuration, runtimeRequestTimeout raised for big containers.\n"
        + KUBELET_CONFIG)
    assert node["files"]["/var/lib/kubelet"]["mode"] == 0o700


def test_modules_and_sysctls_of_the_networking_step(node):
    assert root_file(node, "/etc/modules-load.d/containerd.conf") == "overlay\nbr_netfilter\n"
    assert root_file(node, "/etc/modules-load.d/k8s.conf") == "br_netfilter\n"
    assert root_file(node, "/etc/sysctl.d/99-kubernetes-cri.conf") == (
        "net.bridge.bridge-nf-call-iptables  = 1\nnet.ipv4.ip_forward                 = 1\n"
        "net.bridge.bridge-nf-call-ip6tables = 1\n")
    assert root_file(node, "/etc/sysctl.d/k8s.conf") == (
        "net.bridge.bridge-nf-call-ip6tables = 1\nnet.bridge.bridge-nf-call-iptables = 1\n")
    assert node["files"]["/proc/sys/net/ipv4/ip_forward"]["content"] == "1\n"


def test_crictl_is_in_usr_local_bin(node):
    root_file(node, "/usr/local/bin/crictl", 0o755)
    assert run(node, "crictl") == "crictl version v1.23.0\n"


def test_the_checkpoint_scratch_directory_leads_to_the_large_disk(node):
    # the directory the scenario left there (with a file) was removed and replaced by the link
    assert node["files"]["/var/lib/kubelet/check"]["type"] == "link"
    assert node["files"]["/var/lib/kubelet/check"]["target"] == "/mnt"
    assert node["files"]["/mnt/stale"] is None


def test_the_share_in_fstab_with_a_root_only_credentials_file(node):
    fstab = root_file(node, "/etc/fstab").splitlines()
    assert [line for line in fstab if "/var/lib/kubelet/migration" in line] == [FSTAB_LINE]
    assert node["files"]["/etc/smbcredentials"]["mode"] == 0o700
    assert root_file(node, "/etc/smbcredentials/pmfstorage.cred", 0o600) == (
        "username=pmfstorage\npassword=test-password-not-a-secret\n")
    assert "cifs-utils" in packages(node)
    # a container cannot mount cifs: the role wrote the line and skipped the mount (and said so)
    assert node["files"]["/var/lib/kubelet/migration"]["type"] == "dir"
    assert node["commands"]["findmnt --noheadings /var/lib/kubelet/migration"]["stdout"] == ""
