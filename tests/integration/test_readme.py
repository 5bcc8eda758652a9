"""The README walked as a new user walks it, on the session's cluster.

After `make demo` (whose last step, scripts/demo, runs here first: the counter on a worker,
moved once), every command of the README's shell block for what comes next, as written,
in a fresh shell: the system's PATH, no .venv activated, nothing of ours set but what the
README says names another cluster than the default one (ANSIBLE_INVENTORY and
PODMIGRATE_STATE_DIR: this session's cluster is not the default inventory's).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from helpers import FRESH, ROOT
from kubernetes import client, config

SHELL_ENV = dict(FRESH, TERM="dumb")  # a terminal that draws no progress bar


def shell_blocks():
    return re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_the_readme_shows_the_two_commands_then_what_comes_after_make_demo():
    blocks = shell_blocks()
    assert len(blocks) == 2, blocks
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    # CI runs the second (.ci/run); the first's cluster is what the walk below stands on
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture
def api(cluster):
    return client.CoreV1Api(config.new_client_from_config(str(cluster["state"] / "kubeconfig")))


def remove_counter(api):
    """The demo's counter (examples/counter.yaml), in whatever incarnation, and its Service."""
    for pod in api.list_namespaced_pod("default", label_selector="app=counter").items:
        api.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)
    try:
        api.delete_namespaced_service("counter", "default")
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    deadline = time.monotonic() + 120
    while api.list_namespaced_pod("default", label_selector="app=counter").items:
        assert time.monotonic() < deadline, "the counter did not go"
        time.sleep(0.5)


def test_a_new_user_walks_the_readme_after_make_demo(api, cluster):
    env = dict(SHELL_ENV, ANSIBLE_INVENTORY=str(cluster["inventory"]), PODMIGRATE_STATE_DIR=str(cluster["state"]))
    remove_counter(api)
    reports = cluster["state"] / "reports"
    before = set(reports.glob("*.json"))
    try:
        demo = subprocess.run(["scripts/demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "demo: the counter kept counting and its memory is intact" in demo.stdout
        walk = subprocess.run(["bash", "-c", "set -euo pipefail -x\n" + shell_blocks()[1]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800, check=False)
        out = walk.stdout
        assert walk.returncode == 0, out[-4000:] + walk.stderr[-4000:]
        # kubectl found and pointed at the cluster: the counter, Running
        assert re.search(r"^counter\S*\s+1/1\s+Running", out, re.M), out[:3000]
        # moved three times more (the CLI, the playbook, the kubectl plugin), each saying so,
        # then once more by the drain of its node, which ended uncordoned
        assert out.count("migrated in") >= 3, out[-4000:]
        assert re.search(r"^default/counter\S*: moved to \S+ as default/counter-", out, re.M), out[-4000:]
        assert not any(n.spec.unschedulable for n in api.list_node().items)
        # every move recorded (the demo's and the walk's two) and listed by `podmigrate reports`
        # (the benchmark's own moves come after it)
        listed = re.findall(r"^(\d{14}-[0-9a-f]{6})\s+default/counter\s+\S+ -> \S+\s+(\S+)", out, re.M)
        new = sorted(p.stem for p in set(reports.glob("*.json")) - before)
        assert len(new) >= 4, new
        assert [(i, "migrated") for i in new[:4]] == [m for m in listed if m[0] in new[:4]], listed
        # no migration was left unfinished
        assert "nothing to recover" in out, out[-4000:]
        # the benchmark's table, ours (eager and post-copy) and the floor
        assert re.search(r"^\| 256 \| direct \| 2/2 \|", out, re.M), out[-4000:]
        assert re.search(r"^\| 256 \| lazy \| 2/2 \|", out, re.M), out[-4000:]
        assert re.search(r"^\| 256 \| floor \| 2/2 \|", out, re.M), out[-4000:]
    finally:
        remove_counter(api)
