# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A package relay for local nodes: an HTTP proxy that forwards GET/HEAD to allowed hosts only.

Local nodes have no route beyond their bridge, yet the node roles install packages
with apt exactly as they do on a VM. The local provider runs this relay on the host's
bridge address and points the nodes' apt at it (``Acquire::http::Proxy``). It forwards
only plain-HTTP GET and HEAD requests, only to the hosts it is told (the Debian archive
the host's apt uses), and refuses everything else.

Run: ``python3 aptrelay.py --bind 10.213.0.1 --port 3142 --allow HOST [--allow HOST]``
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import sys
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


def make_handler(allowed):
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
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(host, port, timeout=120)
            started = False
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
                remaining = int(length)
                while remaining > 0:
                    chunk = resp.read(min(CHUNK, remaining))
                    if not chunk:
                        raise ConnectionError("upstream closed early")
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            except (OSError, http.client.HTTPException) as exc:
                self.log_message("relay of %s failed: %s", self.path, exc)
                self.close_connection = True
                if not started:
                    with contextlib.suppress(OSError):
                        self.refuse(502, f"upstream error: {exc}")
            finally:
                conn.close()

        def do_CONNECT(self):
            self.refuse(403, "CONNECT is not relayed")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT

    return Relay


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
    args = parser.parse_args(argv)
    server = RelayServer((args.bind, args.port), make_handler(set(args.allow)))
    sys.stderr.write(f"relaying for {sorted(set(args.allow))} on {args.bind}:{args.port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
