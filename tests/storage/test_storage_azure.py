"""Azure backend against Azurite, which really enforces SAS: scope, permission and expiry."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from sift_worker.fetch import Fetcher, FetchError
from sift_worker.storage import (
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ListFilter,
    OutsidePrefixError,
    RunSigner,
    SignedURL,
)
from sift_worker.storage.azure import AzureStorage
from storage_servers import AZURITE_ACCOUNT, AZURITE_KEY, Server


def _container(azurite: Server, blobs: dict[str, bytes]) -> str:
    service = BlobServiceClient(
        azurite.endpoint,
        credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    )
    name = f"c-{uuid.uuid4().hex[:12]}"
    container = service.create_container(name)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: container.upload_blob(kv[0], kv[1]), blobs.items()))
    return name


def _storage(azurite: Server, container: str, prefix: str = "", **kw: object) -> AzureStorage:
    return AzureStorage(
        AZURITE_ACCOUNT,
        container,
        prefix,
        account_key=AZURITE_KEY,
        endpoint=azurite.endpoint,
        **kw,  # type: ignore[arg-type]
    )


def test_sas_is_enforced_for_blob_permission_and_expiry(azurite: Server) -> None:
    name = _container(azurite, {"in/a.jpg": b"AAA", "in/b.jpg": b"BBB", "secret/c.jpg": b"C"})
    store = _storage(azurite, name, "in/")
    url = store.sign_get("a.jpg")
    assert "sp=r&" in url.url or url.url.endswith("sp=r") or "sp=r" in url.url
    assert httpx.get(url.url).content == b"AAA"

    # tampered: a changed signature, a stretched expiry, a widened permission
    sig = re.search(r"sig=([^&]+)", url.url)
    assert sig
    first = "B" if sig.group(1).startswith("A") else "A"  # a signature really changed
    tampered = [
        url.url.replace(sig.group(1), first + sig.group(1)[1:]),
        re.sub(r"se=[^&]+", "se=2099-01-01T00%3A00%3A00Z", url.url),
        url.url.replace("sp=r", "sp=rw"),
    ]
    for bad in tampered:
        assert httpx.get(bad).status_code == 403
    # out of scope: the same SAS on another blob (in and out of the prefix)
    for other in ("in/b.jpg", "secret/c.jpg"):
        assert httpx.get(url.url.replace("in/a.jpg", other)).status_code == 403
    # other permission: a read SAS cannot write, a write SAS cannot read
    put = _storage(azurite, name, "in/", writable=True).sign_put("a.jpg")
    blob_type = {"x-ms-blob-type": "BlockBlob"}
    assert httpx.put(url.url, content=b"evil", headers=blob_type).status_code == 403
    assert httpx.get(put.url).status_code == 403
    assert httpx.put(put.url, content=b"new", headers=dict(put.headers)).status_code == 201
    assert httpx.get(store.sign_get("a.jpg").url).content == b"new"

    # expired: a 1-second URL is refused once its time is up
    short = store.sign_get("b.jpg", timedelta(seconds=1))
    time.sleep(2.2)
    assert httpx.get(short.url).status_code == 403


def test_fetcher_refreshes_an_expired_sas(azurite: Server) -> None:
    name = _container(azurite, {"in/a.jpg": b"AAA"})
    store = _storage(azurite, name, "in/")
    old = store.sign_get("a.jpg", timedelta(seconds=1))
    time.sleep(2.2)
    refreshed: list[str] = []

    def refresh(old: SignedURL) -> SignedURL:
        refreshed.append(old.key)
        return store.sign_get(old.key)

    # before use: a URL inside the margin is re-signed first
    with Fetcher(store.hosts(), refresh=refresh) as fetch:
        assert fetch.get_bytes(old) == b"AAA"
    assert refreshed == ["a.jpg"]
    # after a refusal: with a negative margin the URL is sent, Azurite answers 403, and
    # since its lifetime is over it is re-signed once and retried
    with Fetcher(store.hosts(), refresh=refresh, refresh_margin=timedelta(minutes=-5)) as fetch:
        assert fetch.get_bytes(old) == b"AAA"
    assert refreshed == ["a.jpg", "a.jpg"]
    with (
        Fetcher(store.hosts()) as fetch,
        pytest.raises(FetchError, match=r"^a\.jpg: the signed URL has expired$"),
    ):
        fetch.get_bytes(old)


def test_listing_pages_filters_and_errors(azurite: Server) -> None:
    blobs = {f"data/{i:04d}.jpg": b"x" for i in range(300)}
    blobs |= {"data/notes.txt": b"t", "data/.sift/m.json": b"{}", "elsewhere/z.jpg": b"z"}
    name = _container(azurite, blobs)
    store = _storage(azurite, name, "data/")
    page, token = store.list_page(None, page_size=120)
    assert len(page) == 120
    assert token
    keep = ListFilter(extensions=frozenset({".jpg"}))
    keys = [o.key for o in store.iter_objects(keep, page_size=120)]
    assert keys == [f"{i:04d}.jpg" for i in range(300)]

    with pytest.raises(BucketNotFoundError, match=r"azure://devstoreaccount1/nope-x/in/"):
        list(_storage(azurite, "nope-x", "in/").require_objects())
    with pytest.raises(EmptyInputError, match="no objects under this prefix"):
        list(_storage(azurite, name, "missing/").require_objects())
    wrong = AzureStorage(
        AZURITE_ACCOUNT, name, "data/", account_key="d3Jvbmc=" * 8, endpoint=azurite.endpoint
    )
    with pytest.raises(BadCredentialsError, match=r"azure://devstoreaccount1/.*refused") as exc:
        wrong.list_page()
    assert "d3Jvbmc" not in str(exc.value)


def test_uploads_stay_under_the_output_prefix(azurite: Server) -> None:
    name = _container(azurite, {})
    out = _storage(azurite, name, "sift/ns/run/uid/", writable=True)
    signer = RunSigner(_storage(azurite, name, "in/"), out)
    url = signer.sign_uploads(["report.html"], ["text/html"])[0]
    assert "/sift/ns/run/uid/report.html?" in url.url
    with Fetcher(signer.allowed_hosts()) as fetch:
        fetch.put_bytes(url, b"<html>")
    service = BlobServiceClient(
        azurite.endpoint,
        credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    )
    blob = service.get_blob_client(name, "sift/ns/run/uid/report.html")
    assert blob.download_blob().readall() == b"<html>"
    for key in ("../x", "/x", "a/./b"):
        with pytest.raises(OutsidePrefixError):
            signer.sign_uploads([key])
    with pytest.raises(OutsidePrefixError, match="POST policies exist for S3 output only"):
        signer.sign_upload_post()


def test_the_specs_endpoint_is_used_and_wins_over_a_connection_string(azurite: Server) -> None:
    from sift_worker.api.v1alpha1 import StorageLocation
    from sift_worker.storage import open_storage

    name = _container(azurite, {"in/a.jpg": b"AAA"})
    loc = StorageLocation.model_validate(
        {"azure": {"account": AZURITE_ACCOUNT, "container": name, "prefix": "in/"}}
    )
    spec_loc = StorageLocation.model_validate(
        {"azure": {**loc.azure.model_dump(), "endpoint": azurite.endpoint}}  # type: ignore[union-attr]
    )
    # a Secret's key (the broker) with the spec's endpoint: Azurite, not *.windows.net
    store = open_storage(spec_loc, writable=False, secret={"accountKey": AZURITE_KEY})
    url = store.sign_get("a.jpg")
    assert url.url.startswith(f"{azurite.endpoint}/{name}/in/a.jpg?")
    assert httpx.get(url.url).content == b"AAA"
    # without it, a Secret means the public cloud's endpoint
    default = open_storage(loc, writable=False, secret={"accountKey": AZURITE_KEY})
    assert default.hosts() == {f"{AZURITE_ACCOUNT}.blob.core.windows.net"}
    # a local run: the spec's endpoint wins over the connection string's BlobEndpoint
    conn = f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint=https://x.example"
    local = open_storage(spec_loc, writable=False, env={"AZURE_STORAGE_CONNECTION_STRING": conn})
    assert [info.key for info in local.iter_objects(ListFilter())] == ["a.jpg"]
    assert open_storage(
        loc, writable=False, env={"AZURE_STORAGE_CONNECTION_STRING": conn}
    ).hosts() == {"x.example"}
