# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build Kubernetes binaries from the Go module proxy (the air-gapped artifact path).

``k8s.io/kubernetes``'s go.mod replaces its staging modules (k8s.io/api, client-go...)
with directories of its own repository, so ``go install k8s.io/kubernetes/cmd/X@vY``
is refused. A small module of ours that requires k8s.io/kubernetes and pins each staging
module to its published v0.<minor>.<patch> builds the same code.
"""

from __future__ import annotations

import re

# The release built by default: has the kubelet checkpoint API (ContainerCheckpoint, beta
# and on by default since 1.30) and runs on a cgroup v1 host with failCgroupV1: false.
DEFAULT_VERSION = "1.34.2"

COMMANDS = ("kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager",
            "kube-scheduler", "kube-proxy")

VERSION_RE = re.compile(r"^v?1\.(\d+)\.(\d+)$")


def parse_version(version):
    """(minor, patch) of a Kubernetes release such as "1.34.2" or "v1.34.2"."""
    m = VERSION_RE.match(version.strip())
    if not m:
        raise ValueError(f"not a Kubernetes release version: {version!r} (want 1.MINOR.PATCH)")
    return int(m.group(1)), int(m.group(2))


def staging_modules(kubernetes_gomod):
    """The modules k8s.io/kubernetes's go.mod replaces with its own ./staging directories."""
    return sorted(set(re.findall(r"^\s*(\S+)\s+=>\s+\./staging/", kubernetes_gomod, re.M)))


def build_gomod(kubernetes_gomod, version, module="podmigrate.invalid/kubernetes-build"):
    """go.mod text of a module that builds Kubernetes ``version`` from the module proxy."""
    minor, patch = parse_version(version)
    staging = staging_modules(kubernetes_gomod)
    if not staging:
        raise ValueError("no ./staging replacements found: is this k8s.io/kubernetes's go.mod?")
    go = re.search(r"^go\s+(\S+)", kubernetes_gomod, re.M)
    lines = [f"module {module}", "", f"go {go.group(1) if go else '1.24.0'}", "", "require ("]
    lines.append(f"\tk8s.io/kubernetes v1.{minor}.{patch}")
    lines += [f"\t{m} v0.{minor}.{patch}" for m in staging]
    lines += [")", "", "replace ("]
    lines += [f"\t{m} => {m} v0.{minor}.{patch}" for m in staging]
    lines += [")", ""]
    return "\n".join(lines)


def tools_go(commands=COMMANDS):
    """A file that imports the commands, so ``go mod tidy`` records what they need."""
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in commands)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def ldflags(version, commit="0" * 40, build_date="1970-01-01T00:00:00Z"):
    """Linker flags that stamp the version kubeadm, kubelet and kubectl report and check."""
    minor, patch = parse_version(version)
    pkg = "k8s.io/component-base/version"
    stamps = {"gitVersion": f"v1.{minor}.{patch}", "gitMajor": "1", "gitMinor": str(minor),
              "gitTreeState": "clean", "gitCommit": commit, "buildDate": build_date}
    return " ".join(["-s", "-w"] + [f"-X {pkg}.{k}={v}" for k, v in stamps.items()])


# Where each image kubeadm asks for comes from. "bin": a Kubernetes binary built above;
# "module": a Go program from the module proxy (the tag's "-N" image revision dropped);
# "pause": tools/pause of this project. kube-proxy runs as a systemd service on the
# nodes (it needs the node's iptables), so its image is not built.
IMAGE_SOURCES = {
    "kube-apiserver": {"bin": "kube-apiserver"},
    "kube-controller-manager": {"bin": "kube-controller-manager"},
    "kube-scheduler": {"bin": "kube-scheduler"},
    "etcd": {"module": "go.etcd.io/etcd/server/v3", "path": "/usr/local/bin/etcd"},
    "coredns": {"module": "github.com/coredns/coredns", "path": "/coredns", "entrypoint": ["/coredns"]},
    "pause": {"tool": "pause", "path": "/pause", "entrypoint": ["/pause"]},
}
SKIPPED_IMAGES = ("kube-proxy",)
# Images of our own beyond kubeadm's list, built from tools/<tool> and imported on every
# node with the others: the counter is the demo and test workload of migrations.
WORKLOAD_IMAGES = {
    "counter": {"tool": "counter", "tag": "1", "path": "/counter", "entrypoint": ["/counter"]},
}


def parse_image_list(text):
    """[(reference, short name, tag)] of ``kubeadm config images list`` output."""
    images = []
    for line in text.split():
        ref = line.strip()
        repo, sep, tag = ref.rpartition(":")
        if not sep or "/" in tag:
            raise ValueError(f"image reference without a tag: {ref!r}")
        images.append((ref, repo.rsplit("/", 1)[-1], tag))
    return images


def module_version(tag):
    """The Go module version behind an image tag: "3.6.5-0" -> "v3.6.5", "v1.12.1" -> "v1.12.1"."""
    m = re.match(r"^v?(\d+\.\d+\.\d+)(?:-\d+)?$", tag)
    if not m:
        raise ValueError(f"cannot tell the release of image tag {tag!r}")
    return f"v{m.group(1)}"


def program_gomod(module, version, name="podmigrate.invalid/program-build", go="1.24"):
    """go.mod text of a module that builds ``module@version``'s main package.

    ``go install module@version`` is refused when that module's go.mod has replace
    directives (etcd's do); requiring it from a module of ours builds the same code."""
    return f"module {name}\n\ngo {go}\n\nrequire {module} {version}\n"


def program_tools_go(module):
    """The import that makes ``go mod tidy`` record what ``module``'s main package needs."""
    return f'//go:build tools\n\npackage tools\n\nimport _ "{module}"\n'
