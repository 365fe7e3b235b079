"""Stream images from a folder through the model with bounded memory.

Decoding runs in a thread pool (Pillow releases the GIL while decoding and
resizing) and overlaps the model's forward pass, which also runs outside the
GIL. At most ``window`` decoded images exist at once, whatever the dataset size;
only the (N, D) embeddings grow with N.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sift_worker.imaging import CorruptImage, decode_for_model
from sift_worker.models import EmbeddingModel, embed_batch
from sift_worker.progress import StageProgress

Decoded = np.ndarray | CorruptImage


@dataclass
class Embedded:
    filenames: list[str]
    embeddings: np.ndarray  # (N, D) float32, rows aligned with filenames
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (filename, reason)


def _decode_safely(decode: Callable[[Path], np.ndarray], path: Path) -> Decoded:
    try:
        return decode(path)
    except CorruptImage as exc:
        return exc


def decode_in_order(
    root: Path,
    names: Sequence[str],
    decode: Callable[[Path], np.ndarray],
    *,
    workers: int,
    window: int,
) -> Iterator[tuple[str, Decoded]]:
    """Yield ``(name, image or CorruptImage)`` in input order with ``window`` decodes in flight."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque[tuple[str, Future[Decoded]]] = deque()
        it = iter(names)
        for name in it:
            pending.append((name, pool.submit(_decode_safely, decode, root / name)))
            if len(pending) >= window:
                break
        while pending:
            name, fut = pending.popleft()
            yield name, fut.result()
            # refill only once the consumer is done with the item: at most `window` images live
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_safely, decode, root / nxt)))


def embed_folder(
    root: Path,
    names: Sequence[str],
    model: EmbeddingModel,
    *,
    batch_size: int,
    decode_workers: int,
    stage: StageProgress,
) -> Embedded:
    size = model.input_size
    out = np.empty((len(names), model.embedding_dim), dtype=np.float32)
    batch = np.empty((batch_size, 3, size, size), dtype=np.uint8)
    filenames: list[str] = []
    corrupt: list[tuple[str, str]] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled:
            start = len(filenames) - filled
            out[start : start + filled] = embed_batch(
                model, torch.from_numpy(batch[:filled])
            ).numpy()
            stage.advance(filled)
            filled = 0

    def decode(path: Path) -> np.ndarray:
        return decode_for_model(path, size)

    for name, item in decode_in_order(
        root, names, decode, workers=decode_workers, window=max(2 * batch_size, 4 * decode_workers)
    ):
        if isinstance(item, CorruptImage):
            corrupt.append((name, item.reason))
            stage.advance(1)
            continue
        batch[filled] = item
        filled += 1
        filenames.append(name)
        if filled == batch_size:
            flush()
    flush()
    return Embedded(filenames, out[: len(filenames)], corrupt)
