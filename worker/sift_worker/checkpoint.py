"""Checkpoint and resume of the embedding phase, in the run's output storage.

Every ``chunk_samples`` input samples the embeddings computed so far are saved as one
chunk object (``checkpoint/chunk-NNNNNN.npz``: float32 rows + the sample refs and the
corrupt samples of that chunk), then ``checkpoint/manifest.json`` is rewritten to list
it, with its SHA-256: the manifest is written last, so a chunk it names is complete.
On a volume both are written to a temporary file and renamed; in a bucket each is one
signed PUT (an object appears whole or not at all).

A restarted worker with the same output (the same run) loads the manifest and every
chunk it lists, checks each chunk's digest, and embeds only the samples after the last
good chunk. Chunk boundaries are fixed by the sample index and the batch is flushed at
each one, so an interrupted and an uninterrupted run push the same batches through the
model: the embeddings are identical. A manifest whose fingerprint (model, weights
digest, input settings, threads, chunk size) differs is ignored with a logged reason,
as is a chunk that is missing, whose digest does not match, or that was made for other
samples than the input now lists at its place.

That last check is per chunk, so that saving a chunk needs only the listing up to its
end: a streamed listing is not forced to finish at the first chunk (it is paced by
the decoders, :mod:`sift_worker.keystream`), and samples added after the chunks saved
leave those chunks good.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sift_worker.outputs import atomic_write_bytes
from sift_worker.sources.samples import SampleRef

__all__ = [
    "CHECKPOINT_DIR",
    "BucketCheckpointStore",
    "Checkpoint",
    "CheckpointStore",
    "Chunk",
    "VolumeCheckpointStore",
    "fingerprint_digest",
]

log = logging.getLogger("sift.checkpoint")

CHECKPOINT_DIR = "checkpoint"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: each chunk names the digest of its samples


class CheckpointStore(Protocol):
    """Where checkpoint objects live: ``read`` answers None for an absent object."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def describe(self) -> str: ...


class VolumeCheckpointStore:
    def __init__(self, output_dir: Path) -> None:
        self.root = output_dir / CHECKPOINT_DIR

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)  # tmp + rename

    def describe(self) -> str:
        return str(self.root)


class BucketCheckpointStore:
    """Checkpoint objects under ``<output prefix>/checkpoint/`` through signed URLs."""

    def __init__(self, signer: Any, fetcher: Any) -> None:
        from sift_worker.storage import Storage

        self.signer = signer
        self.fetcher = fetcher
        out: Storage = signer.output
        self.storage = out

    def _key(self, name: str) -> str:
        return f"{CHECKPOINT_DIR}/{name}"

    def read(self, name: str) -> bytes | None:
        from sift_worker.fetch import ObjectGoneError

        signed = self.signer.sign_output_reads([self._key(name)])[0]
        try:
            data: bytes = self.fetcher.get_bytes(signed, self.storage.uri(self._key(name)))
        except ObjectGoneError:
            return None
        return data

    def write(self, name: str, data: bytes) -> None:
        ctype = "application/json" if name.endswith(".json") else "application/octet-stream"
        signed = self.signer.sign_uploads([self._key(name)], [ctype])[0]
        self.fetcher.put_bytes(signed, data, self.storage.uri(self._key(name)))

    def describe(self) -> str:
        return self.storage.uri(CHECKPOINT_DIR + "/")


@dataclass
class Chunk:
    """The result of samples ``[index * size, (index + 1) * size)``."""

    vectors: np.ndarray  # (rows, D) float32
    refs: list[SampleRef] = field(default_factory=list)  # row-aligned
    corrupt: list[tuple[str, str]] = field(default_factory=list)


def fingerprint_digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.npz"


def _encode(chunk: Chunk) -> bytes:
    meta = {
        "refs": [[r.id, r.file, r.frame, list(r.box) if r.box else None] for r in chunk.refs],
        "corrupt": [list(c) for c in chunk.corrupt],
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        vectors=np.ascontiguousarray(chunk.vectors, dtype=np.float32),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    )
    return buf.getvalue()


def _decode(data: bytes, dim: int) -> Chunk:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        vectors = np.array(npz["vectors"], dtype=np.float32)
        meta = json.loads(npz["meta"].tobytes().decode())
    refs = [
        SampleRef(i, f, fr, (b[0], b[1], b[2], b[3]) if b else None) for i, f, fr, b in meta["refs"]
    ]
    if vectors.ndim != 2 or len(vectors) != len(refs) or (len(refs) and vectors.shape[1] != dim):
        raise ValueError("rows and refs disagree")
    return Chunk(vectors.reshape(len(refs), dim), refs, [(c[0], c[1]) for c in meta["corrupt"]])


class Checkpoint:
    """Saves chunks and the manifest; loads what a previous attempt completed."""

    def __init__(
        self,
        store: CheckpointStore,
        fingerprint: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        chunk_samples: int,
        samples_digest: Callable[[int, int], str] | None = None,
    ) -> None:
        """``fingerprint``: or a function that makes it when first needed (a manifest
        to compare, a chunk to save). ``samples_digest(start, stop)``: a digest of the
        input samples ``[start, stop)`` as listed now (fewer at the end), kept with
        each chunk and compared when it is loaded."""
        if chunk_samples < 1:
            raise ValueError("chunk_samples must be positive")
        self.store = store
        self._fingerprint = fingerprint
        self._made: tuple[dict[str, Any], str] | None = None
        self.chunk_samples = chunk_samples
        self._samples_digest = samples_digest
        self._entries: list[dict[str, Any]] = []

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._make()[0]

    @property
    def digest(self) -> str:
        return self._make()[1]

    def _make(self) -> tuple[dict[str, Any], str]:
        if self._made is None:
            raw = self._fingerprint
            parts = dict(raw() if callable(raw) else raw)
            self._made = (parts, fingerprint_digest(parts))
        return self._made

    def load(self, dim: int) -> list[Chunk]:
        """The chunks a previous attempt completed, in order (empty: start afresh)."""
        where = self.store.describe()
        try:
            raw = self.store.read(MANIFEST)
        except Exception as exc:  # an unreadable checkpoint only costs the time to redo it
            log.warning("checkpoint in %s not read (%s): starting afresh", where, _why(exc))
            return []
        if raw is None:
            return []
        try:
            manifest = json.loads(raw)
            entries = list(manifest["chunks"])
            same = manifest.get("version") == FORMAT_VERSION and manifest.get("fingerprint") == (
                self.digest
            )
        except (ValueError, KeyError, TypeError):
            log.warning("checkpoint manifest in %s is unreadable: ignored", where)
            return []
        if not same:
            old = manifest.get("parts") if isinstance(manifest, dict) else None
            changed = (
                sorted(k for k in self.fingerprint if old.get(k) != self.fingerprint[k])
                if isinstance(old, dict) and manifest.get("version") == FORMAT_VERSION
                else ["format"]
            )
            log.warning(
                "checkpoint in %s ignored: it was made with a different %s",
                where,
                ", ".join(changed) or "configuration",
            )
            return []
        chunks: list[Chunk] = []
        for n, entry in enumerate(entries):
            name = _chunk_name(n)
            try:
                if entry.get("samples") != self._samples_of(n):
                    raise ValueError("it was made for other samples than the input lists now")
                data = self.store.read(name) if entry.get("file") == name else None
                if data is None or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    raise ValueError("missing or its digest does not match the manifest")
                chunks.append(_decode(data, dim))
            except Exception as exc:
                log.warning(
                    "checkpoint chunk %s in %s ignored (%s): resuming before it",
                    name,
                    where,
                    _why(exc),
                )
                break
            self._entries.append(entry)
        if chunks:
            log.info(
                "resuming from checkpoint in %s: %d chunks (%d samples) already embedded",
                where,
                len(chunks),
                len(chunks) * self.chunk_samples,
            )
        return chunks

    def save(self, index: int, chunk: Chunk) -> None:
        """Write chunk ``index`` (the next one), then the manifest that lists it."""
        if index != len(self._entries):
            raise ValueError(f"chunk {index} saved out of order (next is {len(self._entries)})")
        data = _encode(chunk)
        name = _chunk_name(index)
        self.store.write(name, data)
        self._entries.append(
            {
                "file": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "samples": self._samples_of(index),
                "rows": len(chunk.refs),
                "corrupt": len(chunk.corrupt),
            }
        )
        manifest = {
            "version": FORMAT_VERSION,
            "fingerprint": self.digest,
            "parts": self.fingerprint,
            "chunkSamples": self.chunk_samples,
            "chunks": self._entries,
        }
        self.store.write(MANIFEST, json.dumps(manifest, indent=1).encode())

    def _samples_of(self, index: int) -> str | None:
        if self._samples_digest is None:
            return None
        start = index * self.chunk_samples
        return self._samples_digest(start, start + self.chunk_samples)


def _why(exc: BaseException) -> str:
    from sift_worker.logs import redact

    return redact(str(getattr(exc, "reason", None) or exc))[:200]


def listing_digest(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(b"\0")
    return h.hexdigest()
