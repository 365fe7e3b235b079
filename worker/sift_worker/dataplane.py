"""Where a run reads samples and writes artifacts: a folder, or object storage via signed URLs.

For a volume the pipeline reads and writes the folders directly (the fast path, as
before). For S3, GCS or Azure a local run signs in-process with the user's own
credentials through :class:`~sift_worker.storage.RunSigner` (the code the broker
runs in a cluster) and moves every byte through the guarded
:class:`~sift_worker.fetch.Fetcher`:

* input objects are listed page by page, signed one by one as the decoders need them
  and fetched into memory (no temporary copy of each file);
* artifacts are written to a private staging folder, then uploaded through signed
  PUTs under the output prefix, ``run.json`` last: a run whose ``run.json`` is in the
  output finished writing everything else.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import tempfile
from collections.abc import Callable, Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sift_worker.api.v1alpha1 import SelectionRun, StorageLocation
from sift_worker.broker_client import broker_signer_from_env
from sift_worker.fetch import Fetcher, ObjectGoneError
from sift_worker.imaging import CorruptImage
from sift_worker.storage import ListFilter, RunSigner, SignedURL, Storage, open_storage

__all__ = ["DataPlane", "RemoteInput", "RemoteOutput", "open_data_plane"]

log = logging.getLogger("sift.dataplane")

FETCH_CONCURRENCY = 16
FINAL_ARTIFACT = "run.json"


class RemoteInput:
    """The decoder's view of an input bucket: names in, bytes out (``ObjectReader``)."""

    def __init__(self, signer: RunSigner, fetcher: Fetcher) -> None:
        self.signer = signer
        self.fetcher = fetcher
        self.storage: Storage = signer.input
        self.listing_digest = ""  # SHA-256 of the accepted keys and sizes (checkpoint guard)

    def uri(self, key: str = "") -> str:
        return self.storage.uri(key)

    def list(self, extensions: frozenset[str], relevant: Container[str] | None) -> list[str]:
        """Every accepted key in order; :class:`~sift_worker.storage.EmptyInputError` if none."""
        keep = ListFilter(extensions=extensions, relevant=relevant)
        digest = hashlib.sha256()
        keys = []
        for o in self.storage.require_objects(keep):
            keys.append(o.key)
            digest.update(f"{o.key}\0{o.size}\0".encode())
        self.listing_digest = digest.hexdigest()
        return keys

    def read_bytes(self, name: str) -> bytes:
        """The object's bytes; a listed object that is gone reads as a corrupt sample."""
        signed = self.signer.sign_inputs([name])[0]
        try:
            return self.fetcher.get_bytes(signed, self.uri(name))
        except ObjectGoneError:
            raise CorruptImage("object vanished during the run (HTTP 404)") from None

    def read_text(self, name: str) -> str:
        signed = self.signer.sign_inputs([name])[0]
        return self.fetcher.get_bytes(signed, self.uri(name)).decode("utf-8-sig")


class RemoteOutput:
    """Uploads a finished artifacts folder through signed PUTs, ``run.json`` last."""

    def __init__(self, signer: RunSigner, fetcher: Fetcher, workers: int) -> None:
        assert signer.output is not None
        self.signer = signer
        self.fetcher = fetcher
        self.workers = workers
        self.storage: Storage = signer.output

    def upload_dir(self, folder: Path, under: tuple[str, ...] = ()) -> int:
        """Every file of ``folder`` (only those in its subfolders ``under``, if given)."""
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if under:
            files = [f for f in files if f.split("/", 1)[0] in under]
        last = [f for f in files if f == FINAL_ARTIFACT]
        rest = [f for f in files if f != FINAL_ARTIFACT]

        def one(rel: str) -> None:
            ctype = mimetypes.guess_type(rel)[0] or "application/octet-stream"
            signed = self.signer.sign_uploads([rel], [ctype])[0]
            self.fetcher.put_bytes(signed, (folder / rel).read_bytes(), self.storage.uri(rel))

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            list(pool.map(one, rest))
        for rel in last:
            one(rel)
        log.info("uploaded %d artifacts to %s", len(files), self.storage.uri())
        return len(files)


@dataclass
class DataPlane:
    input: Path | RemoteInput
    output_dir: Path  # artifacts are written here (the staging folder for object storage)
    upload: RemoteOutput | None = None
    fetcher: Fetcher | None = None

    @property
    def input_label(self) -> str:
        return str(self.input) if isinstance(self.input, Path) else self.input.uri()

    @property
    def output_label(self) -> str:
        return self.upload.storage.uri() if self.upload else str(self.output_dir)


def _resign(signer: RunSigner, old: SignedURL) -> SignedURL:
    """A fresh URL for the same key and method (the Fetcher's refresh callback)."""
    if old.method == "GET":
        return signer.sign_inputs([old.key])[0]
    return signer.sign_uploads([old.key], [old.headers.get("Content-Type")])[0]


def _is_volume(loc: StorageLocation) -> bool:
    return loc.volume is not None


@contextmanager
def open_data_plane(
    run: SelectionRun,
    check_volumes: Callable[[], tuple[Path, Path]],
    *,
    env: dict[str, str] | None = None,
    extra_hosts: tuple[str, ...] = (),
) -> Iterator[DataPlane]:
    """Open the run's input and output; ``check_volumes`` validates an all-volume run."""
    ds = run.spec.datasource
    if _is_volume(ds.input) and _is_volume(ds.output):
        input_dir, output_dir = check_volumes()
        yield DataPlane(input_dir, output_dir)
        return
    env_map = dict(os.environ) if env is None else env
    signer: RunSigner
    brokered = broker_signer_from_env(env_map, output=not _is_volume(ds.output))
    if brokered is not None:  # a cluster run: the operator's broker signs, no credential here
        signer = brokered[0]
        extra_hosts = (*extra_hosts, brokered[1].host_port)
    else:
        in_store = open_storage(ds.input, writable=False, env=env_map)
        out_store = (
            None if _is_volume(ds.output) else open_storage(ds.output, writable=True, env=env_map)
        )
        signer = RunSigner(in_store, out_store)
    out_store = signer.output
    hosts = set(signer.allowed_hosts()) | set(extra_hosts)
    fetcher = Fetcher(
        hosts,
        concurrency=FETCH_CONCURRENCY,
        refresh=partial(_resign, signer),
    )
    try:
        source: Path | RemoteInput
        if _is_volume(ds.input):
            assert ds.input.volume is not None
            source = Path(ds.input.volume.path)
            if not source.is_dir():
                from sift_worker.storage import BucketNotFoundError

                raise BucketNotFoundError(str(source), "input folder not found")
        else:
            source = RemoteInput(signer, fetcher)
        if out_store is None:
            assert ds.output.volume is not None
            yield DataPlane(source, Path(ds.output.volume.path), None, fetcher)
            return
        with tempfile.TemporaryDirectory(prefix="sift-out-") as staging:
            yield DataPlane(
                source, Path(staging), RemoteOutput(signer, fetcher, FETCH_CONCURRENCY), fetcher
            )
    finally:
        fetcher.close()
        if brokered is not None:
            brokered[1].close()
