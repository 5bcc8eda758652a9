# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options of every module that runs the migration engine (migrate, drain)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  transfer:
    description: How checkpoints travel from the source node to the target.
    type: str
    choices: [direct, share]
    default: direct
  share:
    description:
      - For C(transfer=share), what the checkpoints go through.
      - C(dir) is I(share_dir), a directory every node mounts.
      - C(smb) is the SMB share (Azure Files, Samba) each node's helper reaches with the
        smbprotocol library, as configured on the node by the migration_node role
        (C(migration_node_smb_server)). The source uploads each archive and reads it back
        from the share; the target takes it only when it is there whole, with the size and
        sha256 sent, and checks both again after its download, before any restore starts.
        Both nodes are checked to reach the share before anything changes.
    type: str
    choices: [dir, smb]
    default: dir
  copy:
    description:
      - When the memory pages go to the target. C(eager), before the restore (the pod is
        frozen until they are all there).
      - C(lazy), post-copy, with C(transfer=direct) only. The pod is restored before its
        memory has arrived; the target's CRIU fetches each page from the frozen source as the
        restored processes touch it, and the rest in the background; the source is ended
        once the last page has been served. The downtime no longer grows with the pod's
        memory, but if the source node or the link between the nodes fails before the last
        page, the pod is lost (neither copy is whole). Refused, before anything changes, for
        a pod that keeps its name (a StatefulSet's) and where the source's CRIU cannot serve
        pages lazily (C(fs.pipe-max-size) under 4 MiB without CAP_SYS_RESOURCE).
    type: str
    choices: [eager, lazy]
    default: eager
  share_dir:
    description: For C(transfer=share) and C(share=dir), the directory every node mounts.
    type: str
    default: /var/lib/podmigrate/share
  nodes:
    description:
      - How to reach each node over SSH, by Kubernetes node name (C(host), C(user), C(port),
        C(key), C(ssh_args)), and whether to become root there (C(become), C(become_method),
        C(become_user)); the engine's node commands then run through C(sudo -n). A node
        reached as another user than root without become, or with a become method other than
        sudo, is refused before anything changes.
      - Default, every host of the inventory's C(control_plane) and C(workers) groups (by its
        C(kubernetes_node_name), else its name), reached exactly as Ansible reaches it; the
        module's action resolves each through Ansible's own ssh connection and become plugins
        (the inventory's variables and their aliases, C(ansible.cfg), the environment). A host
        Ansible reaches otherwise than by ssh, or with a password, is refused.
    type: dict
  kubeconfig:
    description: Kubeconfig of the cluster.
    type: path
    required: true
  context:
    description: Context of the kubeconfig to use (default its current context).
    type: str
  helper:
    description:
      - The directory of the node helper's sources (C(podmigrate_node/) and
        C(podmigrate_runtime.py), roles/migration_node/files); a node whose helper is not the
        one built from them is refused.
    type: path
  report_dir:
    description: Directory of the JSON reports.
    type: path
  progress_file:
    description:
      - File the engine appends its progress to while it runs, one JSON object per line
        (C(module_utils/migration/progress.py)); default the file named by the environment
        variable C(PODMIGRATE_PROGRESS_FILE), which the C(podmigrate.cluster.progress)
        callback sets to show the progress in the playbook's output.
    type: path
  timeout:
    description: Seconds allowed to each of checkpoint, transfer and restore.
    type: int
    default: 600
  node_deadline:
    description:
      - Seconds after the controller's last word (its lock's heartbeat, every few seconds)
        when the source node settles the migration by itself, should no controller ever come
        back (C(podmigrate-node watch); C(docs/migration.md)).
    type: int
    default: 120
  lock_seconds:
    description:
      - Seconds the pod's lock (its Lease) holds after its controller's last renewal (every
        5 s). Should the controller die, C(podmigrate recover) or the pod's next migration can
        take the migration over this long after. At least 15.
    type: int
    default: 30
  keep_address:
    description:
      - The restored pod keeps the source pod's IP address (podmigrate's CNI plugin, chained
        by the cluster_network role; C(docs/migration.md)). Where it cannot be kept (another
        pod network, a pod not in a node's IPv4 range) the restored pod gets a new address,
        said before anything changes. False gives it a new address anyway.
    type: bool
    default: true
"""
