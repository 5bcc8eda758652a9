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
