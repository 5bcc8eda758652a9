"""Where the node roles take containerd and runc from, by distribution and architecture:
the Ubuntu branch's release URLs and pinned sha256 as real Ansible templates them, and the
role stopping before any change where it has no sha256 (real ansible-playbook, localhost,
no nodes). Only a real Ubuntu VM proves the downloads themselves."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers import ROOT, run_playbook

DEFAULTS = ROOT / "roles" / "containerd" / "defaults" / "main.yml"
SHOW = f"""
- name: The containerd role's sources as templated for the node
  hosts: localhost
  gather_facts: false
  vars_files: [{DEFAULTS}]
  tasks:
    - name: Show them
      ansible.builtin.debug:
        msg: "SOURCES {{{{ {{'source': containerd_source, 'tarball': containerd_tarball_url,
              'tarball_sha256': containerd_tarball_sha256, 'runc': containerd_runc_binary_url,
              'runc_sha256': containerd_runc_binary_sha256}} | to_json }}}} END"
"""
ROLE = """
- name: The containerd role
  hosts: localhost
  gather_facts: false
  roles: [containerd]
"""


def facts(distribution, architecture):
    """The node's facts the roles read, as extra vars (no node to gather them from)."""
    return ("-e", json.dumps({"ansible_facts": {"distribution": distribution, "architecture": architecture,
                                                "kernel": "6.8.0"}}))


def sources(tmp_path, distribution, architecture):
    play = tmp_path / "show.yml"
    play.write_text(SHOW)
    run = run_playbook(str(play), options=facts(distribution, architecture))
    assert run.rc == 0, run.output[-3000:]
    return json.loads(re.search(r"SOURCES (\{.*?\}) END", " ".join(run.output.split())).group(1))


@pytest.mark.parametrize(("architecture", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_ubuntu_takes_the_pinned_upstream_releases_with_their_sha256(tmp_path, architecture, arch):
    pinned = yaml.safe_load(DEFAULTS.read_text())
    version, runc = pinned["containerd_release_version"], pinned["containerd_runc_release_version"]
    got = sources(tmp_path, "Ubuntu", architecture)
    assert got == {
        "source": "tarball",
        "tarball": f"https://github.com/containerd/containerd/releases/download/v{version}/"
                   f"containerd-{version}-linux-{arch}.tar.gz",
        "tarball_sha256": pinned["containerd_release_sha256"][version][arch],
        "runc": f"https://github.com/opencontainers/runc/releases/download/v{runc}/runc.{arch}",
        "runc_sha256": pinned["containerd_runc_release_sha256"][runc][arch]}
    assert re.fullmatch("[0-9a-f]{64}", got["tarball_sha256"]) and re.fullmatch("[0-9a-f]{64}", got["runc_sha256"])
    # containerd 2.x, runc 1.3 or later
    assert int(version.split(".")[0]) >= 2 and tuple(map(int, runc.split(".")[:2])) >= (1, 3)


def test_debian_takes_the_distributions_packages(tmp_path):
    assert sources(tmp_path, "Debian", "x86_64")["source"] == "package"


def test_an_architecture_without_a_pinned_sha256_stops_the_role_before_any_change(tmp_path):
    play = tmp_path / "role.yml"
    play.write_text(ROLE)
    run = run_playbook(str(play), options=facts("Ubuntu", "riscv64"))
    assert run.rc != 0
    assert "TASK [containerd : The source is complete]" in run.output
    assert "'tarball' needs containerd_tarball_url, containerd_tarball_sha256" in " ".join(run.output.split())
    assert run.changed() == 0
