"""Storage backends behind one interface: S3, GCS, Azure Blob and a mounted volume.

:func:`open_storage` turns a ``StorageLocation`` of a SelectionRun into a
:class:`Storage`, with credentials either from a Secret's data (the broker) or from
the user's own environment (a local run). See ``docs/storage.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from sift_worker.api.v1alpha1 import StorageLocation
from sift_worker.storage.base import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ListFilter,
    ObjectInfo,
    ObjectNotFoundError,
    OutsidePrefixError,
    SignedPost,
    SignedURL,
    Storage,
    StorageError,
)
from sift_worker.storage.signer import InputPage, RunSigner

__all__ = [
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "AccessDeniedError",
    "BadCredentialsError",
    "BucketNotFoundError",
    "EmptyInputError",
    "InputPage",
    "ListFilter",
    "ObjectInfo",
    "ObjectNotFoundError",
    "OutsidePrefixError",
    "RunSigner",
    "SignedPost",
    "SignedURL",
    "Storage",
    "StorageError",
    "open_storage",
]

# Keys a credentials Secret may carry, per backend (first match wins).
S3_KEYS = (("accessKeyId", "AWS_ACCESS_KEY_ID"), ("secretAccessKey", "AWS_SECRET_ACCESS_KEY"))
S3_SESSION_KEYS = ("sessionToken", "AWS_SESSION_TOKEN")
GCS_KEYS = ("serviceAccount.json", "key.json", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
AZURE_KEYS = ("accountKey", "AZURE_STORAGE_KEY")


def _first(data: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = data.get(name)
        if value:
            return value
    return None


def _azure_connection(conn: str) -> dict[str, str]:
    parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    return {k.lower(): v for k, v in parts.items()}


def open_storage(
    loc: StorageLocation,
    *,
    writable: bool,
    secret: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    lifetime: timedelta | None = None,
    prefix_suffix: str = "",
) -> Storage:
    """The storage for one location.

    ``secret``: the decoded data of the run's credentials Secret (the broker). Without
    it, credentials come from ``env`` (default: the process environment) the way each
    cloud's own tools find them: S3 through boto3's default chain (``AWS_*``, shared
    config, IRSA, instance metadata); GCS from the key file in
    ``GOOGLE_APPLICATION_CREDENTIALS`` (``STORAGE_EMULATOR_HOST`` for an emulator);
    Azure from ``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_STORAGE_KEY`` (the blob
    endpoint: the spec's ``endpoint``, else the connection string's ``BlobEndpoint``, else
    ``https://<account>.blob.core.windows.net``).
    ``prefix_suffix`` is appended to the location's prefix (the broker's
    ``<namespace>/<name>/<uid>/`` under the output prefix).
    """
    from sift_worker.fetch import install_redaction

    install_redaction()  # before any cloud client logs a line
    environ: Mapping[str, str] = os.environ if env is None else env
    if loc.volume is not None:
        from sift_worker.storage.volume import VolumeStorage

        return VolumeStorage(Path(loc.volume.path) / prefix_suffix, writable=writable)
    if loc.s3 is not None:
        from sift_worker.storage.s3 import S3Credentials, S3Storage

        s3 = loc.s3
        creds = None
        if secret is not None:
            key_id, secret_key = _first(secret, S3_KEYS[0]), _first(secret, S3_KEYS[1])
            if not key_id or not secret_key:
                raise BadCredentialsError(
                    f"s3://{s3.bucket}/{s3.prefix}",
                    "the credentials Secret needs accessKeyId and secretAccessKey",
                )
            creds = S3Credentials(key_id, secret_key, _first(secret, S3_SESSION_KEYS))
        return S3Storage(
            s3.bucket,
            s3.prefix + prefix_suffix,
            credentials=creds,
            region=s3.region,
            endpoint=s3.endpoint,
            writable=writable,
            lifetime=lifetime,
        )
    if loc.gcs is not None:
        from google.auth.credentials import Credentials

        from sift_worker.storage.gcs import GCSStorage, service_account_credentials

        g = loc.gcs
        where = f"gs://{g.bucket}/{g.prefix}"
        raw = _first(secret, GCS_KEYS) if secret is not None else None
        if raw is None and secret is None:
            path = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            if not path:
                raise BadCredentialsError(where, "set GOOGLE_APPLICATION_CREDENTIALS to a key file")
            try:
                raw = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise BadCredentialsError(
                    where, f"cannot read the key file: {exc.strerror}"
                ) from None
        if raw is None:
            raise BadCredentialsError(where, "the credentials Secret needs serviceAccount.json")
        try:
            info = json.loads(raw)
        except ValueError:
            raise BadCredentialsError(where, "the service-account key is not JSON") from None
        sa_creds = service_account_credentials(info, where)
        emulator = environ.get("STORAGE_EMULATOR_HOST")
        api_creds: Credentials | None = None
        if emulator:
            from google.auth.credentials import AnonymousCredentials

            api_creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return GCSStorage(
            g.bucket,
            g.prefix + prefix_suffix,
            credentials=sa_creds,
            api_credentials=api_creds,
            endpoint=emulator or None,
            writable=writable,
            lifetime=lifetime,
        )
    if loc.azure is not None:
        from sift_worker.storage.azure import AzureStorage

        a = loc.azure
        where = f"azure://{a.account}/{a.container}/{a.prefix}"
        endpoint = a.endpoint  # the spec's wins over a connection string's BlobEndpoint
        key = _first(secret, AZURE_KEYS) if secret is not None else None
        if secret is None:
            conn = environ.get("AZURE_STORAGE_CONNECTION_STRING")
            if conn:
                parts = _azure_connection(conn)
                key = parts.get("accountkey")
                endpoint = endpoint or parts.get("blobendpoint")
            key = key or environ.get("AZURE_STORAGE_KEY")
        if not key:
            raise BadCredentialsError(
                where,
                "no account key (Secret key accountKey, or AZURE_STORAGE_CONNECTION_STRING / "
                "AZURE_STORAGE_KEY)",
            )
        return AzureStorage(
            a.account,
            a.container,
            a.prefix + prefix_suffix,
            account_key=key,
            endpoint=endpoint,
            writable=writable,
            lifetime=lifetime,
        )
    raise ValueError("a StorageLocation with no backend")  # excluded by the model's rules
