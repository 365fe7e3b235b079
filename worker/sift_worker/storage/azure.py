"""Azure Blob Storage: service SAS tokens scoped to one blob and one permission.

Signing needs the storage account key (from a Secret, or ``AZURE_STORAGE_KEY`` /
``AZURE_STORAGE_CONNECTION_STRING`` for a local run). A GET URL carries ``sp=r`` for that
blob only; a PUT URL ``sp=cw`` for that blob only; both end at ``expires_at``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

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

__all__ = ["AzureStorage"]


class AzureStorage(Storage):
    scheme = "azure"

    def __init__(
        self,
        account: str,
        container: str,
        prefix: str = "",
        *,
        account_key: str,
        endpoint: str | None = None,
        writable: bool = False,
        lifetime: timedelta | None = None,
    ) -> None:
        super().__init__(container, prefix, writable=writable, lifetime=lifetime)
        self.account = account
        self._key = account_key
        self._endpoint = (endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")
        try:
            service = BlobServiceClient(
                self._endpoint, credential={"account_name": account, "account_key": account_key}
            )
        except (ValueError, AzureError) as exc:
            raise BadCredentialsError(
                self.uri(), f"unusable account key ({type(exc).__name__})"
            ) from None
        self._container = service.get_container_client(container)

    def uri(self, key: str = "") -> str:
        return f"azure://{self.account}/{self.bucket}/{self.prefix}{key}"

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        n = len(self.prefix)
        try:
            pages = self._container.list_blobs(
                name_starts_with=self.prefix or None, results_per_page=max(1, min(page_size, 5000))
            ).by_page(continuation_token=token)
            page = next(pages, None)
            items = list(page) if page is not None else []
            nxt = pages.continuation_token  # type: ignore[attr-defined]
        except Exception as exc:
            raise self._error(exc) from None
        out = [
            ObjectInfo(b.name[n:], b.size)
            for b in items
            if b.name.startswith(self.prefix) and len(b.name) > n
        ]
        return out, nxt or None

    def _error(self, exc: Exception) -> StorageError:
        uri = self.uri()
        if isinstance(exc, ResourceNotFoundError):
            return BucketNotFoundError(uri, f"container {self.bucket!r} does not exist")
        if isinstance(exc, ClientAuthenticationError):
            return BadCredentialsError(uri, "Azure refused the account key")
        if isinstance(exc, HttpResponseError) and exc.status_code == 403:
            code = getattr(exc, "error_code", None)
            code = str(getattr(code, "value", code) or 403)
            if code in (
                "AuthenticationFailed",
                "InvalidAuthenticationInfo",
                "AuthorizationFailure",
            ):
                # with an account key every operation is allowed: a refusal means the key
                # did not verify (Azurite says AuthorizationFailure) or a network rule
                return BadCredentialsError(
                    uri, f"Azure refused the account key ({code}; or a firewall rule applies)"
                )
            return AccessDeniedError(uri, f"permission denied ({code})")
        if isinstance(exc, ServiceRequestError):
            return StorageError(uri, "cannot connect to the Azure endpoint")
        if isinstance(exc, HttpResponseError):
            return StorageError(uri, f"Azure error {exc.status_code}")
        return StorageError(uri, f"Azure client error: {type(exc).__name__}")

    def _sign(
        self,
        method: str,
        key: str,
        full_key: str,
        lifetime: timedelta,
        content_type: str | None,
    ) -> SignedURL:
        perm = (
            BlobSasPermissions(read=True)
            if method == "GET"
            else BlobSasPermissions(create=True, write=True)
        )
        start = datetime.now(UTC) - timedelta(minutes=5)  # clock skew between hosts
        try:
            sas = generate_blob_sas(
                account_name=self.account,
                container_name=self.bucket,
                blob_name=full_key,
                account_key=self._key,
                permission=perm,
                expiry=datetime.now(UTC) + lifetime,
                start=start,
                protocol="https" if self._endpoint.startswith("https://") else "https,http",
            )
        except (ValueError, TypeError) as exc:
            raise BadCredentialsError(
                self.uri(key), f"cannot sign ({type(exc).__name__})"
            ) from None
        url = f"{self._endpoint}/{quote(self.bucket)}/{quote(full_key, safe='/~')}?{sas}"
        headers = {"x-ms-blob-type": "BlockBlob"} if method == "PUT" else {}
        if content_type and method == "PUT":
            headers["Content-Type"] = content_type
        return SignedURL(method, url, key, expiry(lifetime), headers)
