"""Where a run reads samples and writes artifacts: a folder, or object storage via signed URLs.

For a volume the pipeline reads and writes the folders directly (the fast path, as
before). For S3, GCS or Azure a local run signs in-process with the user's own
credentials through :class:`~sift_worker.storage.RunSigner` (the code the broker
runs in a cluster) and moves every byte through the guarded
:class:`~sift_worker.fetch.Fetcher`:

* input objects are listed page by page, signed one by one as the decoders need them
  and fetched into memory (no temporary copy of each image);
* what must be a file (a video for FFmpeg, the side files of ``spec.input.metadata``
  and ``spec.input.predictions`` for the readers the volume path uses) is downloaded in
  ranged chunks into a private input staging folder, size-capped, so memory stays
  bounded; a video's copy is deleted as soon as its frames are decoded;
* artifacts are written to a private staging folder, then uploaded through signed
  PUTs under the output prefix, ``run.json`` last: a run whose ``run.json`` is in the
  output finished writing everything else.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import itertools
import logging
import mimetypes
import os
import tempfile
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from sift_worker.api.v1alpha1 import SelectionRun, StorageLocation
from sift_worker.broker_client import broker_signer_from_env
from sift_worker.fetch import Fetcher, FetchError, ObjectGoneError
from sift_worker.imaging import CorruptImage
from sift_worker.keystream import KeyStream
from sift_worker.readahead import ReadAhead
from sift_worker.storage import (
    ListFilter,
    OutsidePrefixError,
    RunSigner,
    SignedURL,
    Storage,
    open_storage,
)
from sift_worker.storage.base import check_key

__all__ = ["DataPlane", "RemoteInput", "RemoteOutput", "open_data_plane"]

log = logging.getLogger("sift.dataplane")

FETCH_CONCURRENCY = 16
FINAL_ARTIFACT = "run.json"
SIGN_BATCH = 256  # keys per signing call for side files (the broker takes up to 1,000)
DOWNLOAD_CHUNK = 8 * 1024 * 1024  # one ranged GET: what a download holds in memory
RESIGN_MARGIN = timedelta(seconds=90)  # a download's URL is re-signed this long before expiry
MAX_DOWNLOAD_BYTES = 4 * 1024**3
"""Largest object copied to the staging folder (a video, a metadata table);
``SIFT_MAX_DOWNLOAD_BYTES`` overrides it."""
SCRATCH_BYTES = 16 * 1024**3
"""Disk the videos being decoded may use at most (``SIFT_SCRATCH_BYTES``): with the
download cap it sets how many copies exist at once (the Job's /tmp is 20 GiB)."""


class TooLargeError(FetchError):
    """An object over the download cap; the first ``max_bytes + 1`` bytes are on disk."""


def _env_bytes(name: str, default: int, env: Mapping[str, str] | None) -> int:
    raw = (os.environ if env is None else env).get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}: not a positive whole number of bytes: {raw[:20]!r}")
    return value


def max_download_bytes(env: Mapping[str, str] | None = None) -> int:
    """``SIFT_MAX_DOWNLOAD_BYTES``; ValueError for a bad value."""
    return _env_bytes("SIFT_MAX_DOWNLOAD_BYTES", MAX_DOWNLOAD_BYTES, env)


def scratch_bytes(env: Mapping[str, str] | None = None) -> int:
    """``SIFT_SCRATCH_BYTES``; ValueError for a bad value."""
    return _env_bytes("SIFT_SCRATCH_BYTES", SCRATCH_BYTES, env)


class RemoteInput:
    """The decoder's view of an input bucket: names in, bytes out (``ObjectReader``)."""

    def __init__(
        self,
        signer: RunSigner,
        fetcher: Fetcher,
        staging: Path | None = None,
        max_download: int = MAX_DOWNLOAD_BYTES,
        scratch: int = SCRATCH_BYTES,
    ) -> None:
        self.signer = signer
        self.fetcher = fetcher
        self.storage: Storage = signer.input
        self._own_staging = None
        if staging is None:  # a folder of its own, removed with this object
            self._own_staging = tempfile.TemporaryDirectory(prefix="sift-in-")
            staging = Path(self._own_staging.name)
        self.staging = staging  # private: side files, and videos while they are decoded
        self.max_download = max_download
        # videos on disk at once: `max_copies` + the one being consumed fit in `scratch`
        self.max_copies = max(0, scratch // max_download - 1)
        self.listing_digest = ""  # SHA-256 of the accepted keys and sizes (checkpoint guard)
        self._ahead: ReadAhead | None = None  # the current decode stream's read-ahead

    def uri(self, key: str = "") -> str:
        return self.storage.uri(key)

    def list(self, extensions: frozenset[str], relevant: Container[str] | None) -> list[str]:
        """Every accepted key in order; :class:`~sift_worker.storage.EmptyInputError` if none."""
        return self.listed(self.stream(extensions, relevant))

    def stream(
        self, extensions: frozenset[str], relevant: Container[str] | None = None
    ) -> KeyStream:
        """The accepted keys as they are listed (:class:`KeyStream`)."""
        keep = ListFilter(extensions=extensions, relevant=relevant)
        return KeyStream(lambda: self.storage.require_pages(keep))

    def listed(self, stream: KeyStream) -> builtins.list[str]:
        """Every key of a finished ``stream``; sets :attr:`listing_digest` (SHA-256 of the
        keys and sizes: the checkpoint's guard)."""
        keys, self.listing_digest = stream.result()
        return keys

    def will_read(self, name: str) -> None:
        """A hint from the decode stream: ``read_bytes(name)`` follows, in hint order. The
        object is fetched ahead (:mod:`sift_worker.readahead`, started by the first hint)."""
        if self._ahead is None:
            self._ahead = ReadAhead(self.fetcher, self._sign_one)
        self._ahead.want(name)

    def end_reads(self) -> None:
        """The decode stream ended: stop reading ahead, drop what it did not ask for."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.close()

    def _sign_one(self, name: str) -> SignedURL:
        """A GET URL for one input object (the read-ahead's, the reads' and downloads')."""
        return self.signer.sign_inputs([name])[0]

    def read_bytes(self, name: str) -> bytes:
        """The object's bytes; a listed object that is gone reads as a corrupt sample."""
        ahead = self._ahead
        if ahead is not None:
            body = ahead.take(name)
            if body is not None:
                return body
        signed = self._sign_one(name)
        try:
            return self.fetcher.get_bytes(signed, self.uri(name))
        except ObjectGoneError:
            raise CorruptImage("object vanished during the run (HTTP 404)") from None

    def read_text(self, name: str) -> str:
        signed = self._sign_one(name)
        return self.fetcher.get_bytes(signed, self.uri(name)).decode("utf-8-sig")

    def download(
        self,
        name: str,
        dest: Path,
        max_bytes: int | None = None,
        signed: SignedURL | None = None,
    ) -> int:
        """Copy one object to ``dest`` in ranged GETs of :data:`DOWNLOAD_CHUNK`; its size.

        Memory holds one chunk whatever the object's size. Raises ``ObjectGoneError``
        (404: nothing is written), :class:`TooLargeError` once more than ``max_bytes``
        (default: the run's cap) arrived, ``FetchError`` for anything else; errors name
        the object, never the URL. ``signed``: a GET URL for ``name`` signed already.
        """
        cap = self.max_download if max_bytes is None else max_bytes
        label = self.uri(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        url = signed
        with dest.open("wb") as fh:
            while True:
                if url is None or url.expires_within(RESIGN_MARGIN):  # one URL for all chunks
                    url = self._sign_one(name)
                want = min(DOWNLOAD_CHUNK, cap + 1 - written)
                ranged = dataclasses.replace(
                    url, headers={**url.headers, "Range": f"bytes={written}-{written + want - 1}"}
                )
                try:
                    chunk = self.fetcher.get_bytes(ranged, label)
                except FetchError as exc:
                    if exc.status == 416:  # the range starts at the end: nothing more
                        return written
                    if isinstance(exc, ObjectGoneError) and written == 0:
                        fh.close()
                        dest.unlink(missing_ok=True)
                    raise
                if len(chunk) > want:
                    raise FetchError(label, "the storage server ignored the Range request")
                fh.write(chunk)
                written += len(chunk)
                if written > cap:
                    raise TooLargeError(label, f"object too large: over {cap} bytes")
                if len(chunk) < want:
                    return written

    @property
    def side_dir(self) -> Path:
        """Where side files (metadata, predictions) are copied, under their own keys."""
        return self.staging / "side"

    def download_many(
        self, names: Iterable[str], max_bytes: int | None = None, *, truncate: bool = False
    ) -> builtins.list[tuple[str, str]]:
        """Copy objects to :attr:`side_dir` under their keys, as a volume would hold them.

        A missing object (404) is simply not there, as on a volume. ``names`` is read
        in batches (signed in one call each) and fetched :data:`FETCH_CONCURRENCY` at a
        time, so a generator over millions of names costs one batch of memory. Over
        ``max_bytes``: with ``truncate`` the first ``max_bytes + 1`` bytes are kept (a
        reader then reports the file as too large), else :class:`TooLargeError`. Other
        fetch errors fail the run, naming the object. Returns ``(name, reason)`` for
        names that cannot be object keys (the caller reports them as input problems).
        """
        refused: builtins.list[tuple[str, str]] = []
        found: builtins.list[int] = []  # appended from the pool's threads (atomic)
        asked = 0

        def one(item: tuple[str, SignedURL]) -> None:
            name, signed = item
            dest = self.side_dir / name
            part = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.part")
            try:
                self.download(name, part, max_bytes, signed)
            except ObjectGoneError:
                part.unlink(missing_ok=True)
                return
            except TooLargeError:
                if not truncate:
                    part.unlink(missing_ok=True)
                    raise
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            part.replace(dest)  # whole or absent; two samples may share a side file
            found.append(1)

        with ThreadPoolExecutor(max_workers=FETCH_CONCURRENCY, thread_name_prefix="side") as pool:
            it = iter(names)
            while batch := list(itertools.islice(it, SIGN_BATCH)):
                keys = []
                for name in batch:
                    try:
                        keys.append(check_key(name, self.uri()))
                    except OutsidePrefixError as exc:
                        refused.append((name, f"not a usable object key: {exc.reason}"))
                if keys:
                    asked += len(keys)
                    signed = self.signer.sign_inputs(keys)
                    list(pool.map(one, zip(keys, signed, strict=True)))
        log.info("copied %d of %d side files asked for from %s", len(found), asked, self.uri())
        return refused

    def temp_copy(self, name: str) -> Path:
        """A private copy of a listed object in the staging folder; the caller deletes it.

        A vanished object (404) or one over the cap is a ``CorruptImage`` (the sample is
        listed in corrupt.csv; the run goes on), other fetch errors fail the run.
        """
        folder = self.staging / "media"
        dest = folder / f"{uuid.uuid4().hex}{Path(name).suffix.lower()}"
        try:
            self.download(name, dest)
        except ObjectGoneError:
            dest.unlink(missing_ok=True)
            raise CorruptImage("object vanished during the run (HTTP 404)") from None
        except TooLargeError:
            dest.unlink(missing_ok=True)
            raise CorruptImage(
                f"too large to download: over {self.max_download} bytes (SIFT_MAX_DOWNLOAD_BYTES)"
            ) from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest


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
        fresh = signer.sign_inputs([old.key])[0]
        if "Range" in old.headers:  # a chunk of a download stays that chunk
            fresh = dataclasses.replace(
                fresh, headers={**fresh.headers, "Range": old.headers["Range"]}
            )
        return fresh
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
        with contextlib.ExitStack() as stack:
            if not _is_volume(ds.input):
                in_staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="sift-in-"))
                cap, scratch = max_download_bytes(env_map), scratch_bytes(env_map)
                source = RemoteInput(signer, fetcher, Path(in_staging), cap, scratch)
            if out_store is None:
                assert ds.output.volume is not None
                yield DataPlane(source, Path(ds.output.volume.path), None, fetcher)
                return
            staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="sift-out-"))
            yield DataPlane(
                source, Path(staging), RemoteOutput(signer, fetcher, FETCH_CONCURRENCY), fetcher
            )
    finally:
        fetcher.close()
        if brokered is not None:
            brokered[1].close()
