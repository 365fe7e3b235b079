"""Keyed filename hashes: the same file maps to the same id across runs; the name stays secret.

``share.filenames: hashed`` sends ``HMAC-SHA256(salt, filename)`` (hex). The salt is 32
random bytes created once per datasource and kept in the user's output storage, at
``<output>/.sift/filename-salt-<datasource id>.key`` (mode 0600), where the datasource id
is a hash of ``spec.datasource.input``. Later runs over the same input into the same
output reuse it, so ids stay stable; without the salt (which never leaves the user's
storage) a name cannot be recovered or confirmed by hashing guesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from sift_worker.api.v1alpha1 import StorageLocation

SALT_BYTES = 32
SALT_DIR = ".sift"


def datasource_id(location: StorageLocation) -> str:
    """A stable id of an input location (bucket/prefix or folder), 16 hex characters."""
    canonical = json.dumps(
        location.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def salt_path(output_dir: Path, location: StorageLocation) -> Path:
    return output_dir / SALT_DIR / f"filename-salt-{datasource_id(location)}.key"


def load_or_create_salt(path: Path) -> bytes:
    """Read the salt, or create it exactly once (two concurrent runs agree on one salt)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salt.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SALT_BYTES))
            with contextlib.suppress(FileExistsError):  # another run was first: theirs wins
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        data = path.read_bytes()
    if len(data) != SALT_BYTES:
        raise ValueError(f"{path}: a filename salt must be {SALT_BYTES} bytes, not {len(data)}")
    return data


def hash_filename(salt: bytes, filename: str) -> str:
    return hmac.new(salt, filename.encode("utf-8"), hashlib.sha256).hexdigest()
