"""testinfra checks of a node the node roles prepared (run by molecule's verify step)."""

from __future__ import annotations


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
    assert 'sandbox = "registry.k8s.io/pause:3.10"' in config.content_string


def test_only_containerd_and_runc_come_from_sid(host):
    pins = host.file("/etc/apt/preferences.d/podmigrate-containerd").content_string
    assert "Pin: release n=sid\nPin-Priority: 100" in pins
    assert host.package("bash").version.split(".")[0] == "5"  # still trixie's bash
    assert host.package("containerd").version.startswith("2.1.")
    assert host.package("runc").version.startswith("1.3.")


def test_criu_works_and_runc_uses_the_roles_options(host):
    assert host.run("criu check").stdout.strip() == "Looks good."
    assert host.file("/etc/criu/runc.conf").contains("^tcp-close$")


def test_the_cri_plugins_are_loaded(host):
    # Running containers is tested in tests/integration/test_runtime.py.
    plugins = host.check_output("ctr plugins ls")
    assert any(line.startswith("io.containerd.cri.v1") and line.rstrip().endswith("ok")
               for line in plugins.splitlines()), plugins
