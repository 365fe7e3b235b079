"""Stream samples (images, video frames, object crops) through the model, bounded in memory.

Decoding runs in worker threads (Pillow and FFmpeg release the GIL) and overlaps the
model's forward pass, which also runs outside the GIL. At most ``window`` decoded
samples exist at once, whatever the dataset size; only the (N, D) embeddings grow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sift_worker.imaging import CorruptImage
from sift_worker.models import EmbeddingModel, embed_batch
from sift_worker.progress import StageProgress
from sift_worker.sources.samples import ObjectReader, SampleRef, iter_decoded_samples


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
) -> Embedded:
    """Embed every sample; videos expand into frames (``every_n``, ``max_frames``)."""
    size = model.input_size
    rows = _Rows(model.embedding_dim, expected)
    batch = np.empty((batch_size, 3, size, size), dtype=np.uint8)
    refs: list[SampleRef] = []
    corrupt: list[tuple[str, str]] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled:
            rows.extend(embed_batch(model, torch.from_numpy(batch[:filled])).numpy())
            stage.advance(filled)
            filled = 0

    stream = iter_decoded_samples(
        root,
        samples,
        size,
        workers=decode_workers,
        window=max(2 * batch_size, 4 * decode_workers),
        every_n=every_n,
        max_frames=max_frames,
    )
    for ref, item in stream:
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
    return Embedded([r.id for r in refs], rows.data[: rows.size], corrupt, refs)


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
