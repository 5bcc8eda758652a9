# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A loopback TCP forwarder, for the benchmark's registry recipe.

  python3 - PORT HOST:PORT < tcp_forward.py

Listens on 127.0.0.1:PORT and forwards each connection to HOST:PORT. containerd 2.1's
restore pulls a checkpoint's base image through its default resolver, which speaks plain
HTTP only to a loopback registry: `scripts/bench` runs this on the nodes so that the
bench's registry (on the nodes' bridge) is one. Standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(port, target):
    host, _, target_port = target.rpartition(":")
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, int(target_port)))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
