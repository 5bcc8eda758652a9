# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pod migration, as the ``migrate`` module and ``scripts/podmigrate`` run it.

  plan.py       every refusal before anything changes, and where the pod goes (pure)
  preflight.py  what CRIU cannot dump in the pod's processes (pure)
  manifest.py   the pod that replaces the source on the target, and when it is restored (pure)
  lock.py       one migration per pod: the pod's Lease, taken, renewed, released
  remote.py     the nodes, over SSH as Ansible reaches them, and their helper
  transfer.py   one class per transfer (direct, a directory share, an SMB share), one interface
  runner.py     the phase runner: timings, the undo stack and its commit point
  engine.py     the upstream profile's phases, validate to commit
  seedfork.py   the seed-fork profile's (the tutorial's clonePod)

docs/migration.md describes the phases; the node side is roles/migration_node/files.
"""
