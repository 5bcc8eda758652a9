"""Network guard for the Azure tests, loaded by every Python process they start (PYTHONPATH).

A Python audit hook sees every socket connect and name lookup of the process. Anything
not on the loopback is refused before a packet leaves and written to the file named by
PODMIGRATE_NETGUARD_LOG; each guarded process also writes one "armed" line, so the tests
can prove the guard was in place in the processes that ran the modules.
"""

import os
import sys

_LOG = os.environ.get("PODMIGRATE_NETGUARD_LOG")
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "", None}


def _write(line: str) -> None:
    with open(_LOG, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def _hook(event: str, args: tuple) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[0] not in _LOOPBACK:
            _write(f"blocked {os.getpid()} connect {address!r}")
            raise PermissionError(f"netguard: no connection to {address!r} outside 127.0.0.1")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host not in _LOOPBACK:
            _write(f"blocked {os.getpid()} getaddrinfo {host!r}")
            raise PermissionError(f"netguard: no name lookup of {host!r}")


if _LOG:
    sys.addaudithook(_hook)
    _write(f"armed {os.getpid()} {' '.join(sys.argv[:1])}")
