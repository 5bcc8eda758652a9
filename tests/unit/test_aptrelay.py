"""The package relay, over real HTTP on loopback: an upstream server, the relay, a client."""

from __future__ import annotations

import hashlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.podmigrate.cluster.plugins.module_utils import aptrelay

BLOB = bytes(range(256)) * 4096  # 1 MiB


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/debian/pool/blob":
            body = BLOB
        elif self.path == "/debian/dists/sid/InRelease?x=1":
            body = b"release"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", "abc")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def relay():
    upstream = serve(ThreadingHTTPServer(("127.0.0.1", 0), Upstream))
    relay = serve(aptrelay.RelayServer(("127.0.0.1", 0), aptrelay.make_handler({"127.0.0.1"})))
    yield f"127.0.0.1:{upstream.server_port}", relay.server_port
    for s in (upstream, relay):
        s.shutdown()
        s.server_close()


def through(relay_port, method, url):
    conn = http.client.HTTPConnection("127.0.0.1", relay_port, timeout=10)
    conn.request(method, url)
    resp = conn.getresponse()
    return resp, resp.read(), conn


def test_relays_get_byte_for_byte_and_keeps_the_connection(relay):
    upstream, port = relay
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    expected = {"/debian/pool/blob": BLOB, "/debian/dists/sid/InRelease?x=1": b"release"}
    for path, want in expected.items():  # both requests on one client connection
        conn.request("GET", f"http://{upstream}{path}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert resp.getheader("ETag") == "abc"
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(want).hexdigest()


def test_relays_upstream_errors_and_head(relay):
    upstream, port = relay
    resp, body, _ = through(port, "GET", f"http://{upstream}/debian/missing")
    assert resp.status == 404
    resp, body, _ = through(port, "HEAD", f"http://{upstream}/debian/pool/blob")
    assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == str(len(BLOB))


@pytest.mark.parametrize(("method", "url", "why"), [
    ("GET", "http://mirror.invalid/debian/pool/blob", "is not one the relay serves"),
    ("GET", "https://127.0.0.1/x", "only http://"),
    ("POST", "http://127.0.0.1/x", "not relayed"),
    ("CONNECT", "127.0.0.1:443", "not relayed"),
])
def test_refuses_other_hosts_schemes_and_methods_without_contacting_them(relay, method, url, why):
    _, port = relay
    resp, body, _ = through(port, method, url)
    assert resp.status == 403
    assert why in body.decode()


def test_upstream_target_parses_absolute_urls():
    assert aptrelay.upstream_target("http://m.example:8080/debian/x?y=1", {"m.example"}) == (
        "m.example", 8080, "/debian/x?y=1")
    with pytest.raises(ValueError, match="not one the relay serves"):
        aptrelay.upstream_target("http://evil.example/", {"m.example"})
