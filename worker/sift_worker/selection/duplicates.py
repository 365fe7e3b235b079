"""Duplicate removal before selection: exact (same file bytes) and near (close embeddings).

Semantics, deterministic and independent of block size:

1. **exact**: rows with the same content hash; the lowest index is kept.
2. **near**: the remaining rows are visited in index order, and a row is removed when it
   lies within ``max_distance`` of an earlier row that was *kept*. Comparing against kept
   rows only is what stops chains: in a slow drift ``a, b, c`` with ``d(a, b)`` and
   ``d(b, c)`` within the threshold but ``d(a, c)`` not, ``b`` is removed as a duplicate
   of ``a`` and ``c`` is kept, because a removed row removes nothing. So every removed row
   is within ``max_distance`` of a kept row, and kept rows are pairwise farther apart.
   Rows with identical (normalised) embeddings are always near duplicates, even at
   ``max_distance == 0``.

Distances follow ``kcenter``: Euclidean between L2-normalised rows, in [0, 2]. The
near pass never builds an N x N matrix: blocks of rows are compared, in matmul tiles of
bounded size, with the rows kept so far, which are compacted in place at the front of one
normalised copy of the embeddings. Memory is that copy plus O(block x tile). Time is
O(N x kept) pairs: for D >= 96 each pair first costs a 32-wide dot product that bounds
its similarity from above (top principal directions + residual norm), and only pairs the
bound cannot rule out get the full D-wide one. Exact either way: same answer as brute force.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_HASH_BATCH = 4096  # files in flight per executor.map, so 1M paths do not mean 1M futures
_TILE_ELEMENTS = 1 << 25  # similarity tile size (128 MiB of float32), block x kept columns
_BOUND_DIMS = 31  # principal directions in the pre-filter's bound (+1 residual: 32 wide)
_BOUND_TILE_CPU = (1024, 1024)  # bound tile rows x columns: 4 MiB, stays in cache
_BOUND_TILE_OTHER = (4096, 32768)  # accelerators prefer few large launches
_BOUND_MIN_DIM = 96  # narrower embeddings: the filter would save too little
_BOUND_SLACK = 1e-4  # float32 error allowance, so the bound never drops a true pair


@dataclass(frozen=True)
class Duplicates:
    """Which rows survive duplicate removal, and why the others did not."""

    keep: np.ndarray  # (N,) bool, False for rows removed as duplicates
    duplicate_of: dict[int, int]  # removed row -> the kept row it duplicates
    kind: dict[int, str]  # removed row -> "exact" | "near"
    distance: dict[int, float]  # removed row -> embedding distance to its original (0.0 for exact)


def _blake2b_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            # file_digest streams in chunks and releases the GIL, so threads overlap reads
            return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=32)).hexdigest()
    except OSError:
        return None


def content_hashes(paths: Sequence[Path], *, workers: int = 2) -> list[str | None]:
    """blake2b-256 hex digest of each file's bytes, in order; None for unreadable files.

    Threads rather than processes: hashing is I/O bound and hashlib drops the GIL.
    """
    if workers <= 1:
        return [_blake2b_file(p) for p in paths]
    out: list[str | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), _HASH_BATCH):
            out.extend(pool.map(_blake2b_file, paths[start : start + _HASH_BATCH]))
    return out


@contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """TF32/bf16 matmuls (~1e-3 error on a dot product) would move a 0.05 threshold a lot."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _normalised_copy(embeddings: np.ndarray, rows: np.ndarray, block: int) -> np.ndarray:
    """float32 unit rows of ``embeddings[rows]``, built blockwise to cap peak memory."""
    out = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), block):
        part = torch.from_numpy(
            np.ascontiguousarray(embeddings[rows[start : start + block]], dtype=np.float32)
        )
        out[start : start + block] = torch.nn.functional.normalize(part, dim=1).numpy()
    return out


def _first_identical(x: np.ndarray, block: int) -> np.ndarray:
    """For each row, the lowest row with the same bits (itself if none).

    Rows are grouped by a 64-bit multiplicative hash of their 32-bit words (sorting the
    raw rows is slow for wide ones), then every match is confirmed bit for bit. A row
    whose hash collides with a different row's stays its own (the near pass still sees it).
    """
    n = x.shape[0]
    words = np.ascontiguousarray(x).view(np.uint32)
    mult = np.random.default_rng(0).integers(1, 2**63, size=words.shape[1], dtype=np.uint64)
    mult |= np.uint64(1)  # odd multipliers
    keys = np.empty(n, dtype=np.uint64)
    for start in range(0, n, block):
        keys[start : start + block] = (words[start : start + block] * mult).sum(axis=1)
    _, first_of_key, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = first_of_key[inverse.ravel()].astype(np.int64)
    copies = np.flatnonzero(first != np.arange(n))
    for start in range(0, len(copies), block):
        rows = copies[start : start + block]
        differ = ~(words[rows] == words[first[rows]]).all(axis=1)
        first[rows[differ]] = rows[differ]
    return first


def _top_directions(sample: torch.Tensor, dims: int) -> torch.Tensor:
    """(D, dims) orthonormal basis of ``sample``'s dominant directions (uncentred).

    Seeded subspace iteration: cheap at D = 2048 where a full eigendecomposition is not,
    and deterministic. Only the filter's speed depends on its accuracy, never the result.
    """
    gen = torch.Generator(device=sample.device).manual_seed(0)
    q = torch.randn(sample.shape[1], dims + 8, generator=gen, device=sample.device)
    for _ in range(4):
        q = torch.linalg.qr(sample.T @ (sample @ q)).Q
    small = (sample @ q).double()
    vectors = torch.linalg.eigh(small.T @ small).eigenvectors[:, -dims:]
    basis: torch.Tensor = torch.linalg.qr((q.double() @ vectors).to(sample.dtype)).Q
    return basis


def _bound_coordinates(x: torch.Tensor, dims: int, block: int) -> torch.Tensor:
    """Rows ``[P a, |a - P'P a|]``, P the top ``dims`` directions of ``x`` (uncentred).

    Their dot product bounds the true one from above (a.b = Pa.Pb + Ra.Rb <= Pa.Pb +
    |Ra| |Rb|, Cauchy-Schwarz), so a pair whose bound is below the threshold needs no
    full D-dimensional dot product. The bound is tight when embeddings live mostly in a
    few directions, as real ones do; the filter costs about ``dims / D`` of brute force.
    """
    basis = _top_directions(x[:: max(1, x.shape[0] // 4096)], dims)
    out = torch.empty((x.shape[0], dims + 1), dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], block):
        part = x[start : start + block]
        proj = part @ basis
        out[start : start + block, :dims] = proj
        # the residual explicitly, not sqrt(1 - |Pa|^2): that cancels badly near 0
        out[start : start + block, dims] = torch.linalg.vector_norm(part - proj @ basis.T, dim=1)
    return out


def _nearest_kept(xb: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max similarity of each row of ``xb`` to ``kept``, and its column, in bounded tiles."""
    b = xb.shape[0]
    best = torch.full((b,), -math.inf, device=xb.device)
    arg = torch.zeros(b, dtype=torch.long, device=xb.device)
    cols = max(b, _TILE_ELEMENTS // max(b, 1))
    for c0 in range(0, kept.shape[0], cols):
        value, index = (xb @ kept[c0 : c0 + cols].T).max(dim=1)
        better = value > best  # strict: ties stay with the lower (earlier) kept row
        best = torch.where(better, value, best)
        arg = torch.where(better, index + c0, arg)
    return best, arg


def _nearest_kept_bounded(
    xb: torch.Tensor,
    bb: torch.Tensor,
    kept: torch.Tensor,
    kept_bounds: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_nearest_kept``, computing full dot products only where the bound reaches ``threshold``.

    Exact for every row whose true maximum reaches the threshold; other rows get a lower
    value (-inf if nothing was computed). Bound tiles are small so they stay in cache: at
    ~32 columns the matmul is bound by writing its output, not by arithmetic.
    """
    b = xb.shape[0]
    best = torch.full((b,), -math.inf, device=xb.device)
    arg = torch.zeros(b, dtype=torch.long, device=xb.device)
    rows_per, cols_per = _BOUND_TILE_CPU if xb.device.type == "cpu" else _BOUND_TILE_OTHER
    cutoff = threshold - _BOUND_SLACK
    for r0 in range(0, b, rows_per):
        for c0 in range(0, kept.shape[0], cols_per):
            bound = bb[r0 : r0 + rows_per] @ kept_bounds[c0 : c0 + cols_per].T
            rows = torch.nonzero(bound.amax(dim=1) >= cutoff).squeeze(1)
            if rows.numel() == 0:
                continue
            columns = torch.nonzero((bound[rows] >= cutoff).any(dim=0)).squeeze(1)
            value, index = (xb[r0 + rows] @ kept[c0 + columns].T).max(dim=1)
            target = r0 + rows
            better = value > best[target]  # columns ascend, so ties stay with the lower row
            best[target] = torch.where(better, value, best[target])
            arg[target] = torch.where(better, c0 + columns[index], arg[target])
    return best, arg


def _greedy_near(
    x: torch.Tensor, threshold: float, block: int, bounds: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate pass over unit rows ``x``, in index order.

    Returns (keep, duplicate_of), the latter the nearest earlier kept row of each removed
    row (-1 for kept rows). ``x`` and ``bounds`` are overwritten: kept rows are compacted
    into ``x[:n_kept]`` as the pass goes (they land at or before their own position, so
    after everything still to be read).
    """
    m = x.shape[0]
    keep = np.zeros(m, dtype=bool)
    dup = np.full(m, -1, dtype=np.int64)
    kept_row = np.empty(m, dtype=np.int64)  # compacted position -> row of x
    n_kept = 0
    for start in range(0, m, block):
        xb = x[start : start + block]
        bb = None if bounds is None else bounds[start : start + block]
        b = xb.shape[0]
        # 1. nearest earlier kept row from previous blocks
        if bounds is None or bb is None:
            best, arg = _nearest_kept(xb, x[:n_kept])
        else:
            best, arg = _nearest_kept_bounded(xb, bb, x[:n_kept], bounds[:n_kept], threshold)
        keep_b = ~(best >= threshold).cpu().numpy()
        # 2. within the block, sequentially, but only for rows with an earlier neighbour
        w = xb @ xb.T
        adj = torch.tril(w >= threshold, diagonal=-1)
        pending = np.flatnonzero(keep_b & adj.any(dim=1).cpu().numpy())
        if len(pending):
            adj_rows = adj[torch.from_numpy(pending).to(x.device)].cpu().numpy()
            for row, neighbours in zip(pending.tolist(), adj_rows, strict=True):
                if (neighbours & keep_b).any():  # neighbours are all earlier: final already
                    keep_b[row] = False
        # 3. for removed rows, the nearest earlier kept row: previous blocks or this one
        removed = np.flatnonzero(~keep_b)
        if len(removed):
            r = torch.from_numpy(removed).to(x.device)
            earlier_kept = (
                torch.arange(b, device=x.device)[None, :] < r[:, None]
            ) & torch.from_numpy(keep_b).to(x.device)[None, :]
            inner = torch.where(earlier_kept, w[r], -math.inf)
            in_best, in_arg = inner.max(dim=1)
            use_in = (in_best > best[r]).cpu().numpy()  # ties: previous blocks, lower index
            prev_row = kept_row[arg[r].cpu().numpy()]
            dup[start + removed] = np.where(use_in, start + in_arg.cpu().numpy(), prev_row)
        # 4. append this block's kept rows to the compacted kept set (the copy comes first)
        kept_here = np.flatnonzero(keep_b)
        kept_t = torch.from_numpy(kept_here).to(x.device)
        x[n_kept : n_kept + len(kept_here)] = xb[kept_t]
        if bounds is not None and bb is not None:
            bounds[n_kept : n_kept + len(kept_here)] = bb[kept_t]
        kept_row[n_kept : n_kept + len(kept_here)] = start + kept_here
        n_kept += len(kept_here)
        keep[start : start + b] = keep_b
    return keep, dup


def _unit(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def find_duplicates(
    embeddings: np.ndarray,
    *,
    hashes: Sequence[str | None] | None,
    max_distance: float,
    block_size: int = 2048,
    device: str | torch.device = "cpu",
) -> Duplicates:
    """Exact duplicates by ``hashes`` (None never matches), then near ones by embedding.

    See the module docstring for the greedy semantics. ``duplicate_of`` always names a
    kept row: for near duplicates the nearest earlier kept one (ties: the lowest), except
    that a row with the same embedding as an earlier row goes wherever that row went; for
    exact ones the first copy (or, when that copy was itself removed as a near duplicate,
    the row it went to, with the real embedding distance instead of 0.0). ``device`` runs
    the matmuls elsewhere (e.g. "cuda"); ``block_size`` only trades memory for speed.

    Float32 dot products resolve distances down to about 1e-3; below that only rows with
    identical embeddings are matched reliably.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {embeddings.shape}")
    if not (math.isfinite(max_distance) and max_distance >= 0):
        raise ValueError(f"max_distance must be finite and >= 0, got {max_distance}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = embeddings.shape[0]
    if hashes is not None and len(hashes) != n:
        raise ValueError(f"{len(hashes)} hashes for {n} embeddings")

    keep = np.ones(n, dtype=bool)
    duplicate_of: dict[int, int] = {}
    kind: dict[int, str] = {}
    distance: dict[int, float] = {}

    exact_of: dict[int, int] = {}
    if hashes is not None:
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h is not None and (j := first.setdefault(h, i)) != i:
                keep[i] = False
                exact_of[i] = j

    rows = np.flatnonzero(keep)
    x = _normalised_copy(embeddings, rows, block_size)
    # identical rows first: exact at any threshold, and a video's frozen frames cost nothing
    same = _first_identical(x, block_size)
    reps = np.flatnonzero(same == np.arange(len(rows)))
    for start in range(0, len(reps), block_size):  # compact in place: reps[k] >= k
        part = reps[start : start + block_size]
        x[start : start + len(part)] = x[part]
    x = x[: len(reps)]

    near_of: dict[int, int] = {}  # removed row -> kept row (original indices)
    if max_distance > 0 and len(reps) > 1:
        threshold = 1.0 - max_distance * max_distance / 2.0  # |a-b|^2 = 2 - 2 a.b
        with _full_fp32_matmul(), torch.no_grad():
            xt = torch.from_numpy(x).to(device)
            use_bounds = x.shape[1] >= _BOUND_MIN_DIM and len(reps) > block_size
            bounds = _bound_coordinates(xt, _BOUND_DIMS, block_size) if use_bounds else None
            rep_keep, rep_dup = _greedy_near(xt, threshold, block_size, bounds)
            del xt, bounds
        for k in np.flatnonzero(~rep_keep).tolist():
            near_of[int(rows[reps[k]])] = int(rows[reps[rep_dup[k]]])
    del x
    # copies of a representative follow it: to it if kept, else to where it went
    for k in np.flatnonzero(same != np.arange(len(rows))).tolist():
        rep = int(rows[same[k]])
        near_of[int(rows[k])] = near_of.get(rep, rep)

    def resolve(row: int) -> int:
        return near_of.get(row, row)

    for i, j in near_of.items():
        keep[i] = False
        duplicate_of[i] = j
        kind[i] = "near"
    for i, j in exact_of.items():
        duplicate_of[i] = resolve(j)
        kind[i] = "exact"
        if duplicate_of[i] == j:
            distance[i] = 0.0

    pending = sorted(i for i in duplicate_of if i not in distance)
    for start in range(0, len(pending), block_size):
        part = np.asarray(pending[start : start + block_size], dtype=np.int64)
        other = np.asarray([duplicate_of[i] for i in part.tolist()], dtype=np.int64)
        d = np.linalg.norm(_unit(embeddings[part]) - _unit(embeddings[other]), axis=1)
        distance.update(zip(part.tolist(), d.tolist(), strict=True))
    return Duplicates(
        keep=keep,
        duplicate_of=dict(sorted(duplicate_of.items())),
        kind=dict(sorted(kind.items())),
        distance=dict(sorted(distance.items())),
    )
