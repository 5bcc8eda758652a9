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


KUBEADM_IMAGES = """localhost/podmigrate/kube-apiserver:v1.34.2
localhost/podmigrate/kube-controller-manager:v1.34.2
localhost/podmigrate/kube-scheduler:v1.34.2
localhost/podmigrate/kube-proxy:v1.34.2
localhost/podmigrate/coredns:v1.12.1
localhost/podmigrate/pause:3.10.1
localhost/podmigrate/etcd:3.6.5-0
"""


def test_parse_image_list_splits_reference_name_and_tag():
    images = kubebuild.parse_image_list(KUBEADM_IMAGES)
    assert images[0] == ("localhost/podmigrate/kube-apiserver:v1.34.2", "kube-apiserver", "v1.34.2")
    assert images[-1] == ("localhost/podmigrate/etcd:3.6.5-0", "etcd", "3.6.5-0")
    assert len(images) == 7


def test_every_image_kubeadm_lists_is_built_or_deliberately_skipped():
    names = {name for _, name, _ in kubebuild.parse_image_list(KUBEADM_IMAGES)}
    assert names == set(kubebuild.IMAGE_SOURCES) | set(kubebuild.SKIPPED_IMAGES)


@pytest.mark.parametrize("ref", ["localhost:5000/pause", "pause", "a/b:c/d"])
def test_parse_image_list_refuses_a_reference_without_a_tag(ref):
    with pytest.raises(ValueError, match="without a tag"):
        kubebuild.parse_image_list(ref)


@pytest.mark.parametrize(("tag", "version"), [("3.6.5-0", "v3.6.5"), ("v1.12.1", "v1.12.1"), ("1.2.3", "v1.2.3")])
def test_module_version_drops_the_image_revision(tag, version):
    assert kubebuild.module_version(tag) == version


def test_module_version_refuses_what_is_not_a_release():
    with pytest.raises(ValueError, match="cannot tell"):
        kubebuild.module_version("latest")


def test_program_module_requires_the_program_and_imports_its_main_package():
    gomod = kubebuild.program_gomod("go.etcd.io/etcd/server/v3", "v3.6.5")
    assert gomod.startswith("module podmigrate.invalid/program-build\n")
    assert "\nrequire go.etcd.io/etcd/server/v3 v3.6.5\n" in gomod
    assert "replace" not in gomod
    tools = kubebuild.program_tools_go("go.etcd.io/etcd/server/v3")
    assert tools.startswith("//go:build tools\n") and 'import _ "go.etcd.io/etcd/server/v3"' in tools
