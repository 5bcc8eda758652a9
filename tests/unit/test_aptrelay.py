"""The package relay, over real HTTP on loopback: an upstream server, the relay, a client."""

from __future__ import annotations

import hashlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

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


DEB = "/debian/pool/main/c/criu/criu_4.2-1_amd64.deb"
PACKAGE = bytes(range(255, -1, -1)) * 8192  # 2 MiB


class Archive(BaseHTTPRequestHandler):
    """An archive that counts what it is asked for, and one package it sends only half of."""

    protocol_version = "HTTP/1.1"
    asked: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).asked.append((self.command, self.path))
        if self.path in (DEB, "/debian/dists/sid/InRelease"):
            body = PACKAGE if self.path == DEB else b"release"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        elif self.path == "/debian/pool/main/h/half/half_1_amd64.deb":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PACKAGE)))
            self.end_headers()
            self.wfile.write(PACKAGE[: len(PACKAGE) // 2])
            self.close_connection = True
        else:
            self.send_error(404)

    do_HEAD = do_GET


@pytest.fixture
def caching(tmp_path):
    Archive.asked = []
    upstream = serve(ThreadingHTTPServer(("127.0.0.1", 0), Archive))
    cache = tmp_path / "apt"
    relay = serve(aptrelay.RelayServer(("127.0.0.1", 0), aptrelay.make_handler({"127.0.0.1"}, str(cache))))
    yield upstream, relay.server_port, cache
    for s in (upstream, relay):
        s.shutdown()
        s.server_close()


def test_a_package_is_fetched_once_then_served_from_the_cache_even_with_the_archive_gone(caching):
    upstream, port, cache = caching
    url = f"http://127.0.0.1:{upstream.server_port}{DEB}"
    resp, body, _ = through(port, "GET", url)
    assert resp.status == 200 and body == PACKAGE and resp.getheader("X-Podmigrate-Relay") is None
    kept = cache / f"127.0.0.1_{upstream.server_port}" / DEB.lstrip("/")
    assert kept.read_bytes() == PACKAGE and (kept.stat().st_mode & 0o777) == 0o644
    upstream.shutdown()
    upstream.server_close()
    resp, body, _ = through(port, "GET", url)
    assert resp.status == 200 and body == PACKAGE and resp.getheader("X-Podmigrate-Relay") == "cached"
    resp, body, _ = through(port, "HEAD", url)
    assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == str(len(PACKAGE))
    assert Archive.asked == [("GET", DEB)]


def test_indexes_always_go_to_the_archive(caching):
    upstream, port, cache = caching
    for _ in range(2):
        _, body, _ = through(port, "GET", f"http://127.0.0.1:{upstream.server_port}/debian/dists/sid/InRelease")
        assert body == b"release"
    assert Archive.asked == [("GET", "/debian/dists/sid/InRelease")] * 2
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_a_package_that_arrives_in_part_is_not_kept(caching):
    upstream, port, cache = caching
    url = f"http://127.0.0.1:{upstream.server_port}/debian/pool/main/h/half/half_1_amd64.deb"
    with pytest.raises(http.client.IncompleteRead):
        through(port, "GET", url)
    assert not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))  # no part left either
    with pytest.raises(http.client.IncompleteRead):
        through(port, "GET", url)
    assert len(Archive.asked) == 2  # asked again: nothing was kept


def test_several_nodes_fetching_one_package_at_once_each_get_it_whole(caching):
    upstream, port, cache = caching
    url = f"http://127.0.0.1:{upstream.server_port}{DEB}"
    got = []

    def fetch():
        got.append(through(port, "GET", url)[1])

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [PACKAGE] * 4
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert [p.read_bytes() == PACKAGE for p in files] == [True], files  # one file, whole, no part left
    assert Archive.asked == [("GET", DEB)]  # fetched once: the others waited for it


def test_waiters_on_a_fetch_that_fails_fetch_it_themselves(caching):
    upstream, port, cache = caching
    url = f"http://127.0.0.1:{upstream.server_port}/debian/pool/main/h/half/half_1_amd64.deb"
    errors = []

    def fetch():
        try:
            through(port, "GET", url)
        except http.client.IncompleteRead as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3  # each got the archive's own half answer, none a cached one
    assert not any(p.is_file() for p in cache.rglob("*"))


@pytest.mark.parametrize("path", ["/debian/pool/../../etc/x.deb", "/debian/pool/a//b.deb", "/debian/pool/x.deb?y=1",
                                  "/debian/dists/x.deb", "/debian/pool/x.dsc"])
def test_what_is_not_a_plain_package_name_is_never_kept(tmp_path, path):
    assert aptrelay.cache_path(str(tmp_path), "127.0.0.1", 80, path) is None
    assert aptrelay.cache_path(str(tmp_path), "127.0.0.1", 80, "/debian/pool/main/c/x_1_amd64.deb") == \
        f"{tmp_path}/127.0.0.1_80/debian/pool/main/c/x_1_amd64.deb"
    assert aptrelay.cache_path(None, "127.0.0.1", 80, "/debian/pool/main/c/x_1_amd64.deb") is None
