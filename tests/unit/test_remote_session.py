"""The engine's session with a node helper (remote.Session: the dump session is one), run for
real here with a local shell in place of SSH to a node."""

from __future__ import annotations

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.remote import NodeError, Session


class Here:
    name = "here"

    def argv(self, command):
        return ["sh", "-c", command]


def test_two_answers_that_arrive_together_are_both_answered():
    # one write of two lines, as a helper's two reports (the dump's and the send's) may reach
    # a loaded controller: once the first is read, the second must not be waited for again
    # (a CI run waited 600 s for it and rolled back)
    session = Session(Here(), """printf '{"dumped": 1}\\n{"sent": 2}\\n'; cat >/dev/null""")
    try:
        assert session.answer(30) == {"dumped": 1}
        assert session.answer(5) == {"sent": 2}
    finally:
        session.close()


def test_a_helper_that_ends_instead_of_answering_says_why():
    session = Session(Here(), """printf '{"ready": true}\\n'; echo 'no room left' >&2; exit 3""")
    try:
        assert session.answer(30) == {"ready": True}
        with pytest.raises(NodeError, match=r"failed \(3\): no room left"):
            session.answer(30)
    finally:
        session.close()
