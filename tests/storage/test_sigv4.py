"""The fast GET presigner (storage/sigv4.py) gives exactly botocore's URLs, or is not used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from s3verify import Refused, verify
from sift_worker.storage.s3 import S3Credentials, S3Storage
from sift_worker.storage.sigv4 import FastGetSigner, Keys

KEYS = [
    "a.jpg",
    "dir/sub/ü ñ.jpg",
    "a b+c=d&e.png",
    "tilde~_-.jpg",
    "%41literal.jpg",
    "deep/a/b/c.tiff",
]
SETUPS = [
    # (endpoint, region, session token)
    (None, "eu-west-1", None),  # virtual-hosted AWS
    (None, None, "FwoGZXIvYXdzEJr//////////token+with/odd=chars"),  # global, temporary keys
    ("http://127.0.0.1:9000", None, None),  # S3-compatible, path style, a port
    ("https://minio.example:9443", "us-west-2", "tok"),
]


def _stamp(url: str) -> tuple[datetime, int]:
    query = dict(parse_qsl(urlsplit(url).query))
    when = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return when, int(query["X-Amz-Expires"])


@pytest.mark.parametrize(("endpoint", "region", "token"), SETUPS)
def test_fast_urls_equal_botocore_for_every_key_and_verify(
    endpoint: str | None, region: str | None, token: str | None
) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    store = S3Storage(
        "my.bucket-1",
        "in/",
        credentials=S3Credentials("AKIDEXAMPLE", secret, token),
        region=region,
        endpoint=endpoint,
    )
    store.sign_get("first.jpg")  # botocore's URL teaches the fast signer
    fast = store._fast_get
    assert fast is not None, "the fast path was not taken for a plain S3 setup"
    keys = Keys("AKIDEXAMPLE", secret, token)
    for key in KEYS:
        reference = store._client.generate_presigned_url(
            "get_object", Params={"Bucket": "my.bucket-1", "Key": "in/" + key}, ExpiresIn=600
        )
        when, expires = _stamp(reference)
        assert fast.sign("in/" + key, expires, keys, when) == reference, key
        signed = store.sign_get(key, timedelta(minutes=10))
        verify("GET", signed.url, "AKIDEXAMPLE", secret)  # a real SigV4 check
        assert (signed.key, signed.method) == (key, "GET")
        with pytest.raises(Refused, match="SignatureDoesNotMatch"):
            verify("GET", signed.url.replace("in/", "in/other-", 1), "AKIDEXAMPLE", secret)
        with pytest.raises(Refused, match="SignatureDoesNotMatch"):
            verify("GET", signed.url, "AKIDEXAMPLE", secret + "x")


def test_expired_fast_urls_are_refused() -> None:
    store = S3Storage("b", credentials=S3Credentials("AK", "SK"), region="eu-west-1")
    store.sign_get("a")
    url = store.sign_get("b", timedelta(seconds=60)).url
    verify("GET", url, "AK", "SK")
    with pytest.raises(Refused, match="expired"):
        verify("GET", url, "AK", "SK", now=datetime.now(UTC) + timedelta(seconds=120))


def test_rotated_temporary_keys_are_used_for_the_next_url() -> None:
    reference = S3Storage(
        "b", credentials=S3Credentials("AK", "SK", "t1"), region="eu-west-1"
    ).sign_get("k")
    fast = FastGetSigner.learn(reference.url, "k", Keys("AK", "SK", "t1"))
    assert fast is not None
    now = datetime.now(UTC)
    rotated = fast.sign("k", 300, Keys("AK2", "SK2", "t2"), now)
    assert dict(parse_qsl(urlsplit(rotated).query))["X-Amz-Security-Token"] == "t2"
    verify("GET", rotated, "AK2", "SK2")
    with pytest.raises(Refused):
        verify("GET", rotated, "AK2", "SK")  # the old secret no longer matches
    # the same second, back to the first keys and another lifetime: nothing is carried over
    again = fast.sign("k", 60, Keys("AK", "SK", "t1"), now)
    query = dict(parse_qsl(urlsplit(again).query))
    assert (query["X-Amz-Security-Token"], query["X-Amz-Expires"]) == ("t1", "60")
    verify("GET", again, "AK", "SK")


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda u: u + "&x-id=GetObject", "a parameter it does not know"),
        (lambda u: u.replace("SignedHeaders=host", "SignedHeaders=host%3Brange"), "headers"),
        (lambda u: u.replace("X-Amz-Date=", "X-Amz-Date=bad"), "an unreadable date"),
        (lambda u: u.replace("/k?", "/other?"), "a path without the key"),
        (lambda u: u[:-4] + "0000", "a signature it cannot reproduce"),
    ],
)
def test_the_fast_path_is_refused_when_in_doubt(edit: object, why: str) -> None:
    url = S3Storage("b", credentials=S3Credentials("AK", "SK"), region="eu-west-1").sign_get("k")
    assert FastGetSigner.learn(url.url, "k", Keys("AK", "SK")) is not None
    assert FastGetSigner.learn(edit(url.url), "k", Keys("AK", "SK")) is None, why  # type: ignore[operator]
    assert FastGetSigner.learn(url.url, "k", Keys("OTHER", "SK")) is None
    assert FastGetSigner.learn(url.url, "k", Keys("AK", "SK", "unexpected-token")) is None


def test_keys_never_show_in_repr() -> None:
    assert "SK-canary" not in repr(Keys("AK", "SK-canary", "TOKEN-canary"))
    assert "TOKEN-canary" not in repr(Keys("AK", "SK-canary", "TOKEN-canary"))
