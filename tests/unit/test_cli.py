"""scripts/podmigrate as a user runs it from a fresh shell: its exit codes, --json, --version,
`reports`, `env`, and how it shows a migration's progress (module_utils/migration/progress.py).
What needs a cluster (a real move, its byte progress) is in tests/integration/test_migrate.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import progress
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.runner import Runner
from helpers import FRESH, NOWHERE_KUBECONFIG, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import podmigrate_cli


def podmigrate(*argv, env=None, timeout=300):
    return subprocess.run([str(ROOT / "scripts" / "podmigrate"), *argv], cwd=ROOT, env=env or FRESH,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def nowhere(tmp_path):
    """An inventory whose cluster's API server is not there (nothing listens on port 9)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "kubeconfig").write_text(NOWHERE_KUBECONFIG)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"  vars:\n    podmigrate_state_dir: {state}\n")
    return str(inventory)


def test_version_names_the_collection_and_the_commit():
    res = podmigrate("--version")
    assert res.returncode == 0, res.stderr
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert res.stdout.startswith("podmigrate 0.1.0 ("), res.stdout
    assert commit[:7] in res.stdout


def test_help_shows_every_command_the_exit_codes_and_each_options_default():
    res = podmigrate("--help")
    assert res.returncode == 0
    for word in ("migrate", "drain", "reports", "nodes", "env", "3  refused, nothing changed", "6  migrated, but"):
        assert word in res.stdout, word
    sub = podmigrate("migrate", "--help")
    assert "(default: direct)" in sub.stdout and "(default: 600)" in sub.stdout
    assert "(default: None)" not in sub.stdout
    # the whole docstring, not its first line
    assert "the exit code says which" in " ".join(sub.stdout.split())


def test_a_usage_error_exits_2():
    assert podmigrate("migrate").returncode == 2
    assert podmigrate("migrate", "default/x", "--transfer", "pigeon").returncode == 2


def test_no_api_server_is_a_failure_before_anything_changed_not_a_rollback(nowhere):
    res = podmigrate("migrate", "default/counter", "-i", nowhere, "--timeout", "5", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    answer = json.loads(res.stdout)
    assert answer["result"] == "not started" and answer["exit_code"] == 1
    assert answer["message"].startswith("migration failed before it changed anything: "), answer["message"]
    text = podmigrate("migrate", "default/counter", "-i", nowhere, "--timeout", "5")
    assert text.returncode == 1
    assert "rolled back" not in text.stderr and "failed before it changed anything" in text.stderr


def test_a_bad_pod_name_is_refused_with_exit_3(nowhere):
    res = podmigrate("migrate", "Not/A Pod", "-i", nowhere, "--json")
    assert res.returncode == 3, res.stdout + res.stderr
    answer = json.loads(res.stdout)
    assert answer["result"] == "refused"
    assert answer["message"] == "refused, nothing changed: pod 'Not/A Pod' is not NAMESPACE/NAME"


@pytest.mark.parametrize(("report", "code"), [
    ({"result": "migrated"}, 0), ({"result": "already there"}, 0), ({"result": "not started"}, 1),
    ({"result": "refused"}, 3), ({"result": "rolled back"}, 4),
    ({"result": "rolled back", "cleanup_errors": ["remove files: ssh failed"]}, 5),
    ({"result": "migrated", "cleanup_errors": ["remove the one-time key: ssh failed"]}, 6),
    ({"result": "lost"}, 7),
    ({"result": "running"}, 1)])
def test_each_outcome_has_its_exit_code(report, code):
    assert podmigrate_cli.exit_code({"report": report})[0] == code


@pytest.mark.parametrize(("result", "code"), [
    ({"report": {"result": "drained", "counts": {"moved": 2, "lost": 0}}}, 0),
    ({"report": {"result": "not drained", "counts": {"left": 1}}}, 1),
    ({"msg": "refused, nothing changed: node 'x' not found", "report": {"result": "refused"}}, 3),
    # post-copy lost a pod: the node may be empty, but that is no success
    ({"report": {"result": "drained", "counts": {"moved": 1, "lost": 1}}}, 7),
    ({"msg": "drain of pm-w1 failed: ...", "report": {"result": "failed"}}, 1)])
def test_each_drain_outcome_has_its_exit_code(result, code):
    assert podmigrate_cli.drain_exit_code(result) == code


def write_report(directory, migration_id, result, phases, **extra):
    runner = Runner(migration_id, {"id": migration_id, "pod": "default/counter", "phases": phases,
                                   "result": result, **extra}, report_dir=str(directory))
    runner.write_report()


def test_reports_lists_past_migrations_and_shows_one(tmp_path):
    reports = tmp_path / "reports"
    write_report(reports, "20261202100000-aaaaaa", "migrated", {"validate": 0.2, "checkpoint": 1.5, "commit": 0.3},
                 source="pm-w1", target="pm-w2", frozen_seconds=2.25, total_seconds=7.5, checkpoint_bytes=2**30,
                 sent_bytes=2**29, summary="default/counter pm-w1 -> pm-w2: migrated in 7.50 s")
    write_report(reports, "20261202110000-bbbbbb", "refused", {}, error="refused",
                 problems=["node pm-w9 not found"])
    env = dict(FRESH, PODMIGRATE_STATE_DIR=str(tmp_path))
    listed = podmigrate("reports", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "POD", "NODES", "RESULT", "DOWNTIME", "TOTAL"]
    assert lines[1].split() == ["20261202100000-aaaaaa", "default/counter", "pm-w1", "->", "pm-w2", "migrated",
                                "2.25", "s", "7.50", "s"]
    assert lines[2].split()[0] == "20261202110000-bbbbbb" and "refused" in lines[2]
    shown = podmigrate("reports", "20261202100000", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "checkpoint       1.50 s" in shown.stdout and "checkpoint 1024.0 MiB, sent 512.0 MiB" in shown.stdout
    last = podmigrate("reports", "last", "--json", env=env)
    assert json.loads(last.stdout)["problems"] == ["node pm-w9 not found"]
    assert len(json.loads(podmigrate("reports", "--json", env=env).stdout)) == 2
    # ambiguous or unknown: says so, exit 2
    assert podmigrate("reports", "2026", env=env).returncode == 2
    assert "no migration(s) match 'zzz'" in podmigrate("reports", "zzz", env=env).stderr


def test_env_gives_a_fresh_shell_the_projects_tools_and_the_clusters_kubeconfig(tmp_path):
    env = dict(FRESH, PODMIGRATE_STATE_DIR=str(tmp_path))

    def built():
        return sorted((ROOT / ".podmigrate/cache/artifacts").glob("kubernetes-v*/bin/kubectl"))

    before = built()  # the artifacts may be built meanwhile (make test builds them beside this)
    res = subprocess.run(["bash", "-c", 'eval "$(scripts/podmigrate env)"; command -v ansible-playbook podmigrate; '
                          'echo "KUBECONFIG=$KUBECONFIG"; echo "$PATH"'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    after = built()
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == str(ROOT / ".venv" / "bin" / "ansible-playbook")
    assert lines[1] == str(ROOT / "scripts" / "podmigrate")
    assert lines[2] == f"KUBECONFIG={tmp_path}/kubeconfig"
    # the built kubectl's directory first on PATH when there is one (the README walk uses it
    # against a cluster); a kubectl of the machine's own may be on PATH after it
    given = [d for d in lines[3].split(":") if "/.podmigrate/cache/artifacts/" in d]
    if before:
        assert given == [str(after[-1].parent)]
    elif not after:
        assert given == [] and "no kubectl built yet" in res.stderr
    else:  # built while it ran: either answer is right
        assert given in ([], [str(after[-1].parent)])


def events_file(tmp_path, events):
    path = tmp_path / "progress"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


EVENTS = [{"id": "m1", "line": "checkpoint ..."},
          {"id": "m1", "phase": "checkpoint", "bytes": 256 * 2**20, "total": 1024 * 2**20, "seconds": 2.0},
          {"id": "m1", "phase": "checkpoint", "bytes": 512 * 2**20, "total": 1024 * 2**20, "seconds": 4.0},
          {"id": "m1", "line": "checkpoint: 6.10 s"}]


def test_progress_on_a_terminal_is_a_bar_redrawn_in_place(tmp_path):
    out = io.StringIO()
    follower = progress.Follower(str(events_file(tmp_path, EVENTS)), out, terminal=True).start()
    follower.finish()
    shown = out.getvalue()
    assert shown.startswith("[m1] checkpoint ...\n")
    assert "\r\033[K[#######.......................] checkpoint: 256.0 MiB of ~1024.0 MiB (25%), 128.0 MiB/s, " \
           "~6 s left" in shown
    assert "\r\033[K[###############...............] checkpoint: 512.0 MiB of ~1024.0 MiB (50%)" in shown
    assert shown.endswith("\n[m1] checkpoint: 6.10 s\n")


def test_progress_elsewhere_is_plain_lines_a_byte_line_every_few_seconds(tmp_path):
    out = io.StringIO()
    follower = progress.Follower(str(events_file(tmp_path, EVENTS)), out, terminal=False, every=60).start()
    follower.finish()
    assert out.getvalue().splitlines() == [
        "[m1] checkpoint ...",
        "[m1] checkpoint: 256.0 MiB of ~1024.0 MiB (25%), 128.0 MiB/s, ~6 s left",  # the next comes 60 s on
        "[m1] checkpoint: 6.10 s"]


def test_progress_follows_a_file_as_it_is_written(tmp_path):
    path = tmp_path / "progress"
    path.write_text("")
    out = io.StringIO()
    follower = progress.Follower(str(path), out, terminal=False).start()
    with path.open("a") as f:
        f.write('{"id": "m2", "line": "validate ..."}\n{"id": "m2", "li')  # half a line, then the rest
        f.flush()
        time.sleep(0.3)
        f.write('ne": "validate: 0.20 s"}\n')
    time.sleep(0.3)
    follower.finish()
    assert out.getvalue().splitlines() == ["[m2] validate ...", "[m2] validate: 0.20 s"]


def test_byte_watch_tells_what_a_phase_has_moved_while_it_runs(tmp_path):
    grown = tmp_path / "payload"
    told = []
    stop = threading.Event()

    def write():
        with grown.open("wb") as f:
            while not stop.is_set():
                f.write(os.urandom(64 * 1024))
                f.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    with progress.ByteWatch(told.append, "transfer", lambda: grown.stat().st_size, 10**9, interval=0.2):
        time.sleep(1.1)
    stop.set()
    writer.join()
    assert len(told) >= 3, told
    sizes = [t["bytes"] for t in told]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert all(t["phase"] == "transfer" and t["total"] == 10**9 for t in told)
    assert [t["seconds"] for t in told] == sorted(t["seconds"] for t in told)
    count = len(told)
    time.sleep(0.5)
    assert len(told) == count  # nothing after the phase


def test_byte_watch_tells_nothing_of_a_phase_shorter_than_its_interval():
    told = []
    with progress.ByteWatch(told.append, "checkpoint", lambda: 1, 10, interval=1.0):
        time.sleep(0.1)
    assert told == []


# ------------------------------------------------------------------ kubectl migrate (the plugin)
def kubectl_migrate(*argv, env=None, timeout=300):
    return subprocess.run([str(ROOT / "scripts" / "kubectl-migrate"), *argv], cwd=ROOT, env=env or FRESH,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_kubectl_plugin_has_kubectls_conventions_and_podmigrates_help():
    top = kubectl_migrate("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage: kubectl migrate")
    for word in ("pod", "drain", "recover", "reports"):
        assert word in top.stdout
    sub = kubectl_migrate("pod", "--help")
    for option in ("-n NAMESPACE", "--kubeconfig", "--context", "-o {text,json}", "--to NODE", "(default: 600)"):
        assert option in sub.stdout, option
    assert kubectl_migrate("pod").returncode == 2
    assert kubectl_migrate("pod", "counter", "-o", "yaml").returncode == 2
    sub = kubectl_migrate("drain", "--help")
    for option in ("--kubeconfig", "--context", "-o {text,json}", "--migrate-only", "--force", "(default: 2)",
                   "--copy {eager,lazy}"):
        assert option in sub.stdout, option
    assert "--to" not in sub.stdout and "-n NAMESPACE" not in sub.stdout
    assert kubectl_migrate("drain").returncode == 2


def test_a_drain_without_an_api_server_fails_before_anything_changed(nowhere):
    res = podmigrate("drain", "pm-w1", "-i", nowhere, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    answer = json.loads(res.stdout)
    assert answer["exit_code"] == 1 and answer["message"].startswith("drain of pm-w1 failed: "), answer


def test_the_kubectl_plugin_takes_the_namespace_from_the_context_and_the_kubeconfig_it_is_given(tmp_path, nowhere):
    kubeconfig = tmp_path / "team.kubeconfig"
    kubeconfig.write_text(NOWHERE_KUBECONFIG.replace(
        "contexts: [{name: none, context: {cluster: none, user: none}}]",
        "contexts: [{name: none, context: {cluster: none, user: none}},\n"
        "           {name: team, context: {cluster: none, user: none, namespace: team-a}}]"))
    # a name that is no pod's shows the namespace it was looked for in, before anything is asked of the cluster
    for context, namespace in ((["--context", "team"], "team-a"), ([], "default")):
        res = kubectl_migrate("pod", "Not A Pod", "--kubeconfig", str(kubeconfig), *context, "-i", nowhere,
                              "-o", "json")
        assert res.returncode == 3, res.stdout + res.stderr
        assert json.loads(res.stdout)["message"] == \
            f"refused, nothing changed: pod '{namespace}/Not A Pod' is not NAMESPACE/NAME"
    # -n wins; the engine is given that kubeconfig and that context (one the file lacks: it says so)
    res = kubectl_migrate("pod", "counter", "-n", "team-b", "--kubeconfig", str(kubeconfig), "--context", "absent",
                          "-i", nowhere, "-o", "json")
    assert res.returncode == 1, res.stdout + res.stderr
    answer = json.loads(res.stdout)
    assert answer["result"] == "not started" and "absent" in answer["message"], answer["message"]
