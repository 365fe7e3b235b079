"""S3 and S3-compatible storage through botocore (boto3's engine): SigV4 presigned GET/PUT
URLs and POST policies.

Credentials are static keys (from a Secret, or given to a local run) or, when none are
given, botocore's default chain: environment, shared config, the pod's web identity
(IRSA), instance metadata. A URL signed with temporary credentials stops working when
they expire, whatever its own lifetime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.loaders import Loader

from sift_worker.storage.base import (
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    ObjectInfo,
    OutsidePrefixError,
    SignedPost,
    SignedURL,
    Storage,
    StorageError,
    cap_lifetime,
    expiry,
)
from sift_worker.storage.s3list import ListError, fetch_page, parse_page
from sift_worker.storage.sigv4 import FastGetSigner, Keys

__all__ = ["S3Credentials", "S3Storage"]

_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_DENIED = {"AccessDeniedError", "AllAccessDisabled", "403", "Forbidden"}
LIST_URL_SECONDS = 300  # a list URL is used at once (retries included)

_loader: Loader | None = None
_loader_lock = threading.Lock()


def _session(credentials: S3Credentials | None) -> botocore.session.Session:
    """A botocore session (boto3's engine) over one process-wide data loader.

    Each new session otherwise parses botocore's endpoint and S3 service models again
    (0.1-0.3 s), and a run opens two (its input and output), the broker one per run;
    the loader caches what it has read, and sessions only read from it.
    """
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = Loader()
    session = botocore.session.Session()
    session.register_component("data_loader", _loader)
    if credentials is not None:
        session.set_credentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        )
    return session


@dataclass(frozen=True, repr=False)
class S3Credentials:
    """Static S3 keys. ``repr`` never shows them."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "S3Credentials(<redacted>)"


class S3Storage(Storage):
    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: S3Credentials | None = None,
        region: str | None = None,
        endpoint: str | None = None,
        writable: bool = False,
        lifetime: timedelta | None = None,
    ) -> None:
        super().__init__(bucket, prefix, writable=writable, lifetime=lifetime)
        session = _session(credentials)
        self._session = session
        self._fast_get: FastGetSigner | None = None
        self._fast_get_tried = False
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "virtual"},
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=30,
        )
        self._client = session.create_client(
            "s3", endpoint_url=endpoint or None, config=config, region_name=region or None
        )

    # --- listing ------------------------------------------------------------------------

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": max(1, min(page_size, 1000)),
            "EncodingType": "url",
        }
        if token:
            params["ContinuationToken"] = token
        try:  # botocore builds and signs; the page is read and parsed with ElementTree
            url = self._client.generate_presigned_url(
                "list_objects_v2", Params=params, ExpiresIn=LIST_URL_SECONDS
            )
            keys = self._keys()
            if keys is None:
                raise NoCredentialsError()
            return parse_page(fetch_page(url, keys), self.prefix)
        except ListError as exc:
            if exc.code in ("Unreachable", "Unavailable"):
                what = "cannot connect to" if exc.code == "Unreachable" else "no listing from"
                raise StorageError(self.uri(), f"{what} the S3 endpoint: {exc.message}") from None
            answer: Any = {
                "Error": {"Code": exc.code, "Message": exc.message},
                "ResponseMetadata": {"HTTPStatusCode": exc.status},
            }
            raise self._error(ClientError(answer, "ListObjectsV2"), self.uri()) from None
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, self.uri()) from None

    def _error(self, exc: Exception, uri: str) -> StorageError:
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BadCredentialsError(
                uri, "no S3 credentials found (static keys or ambient identity)"
            )
        if isinstance(exc, EndpointConnectionError):
            return StorageError(uri, "cannot connect to the S3 endpoint")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket", "404") or (code == "" and status == 404):
                return BucketNotFoundError(uri, f"bucket {self.bucket!r} does not exist")
            if code in _BAD_CREDENTIALS:
                return BadCredentialsError(uri, f"S3 refused the credentials ({code})")
            if code in _DENIED or status == 403:
                return AccessDeniedError(uri, f"permission denied ({code or status})")
            return StorageError(uri, f"S3 error {code or status}")
        return StorageError(uri, f"S3 client error: {type(exc).__name__}")

    # --- signing ------------------------------------------------------------------------

    def _sign(
        self,
        method: str,
        key: str,
        full_key: str,
        lifetime: timedelta,
        content_type: str | None,
    ) -> SignedURL:
        if method == "GET" and self._fast_get is not None:
            keys = self._keys()
            if keys is not None:
                seconds = int(lifetime.total_seconds())
                url = self._fast_get.sign(full_key, seconds, keys, datetime.now(UTC))
                return SignedURL(method, url, key, expiry(lifetime), {})
        op = "get_object" if method == "GET" else "put_object"
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        headers: dict[str, str] = {}
        if content_type and method == "PUT":
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        try:
            url = self._client.generate_presigned_url(
                op, Params=params, ExpiresIn=int(lifetime.total_seconds()), HttpMethod=method
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, self.uri(key)) from None
        if method == "GET" and not self._fast_get_tried:
            self._learn_fast_get(url, full_key)
        return SignedURL(method, url, key, expiry(lifetime), headers)

    def _keys(self) -> Keys | None:
        credentials = self._session.get_credentials()
        if credentials is None:
            return None
        frozen = credentials.get_frozen_credentials()  # refreshes temporary ones in time
        return Keys(frozen.access_key, frozen.secret_key, frozen.token)

    def _learn_fast_get(self, url: str, full_key: str) -> None:
        """Sign later GETs without botocore's per-call cost (sigv4.py), once a URL of
        ours matched botocore's exactly."""
        self._fast_get_tried = True
        keys = self._keys()
        if keys is not None:
            self._fast_get = FastGetSigner.learn(url, full_key, keys)

    def sign_post(
        self,
        lifetime: timedelta | None = None,
        *,
        key_prefix: str = "",
        max_bytes: int = 5 * 1024**3,
    ) -> SignedPost:
        """A POST policy for any key under the output prefix (+ ``key_prefix``).

        The policy carries ``["starts-with", "$key", <prefix>]``: S3 refuses a form whose
        key falls outside it, and ``content-length-range`` caps the object size.
        """
        if not self.writable:
            raise OutsidePrefixError(self.uri(), "refused upload: this location is read-only")
        if key_prefix:
            self.full_key(key_prefix.rstrip("/") + "/x")  # same rules as a key
        allowed = self.prefix + key_prefix
        life = cap_lifetime(lifetime or self.lifetime, self.max_lifetime)
        try:
            post = self._client.generate_presigned_post(
                Bucket=self.bucket,
                Key=allowed + "${filename}",
                Conditions=[
                    ["starts-with", "$key", allowed],
                    ["content-length-range", 0, max_bytes],
                ],
                ExpiresIn=int(life.total_seconds()),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, self.uri(key_prefix)) from None
        return SignedPost(post["url"], dict(post["fields"]), allowed, expiry(life))
