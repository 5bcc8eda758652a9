"""Where the node roles take containerd and runc from, by distribution and architecture:
the Ubuntu branch's release URLs and pinned sha256 as real Ansible templates them, and the
role stopping before any change where it has no sha256 (real ansible-playbook, localhost,
no nodes). Only a real Ubuntu VM proves the downloads themselves."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from helpers import ROOT, run_playbook

DEFAULTS = ROOT / "roles" / "containerd" / "defaults" / "main.yml"
ROLE = """
- name: The containerd role
  hosts: localhost
  gather_facts: false
  roles: [containerd]
"""


def facts(distribution, architecture=None, **more):
    """The node's facts the roles read, as extra vars (no node to gather them from)."""
    return ("-e", json.dumps({"ansible_facts": {"distribution": distribution, "architecture": architecture,
                                                "kernel": "6.8.0", **more}}))


def templated(tmp_path, defaults, expression, node_facts):
    """``expression`` as Ansible templates it with the role defaults ``defaults`` for a node
    with ``node_facts``."""
    play = tmp_path / "show.yml"
    play.write_text("- name: Template it\n  hosts: localhost\n  gather_facts: false\n"
                    f"  vars_files: [{defaults}]\n  tasks:\n    - name: Show it\n      ansible.builtin.debug:\n"
                    "        msg: \"VALUE {{ (" + expression + ") | to_json }} END\"\n")
    run = run_playbook(str(play), options=node_facts)
    assert run.rc == 0, run.output[-3000:]
    return json.loads(re.search(r"VALUE (.*?) END", " ".join(run.output.split())).group(1))


def sources(tmp_path, distribution, architecture):
    return templated(tmp_path, DEFAULTS, "{'source': containerd_source, 'tarball': containerd_tarball_url, "
                     "'tarball_sha256': containerd_tarball_sha256, 'runc': containerd_runc_binary_url, "
                     "'runc_sha256': containerd_runc_binary_sha256}", facts(distribution, architecture))


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


CRIU_DEFAULTS = ROOT / "roles" / "criu" / "defaults" / "main.yml"
@pytest.mark.parametrize(("distribution", "release"), [("Ubuntu", "jammy"), ("Ubuntu", "noble"), ("Debian", "trixie")])
def test_ubuntu_takes_criu_from_the_projects_ppa_with_its_key_pinned_by_fingerprint(tmp_path, distribution, release):
    source = templated(tmp_path, CRIU_DEFAULTS, "criu_apt_source", facts(distribution, distribution_release=release))
    if distribution == "Debian":
        assert source == {}
        return
    assert source["uris"] == "https://ppa.launchpadcontent.net/criu/ppa/ubuntu" and source["suites"] == release
    assert source["signed_by"] == "/etc/apt/keyrings/podmigrate-criu-ppa.asc"
    assert source["pin"] == "release o=LP-PPA-criu"
    assert source["key_fingerprint"] == "4E2A48715C45AEEC077B48169B29EEC9246B6CE2"
    assert source["key_url"].startswith("https://keyserver.ubuntu.com/")
    assert source["key_fingerprint"] in source["key_url"]


KEY_PLAY = """
- name: The CRIU source's key, fetched and checked
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Fetch and check it
      ansible.builtin.include_role:
        name: criu
        tasks_from: key
"""


def test_a_source_key_whose_fingerprint_is_not_the_pinned_one_is_removed_and_stops_the_role(tmp_path):
    """A real OpenPGP key, made here, fetched by the role's real tasks (file:// instead of the keyserver)."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "podmigrate test <t@example.invalid>",
                        "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    finally:  # the agent gpg started for it
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)
    listing = subprocess.run(["gpg", "--list-keys", "--with-colons"], env=env, check=True, capture_output=True,
                             text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    key = tmp_path / "key.asc"
    key.write_text(subprocess.run(["gpg", "--armor", "--export", fingerprint], env=env, check=True,
                                  capture_output=True, text=True).stdout)
    keyring = tmp_path / "keyrings" / "criu.asc"
    play = tmp_path / "key.yml"
    play.write_text(KEY_PLAY)

    def run(pinned):
        source = {"name": "t", "uris": "file:///nowhere", "suites": "jammy", "signed_by": str(keyring),
                  "key_url": key.as_uri(), "key_fingerprint": pinned}
        return run_playbook(str(play), options=("-e", json.dumps({"criu_apt_source": source})))

    wrong = run("4E2A48715C45AEEC077B48169B29EEC9246B6CE2")
    assert wrong.rc != 0
    assert f"is not 4E2A48715C45AEEC077B48169B29EEC9246B6CE2 ({fingerprint}): it was removed, nothing else changed" \
        in " ".join(wrong.output.split()), wrong.output[-3000:]
    assert not keyring.exists()
    right = run(fingerprint.lower())
    assert right.rc == 0, right.output[-3000:]
    assert keyring.read_text() == key.read_text()
    again = run(fingerprint)
    assert again.rc == 0 and again.changed() == 0, again.output[-3000:]
