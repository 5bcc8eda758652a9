"""The node roles on real local nodes: CRIU and containerd checkpoint and restore a running process."""

from __future__ import annotations

import time

import pytest
from helpers import run_playbook

from integration.nodes import NODES, scp, ssh, write_busybox_image

pytestmark = pytest.mark.nodes

IMAGE = "localhost/podmigrate/busybox:test"
NS = "pmtest"
# An in-memory counter: the shell variable only lives in the process; the file is a window on it,
# written aside and renamed over /count so a reader never sees it half-written.
LOOP = "i=0; while true; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done"


def node(cluster):
    return cluster["state"], NODES["pmt-w1"][0]


def run(cluster, command, timeout=120):
    state, addr = node(cluster)
    res = ssh(state, addr, command, timeout=timeout)
    assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
    return res.stdout.strip()


def count(cluster, container):
    return int(run(cluster, f"ctr -n {NS} tasks exec --exec-id read-$RANDOM {container} cat /count"))


@pytest.fixture(scope="module")
def busybox_image(cluster, tmp_path_factory):
    """A static busybox image written by the project's OCI writer, imported over SSH."""
    path = tmp_path_factory.mktemp("image") / "busybox.tar"
    write_busybox_image(path, IMAGE, ("sh", "cat", "sleep", "mv"))
    state, addr = node(cluster)
    scp(state, path, addr, "/tmp/busybox.tar")
    out = run(cluster, f"ctr -n {NS} images import /tmp/busybox.tar && ctr -n {NS} images ls -q")
    assert IMAGE in out.split()
    yield IMAGE
    run(cluster, f"for i in $(ctr -n {NS} images ls -q); do ctr -n {NS} images rm $i; done; "
                 f"ctr namespaces rm {NS} || true; rm -f /tmp/busybox.tar")


def remove(cluster, container):
    run(cluster, f"ctr -n {NS} tasks kill -s KILL {container}; sleep 0.5; ctr -n {NS} tasks rm -f {container}; "
                 f"ctr -n {NS} containers rm {container}")


@pytest.fixture
def checkpoint(cluster, busybox_image):
    """The counter's checkpoint image; the test's containers and the image are removed after it."""
    yield "localhost/podmigrate/ckpt:counter"
    for container in run(cluster, f"ctr -n {NS} containers ls -q").split():
        remove(cluster, container)
    run(cluster, f"ctr -n {NS} images rm localhost/podmigrate/ckpt:counter || true")


def test_a_checkpointed_process_goes_on_counting_after_restore(cluster, busybox_image, checkpoint):
    run(cluster, f"ctr -n {NS} run -d {busybox_image} counter /bin/sh -c '{LOOP}'")
    time.sleep(3)
    before = count(cluster, "counter")
    assert before >= 10
    run(cluster, f"ctr -n {NS} containers checkpoint --rw --task counter {checkpoint}")
    # The source is gone before the restore: what comes back can only be the checkpoint.
    remove(cluster, "counter")
    run(cluster, f"ctr -n {NS} containers restore --rw --live counter2 {checkpoint}")
    after = count(cluster, "counter2")
    # A fresh start would count from 1; the restored process continues from its memory.
    assert after > before, (before, after)
    time.sleep(1)
    assert count(cluster, "counter2") > after


def test_the_kernel_role_refuses_to_install_a_kernel_on_a_node_that_cannot_boot_one(cluster):
    run = run_playbook("playbooks/nodes.yml", cluster["inventory"], {"kernel_version": "5.4.0-1068-azure"})
    assert run.rc != 0
    assert "is a container (systemd-nspawn) running on its host's kernel" in " ".join(run.output.split())
    assert "cannot boot a kernel of its own" in " ".join(run.output.split())
    recap = run.recap()
    assert all(recap[name]["changed"] == 0 for name in NODES), recap
