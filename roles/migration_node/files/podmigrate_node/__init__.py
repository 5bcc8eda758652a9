# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""podmigrate's helper on every node (installed by the migration_node role).

The migration engine runs it over SSH; it needs only Python's standard library, zstd,
ssh, tar, iptables, ip, runc and ctr. It is installed as one file, a Python zip archive of
this package, podmigrate_runtime.py and podmigrate_cni.py (module_utils/nodehelper.py
builds it; its sha256 is its version). Beside it lie podmigrate_runtime.py, the runtime of the ``podmigrate``
RuntimeClass that restores a pod's containers on the target node, and podmigrate_cni.py,
the CNI plugin that gives a restored pod its kept IP address.

  version                         sha256 of the helper's archive (the engine refuses a stale
                                  helper, or a runtime beside it that is not its own)
  images-present IMAGE...         which of these image references this node's containerd
                                  lacks (as containerd names them: docker.io/library/...)
  preflight POD-UID               what each process of the pod holds that matters to CRIU: its
                                  sockets (family, type, protocol), anonymous inodes and
                                  character devices (open or mapped); the engine judges them
  memory POD-UID                  the anonymous memory of the pod's processes (post-copy's
                                  progress: a lazily restored page counts once it is there)
  thaw POD-UID                    thaw every container of the pod (a rollback)
  dump POD-UID ID [--volume V]... [--to HOST --key K --known-hosts F --port NAME=P...] [--lazy]
                                  a session with the engine (JSON lines): the pod's
                                  containers found and, with --port, one page tunnel per
                                  container opened to HOST's page server on port P, all
                                  before the freeze ("ready"); on "freeze" every container
                                  frozen at once (its freezer cgroup); then each one's
                                  processes dumped by runc checkpoint (CRIU, left frozen),
                                  its writable-layer changes and the emptyDir volumes V, into
                                  the migration's payload directory (root only); with --port
                                  the memory pages go to HOST as they are dumped (else they
                                  stay here too); the rest goes right after, with --send;
                                  with --lazy (post-copy) the pages are not dumped: each
                                  container's CRIU serves them from here, through a tunnel
                                  from HOST's loopback port P, until the target's restore
                                  has them all (the session's last line, "served")
  page-server ID NAME PORT        (forced command) CRIU's page server for one container
  lazy-tunnel ID NAME PORT        (forced command) holds the session that forwards PORT here
                                  to the source's lazy page server for one container
  pack ID                         the payload as one tar file (for the share transfer)
  unpack ID --sha256 X            payload.tar, sha256 checked, back into the payload directory
  kill POD-UID [--wait S]         after the commit: once the kubelet has signalled the frozen
                                  containers (their deletion began), SIGKILL every process,
                                  then thaw: none runs another instruction
  settle ID [--wait S] [--grace G]
                                  end the migration's helper processes on this node (and what
                                  they started): after G seconds SIGKILLed, but for a dump
                                  under way (runc checkpoint), waited for up to S seconds;
                                  the end of every migration and a recovery's first step
  restored ID POD-UID             which of the pod's containers the runtime restored
  restored ID POD-UID --claim     the same, and when all are, the verdict "restored" written
  end-restored ID [--wait S]      a rollback on the target: the migration abandoned (its
                                  runtime restores nothing more), then every container it
                                  restored killed, waited for until stopped (runc alone);
                                  refused when the verdict is "restored"
  verdict ID                      (target; also the key's forced command) which copy lives,
                                  decided once: "restored" when every container runs
                                  restored, else "abandoned" (as end-restored) (verdict.py)
  extend ID [--seconds S]         (source) the controller lives: the watcher's deadline S on
  forget ID                       the migration's files here removed, under the lock extend
                                  and the watcher take to write there
  watch ID POD-UID NS NAME        (source, a transient service) past its deadline with no
                                  controller, settle the pod as the target's verdict says:
                                  thaw it, or delete it as this node and kill it (watch.py)
  receive ID NAME                 (the forced command of a migration's one-time SSH key)
                                  unpack stdin into the migration's directory NAME
  fence IP ID / unfence ID        refuse new connections forwarded to a pod IP
  address IP [--route local|home|NODE-IP] [--hold] [--release]
                                  a migrated pod's kept address (address.py): where this node
                                  routes it (and records so, for podmigrate's CNI plugin);
                                  host-local's reservation of it on the node of its range
                                  held for the pod, or released (no pod holds it any more)
  addresses                       what this node routes and holds of kept addresses (JSON)
  smb-check                       reach the SMB share of /etc/podmigrate/smb.json (nothing written)
  smb-put FILE NAME               upload FILE to NAME.part on the share, read it back from the
                                  share (size, sha256), then rename it to NAME; prints both
  smb-get NAME DEST --sha256 X --size N
                                  refuse unless NAME (never a .part) is on the share with that
                                  size; download it to DEST, sha256 checked before DEST exists
  smb-rm NAME                     remove NAME (a file or a directory tree) from the share

The smb-* commands use the smbprotocol library (a pure Python SMB 2/3 client, the wheel
the migration_node role puts in /usr/local/lib/podmigrate/python), imported only by them.
"""
