"""The storage fetch path's own HTTP/1.1 connections (sift_worker.connections) against
real servers on 127.0.0.1: keep-alive reuse, a connection the server closed while idle,
chunked and oversized bodies, TLS that trusts only the configured CAs."""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sift_operator.broker.tls import make_self_signed
from sift_worker.connections import BodyTooLargeError, ConnectionPool, TransportError
from sift_worker.fetch import Fetcher, FetchError
from sift_worker.storage import SignedURL

BODY = bytes(range(256)) * 200  # 51,200 bytes, like a small JPEG


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # a client that drops an oversized body resets the connection: expected here
        if not isinstance(sys.exc_info()[1], ConnectionResetError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str, bytes]] = []  # method, path, body
        self.headers: list[dict[str, str]] = []  # each request's headers
        self.mode = "length"  # "length" | "chunked" | "close-after" | "drop-after"
        self.status = 200
        self.body = BODY
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, body))
                outer.headers.append(dict(self.headers.items()))
                self.send_response(outer.status)
                if outer.mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(outer.body), 10_000):
                        part = outer.body[i : i + 10_000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(outer.body)))
                if outer.mode == "close-after":
                    self.send_header("Connection", "close")
                if outer.mode != "length":
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(outer.body)

            do_GET = do_PUT = _serve  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.stop()


def _pool(**kw: object) -> ConnectionPool:
    return ConnectionPool(timeout=5, connect_timeout=5, max_idle=4, **kw)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection(server: Server) -> None:
    pool = _pool()
    try:
        for i in range(5):
            reply = pool.request("GET", f"http://127.0.0.1:{server.port}/b/k{i}?sig=x", {})
            assert (reply.status, reply.body) == (200, BODY)
    finally:
        pool.close()
    assert server.connections == 1
    assert [p for _, p, _ in server.requests] == [f"/b/k{i}?sig=x" for i in range(5)]


def test_a_handle_reused_for_other_methods_sends_each_request_as_asked(server: Server) -> None:
    # a GET after a GET keeps the handle's options; a PUT in between resets them, so
    # the next GET is neither an upload nor sent with the PUT's headers
    pool = ConnectionPool(timeout=5, connect_timeout=5, max_idle=1)  # one handle for all
    url = f"http://127.0.0.1:{server.port}/b/k"
    try:
        assert pool.request("GET", url, {"X-Trace": "a"}).body == BODY
        assert pool.request("PUT", url, {"X-Put": "1"}, b"uploaded").status == 200
        assert pool.request("GET", url, {}).body == BODY
        assert pool.request("GET", url, {}, max_bytes=len(BODY)).body == BODY
    finally:
        pool.close()
    assert server.requests == [
        ("GET", "/b/k", b""),
        ("PUT", "/b/k", b"uploaded"),
        ("GET", "/b/k", b""),
        ("GET", "/b/k", b""),
    ]
    assert [h.get("X-Put") for h in server.headers] == [None, "1", None, None]
    assert [h.get("X-Trace") for h in server.headers] == ["a", None, None, None]


def test_a_connection_the_server_closes_is_not_reused(server: Server) -> None:
    server.mode = "close-after"
    pool = _pool()
    try:
        for _ in range(3):
            assert pool.request("GET", f"http://127.0.0.1:{server.port}/k", {}).body == BODY
    finally:
        pool.close()
    assert server.connections == 3
    assert len(server.requests) == 3  # no request was sent twice


def test_a_kept_alive_connection_the_server_dropped_is_replaced(server: Server) -> None:
    server.mode = "drop-after"  # answers, then closes without saying so (an idle timeout)
    pool = _pool()
    try:
        url = f"http://127.0.0.1:{server.port}/k"
        assert pool.request("GET", url, {}).body == BODY
        assert pool.request("PUT", url, {"Content-Type": "image/jpeg"}, b"data").body == BODY
    finally:
        pool.close()
    assert server.connections == 2
    assert [(m, b) for m, _, b in server.requests] == [("GET", b""), ("PUT", b"data")]


def test_proxy_variables_are_ignored(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    pool = _pool()
    try:
        assert pool.request("GET", f"http://127.0.0.1:{server.port}/k", {}).body == BODY
    finally:
        pool.close()
    assert server.requests == [("GET", "/k", b"")]


def test_chunked_bodies_and_the_size_limit(server: Server) -> None:
    server.mode = "chunked"
    pool = _pool()
    try:
        url = f"http://127.0.0.1:{server.port}/k"
        assert pool.request("GET", url, {}, max_bytes=len(BODY)).body == BODY
        with pytest.raises(BodyTooLargeError, match="over 1000 bytes"):
            pool.request("GET", url, {}, max_bytes=1000)
        server.mode = "length"  # refused on the declared length, before the body
        with pytest.raises(BodyTooLargeError, match="over 1000 bytes"):
            pool.request("GET", url, {}, max_bytes=1000)
        assert pool.request("GET", url, {}).body == BODY  # the pool is still usable
    finally:
        pool.close()


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_an_error_answer_keeps_its_status_and_the_start_of_a_long_body(
    server: Server, mode: str
) -> None:
    server.mode, server.status, server.body = mode, 503, b"<Error>" + b"x" * 100_000
    pool = _pool()
    try:
        reply = pool.request("GET", f"http://127.0.0.1:{server.port}/k", {}, max_bytes=1 << 20)
    finally:
        pool.close()
    assert reply.status == 503
    assert reply.body == server.body[: 64 << 10]


def test_fetcher_names_the_object_when_it_is_too_large(server: Server) -> None:
    url = SignedURL(
        "GET",
        f"http://127.0.0.1:{server.port}/b/big.jpg?X-Amz-Signature=canarysig",
        "big.jpg",
        datetime.now(UTC) + timedelta(minutes=5),
    )
    with Fetcher({"127.0.0.1"}, max_bytes=100) as client, pytest.raises(FetchError) as exc:
        client.get_bytes(url, "s3://b/big.jpg")
    assert str(exc.value) == "s3://b/big.jpg: object too large: over 100 bytes"
    assert "canarysig" not in str(exc.value)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    tls = make_self_signed(["127.0.0.1"])
    srv = Server(tls.server_context())
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls.ca_pem)
    yield srv, ca
    srv.stop()


def test_tls_trusts_the_configured_ca_only(
    tls_server: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, ca = tls_server
    url = f"https://127.0.0.1:{srv.port}/k?sig=x"
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    untrusting = _pool()  # the default CAs (certifi): a private CA is not among them
    with pytest.raises(TransportError) as exc:
        untrusting.request("GET", url, {})
    assert exc.value.kind == "ConnectError"
    untrusting.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # as for httpx: the same variable
    trusting = _pool()
    try:
        assert trusting.request("GET", url, {}).body == BODY
        assert trusting.request("GET", url, {}).body == BODY
    finally:
        trusting.close()
    # the refused handshake's connection, then one kept alive for both requests
    assert (srv.connections, len(srv.requests)) == (2, 2)
