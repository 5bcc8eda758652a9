"""The journal of a migration (runner.py): each change written down before it is made,
the commit point, and what a failed cleanup leaves for podmigrate recover."""

from __future__ import annotations

import datetime
import json

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import lock
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.runner import Runner


class Job(Runner):
    """A runner whose journal goes to a list (as the engine's goes to the pod's Lease) and
    whose steps are carried out into another."""

    def __init__(self, fail_journal=False, fail_undo=()):
        super().__init__("20261204000000-abcdef", {"phases": {}})
        self.written, self.done = [], []
        self.fail_journal, self.fail_undo = fail_journal, fail_undo

    def journal_changed(self):
        if self.fail_journal:
            raise RuntimeError("the API server is away")
        self.written.append(json.loads(json.dumps(self.journal())))

    def undo_step(self, record):
        if record["do"] in self.fail_undo:
            raise RuntimeError(f"{record['do']} failed")
        self.done.append(record["do"])


def test_each_step_is_in_the_journal_before_its_change_is_made():
    job = Job()
    job.always_do("remove files on w1", "files", node="w1")
    job.rollback_do("thaw the source", "thaw", node="w1", uid="u")
    assert job.written[0] == {"committed": False, "steps": [
        {"what": "remove files on w1", "rollback_only": False, "do": "files", "node": "w1"}]}
    assert job.written[1]["steps"][1] == {"what": "thaw the source", "rollback_only": True, "do": "thaw",
                                          "node": "w1", "uid": "u"}
    assert job.changed


def test_a_step_whose_journal_write_fails_is_never_made():
    job = Job(fail_journal=True)
    with pytest.raises(RuntimeError):
        job.always_do("remove files on w1", "files", node="w1")
    assert job.written == []


def test_the_commit_point_is_a_journal_write_that_drops_the_rollback_steps():
    job = Job()
    job.always_do("lift the fence", "fence", node="w1")
    job.rollback_do("delete the restored pod", "restored", node="w2", name="p-1")
    job.pass_commit_point()
    assert job.written[-1] == {"committed": True, "steps": [
        {"what": "lift the fence", "rollback_only": False, "do": "fence", "node": "w1"}]}
    job.cleanup()
    assert job.done == ["fence"] and job.journal()["steps"] == []


def test_a_commit_point_not_written_is_not_passed():
    job = Job()
    job.rollback_do("delete the restored pod", "restored", node="w2", name="p-1")
    job.fail_journal = True
    with pytest.raises(RuntimeError):
        job.pass_commit_point()
    assert not job.committed
    job.cleanup()  # the rollback still undoes the restored pod
    assert job.done == ["restored"]


def test_a_rollback_undoes_the_newest_first_and_keeps_what_it_could_not_undo():
    job = Job(fail_undo=("key",))
    job.always_do("remove files on w1", "files", node="w1")
    job.always_do("remove the one-time key", "key", node="w2")
    job.rollback_do("thaw the source", "thaw", node="w1", uid="u")
    job.rollback_do("delete the restored pod", "restored", node="w2", name="p-1")
    job.cleanup()
    # the restored pod goes before the source is thawed: never two live copies
    assert job.done == ["restored", "thaw", "files"]
    assert [s["do"] for s in job.journal()["steps"]] == ["key"]
    assert job.report["cleanup_errors"] == ["remove the one-time key: key failed"]


def test_a_lease_gives_its_journal_and_lapses_only_after_its_duration():
    renewed = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    journal = {"committed": False, "steps": [{"do": "files", "node": "w1"}], "context": {"id": "x"}}
    lease = {"metadata": {"name": "podmigrate-counter", "annotations": {lock.JOURNAL: json.dumps(journal)}},
             "spec": {"renewTime": renewed.isoformat(), "leaseDurationSeconds": lock.LEASE_SECONDS}}
    assert lock.journal_of(lease) == journal
    assert lock.journal_of({"metadata": {}}) is None
    assert not lock.expired(lease, renewed + datetime.timedelta(seconds=lock.LEASE_SECONDS - 1))
    assert lock.expired(lease, renewed + datetime.timedelta(seconds=lock.LEASE_SECONDS + 1))
    # the heartbeat renews it well within its duration
    assert lock.RENEW_SECONDS * 3 <= lock.SHORTEST_LEASE <= lock.LEASE_SECONDS


def test_a_rollback_step_that_fails_keeps_the_older_ones_undone():
    """The restored pod could not be deleted: the source must not be thawed (two live
    copies); both stay in the journal, and what is always undone is still undone."""
    job = Job(fail_undo=("restored",))
    job.always_do("remove files on w1", "files", node="w1")
    job.rollback_do("thaw the source", "thaw", node="w1", uid="u")
    job.rollback_do("delete the restored pod", "restored", node="w2", name="p-1")
    job.always_do("lift the fence", "fence", node="w1")
    job.cleanup()
    assert job.done == ["fence", "files"]
    assert [s["do"] for s in job.journal()["steps"]] == ["thaw", "restored"]
    assert job.report["cleanup_errors"] == ["delete the restored pod: restored failed",
                                            "thaw the source: not done, as delete the restored pod failed"]
