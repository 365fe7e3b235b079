"""GCS backend against fake-gcs-server: listing, V4 signed GET/PUT, expiry parameters, errors.

fake-gcs-server does not verify signatures, so what is checked here is what the URL
says (V4, one object, the method's scope, the expiry) and that the transfers work.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from sift_worker.api.v1alpha1 import StorageLocation
from sift_worker.fetch import Fetcher
from sift_worker.storage import (
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ListFilter,
    open_storage,
)
from sift_worker.storage.gcs import GCSStorage, service_account_credentials
from storage_servers import Server


@pytest.fixture(scope="module")
def sa_info() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "sift-test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "sift@sift-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }


def _bucket(gcs_server: Server, objects: dict[str, bytes]) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=gcs_server.endpoint) as h:
        assert h.post("/storage/v1/b", json={"name": name}).status_code == 200
        for key, body in objects.items():
            r = h.post(
                f"/upload/storage/v1/b/{name}/o",
                params={"uploadType": "media", "name": key},
                content=body,
            )
            assert r.status_code == 200, r.text
    return name


def _storage(
    gcs_server: Server, sa_info: dict[str, str], bucket: str, prefix: str = "", **kw: object
) -> GCSStorage:
    return GCSStorage(
        bucket,
        prefix,
        credentials=service_account_credentials(sa_info, "test"),
        api_credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        endpoint=gcs_server.endpoint,
        **kw,  # type: ignore[arg-type]
    )


def test_listing_pages_and_filters(gcs_server: Server, sa_info: dict[str, str]) -> None:
    objects = {f"in/{i:04d}.jpg": b"x" for i in range(120)}
    objects |= {"in/a.txt": b"t", "in/.sift/m.json": b"{}", "out/z.jpg": b"z"}
    bucket = _bucket(gcs_server, objects)
    store = _storage(gcs_server, sa_info, bucket, "in/")
    page, token = store.list_page(None, 50)
    assert len(page) == 50
    assert token
    keys = [o.key for o in store.iter_objects(ListFilter(frozenset({".jpg"})), page_size=50)]
    assert keys == [f"{i:04d}.jpg" for i in range(120)]
    with pytest.raises(EmptyInputError, match=rf"gs://{bucket}/nothing/: no objects"):
        list(_storage(gcs_server, sa_info, bucket, "nothing/").require_objects())
    with pytest.raises(BucketNotFoundError, match=r"gs://no-such-bkt/: bucket 'no-such-bkt'"):
        list(_storage(gcs_server, sa_info, "no-such-bkt").require_objects())


def test_v4_urls_are_scoped_and_expire(gcs_server: Server, sa_info: dict[str, str]) -> None:
    bucket = _bucket(gcs_server, {"in/cat.jpg": b"meow"})
    store = _storage(gcs_server, sa_info, bucket, "in/", lifetime=timedelta(minutes=10))
    url = store.sign_get("cat.jpg")
    parts = urlsplit(url.url)
    query = parse_qs(parts.query)
    assert parts.path == f"/{bucket}/in/cat.jpg"
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["600"]
    assert query["X-Goog-SignedHeaders"] == ["host"]
    assert len(query["X-Goog-Signature"][0]) == 512  # RSA-2048 signature, hex
    assert sa_info["private_key"] not in url.url
    with Fetcher(store.hosts()) as fetch:
        assert fetch.get_bytes(url) == b"meow"

    capped = _storage(gcs_server, sa_info, bucket, "in/", lifetime=timedelta(days=30))
    assert parse_qs(urlsplit(capped.sign_get("cat.jpg").url).query)["X-Goog-Expires"] == ["604800"]
    out = _storage(gcs_server, sa_info, bucket, "out/run/", writable=True)
    put = out.sign_put("selection.csv", content_type="text/csv")
    assert "content-type" in parse_qs(urlsplit(put.url).query)["X-Goog-SignedHeaders"][0]
    with Fetcher(out.hosts()) as fetch:
        fetch.put_bytes(put, b"a,b\n")
    with httpx.Client(base_url=gcs_server.endpoint) as h:
        got = h.get(f"/storage/v1/b/{bucket}/o/out%2Frun%2Fselection.csv", params={"alt": "media"})
    assert got.content == b"a,b\n"


def test_credentials_from_the_environment(
    gcs_server: Server, sa_info: dict[str, str], tmp_path: Path
) -> None:
    loc = StorageLocation.model_validate({"gcs": {"bucket": "bkt", "prefix": "p/"}})
    with pytest.raises(BadCredentialsError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        open_storage(loc, writable=False, env={})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account", "private_key": "nope"}))
    with pytest.raises(BadCredentialsError, match="gs://bkt/p/: not a usable service-account key"):
        open_storage(loc, writable=False, env={"GOOGLE_APPLICATION_CREDENTIALS": str(bad)})
    good = tmp_path / "key.json"
    good.write_text(json.dumps(sa_info))
    env = {
        "GOOGLE_APPLICATION_CREDENTIALS": str(good),
        "STORAGE_EMULATOR_HOST": gcs_server.endpoint,
    }
    store = open_storage(loc, writable=False, env=env)
    assert store.hosts() == frozenset({"127.0.0.1"})
    assert store.sign_get("x.jpg").url.startswith(f"{gcs_server.endpoint}/bkt/p/x.jpg?")
