#!/usr/bin/env python3
"""Test stand-ins for every download of the seed-fork profile, and the variables that point the role at them.

The real files (the fork's containerd source, its kubelet and kubeadm, CRIU 3.16.1 from
the openSUSE build service, Go 1.17.8, CNI plugins, crictl) cannot be fetched here, so
this writes small files in their place, served over HTTP by the scenario: shell scripts
that answer ``--version`` as the real programs do, a containerd "source" whose Makefile
builds its binary with the Go on PATH, and a signed apt repository with a ``criu`` 3.16.1
package. ``vars.json`` holds the URL and sha256 of each, which converge.yml loads; the
role checks every download against them.

    fixtures.py OUTPUT_DIR BASE_URL
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from email.utils import formatdate
from pathlib import Path

CRIU_VERSION = "3.16.1"
GO_VERSION = "1.17.8"
KUBELET_VERSION = "v1.19.0-beta.0.1015+b521fb5114995f-dirty"
BRANCH = "checkpoint-zip"


def script(body: str) -> bytes:
    return ("#!/bin/sh\n# test stand-in (molecule seed_fork)\n" + body).encode()


def tarball(path: Path, members: dict[str, tuple[bytes, int]]) -> None:
    """A reproducible .tar.gz of {name: (content, mode)}, directories implied."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(Path(name).parent) for name in members} - {"."})
        for name in dirs + sorted(members):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1_650_000_000, 0, 0, "root", "root"
            if name in members:
                data, info.mode = members[name]
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    with gzip.GzipFile(filename="", mode="wb", fileobj=path.open("wb"), mtime=0) as gz:
        gz.write(raw.getvalue())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CONTAINERD_IN = """#!/bin/sh
# test stand-in for the forked containerd, built by @GO@
case "$1" in
  --version) echo "containerd github.com/containerd/containerd @VERSION@ @REVISION@" ;;
  config) printf 'version = 2\\nroot = "/var/lib/containerd"\\n# stand-in default configuration\\n' ;;
  *) echo "this stand-in containerd cannot run" >&2; exit 1 ;;
esac
"""

MAKEFILE = """# test stand-in for the fork's Makefile: "make" builds bin/containerd with the Go on PATH,
# "make install" installs it into $(DESTDIR)$(PREFIX)/bin, as the real one does.
PREFIX ?= /usr/local
GO_VERSION := $(shell go version)

all: bin/containerd

bin/containerd: containerd.in
\t@test -n "$(GO_VERSION)"
\tmkdir -p bin
\tsed -e 's|@VERSION@|$(VERSION)|' -e 's|@REVISION@|$(REVISION)|' -e 's|@GO@|$(GO_VERSION)|' containerd.in > $@
\tchmod 0755 $@

install: bin/containerd
\tinstall -d $(DESTDIR)$(PREFIX)/bin
\tinstall bin/containerd $(DESTDIR)$(PREFIX)/bin
"""


def criu_repository(repo: Path, work: Path) -> Path:
    """A flat apt repository with criu 3.16.1, signed by a key made for it; returns the armored key."""
    pkg = work / "criu"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: criu\nVersion: {CRIU_VERSION}-1\nArchitecture: amd64\n"
        "Maintainer: podmigrate tests <tests@podmigrate.invalid>\n"
        "Description: test stand-in for CRIU from devel:tools:criu\n")
    (pkg / "usr" / "sbin").mkdir(parents=True)
    criu = pkg / "usr" / "sbin" / "criu"
    criu.write_bytes(script(f'[ "$1" = --version ] && {{ echo "Version: {CRIU_VERSION}"; exit 0; }}\nexit 1\n'))
    criu.chmod(0o755)
    repo.mkdir(parents=True)
    deb = repo / f"criu_{CRIU_VERSION}-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    data = deb.read_bytes()
    packages = (control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")
    (repo / "Packages").write_text(packages)
    release = (f"Origin: podmigrate tests\nLabel: devel:tools:criu stand-in\nDate: {formatdate(usegmt=True)}\n"
               f"Architectures: amd64\nSHA256:\n {hashlib.sha256(packages.encode()).hexdigest()} "
               f"{len(packages.encode())} Packages\n")
    (repo / "Release").write_text(release)
    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "podmigrate seed-fork tests <tests@podmigrate.invalid>", "ed25519",
                    "sign", "1d"], check=True, capture_output=True)
    subprocess.run([*gpg, "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release")], check=True,
                   capture_output=True)
    key = repo / "Release.key"
    subprocess.run([*gpg, "--armor", "--export", "--output", str(key)], check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], check=False, capture_output=True)
    return key


def main(out: Path, base: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "go": out / f"go{GO_VERSION}.linux-amd64.tar.gz",
        "containerd_source": out / f"containerd-{BRANCH}.tar.gz",
        "cni_plugins": out / "cni-plugins-linux-amd64-v1.0.1.tgz",
        "crictl": out / "crictl-v1.23.0-linux-amd64.tar.gz",
        "kubelet": out / "kubelet",
        "kubeadm": out / "kubeadm",
    }
    tarball(files["go"], {"go/bin/go": (script(
        f'[ "$1" = version ] && {{ echo "go version go{GO_VERSION} linux/amd64"; exit 0; }}\nexit 2\n'), 0o755)})
    tarball(files["containerd_source"], {f"containerd-{BRANCH}/Makefile": (MAKEFILE.encode(), 0o644),
                                         f"containerd-{BRANCH}/containerd.in": (CONTAINERD_IN.encode(), 0o644)})
    tarball(files["cni_plugins"], {f"./{name}": (script(f'echo "CNI {name} plugin stand-in"\nexit 1\n'), 0o755)
                                   for name in ("bridge", "host-local", "loopback", "portmap")})
    tarball(files["crictl"], {"crictl": (script('echo "crictl version v1.23.0"\n'), 0o755)})
    for name in ("kubelet", "kubeadm"):
        files[name].write_bytes(script(f'[ "$1" = --version ] && {{ echo "Kubernetes {KUBELET_VERSION}"; exit 0; }}\n'
                                       f'echo "this stand-in {name} cannot run" >&2\nexit 1\n'))
        files[name].chmod(0o755)
    with tempfile.TemporaryDirectory() as work:
        key = criu_repository(out / "criu" / "xUbuntu_20.04", Path(work))

    url = {name: f"{base}/{path.relative_to(out)}" for name, path in files.items()}
    variables = {f"seed_fork_node_{name}_sha256": sha256(path) for name, path in files.items()}
    variables |= {
        "seed_fork_node_go_url": url["go"],
        "seed_fork_node_containerd_branch": BRANCH,
        "seed_fork_node_containerd_source_url": url["containerd_source"],
        "seed_fork_node_cni_plugins_url": url["cni_plugins"],
        "seed_fork_node_crictl_url": url["crictl"],
        "seed_fork_node_kubelet_url": url["kubelet"],
        "seed_fork_node_kubeadm_url": url["kubeadm"],
        "seed_fork_node_criu_repository": f"{base}/criu/xUbuntu_20.04/",
        "seed_fork_node_criu_key_url": f"{base}/criu/xUbuntu_20.04/Release.key",
        "seed_fork_node_criu_key_sha256": sha256(key),
    }
    (out / "vars.json").write_text(json.dumps(variables, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2].rstrip("/"))
