"""S3 backend against a real moto server: listing, filters, scoped signing, errors."""

from __future__ import annotations

import base64
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from s3verify import Refused, verify
from sift_worker.fetch import Fetcher
from sift_worker.storage import (
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ListFilter,
    OutsidePrefixError,
    RunSigner,
)
from sift_worker.storage.s3 import S3Credentials, S3Storage
from storage_servers import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    InProcessMoto,
    Server,
    canary_s3_client,
    moto_process,
)

CREDS = S3Credentials(CANARY_KEY_ID, CANARY_SECRET)


def _bucket(s3_client: Any, keys: list[str] = (), body: bytes = b"x") -> str:  # type: ignore[assignment]
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3_client.put_object(Bucket=name, Key=k, Body=body), keys))
    return name


def _client(server: Server) -> Any:
    return canary_s3_client(server.endpoint)


def _storage(server: Server, bucket: str, prefix: str = "", **kw: Any) -> S3Storage:
    return S3Storage(bucket, prefix, credentials=CREDS, endpoint=server.endpoint, **kw)


def test_listing_pages_through_thousands_of_keys_with_filters(
    moto_inprocess: InProcessMoto,
) -> None:
    keys = [f"data/{i:05d}.{'jpg' if i % 3 else 'PNG'}" for i in range(2400)]
    keys += [f"data/{i:05d}.txt" for i in range(100)]
    keys += ["data/.sift/metadata/a.json", "data/.hidden.jpg", "other/outside.jpg"]
    server = Server(moto_inprocess.endpoint, 0)
    bucket = _bucket(_client(server))
    moto_inprocess.seed(bucket, keys)
    store = _storage(server, bucket, "data/")

    pages = []
    everything = []
    token = None
    while True:
        page, token = store.list_page(token, page_size=700)
        pages.append(len(page))
        everything += [o.key for o in page]
        if token is None:
            break
    assert pages == [700, 700, 700, 402]  # 2502 under data/, in pages
    assert len(everything) == 2502  # no filter: every key under the prefix, in order
    assert everything == sorted(everything)
    images = ListFilter(extensions=frozenset({".jpg", ".png"}))  # hidden keys skipped
    assert [k for k in everything if images(k)] == sorted(k[len("data/") :] for k in keys[:2400])

    small = _storage(server, bucket, "data/0012")  # a prefix is a plain string prefix
    found = list(small.iter_objects(images, page_size=3))
    assert [o.key for o in found] == [f"{d}.{'PNG' if d % 3 == 0 else 'jpg'}" for d in range(10)]
    assert all(o.size == 1 for o in found)
    relevant = {"1.jpg", "2.jpg", "3.PNG", "missing.jpg", "4.txt"}
    picked = [o.key for o in small.iter_objects(ListFilter(images.extensions, relevant))]
    assert picked == ["1.jpg", "2.jpg", "3.PNG"]
    pattern = ListFilter(pattern=re.compile(r"[0-4]\.jpg"))
    assert [o.key for o in small.iter_objects(pattern, page_size=2)] == ["1.jpg", "2.jpg", "4.jpg"]


def test_listing_is_a_generator_one_page_at_a_time(moto_server: Server, s3_client: Any) -> None:
    bucket = _bucket(s3_client, [f"k{i:04d}.jpg" for i in range(30)])
    store = _storage(moto_server, bucket)
    calls: list[str | None] = []
    real = store.list_page

    def spy(token: str | None = None, page_size: int = 1000) -> Any:
        calls.append(token)
        return real(token, page_size)

    store.list_page = spy  # type: ignore[method-assign]
    it = store.iter_objects(page_size=10)
    assert calls == []  # nothing listed until asked
    first = [next(it).key for _ in range(10)]
    assert first[0] == "k0000.jpg"
    assert len(calls) == 1
    rest = list(it)
    assert len(rest) == 20
    assert len(calls) == 3


def test_missing_bucket_empty_prefix_and_no_match_name_the_location(
    moto_server: Server, s3_client: Any
) -> None:
    with pytest.raises(BucketNotFoundError, match=r"s3://no-such-bucket-x/in/: bucket 'no-such"):
        list(_storage(moto_server, "no-such-bucket-x", "in/").require_objects())
    bucket = _bucket(s3_client, ["in/a.txt", "in/b.txt"])
    with pytest.raises(EmptyInputError, match=rf"s3://{bucket}/nothing/: no objects"):
        list(_storage(moto_server, bucket, "nothing/").require_objects())
    with pytest.raises(EmptyInputError, match=r"2 objects under this prefix, none matched ext"):
        list(
            _storage(moto_server, bucket, "in/").require_objects(
                ListFilter(extensions=frozenset({".jpg"}))
            )
        )


def test_wrong_credentials_and_permission_denied_with_auth_enforced() -> None:
    import boto3

    # moto enforces IAM once INITIAL_NO_AUTH_ACTION_COUNT free actions are used up
    with moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        admin = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIAADMIN",
            aws_secret_access_key="admin",
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIAADMIN",
            aws_secret_access_key="admin",
        )
        s3.create_bucket(Bucket="locked")
        admin.create_user(UserName="nobody")
        key = admin.create_access_key(UserName="nobody")["AccessKey"]
        # the 3 free actions are used up: from here on every request is checked
        wrong = S3Storage(
            "locked",
            "in/",
            credentials=S3Credentials(CANARY_KEY_ID, CANARY_SECRET),
            endpoint=server.endpoint,
        )
        with pytest.raises(BadCredentialsError, match=r"s3://locked/in/: S3 refused the cred") as e:
            wrong.list_page()
        assert CANARY_SECRET not in str(e.value)
        no_policy = S3Storage(
            "locked",
            "in/",
            credentials=S3Credentials(key["AccessKeyId"], key["SecretAccessKey"]),
            endpoint=server.endpoint,
        )
        with pytest.raises(AccessDeniedError, match=r"s3://locked/in/: permission denied"):
            no_policy.list_page()


def test_signed_urls_are_scoped_to_one_key_and_method_and_expire(moto_server: Server) -> None:
    store = _storage(
        moto_server, "bkt", "in/", region="eu-central-1", lifetime=timedelta(minutes=5)
    )
    url = store.sign_get("cams/a b.jpg")
    assert url.key == "cams/a b.jpg"
    assert "/bkt/in/cams/a%20b.jpg?" in url.url
    assert "X-Amz-Expires=300" in url.url
    assert CANARY_SECRET not in url.url
    verify("GET", url.url, CANARY_KEY_ID, CANARY_SECRET)  # a genuine URL passes

    tampered = {
        "other key": url.url.replace("cams/a%20b.jpg", "cams/other.jpg"),
        "longer expiry": url.url.replace("X-Amz-Expires=300", "X-Amz-Expires=604800"),
        "other signature": re.sub(r"X-Amz-Signature=\w{8}", "X-Amz-Signature=00000000", url.url),
        "other date": re.sub(r"X-Amz-Date=\d{8}", "X-Amz-Date=20990101", url.url),
    }
    for what, bad in tampered.items():
        with pytest.raises(Refused, match="SignatureDoesNotMatch"):
            verify("GET", bad, CANARY_KEY_ID, CANARY_SECRET)
        assert what
    with pytest.raises(Refused, match="SignatureDoesNotMatch"):
        verify("PUT", url.url, CANARY_KEY_ID, CANARY_SECRET)  # a GET URL cannot upload
    with pytest.raises(Refused, match="expired"):
        verify("GET", url.url, CANARY_KEY_ID, CANARY_SECRET, now=url.expires_at + timedelta(1))
    assert abs((url.expires_at - datetime.now(UTC)) - timedelta(minutes=5)) < timedelta(seconds=5)


def test_lifetimes_are_capped_and_defaulted(moto_server: Server) -> None:
    assert _storage(moto_server, "b").lifetime == timedelta(minutes=15)
    huge = _storage(moto_server, "b", lifetime=timedelta(days=30))
    assert "X-Amz-Expires=604800" in huge.sign_get("k").url  # SigV4's 7-day maximum
    assert "X-Amz-Expires=60" in huge.sign_get("k", timedelta(seconds=60)).url


@pytest.mark.parametrize(
    "key", ["../escape.csv", "/abs.csv", "a/../../b", "a//b", "./a", "a\\b", "", "a/\x00"]
)
def test_upload_signing_refuses_keys_outside_the_output_prefix(
    moto_server: Server, key: str
) -> None:
    out = _storage(moto_server, "out", "sift/ns/run/uid/", writable=True)
    with pytest.raises(OutsidePrefixError, match=r"s3://out/sift/ns/run/uid/: refused key"):
        out.sign_put(key)


def test_read_only_location_cannot_sign_uploads(moto_server: Server) -> None:
    inp = _storage(moto_server, "in", "data/")
    with pytest.raises(OutsidePrefixError, match="read-only"):
        inp.sign_put("x.csv")
    signer = RunSigner(inp)
    with pytest.raises(OutsidePrefixError, match="no output location"):
        signer.sign_uploads(["x.csv"])
    with pytest.raises(OutsidePrefixError, match="must be writable"):
        RunSigner(inp, inp)


def test_put_and_post_uploads_land_under_the_prefix_only(
    moto_server: Server, s3_client: Any
) -> None:
    bucket = _bucket(s3_client)
    out = _storage(moto_server, bucket, "sift/run1/", writable=True)
    signer = RunSigner(_storage(moto_server, bucket, "in/"), out)
    with Fetcher(signer.allowed_hosts()) as fetch:
        put = signer.sign_uploads(["results/selection.csv"], ["text/csv"])[0]
        fetch.put_bytes(put, b"filename,selected\n")
    got = s3_client.get_object(Bucket=bucket, Key="sift/run1/results/selection.csv")
    assert got["Body"].read() == b"filename,selected\n"
    assert got["ContentType"] == "text/csv"

    post = signer.sign_upload_post("thumbnails/")
    policy = json.loads(base64.b64decode(post.fields["policy"]))
    assert ["starts-with", "$key", "sift/run1/thumbnails/"] in policy["conditions"]
    assert post.key_prefix == "sift/run1/thumbnails/"
    form = {**post.fields, "key": "sift/run1/thumbnails/1_a.jpg"}
    resp = httpx.post(post.url, data=form, files={"file": ("1_a.jpg", b"jpeg")})
    assert resp.status_code in (200, 204), resp.text
    body = s3_client.get_object(Bucket=bucket, Key="sift/run1/thumbnails/1_a.jpg")["Body"]
    assert body.read() == b"jpeg"
    with pytest.raises(OutsidePrefixError):
        signer.sign_upload_post("../other/")


def test_signer_pages_inputs_with_signed_urls(moto_server: Server, s3_client: Any) -> None:
    bucket = _bucket(s3_client, [f"in/{i:03d}.jpg" for i in range(25)] + ["in/x.txt"])
    keep = ListFilter(extensions=frozenset({".jpg"}))
    signer = RunSigner(_storage(moto_server, bucket, "in/"), keep=keep)
    seen = []
    token = None
    with Fetcher(signer.allowed_hosts()) as fetch:
        while True:
            page = signer.list_inputs(token, page_size=10)
            for info, url in page.objects:
                assert url.method == "GET"
                assert fetch.get_bytes(url) == b"x"
                seen.append(info.key)
            token = page.next_token
            if token is None:
                break
    assert seen == [f"{i:03d}.jpg" for i in range(25)]
    assert [u.key for u in signer.sign_inputs(["001.jpg", "002.jpg"])] == ["001.jpg", "002.jpg"]
    with pytest.raises(ValueError, match="at most 1000 keys"):
        signer.sign_inputs(["k"] * 1001)


def test_upload_dir_sends_run_json_last_and_refreshes_puts_as_puts(
    moto_server: Server, s3_client: Any, tmp_path: Any
) -> None:
    from sift_worker.dataplane import RemoteOutput, _resign

    bucket = _bucket(s3_client)
    signer = RunSigner(
        _storage(moto_server, bucket, "in/"),
        _storage(moto_server, bucket, "out/", writable=True),
    )
    for rel in ("run.json", "selection.csv", "thumbnails/1_a.jpg", "report.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    sent: list[str] = []
    with Fetcher(signer.allowed_hosts()) as fetch:
        real = fetch.put_bytes

        def record(signed: Any, data: bytes, name: str | None = None) -> None:
            sent.append(signed.key)
            real(signed, data, name)

        fetch.put_bytes = record  # type: ignore[method-assign]
        assert RemoteOutput(signer, fetch, workers=4).upload_dir(tmp_path) == 4
    assert sent[-1] == "run.json"
    assert sorted(sent) == ["report.html", "run.json", "selection.csv", "thumbnails/1_a.jpg"]
    got = s3_client.get_object(Bucket=bucket, Key="out/report.html")
    assert got["ContentType"] == "text/html"

    put = signer.sign_uploads(["selection.csv"], ["text/csv"])[0]
    again = _resign(signer, put)
    assert (again.method, again.key, again.headers) == ("PUT", "selection.csv", put.headers)
    get = signer.sign_inputs(["a.jpg"])[0]
    assert _resign(signer, get).method == "GET"
