"""The guarded client against scripted HTTP servers on 127.0.0.1: retries, timeouts, egress."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sift_worker import fetch
from sift_worker.fetch import EgressRefusedError, Fetcher, FetchError, ObjectGoneError, RetryPolicy
from sift_worker.storage import SignedURL

SECRET_QUERY = "X-Amz-Signature=canarysig0123456789&X-Amz-Credential=CANARYKEY"
FAST = RetryPolicy(attempts=4, budget=20, base=0.01, cap=0.05)


class Script:
    """Responses to serve in order (status, headers, body); the last one repeats."""

    def __init__(self, *responses: tuple[int, dict[str, str], bytes]) -> None:
        self.responses = list(responses)
        self.requests: list[tuple[str, float]] = []

    def next(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((path, time.monotonic()))
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


@pytest.fixture
def scripted() -> Iterator[tuple[Script, int]]:
    script = Script((200, {}, b"ok"))

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            status, headers, body = holder[0].next(self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = _serve  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    holder = [script]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0], server.server_address[1]
        holder[0] = holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _url(port: int, key: str = "cams/a.jpg", host: str = "127.0.0.1") -> SignedURL:
    return SignedURL(
        "GET",
        f"http://{host}:{port}/bucket/in/{key}?{SECRET_QUERY}",
        key,
        datetime.now(UTC) + timedelta(minutes=10),
    )


def test_retries_5xx_and_429_with_retry_after_then_succeeds(
    scripted: tuple[Script, int], caplog: pytest.LogCaptureFixture
) -> None:
    script, port = scripted
    script.responses[:] = [
        (500, {}, b"boom"),
        (503, {}, b"busy"),
        (429, {"Retry-After": "1"}, b"slow down"),
        (200, {}, b"image-bytes"),
    ]
    before = fetch.FETCH_RETRIES._value.get()
    caplog.set_level(logging.DEBUG)
    with Fetcher({"127.0.0.1"}, retry=FAST) as client:
        assert client.get_bytes(_url(port)) == b"image-bytes"
    assert len(script.requests) == 4
    waited = script.requests[3][1] - script.requests[2][1]
    assert 0.9 <= waited < 3.0  # Retry-After: 1 was honoured (not the 50 ms backoff cap)
    assert fetch.FETCH_RETRIES._value.get() - before == 3
    assert "canarysig" not in caplog.text
    assert "CANARYKEY" not in caplog.text
    assert "retrying GET cams/a.jpg (attempt 3): HTTP 429" in caplog.text


def test_gives_up_after_the_budget_with_a_clear_error(scripted: tuple[Script, int]) -> None:
    script, port = scripted
    script.responses[:] = [(500, {}, b"down")]
    with Fetcher({"127.0.0.1"}, retry=FAST) as client, pytest.raises(FetchError) as exc:
        client.get_bytes(_url(port), "s3://bucket/in/cams/a.jpg")
    assert str(exc.value) == (
        "s3://bucket/in/cams/a.jpg: GET failed after 4 attempts or 20 s: HTTP 500"
    )
    assert len(script.requests) == 4
    assert "canarysig" not in repr(exc.value)
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__


def test_404_means_the_object_vanished(scripted: tuple[Script, int]) -> None:
    script, port = scripted
    script.responses[:] = [(404, {}, b"<Error><Code>NoSuchKey</Code></Error>")]
    with Fetcher({"127.0.0.1"}, retry=FAST) as client, pytest.raises(ObjectGoneError) as exc:
        client.get_bytes(_url(port))
    assert "cams/a.jpg: HTTP 404" in str(exc.value)
    assert len(script.requests) == 1  # not retried


def test_403_is_not_retried_and_names_the_object(scripted: tuple[Script, int]) -> None:
    script, port = scripted
    script.responses[:] = [(403, {}, b"<Error><Code>AccessDenied</Code></Error>")]
    with Fetcher({"127.0.0.1"}, retry=FAST) as client, pytest.raises(FetchError) as exc:
        client.get_bytes(_url(port))
    assert str(exc.value) == "cams/a.jpg: HTTP 403: access refused"
    assert len(script.requests) == 1


def test_expired_answer_triggers_one_refresh(scripted: tuple[Script, int]) -> None:
    script, port = scripted
    script.responses[:] = [
        (403, {}, b"<Error><Message>Request has expired</Message></Error>"),
        (200, {}, b"fresh"),
    ]
    keys: list[str] = []

    def refresh(old: SignedURL) -> SignedURL:
        keys.append(old.key)
        return _url(port, old.key)

    with Fetcher({"127.0.0.1"}, retry=FAST, refresh=refresh) as client:
        assert client.get_bytes(_url(port)) == b"fresh"
    assert keys == ["cams/a.jpg"]

    # a refresh that answers for another object is refused
    script.responses[:] = [(403, {}, b"Request has expired"), (200, {}, b"wrong")]
    with (
        Fetcher({"127.0.0.1"}, retry=FAST, refresh=lambda old: _url(port, "other.jpg")) as client,
        pytest.raises(FetchError, match="another object or method"),
    ):
        client.get_bytes(_url(port))


def test_hanging_server_times_out_naming_the_object() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        start = time.monotonic()
        with (
            Fetcher({"127.0.0.1"}, timeout=0.3, retry=RetryPolicy(2, 10, 0.01, 0.02)) as client,
            pytest.raises(FetchError) as exc,
        ):
            client.get_bytes(_url(port), "gs://bucket/in/cams/a.jpg")
        assert time.monotonic() - start < 5
    finally:
        listener.close()
    assert str(exc.value) == (
        "gs://bucket/in/cams/a.jpg: GET failed after 2 attempts or 10 s: timed out (ReadTimeout)"
    )


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with Fetcher({"127.0.0.1"}, retry=FAST) as client, pytest.raises(FetchError) as exc:
        client.get_bytes(_url(port))
    assert "connection error (ConnectError)" in str(exc.value)


def test_egress_guard_refuses_hosts_off_the_allowlist(
    scripted: tuple[Script, int], caplog: pytest.LogCaptureFixture
) -> None:
    script, port = scripted
    before = fetch.EGRESS_REFUSED._value.get()
    with Fetcher({"127.0.0.1"}, retry=FAST) as client:
        for host in ("localhost", "evil.example.com", "169.254.169.254"):
            with pytest.raises(EgressRefusedError) as exc:
                client.get_bytes(_url(port, host=host))
            assert exc.value.host == host
            assert str(exc.value).startswith(f"egress refused: host {host!r} is not on this run")
            assert "canarysig" not in str(exc.value)
            assert "/bucket/" not in str(exc.value)
        assert client.get_bytes(_url(port)) == b"ok"  # the allowed host still works
    assert fetch.EGRESS_REFUSED._value.get() - before == 3
    assert script.requests == [("/bucket/in/cams/a.jpg?" + SECRET_QUERY, script.requests[0][1])]
    assert "canarysig" not in caplog.text


def test_allowlist_entries_can_pin_a_port(scripted: tuple[Script, int]) -> None:
    _, port = scripted
    with Fetcher({f"127.0.0.1:{port + 1}"}) as client, pytest.raises(EgressRefusedError):
        client.get_bytes(_url(port))
    with Fetcher({f"127.0.0.1:{port}"}) as client:
        assert client.get_bytes(_url(port)) == b"ok"


def test_bounded_concurrency(scripted: tuple[Script, int]) -> None:
    script, port = scripted
    active = [0, 0]
    lock = threading.Lock()
    real = Fetcher._get

    def counting(self: Fetcher, *args: object) -> bytes:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            time.sleep(0.02)
            return real(self, *args)  # type: ignore[arg-type]
        finally:
            with lock:
                active[0] -= 1

    with Fetcher({"127.0.0.1"}, concurrency=3) as client:
        client._get = counting.__get__(client)  # type: ignore[method-assign]
        threads = [threading.Thread(target=client.get_bytes, args=(_url(port),)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert active[1] == 3
    assert len(script.requests) == 12


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}@evil.example.com/b/k",  # user info: the host is evil
        "http://evil.example.com\\@127.0.0.1:{port}/b/k",  # parsers disagree on backslashes
        "http://127.0.0.1:{port}/b/k ?x=1",
        "ftp://127.0.0.1:{port}/b/k",
        "http://127.0.0.1:notaport/b/k",
        "http://127.0.0.1:{port}/b/k\\x",  # the allowed origin, a backslash after it
    ],
)
@pytest.mark.parametrize("after_an_allowed_url", [False, True])
def test_egress_guard_refuses_urls_the_parsers_could_read_differently(
    scripted: tuple[Script, int], url: str, after_an_allowed_url: bool
) -> None:
    # after a URL of the allowed origin went through, the guard's shortcut for that
    # origin must refuse the same URLs
    script, port = scripted
    signed = SignedURL("GET", url.format(port=port), "k", datetime.now(UTC) + timedelta(minutes=5))
    with Fetcher({"127.0.0.1"}, retry=FAST) as client:
        if after_an_allowed_url:
            assert client.get_bytes(_url(port)) == b"ok"
        with pytest.raises(EgressRefusedError):
            client.get_bytes(signed)
    assert len(script.requests) == after_an_allowed_url  # nothing else was sent anywhere
