"""The migrate module run as Ansible runs it (its arguments in a file), where it fails before
a migration could change anything: it must say so, not that it rolled back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import COLLECTIONS, NOWHERE_KUBECONFIG


def run_module(tmp_path, **args):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"pod": "default/counter", "nodes": {}, **args}}))
    res = subprocess.run([sys.executable, "-m", "ansible_collections.podmigrate.cluster.plugins.modules.migrate",
                          str(path)], cwd=COLLECTIONS, capture_output=True, text=True, timeout=120, check=False)
    return json.loads(res.stdout)


@pytest.mark.parametrize("why", ["no kubeconfig", "no API server"])
def test_a_migration_that_fails_before_any_change_says_nothing_changed(tmp_path, why):
    kubeconfig = tmp_path / "kubeconfig"
    if why == "no API server":  # port 9 on loopback: nothing listens
        kubeconfig.write_text(NOWHERE_KUBECONFIG)
    answer = run_module(tmp_path, kubeconfig=str(kubeconfig), target="pm-w2", timeout=5)
    assert answer["failed"]
    assert answer["msg"].startswith("migration failed before it changed anything: "), answer["msg"]
    assert "rolled back" not in answer["msg"]
    if why == "no API server":
        assert answer["report"]["result"] == "not started"


def test_an_api_server_that_stops_answering_is_given_up_naming_the_call(tmp_path):
    """A call to an API server that accepts the connection and never answers is given up
    after its bound (tried twice, each half of it; the client alone would try four times),
    with an error that names what was waited for."""
    import contextlib
    import socket
    import threading

    from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import engine
    from kubernetes import client, config

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(NOWHERE_KUBECONFIG.replace("https://127.0.0.1:9", f"http://127.0.0.1:{silent.getsockname()[1]}"))
    try:
        api = engine.bounded(config.new_client_from_config(str(kubeconfig)), seconds=1)
        raised = []

        def call():
            try:
                client.CoreV1Api(api).read_namespaced_pod("counter-x", "default")
            except engine.ApiUnreachable as exc:
                raised.append(exc)

        # given up after two tries (counted below), not timed: a loaded machine is slower; the
        # thread only keeps an unbounded call from hanging the test
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(60)
        assert not caller.is_alive(), "the call was never given up"
        (gone,) = raised
        assert str(gone).startswith(
            "the API server did not answer GET /api/v1/namespaces/default/pods/counter-x within 1 s"), gone
        silent.settimeout(0.5)
        tries = 0
        with contextlib.suppress(TimeoutError):
            while True:
                silent.accept()[0].close()
                tries += 1
        assert tries == 2
    finally:
        silent.close()


@pytest.mark.parametrize(("spec", "expected"), [
    ({"user": "azureuser"}, "node w1: reached as azureuser without become, and the engine's commands on a node need "
                            "root (set ansible_become for it, with passwordless sudo, as the Azure inventory does)"),
    ({"user": "azureuser", "become": True, "become_method": "su"},
     "node w1: become method su is not one the engine uses (sudo, with no password)"),
])
def test_a_node_the_engine_could_not_act_on_as_root_is_refused_before_anything(tmp_path, spec, expected):
    answer = run_module(tmp_path, kubeconfig=str(tmp_path / "none"), target="w2",
                        nodes={"w1": {"host": "10.213.0.9", **spec}, "w2": {"host": "10.213.0.10"}})
    assert answer["failed"]
    assert answer["msg"] == f"refused, nothing changed: {expected}"


def test_a_node_reached_through_sudo_runs_the_command_as_root_through_sudo_n():
    """The command line the engine gives ssh: the node's login shell runs its last argument,
    which hands the whole command, quoting and all, to sudo -n as one `sh -c` argument."""
    import shlex

    from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import remote

    command = "printf '%s\\n' \"it's one\" | grep -c 'it' && echo \"$HOME\""
    plain = remote.Node("w1", "10.213.0.9").argv(command)
    assert plain[-2:] == ["root@10.213.0.9", command]
    sudo = remote.Node("w1", "10.213.0.9", user="azureuser", become=True).argv(command)
    assert sudo[-2] == "azureuser@10.213.0.9"
    # what the login shell hands to sudo is the original command, unchanged
    assert shlex.split(sudo[-1]) == ["sudo", "-n", "-u", "root", "--", "sh", "-c", command]
    ran = subprocess.run(["sh", "-c", sudo[-1].replace("sudo -n -u root -- ", "")], capture_output=True, text=True,
                         check=False, env={"HOME": "/home-of-root", "PATH": "/usr/bin:/bin"})
    assert ran.stdout.splitlines() == ["1", "/home-of-root"]
