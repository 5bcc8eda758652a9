"""The Kubernetes build module's pure parts."""

from __future__ import annotations

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils import kubebuild

K8S_GOMOD = """module k8s.io/kubernetes

go 1.24.0

require (
\tgithub.com/spf13/cobra v1.9.1
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/example/fork => github.com/example/fork v1.2.3
)
"""


def test_build_gomod_pins_every_staging_module_to_the_published_version():
    text = kubebuild.build_gomod(K8S_GOMOD, "v1.34.2")
    assert "go 1.24.0" in text
    assert "\tk8s.io/kubernetes v1.34.2\n" in text
    for module in ("k8s.io/api", "k8s.io/client-go"):
        assert f"\t{module} v0.34.2\n" in text
        assert f"\t{module} => {module} v0.34.2\n" in text
    assert "./staging" not in text
    assert "github.com/example/fork" not in text  # only the staging replacements are rewritten


def test_build_gomod_refuses_what_is_not_kubernetes_go_mod():
    with pytest.raises(ValueError, match=r"no \./staging replacements"):
        kubebuild.build_gomod("module example.com/x\n\ngo 1.24\n", "1.34.2")


@pytest.mark.parametrize("bad", ["1.34", "2.0.1", "v1.34.2-rc.1", "latest", ""])
def test_only_release_versions_are_accepted(bad):
    with pytest.raises(ValueError, match="not a Kubernetes release version"):
        kubebuild.parse_version(bad)


def test_ldflags_stamp_the_version_kubeadm_checks():
    flags = kubebuild.ldflags("1.34.2").split(" -X ")
    assert flags[0] == "-s -w"
    stamps = dict(f.split("=", 1) for f in flags[1:])
    assert stamps["k8s.io/component-base/version.gitVersion"] == "v1.34.2"
    assert stamps["k8s.io/component-base/version.gitMinor"] == "34"
    assert stamps["k8s.io/component-base/version.gitTreeState"] == "clean"


def test_tools_go_imports_every_command_under_a_build_tag():
    text = kubebuild.tools_go()
    assert text.startswith("//go:build tools\n")
    assert all(f'"k8s.io/kubernetes/cmd/{c}"' in text for c in kubebuild.COMMANDS)
