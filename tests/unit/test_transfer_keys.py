"""The direct transfer's one-time keys in the target's authorized_keys, changed by several
migrations at once: the shell commands the engine runs on a node, run for real here."""

from __future__ import annotations

import subprocess

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration import transfer


def entry(i):
    return f'restrict,command="podmigrate-node forced" ssh-ed25519 AAAA{i:04d} podmigrate-m{i:04d}'


def test_keys_added_and_removed_by_migrations_at_once_are_none_of_them_lost(tmp_path):
    keys = tmp_path / "etc" / "authorized_keys"
    keys.parent.mkdir()
    keys.write_text("".join(entry(i) + "\n" for i in range(40)))
    keys.chmod(0o600)  # as the first migration's umask 077 made it
    # forty migrations at once: twenty end (their keys removed), twenty start (keys added)
    running = [subprocess.Popen(["sh", "-c", transfer.remove_key_command(str(keys), f"m{i:04d}")])
               for i in range(0, 40, 2)]
    running += [subprocess.Popen(["sh", "-c", transfer.add_key_command(str(keys))], stdin=subprocess.PIPE)
                for _ in range(20)]
    for n, proc in enumerate(running[20:]):
        proc.stdin.write((entry(100 + n) + "\n").encode())
        proc.stdin.close()
    assert [p.wait() for p in running] == [0] * 40
    left = sorted(keys.read_text().splitlines())
    assert left == sorted([entry(i) for i in range(1, 40, 2)] + [entry(100 + n) for n in range(20)])
    assert (keys.stat().st_mode & 0o077) == 0  # still root's alone
