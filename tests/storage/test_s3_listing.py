"""S3 listing pages parsed with ElementTree (storage/s3list.py): exact keys, pages,
errors; on moto for the round trip, on a failing local server for retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sift_worker.storage import StorageError
from sift_worker.storage.s3 import S3Credentials, S3Storage
from sift_worker.storage.s3list import ListError, parse_page, request_of
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
ODD_KEYS = [
    "in/plain.jpg",
    "in/with space.jpg",
    "in/plus+sign.jpg",
    "in/ümlaut/ñ.jpg",
    "in/amp&lt<gt>.jpg",
    "in/percent%20literal.jpg",
    "in/tab\tand~tilde.jpg",
]


def _page(contents: str, *, truncated: bool = False, token: str = "", url: bool = True) -> bytes:
    return (
        f"<ListBucketResult {NS}><Name>b</Name>"
        f"{'<EncodingType>url</EncodingType>' if url else ''}"
        f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"
        f"{f'<NextContinuationToken>{token}</NextContinuationToken>' if token else ''}"
        f"{contents}</ListBucketResult>"
    ).encode()


def _item(key: str, size: int) -> str:
    return f"<Contents><Key>{key}</Key><Size>{size}</Size></Contents>"


@pytest.mark.parametrize(
    ("body", "keys", "token"),
    [
        (
            _page(_item("in/a.jpg", 3) + _item("in/b%20c%2Bd.jpg", 4)),
            [("a.jpg", 3), ("b c+d.jpg", 4)],
            None,
        ),
        (
            _page(_item("in/a+b.jpg", 1)),
            [("a b.jpg", 1)],
            None,
        ),  # '+' is a space, as botocore reads it
        (_page(_item("in/a+b.jpg", 1), url=False), [("a+b.jpg", 1)], None),  # not encoded: as is
        (_page(_item("in/", 0) + _item("other/x", 1)), [], None),  # the prefix itself, outside it
        (_page(_item("in/a", 1), truncated=True, token="tok=="), [("a", 1)], "tok=="),
        (_page("", truncated=False, token="ignored"), [], None),  # not truncated: no next page
    ],
)
def test_pages_parse_to_relative_keys_sizes_and_the_next_token(
    body: bytes, keys: list[tuple[str, int]], token: str | None
) -> None:
    page, nxt = parse_page(body, "in/")
    assert [(o.key, o.size) for o in page] == keys
    assert nxt == token


def test_error_bodies_and_garbage_are_errors_with_their_code() -> None:
    with pytest.raises(ListError) as e:
        parse_page(b"<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>", "")
    assert (e.value.code, e.value.message) == ("NoSuchBucket", "gone")
    with pytest.raises(ListError, match="unreadable listing"):
        parse_page(b"<html>not xml", "")


def test_the_request_url_drops_the_presigned_parameters_and_keeps_the_region() -> None:
    url, region = request_of(
        "https://b.s3.eu-west-1.amazonaws.com/?list-type=2&prefix=in%2F&X-Amz-Algorithm=A"
        "&X-Amz-Credential=AK%2F20261202%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Signature=s"
    )
    assert url == "https://b.s3.eu-west-1.amazonaws.com/?list-type=2&prefix=in%2F"
    assert region == "eu-west-1"


def test_odd_keys_round_trip_exactly_through_pages(moto_server: Server) -> None:
    client = canary_s3_client(moto_server.endpoint)
    client.create_bucket(Bucket="odd-keys")
    for key in ODD_KEYS:
        client.put_object(Bucket="odd-keys", Key=key, Body=key.encode())
    store = S3Storage(
        "odd-keys",
        "in/",
        credentials=S3Credentials(CANARY_KEY_ID, CANARY_SECRET),
        endpoint=moto_server.endpoint,
    )
    first, token = store.list_page(None, 3)
    assert len(first) == 3 and token is not None  # noqa: PT018 - one page, its token
    listed = [(o.key, o.size) for o in store.iter_objects(page_size=3)]
    expected = sorted((k.removeprefix("in/"), len(k.encode())) for k in ODD_KEYS)
    assert sorted(listed) == expected


class _Flaky(BaseHTTPRequestHandler):
    statuses: list[int] = []
    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        body = _page(_item("in/a.jpg", 1)) if status == 200 else b"<Error/>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_5xx_are_retried_then_named_and_requests_are_header_signed(flaky: str) -> None:
    store = S3Storage(
        "bkt", "in/", credentials=S3Credentials("AKLIST", "SECRET-canary"), endpoint=flaky
    )
    _Flaky.statuses, _Flaky.seen = [500, 503], []
    page, _ = store.list_page()
    assert [o.key for o in page] == ["a.jpg"]
    assert len(_Flaky.seen) == 3
    auth = _Flaky.seen[-1].get("Authorization", "")
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKLIST/")
    assert "SECRET-canary" not in str(_Flaky.seen)
    _Flaky.statuses = [500] * 10
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://bkt/in/: no listing from the S3 endpoint") as e:
        store.list_page()
    assert time.monotonic() - started < 20
    assert "X-Amz-Signature" not in str(e.value)
    assert "SECRET-canary" not in str(e.value)


def test_an_unreachable_endpoint_is_named() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    store = S3Storage(
        "bkt", "in/", credentials=S3Credentials("AK", "SK"), endpoint=f"http://127.0.0.1:{port}"
    )
    with pytest.raises(StorageError, match="cannot connect to the S3 endpoint"):
        store.list_page()
