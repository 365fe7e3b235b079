"""Google Cloud Storage: V4 signed URLs made with a service-account key.

Signing needs a private key (a service-account key from a Secret, or the file in
``GOOGLE_APPLICATION_CREDENTIALS`` for a local run); listing uses the same
credentials unless ``api_credentials`` are given (e.g. anonymous against an emulator).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import Credentials
from google.cloud import storage as gcs
from google.oauth2 import service_account

from sift_worker.storage.base import (
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    ObjectInfo,
    SignedURL,
    Storage,
    StorageError,
    expiry,
)

__all__ = ["GCSStorage", "service_account_credentials"]

DEFAULT_ENDPOINT = "https://storage.googleapis.com"


def service_account_credentials(info: Mapping[str, Any], where: str) -> Credentials:
    """Credentials from a service-account key (the parsed JSON); errors never echo the key."""
    try:
        creds: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(info), scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
        )
    except (ValueError, KeyError) as exc:
        missing = f" (missing {exc})" if isinstance(exc, KeyError) else ""
        raise BadCredentialsError(where, f"not a usable service-account key{missing}") from None
    return creds


class GCSStorage(Storage):
    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: Credentials,
        api_credentials: Credentials | None = None,
        project: str | None = None,
        endpoint: str | None = None,
        writable: bool = False,
        lifetime: timedelta | None = None,
    ) -> None:
        super().__init__(bucket, prefix, writable=writable, lifetime=lifetime)
        self._signing = credentials
        self._endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        options = {"api_endpoint": self._endpoint} if endpoint else None
        self._client = gcs.Client(
            project=project or getattr(credentials, "project_id", None) or "sift",
            credentials=api_credentials or credentials,
            client_options=options,
        )

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        n = len(self.prefix)
        try:
            it = self._client.list_blobs(
                self.bucket,
                prefix=self.prefix or None,
                page_size=max(1, page_size),
                page_token=token,
            )
            page = next(it.pages, None)
            items = list(page) if page is not None else []
            nxt = it.next_page_token
        except Exception as exc:
            raise self._error(exc) from None
        out = [
            ObjectInfo(b.name[n:], int(b.size) if b.size is not None else None)
            for b in items
            if b.name.startswith(self.prefix) and len(b.name) > n
        ]
        return out, nxt or None

    def _error(self, exc: Exception) -> StorageError:
        uri = self.uri()
        if isinstance(exc, gexc.NotFound):
            return BucketNotFoundError(uri, f"bucket {self.bucket!r} does not exist")
        if isinstance(
            exc, gexc.Unauthorized | auth_exc.RefreshError | auth_exc.DefaultCredentialsError
        ):
            return BadCredentialsError(uri, "GCS refused the credentials")
        if isinstance(exc, gexc.Forbidden):
            return AccessDeniedError(uri, "permission denied")
        if isinstance(exc, gexc.GoogleAPICallError):
            return StorageError(uri, f"GCS error {exc.code}")
        return StorageError(uri, f"GCS client error: {type(exc).__name__}")

    def _sign(
        self,
        method: str,
        key: str,
        full_key: str,
        lifetime: timedelta,
        content_type: str | None,
    ) -> SignedURL:
        blob = self._client.bucket(self.bucket).blob(full_key)
        headers = {"Content-Type": content_type} if content_type and method == "PUT" else {}
        try:
            url = blob.generate_signed_url(
                version="v4",
                expiration=lifetime,
                method=method,
                credentials=self._signing,
                api_access_endpoint=self._endpoint,
                content_type=headers.get("Content-Type"),
            )
        except (AttributeError, ValueError, TypeError, auth_exc.TransportError) as exc:
            # AttributeError: credentials without a signer (no private key)
            raise BadCredentialsError(
                self.uri(key), f"cannot sign with these credentials ({type(exc).__name__})"
            ) from None
        return SignedURL(method, url, key, expiry(lifetime), headers)
