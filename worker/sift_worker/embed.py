"""Stream samples (images, video frames, object crops) through the model, bounded in memory.

Decoding runs in worker threads (Pillow and FFmpeg release the GIL) and overlaps the
model's forward pass, which also runs outside the GIL. At most ``window`` decoded
samples exist at once, whatever the dataset size; only the (N, D) embeddings grow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sift_worker.imaging import CorruptImage
from sift_worker.keystream import KeyStream
from sift_worker.models import EmbeddingModel, embed_batch
from sift_worker.progress import StageProgress
from sift_worker.sources.samples import ObjectReader, SampleRef, iter_decoded_samples

if TYPE_CHECKING:
    from sift_worker.checkpoint import Checkpoint


@dataclass
class Embedded:
    filenames: list[str]  # sample ids, row-aligned with embeddings
    embeddings: np.ndarray  # (N, D) float32
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (sample id or file, reason)
    refs: list[SampleRef] = field(default_factory=list)  # row-aligned with filenames


class _Rows:
    """A growing (N, D) float32 buffer: amortised doubling, no per-batch concatenation."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.data = np.empty((max(capacity, 1), dim), dtype=np.float32)
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self.data):
            grown = np.empty((max(need, 2 * len(self.data)), self.data.shape[1]), np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = rows
        self.size = need


def embed_samples(
    root: Path | ObjectReader,
    samples: Iterable[str | SampleRef],
    model: EmbeddingModel,
    *,
    batch_size: int,
    decode_workers: int,
    stage: StageProgress,
    expected: int = 0,
    every_n: int = 1,
    max_frames: int | None = None,
    checkpoint: Checkpoint | None = None,
) -> Embedded:
    """Embed every sample; videos expand into frames (``every_n``, ``max_frames``).

    With a ``checkpoint``, chunks a previous attempt saved are loaded instead of
    embedded, and each chunk of ``checkpoint.chunk_samples`` samples is saved once done.
    """
    size = model.input_size
    rows = _Rows(model.embedding_dim, expected)
    batch = np.empty((batch_size, 3, size, size), dtype=np.uint8)
    refs: list[SampleRef] = []
    corrupt: list[tuple[str, str]] = []
    filled = 0
    # a listing still streaming in stays lazy: its length is asked for only when resuming
    todo: list[str | SampleRef] | KeyStream = (
        samples if isinstance(samples, KeyStream) else list(samples)
    )
    start = 0
    if checkpoint is not None:
        for chunk in checkpoint.load(model.embedding_dim):
            rows.extend(chunk.vectors)
            refs += chunk.refs
            corrupt += chunk.corrupt
            stage.advance(len(chunk.refs) + len(chunk.corrupt))
            start += checkpoint.chunk_samples
        if start:
            start = min(start, len(todo))
    saver = _ChunkSaver(checkpoint, start, todo, rows, refs, corrupt)

    def flush() -> None:
        nonlocal filled
        if filled:
            rows.extend(embed_batch(model, torch.from_numpy(batch[:filled])).numpy())
            stage.advance(filled)
            filled = 0

    stream = iter_decoded_samples(
        root,
        itertools.islice(todo, start, None),
        size,
        workers=decode_workers,
        window=max(2 * batch_size, 4 * decode_workers),
        every_n=every_n,
        max_frames=max_frames,
    )
    for ref, item in stream:
        if saver.crossing(ref):
            flush()
            saver.save_done()
        if isinstance(item, CorruptImage):
            corrupt.append((ref.id, item.reason))
            stage.advance(1)
            continue
        batch[filled] = item
        filled += 1
        refs.append(ref)
        if filled == batch_size:
            flush()
    flush()
    saver.finish()
    return Embedded([r.id for r in refs], rows.data[: rows.size], corrupt, refs)


class _ChunkSaver:
    """Tracks which input sample the stream is at and saves each finished chunk.

    The stream yields refs in input order; a sample yields one ref or more (video
    frames), or none. Reaching a ref of a sample past the current chunk means every
    sample of that chunk is done (after the caller flushed the batch).
    """

    def __init__(
        self,
        checkpoint: Checkpoint | None,
        start: int,
        todo: list[str | SampleRef] | KeyStream,
        rows: _Rows,
        refs: list[SampleRef],
        corrupt: list[tuple[str, str]],
    ) -> None:
        self.checkpoint = checkpoint
        self.size = checkpoint.chunk_samples if checkpoint else 0
        self.index = -(-start // self.size) if self.size else 0  # chunks already saved
        self.at = start  # the input sample the stream is at
        self.todo = todo
        self.rows, self.refs, self.corrupt = rows, refs, corrupt
        self.marks = (rows.size, len(refs), len(corrupt))  # where the current chunk began

    def crossing(self, ref: SampleRef) -> bool:
        if self.checkpoint is None:
            return False
        while True:
            try:
                sample = self.todo[self.at]
            except IndexError:
                raise RuntimeError(f"sample {ref.id} is not in the input list") from None
            if _belongs(sample, ref):
                return self.at >= (self.index + 1) * self.size
            self.at += 1

    def save_done(self) -> None:
        """Save every chunk that ends at or before the current sample."""
        while self.checkpoint is not None and self.at >= (self.index + 1) * self.size:
            self._save()

    def finish(self) -> None:
        while self.checkpoint is not None and self.index * self.size < len(self.todo):
            self._save()

    def _save(self) -> None:
        from sift_worker.checkpoint import Chunk

        assert self.checkpoint is not None
        r0, f0, c0 = self.marks
        self.checkpoint.save(
            self.index,
            Chunk(
                self.rows.data[r0 : self.rows.size].copy(),
                self.refs[f0:],
                self.corrupt[c0:],
            ),
        )
        self.index += 1
        self.marks = (self.rows.size, len(self.refs), len(self.corrupt))


def _belongs(sample: str | SampleRef, ref: SampleRef) -> bool:
    return ref == sample if isinstance(sample, SampleRef) else ref.file == sample


def embed_folder(
    root: Path,
    names: Iterable[str],
    model: EmbeddingModel,
    *,
    batch_size: int,
    decode_workers: int,
    stage: StageProgress,
) -> Embedded:
    """Embed image files (the common case; kept for callers that have only names)."""
    return embed_samples(
        root, names, model, batch_size=batch_size, decode_workers=decode_workers, stage=stage
    )
