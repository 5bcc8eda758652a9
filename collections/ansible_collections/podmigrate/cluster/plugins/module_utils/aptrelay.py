# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A package relay for local nodes: an HTTP proxy that forwards GET/HEAD to allowed hosts only.

Local nodes have no route beyond their bridge, yet the node roles install packages
with apt exactly as they do on a VM. The local provider runs this relay on the host's
bridge address and points the nodes' apt at it (``Acquire::http::Proxy``). It forwards
only plain-HTTP GET and HEAD requests, only to the hosts it is told (the Debian archive
the host's apt uses), and refuses everything else.

With ``--cache-dir`` it keeps the package files it relays (``.deb`` files under a
``/pool/`` directory, which an archive never changes: a new version is a new name) and
serves them from there the next time, so every node of every local cluster does not fetch
them again. A file is kept only once it arrived whole (its Content-Length), written to a
temporary name and renamed; indexes (Release, InRelease, Packages) and requests for a
part of a file (Range) always go upstream. Serving a kept file is as safe as serving it
from the archive: apt checks every package against the sha256 in the signed indexes.

Run: ``python3 aptrelay.py --bind 10.213.0.1 --port 3142 --allow HOST [--allow HOST] [--cache-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
              "te", "trailer", "transfer-encoding", "upgrade"}
CHUNK = 256 * 1024


def upstream_target(url, allowed):
    """(host, port, path) to fetch for a proxy request line's URL, or raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are relayed, not {url!r}")
    if parts.hostname not in allowed:
        raise ValueError(f"host {parts.hostname!r} is not one the relay serves")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def cache_path(cache_dir, host, port, path):
    """Where the relay keeps the file at ``path`` of ``host:port``, or None when it is not one
    it keeps (not a package, a query, or a name that could leave the cache directory)."""
    if not cache_dir or "?" in path or "/pool/" not in path or not path.endswith(".deb"):
        return None
    parts = path.split("/")[1:]
    if not re.fullmatch(r"[A-Za-z0-9.-]+", host) or any(p in ("", ".", "..") for p in parts):
        return None
    return os.path.join(cache_dir, f"{host}_{port}", *parts)


FETCH_WAIT = 120  # seconds a request waits for another's fetch of the same package


class Fetches:
    """The package files being fetched now, each with the Event its waiters wait on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = {}

    def begin(self, path):
        """None when the caller is to fetch ``path`` itself, else the Event of the fetch under way."""
        with self.lock:
            if path in self.running:
                return self.running[path]
            self.running[path] = threading.Event()
            return None

    def end(self, path):
        with self.lock:
            self.running.pop(path).set()


def make_handler(allowed, cache_dir=None):
    fetches = Fetches()

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "podmigrate-aptrelay"

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def refuse(self, code, why):
            body = (why + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.relay(send_body=True)

        def do_HEAD(self):
            self.relay(send_body=False)

        def relay(self, send_body):
            try:
                host, port, path = upstream_target(self.path, allowed)
            except ValueError as exc:
                self.refuse(403, str(exc))
                return
            kept = None if "Range" in self.headers else cache_path(cache_dir, host, port, path)
            if kept and send_body and not os.path.isfile(kept):
                # several nodes installing at once ask for the same files: one fetches, the
                # others wait for it to be kept (or for it to fail) and are served from there
                fetching = fetches.begin(kept)
                if fetching is not None:
                    fetching.wait(FETCH_WAIT)
                else:
                    try:
                        self.fetch(host, port, path, send_body, kept)
                    finally:
                        fetches.end(kept)
                    return
            if kept and os.path.isfile(kept):
                self.from_cache(kept, send_body)
                return
            self.fetch(host, port, path, send_body, kept)

        def fetch(self, host, port, path, send_body, kept):
            """Relayed from upstream (and kept, when ``kept`` names where)."""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(host, port, timeout=120)
            started = False
            keep = None  # the file being kept, while it arrives
            try:
                conn.request(self.command, path, headers=headers)
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                self.send_response(resp.status, resp.reason)
                started = True
                for key, value in resp.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                if not send_body or resp.status in (204, 304):
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                if length is None:  # unknown length: read it all, then send with a length
                    body = resp.read()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Content-Length", length)
                self.end_headers()
                keep = Keeper(kept) if kept and resp.status == 200 else None
                remaining = int(length)
                while remaining > 0:
                    chunk = resp.read(min(CHUNK, remaining))
                    if not chunk:
                        raise ConnectionError("upstream closed early")
                    remaining -= len(chunk)
                    if keep:
                        keep.write(chunk)
                        if remaining == 0:  # kept before the client has its last byte
                            keep.done(int(length))
                            keep = None
                    self.wfile.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                self.log_message("relay of %s failed: %s", self.path, exc)
                self.close_connection = True
                if not started:
                    with contextlib.suppress(OSError):
                        self.refuse(502, f"upstream error: {exc}")
            finally:
                if keep:
                    keep.drop()  # never kept in part
                conn.close()

        def from_cache(self, kept, send_body):
            with open(kept, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.debian.binary-package")
                self.send_header("Content-Length", str(size))
                self.send_header("X-Podmigrate-Relay", "cached")
                self.end_headers()
                if send_body:
                    while chunk := f.read(CHUNK):
                        self.wfile.write(chunk)

        def do_CONNECT(self):
            self.refuse(403, "CONNECT is not relayed")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT

    return Relay


class Keeper:
    """A file being kept: written under a temporary name beside its final one, renamed to it
    only when whole; two relays of one file at once each write their own and the last
    rename wins (the same bytes)."""

    def __init__(self, final):
        self.final = final
        os.makedirs(os.path.dirname(final), mode=0o755, exist_ok=True)
        fd, self.part = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".part-")
        self.file = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, chunk):
        self.file.write(chunk)
        self.size += len(chunk)

    def done(self, length):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.size != length:
            self.drop()
            return
        os.chmod(self.part, 0o644)
        os.replace(self.part, self.final)

    def drop(self):
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.part):
            os.remove(self.part)


class RelayServer(ThreadingHTTPServer):
    """A threading HTTP server for which a client hanging up is routine, not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=3142)
    parser.add_argument("--allow", action="append", required=True, help="upstream host to relay to")
    parser.add_argument("--cache-dir", help="keep the package files relayed here, and serve them from here")
    args = parser.parse_args(argv)
    server = RelayServer((args.bind, args.port), make_handler(set(args.allow), args.cache_dir))
    sys.stderr.write(f"relaying for {sorted(set(args.allow))} on {args.bind}:{args.port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
