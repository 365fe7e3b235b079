"""Diversity selection: k-center greedy on L2-normalised embeddings.

Each step picks the sample farthest from everything picked so far, which greedily
minimises the largest distance from any sample to its nearest selected one (a
2-approximation of the optimal k-center cover). Distances are Euclidean between
unit vectors, so they lie in [0, 2]; ``minDistance`` uses the same scale.

A step is one pass over the embeddings (the new centre's similarity to every
row), so the cost is memory bandwidth. Three things keep it low (docs/kcenter.md):

- rows live in tiles of ``_TILE`` rows, regrouped by nearest centre as picks
  accumulate, so the triangle inequality can skip whole tiles that the new centre
  cannot get closer to;
- ``precision`` picks the storage the scan reads: float32, or a 2x/4x smaller
  bfloat16/float16/int8 copy whose per-row rounding error is bounded, so the scan
  only has to flag rows that *might* move and those few are recomputed in float32
  from the caller's array. Every precision therefore selects the same indices;
- near ties are settled with the exact formula ``|u - c|`` (not ``2 - 2 u.c``),
  so picks match a plain float32 numpy implementation, ties to the lowest index.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from sift_worker.selection.native import kernels as _scan
from sift_worker.selection.native import split

Precision = Literal["float32", "bfloat16", "float16", "int8", "auto"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16", "int8", "auto")

_TILE = 1024  # rows per pruning tile; per-tile bounds cost O(N / _TILE) per step
_CHUNK_TILES = 1024  # tiles per kernel call: few long calls stream best
# skippable tiles between two active runs that are scanned anyway: a kernel call
# and its bookkeeping cost about as much as scanning this many tiles (float32, reduced)
_GAP_TILES = (8, 16)
_DENSE = 8  # a chunk with more than 1/_DENSE rows flagged is recomputed in one go
_TOL = 1e-5  # similarities this close to the best count as a possible tie
_EPS = 4e-6  # allowance for float32 rounding of a similarity in pruning bounds
_CAP = 4096  # most tie candidates settled exactly (more only for floods of duplicates)
_REORDER_FROM = 16  # first regrouping once this many centres exist
_REORDER_GAIN = 0.3  # regroup only if about this fraction of rows could then be skipped
_SERIAL_BYTES = 32 << 20  # steps scanning at most this much run on one thread
_SQRT2 = math.sqrt(2.0)
# the C kernels serve CPU scans of float32 and int8 stores (tests switch this off to
# check that both routes pick the same rows)
_NATIVE = _scan is not None

FloatArray = npt.NDArray[np.float32]

log = logging.getLogger(__name__)


class _BoundError(RuntimeError):
    """A reduced-precision kernel rounded worse than the bound the scan relies on."""


@dataclass(frozen=True)
class KCenterResult:
    """Picks in order; distances count ``initial_centers`` as selected too."""

    indices: np.ndarray  # (k,) int64, in pick order
    pick_distances: (
        np.ndarray
    )  # (k,) float32, distance of each pick to earlier picks (inf for the first, no pool)
    distance_to_selection: np.ndarray  # (N,) float32, each sample's distance to its nearest pick
    stop_reason: str


def samples_to_select(available: int, *, n_samples: int | None, proportion: float | None) -> int:
    """How many to pick: ``nSamples`` capped by what exists, or ``ceil(proportion * N)``."""
    if n_samples is not None:
        return min(n_samples, available)
    if proportion is not None:
        return min(available, math.ceil(proportion * available))
    raise ValueError("one of n_samples or proportion is required")


def k_center_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    min_distance: float = 0.0,
    initial_centers: np.ndarray | None = None,
    precision: Precision = "float32",
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> KCenterResult:
    """Pick up to ``k`` diverse rows of ``embeddings`` (N, D), deterministically.

    The first pick is the sample nearest the mean direction (a representative
    start, independent of file order). Stops early when the farthest remaining
    sample is within ``min_distance`` of the selection, or when every remaining
    sample duplicates a pick (distance 0): more picks would add no coverage.

    ``initial_centers`` (M, D) are samples selected earlier (an incremental pool):
    distances start from them, so picks are diverse with respect to them too and
    there is no mean-direction start; ``distance_to_selection`` then measures the
    distance to the pool and the picks together. ``precision`` is the storage the
    per-step scan reads (see the module doc; all give the same picks, "auto" the
    fastest on ``device``). ``device`` defaults to CUDA when available. ``threads``
    sets torch's thread count for this call only. ``embeddings`` must stay
    unchanged during the call: reduced precisions re-read rows from it.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {embeddings.shape}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    n, dim = embeddings.shape
    pool = None
    if initial_centers is not None:
        pool = np.asarray(initial_centers)
        if pool.ndim != 2 or pool.shape[1] != dim:
            raise ValueError(f"initial_centers must be (M, {dim}), got shape {tuple(pool.shape)}")
        if pool.shape[0] == 0:
            pool = None
    if n == 0 or k <= 0:
        empty = np.zeros(0, dtype=np.float32)
        return KCenterResult(
            np.zeros(0, np.int64), empty, np.full(n, np.inf, np.float32), "no samples"
        )
    with _torch_threads(threads), torch.no_grad():
        dev = _resolve_device(device)
        kind = _resolve_precision(precision, dev, n, dim)
        try:
            greedy = _Greedy(embeddings, kind, dev)
        except _BoundError as err:  # never seen; exactness beats speed
            log.warning("%s; using float32", err)
            greedy = _Greedy(embeddings, "float32", dev)
        return greedy.run(k, min_distance, pool)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=8)
def _int8_kernel_ok(dev: torch.device) -> bool:
    """Whether ``torch._weight_int8pack_mm`` exists here and computes correctly.

    It is a private op (weight-only int8 matmul) with shape limits; it is only
    used with the reduction dim padded to a multiple of 64 and row counts that
    are multiples of ``_TILE``, which this probe exercises.
    """
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-127, 128, (_TILE, 64), generator=g, dtype=torch.int8)
        s = torch.rand(_TILE, generator=g).add_(0.5).to(torch.bfloat16)
        q = torch.randn(1, 64, generator=g).to(torch.bfloat16)
        got = torch._weight_int8pack_mm(q.to(dev), w.to(dev), s.to(dev))[0].float().cpu()
        want = (w.float() * s.float()[:, None]) @ q.float()[0]
        return bool(torch.allclose(got, want, rtol=2e-2, atol=1e-2 * float(want.abs().max())))
    except (RuntimeError, NotImplementedError):
        return False


def _resolve_precision(precision: str, dev: torch.device, n: int, dim: int) -> str:
    """Concrete storage for this call: "auto" -> int8 on CPU when its kernel works.

    On CUDA float32 scans are already cheap next to the per-step overhead, and
    small inputs do not repay building a second copy.
    """
    if precision == "int8" and not _int8_kernel_ok(dev):
        return "bfloat16"
    if precision != "auto":
        return precision
    if dev.type == "cpu" and n >= 32 * _TILE and _int8_kernel_ok(dev):
        return "int8"
    return "float32"


def _row_norms(x32: FloatArray) -> FloatArray:
    """``np.linalg.norm(x, axis=1)``, zeros reported as 1 (zero rows stay zero).

    numpy's formula, not torch's: dividing by these keeps unit rows bit-identical
    to a plain numpy implementation, which the exact tie-breaking relies on.
    """
    norms: FloatArray = np.linalg.norm(x32, axis=1).astype(np.float32, copy=False)
    norms[norms == 0] = 1.0
    return norms


def _unit_rows(x: np.ndarray) -> FloatArray:
    x32 = np.asarray(x, dtype=np.float32)
    return x32 / _row_norms(x32)[:, None]


def _empty_rows(shape: tuple[int, int], dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    """An uninitialised matrix; on CPU from numpy, whose large allocations are aligned for
    and advised as huge pages: the scan streams them ~15% faster than torch's."""
    np_dtype = {torch.float32: np.float32, torch.int8: np.int8}.get(dtype)
    if dev.type == "cpu" and np_dtype is not None:
        return torch.from_numpy(np.empty(shape, np_dtype))
    return torch.empty(shape, dtype=dtype, device=dev)


class _Greedy:
    """Incremental k-center state over rows held in ``position`` order.

    Positions are a permutation of the input rows (``perm[pos]`` = input index)
    that changes when rows are regrouped by nearest centre; all per-row tensors
    are in position order and padded to whole tiles. Per row it keeps ``maxsim``,
    the largest cosine similarity to any centre (min-distance^2 = 2 - 2 maxsim;
    +inf for picks and padding) and ``assign``, that centre's id.
    """

    def __init__(self, raw: np.ndarray, kind: str, dev: torch.device) -> None:
        self.raw = raw
        self.kind = kind
        self.dev = dev
        self.n, self.dim = raw.shape
        self.tiles = -(-self.n // _TILE)
        self.npad = self.tiles * _TILE
        self.perm = np.arange(self.npad, dtype=np.int64)
        self.identity = True  # perm is the identity: raw rows can be sliced, not gathered
        self.norms = np.empty(self.n, np.float32)  # by input index
        f32 = torch.float32
        self.maxsim = torch.full((self.npad,), -math.inf, dtype=f32, device=dev)
        self.maxsim[self.n :] = math.inf
        self.assign = torch.full((self.npad,), -1, dtype=torch.int32, device=dev)
        self.tile_min = torch.full((self.tiles,), -math.inf, dtype=f32, device=dev)
        self.anchors = torch.zeros((0, self.dim), dtype=f32, device=dev)
        self.anchors_np = np.zeros((0, self.dim), np.float32)
        self.n_anchors = 0
        self.parent = np.zeros(0, np.int64)  # nearest earlier centre of each pick (-1: none)
        # pruning: (tile, anchor, radius) triples from the last regrouping
        self.pair_tile: torch.Tensor | None = None
        self.pair_anchor = torch.zeros(0, dtype=torch.int64, device=dev)
        self.pair_radius = torch.zeros(0, dtype=f32, device=dev)
        self.pair_anchors = 0
        self.next_reorder = _REORDER_FROM
        self.exact_scan = kind == "float32"
        self.native = _NATIVE and dev.type == "cpu" and kind in ("float32", "int8")
        # the input itself, where the float32 kernel can read it in place (exact passes)
        self.raw_f32 = (
            raw if self.native and raw.dtype == np.float32 and raw.flags.c_contiguous else None
        )
        if kind == "int8":
            self.pad_dim = -(-self.dim // 64) * 64
            self.store_dtype = torch.int8
            self.query_dtype = torch.bfloat16
            unit = 2.0**-8
            if self.native:
                # an int16 query, as large as int32 sums allow: |c - qs q16| <= sqrt(D) / 2qmax
                self.qmax = min(32767, (2**31 - 1) // (127 * self.pad_dim))
                unit = math.sqrt(self.pad_dim) / (2 * self.qmax) * (1 + 1e-3)
        else:
            self.pad_dim = self.dim
            self.store_dtype = {
                "float32": f32,
                "bfloat16": torch.bfloat16,
                "float16": torch.float16,
            }[kind]
            self.query_dtype = self.store_dtype
            unit = {"float32": 0.0, "bfloat16": 2.0**-8, "float16": 2.0**-11}[kind]
        self.query_unit = unit  # bound on |q - round(q)| / |q| for the query
        # filled by _build (zeroing 4 B x N x D first would be one more pass); padding zeroed
        self.store = _empty_rows((self.npad, self.pad_dim), self.store_dtype, dev)
        self.store[self.n :] = 0
        self.spare: torch.Tensor | None = None  # reduced store's twin for regrouping
        self.scale = torch.ones(self.npad, dtype=torch.bfloat16, device=dev)
        self.thr = torch.zeros(0 if self.exact_scan else self.npad, dtype=f32, device=dev)
        out_dtype = f32 if self.exact_scan or self.native else self.query_dtype
        self.lowbar = torch.full(
            (0 if self.exact_scan else self.npad,), -math.inf, dtype=out_dtype, device=dev
        )
        if not self.exact_scan:
            self.lowbar[self.n :] = math.inf
        self.use_mkldnn = dev.type == "cpu" and bool(
            torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        )
        self.mean = torch.zeros(self.dim, dtype=torch.float64, device=dev)
        self.flags = torch.zeros(0 if self.exact_scan else self.npad, dtype=torch.bool, device=dev)
        self.dense_next = True  # reduced scans: last step flagged too much to be worth it
        # the C kernels run on their own threads; torch stays on one meanwhile, as idle
        # OpenMP workers spinning for work would take the cores from them
        self.threads = torch.get_num_threads()
        self.kernel_threads = self.threads
        self._build()
        if not self.exact_scan:
            self._check_error_bound()

    # ---- storage ---------------------------------------------------------------

    def _build(self) -> None:
        """Normalise, store and sum rows in cache-sized chunks (no N x D temporaries)."""
        if self.native:
            self._build_native()
            return
        step = 4 * _TILE
        for p0 in range(0, self.n, step):
            p1 = min(p0 + step, self.n)
            x = np.asarray(self.raw[p0:p1], dtype=np.float32)
            self.norms[p0:p1] = _row_norms(x)
            if self.kind == "float32":  # divide straight into the store: one pass less
                unit = self.store[p0:p1]
                xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)
                torch.div(xt, torch.from_numpy(self.norms[p0:p1]).to(self.dev)[:, None], out=unit)
            else:
                unit = self._to_unit(x, self.norms[p0:p1])
                self._fill(p0, unit)
            if self.dev.type == "cpu":  # numpy's float64 column sum is ~3x faster here
                self.mean += torch.from_numpy(np.add.reduce(unit.numpy(), axis=0, dtype=np.float64))
            else:
                self.mean += unit.sum(dim=0, dtype=torch.float64)

    def _build_native(self) -> None:
        """``_build`` as one C pass per chunk, chunks shared by the threads.

        Column sums are kept per chunk and added in chunk order, so the mean (and
        with it the first pick) does not depend on the thread count.
        """
        assert _scan is not None
        step = 4 * _TILE
        colsums = np.zeros((-(-self.n // step), self.dim), np.float64)
        store = self.store.numpy()
        quantised = self.kind == "int8"
        scale = self.scale.view(torch.int16).numpy() if quantised else None
        err = np.zeros(self.n if quantised else 0, np.float32)

        def work(a: int, b: int) -> int:
            assert _scan is not None
            for p0 in range(a, b, step):
                p1 = min(p0 + step, b)
                x = np.ascontiguousarray(self.raw[p0:p1], dtype=np.float32)
                norms = _row_norms(x)
                self.norms[p0:p1] = norms
                chunk_err = err[p0:p1] if quantised else None
                colsum = colsums[p0 // step]
                _scan.unit_rows(
                    x, self.dim, norms, colsum, store, self.pad_dim, p0, scale, chunk_err
                )
            return 0

        split(0, self.n, work, self.threads, step)
        self.mean += torch.from_numpy(colsums.sum(axis=0))
        if quantised:
            u = self.query_unit
            self.thr[: self.n] = torch.from_numpy(err) * (1 + u) + u + 1e-5

    def _to_unit(self, x: FloatArray, norms: FloatArray) -> torch.Tensor:
        # IEEE division: the same bits as numpy's x / norms
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)
        return xt / torch.from_numpy(norms).to(self.dev)[:, None]

    def _fill(self, p0: int, unit: torch.Tensor) -> None:
        """Write unit rows at positions p0.. in storage precision (+ error bounds)."""
        p1 = p0 + unit.shape[0]
        if self.kind == "float32":
            self.store[p0:p1] = unit
            return
        if self.kind == "int8":
            # symmetric per-row scale, rounded up to a bfloat16 value so that the
            # kernel's bfloat16 scale is exact and |unit / scale| <= 127
            amax = unit.abs().amax(dim=1)
            scale = (amax / 127 * (1 + 2.0**-7)).to(torch.bfloat16)
            scale[amax == 0] = 1.0
            s32 = scale.float()
            q = torch.round(unit / s32[:, None]).clamp_(-127, 127)
            err = (unit - q * s32[:, None]).norm(dim=1)
            self.store[p0:p1, : self.dim] = q.to(torch.int8)
            self.store[p0:p1, self.dim :] = 0
            self.scale[p0:p1] = scale
        else:
            stored = unit.to(self.store_dtype)
            self.store[p0:p1] = stored
            err = (unit - stored.float()).norm(dim=1)
        # |approx - exact| <= |u - u~| |c~| + |u| |c - c~| (+ float32 accumulation),
        # taken before the kernel's output rounding, which cannot reorder values
        u = self.query_unit
        self.thr[p0:p1] = err * (1 + u) + u + 1e-5

    def _check_error_bound(self) -> None:
        """Refuse a kernel that rounds worse than the bound the scan relies on."""
        rows = min(self.n, 4 * _TILE)
        p1 = -(-rows // _TILE) * _TILE
        exact = torch.from_numpy(_unit_rows(self.raw[:rows])).to(self.dev)
        for j in range(0, rows, max(1, rows // 4)):
            approx = self._scan(self._query(exact[j]), 0, p1)[:rows]
            sims = exact @ exact[j]
            lowbar = (sims - self.thr[:rows]).to(approx.dtype)
            highbar = (sims + self.thr[:rows]).to(approx.dtype)
            if bool(((approx < lowbar) | (approx > highbar)).any()):
                raise _BoundError(f"{self.kind} kernel exceeds its rounding bound on {self.dev}")

    def _query(self, centre: torch.Tensor) -> torch.Tensor:
        if self.native and self.kind == "int8":
            return self._query16(centre)
        q = centre.to(self.query_dtype)
        if self.pad_dim != self.dim:
            q = torch.nn.functional.pad(q, (0, self.pad_dim - self.dim))
        return q[None]

    def _query16(self, centre: torch.Tensor) -> torch.Tensor:
        """The centre as int16 (padded), for the C int8 kernel; ``self.qscale`` its scale."""
        c = torch.nn.functional.pad(centre.float(), (0, self.pad_dim - self.dim))
        amax = float(c.abs().max())
        self.qscale = amax / self.qmax if amax > 0 else 1.0
        q16 = torch.round(c / self.qscale).clamp_(-self.qmax, self.qmax).to(torch.int16)
        return q16.contiguous()

    def _scan(self, q: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
        """Similarities of stored rows p0..p1 to query q (1, D): the bandwidth-bound part."""
        w = self.store[p0:p1]
        if self.kind == "int8":
            if self.native:
                out = torch.empty(p1 - p0, dtype=torch.float32)
                assert _scan is not None
                _scan.i8_scan(*self._i8_args(q), None, out.numpy(), None, p0, p1)
                return out
            return torch._weight_int8pack_mm(q, w, self.scale[p0:p1])[0]
        return self._matvec(w, q)

    def _i8_args(self, q16: torch.Tensor) -> tuple[object, ...]:
        scale = self.scale.view(torch.int16).numpy()
        return self.store.numpy(), self.pad_dim, q16.numpy(), self.qscale, scale

    def _flag_native(self, q16: torch.Tensor, p0: int, p1: int) -> npt.NDArray[np.int64]:
        """Positions in p0..p1 whose int8 similarity reaches ``lowbar`` (C kernel, threads)."""
        assert _scan is not None
        args = self._i8_args(q16)
        lowbar = self.lowbar.numpy()
        pos = np.empty(p1 - p0, np.int64)

        def work(a: int, b: int) -> int:
            assert _scan is not None
            return int(_scan.i8_scan(*args, lowbar, None, pos[a - p0 :], a, b))

        parts = split(p0, p1, work, self.kernel_threads, _TILE)
        if len(parts) == 1:
            return pos[: parts[0][1]]
        return np.concatenate([pos[a - p0 : a - p0 + c] for a, c in parts])

    def _update_native(
        self,
        x: np.ndarray,
        ld: int,
        centre: torch.Tensor,
        aid: int,
        p0: int,
        p1: int,
        norms: np.ndarray | None,
    ) -> None:
        """maxsim/assign of rows p0..p1 from rows of x (float32, stride ld): the C kernel.

        Whole tiles (the float32 scan's runs) also get their minima, while the rows
        are still in cache: the step then needs no separate pass for them."""
        q = np.ascontiguousarray(centre.numpy(), dtype=np.float32)
        maxsim, assign = self.maxsim.numpy(), self.assign.numpy()
        tile_min = self.tile_min.numpy() if p1 % _TILE == 0 else None

        def work(a: int, b: int) -> int:
            assert _scan is not None
            _scan.f32_update(x, ld, self.dim, q, norms, maxsim, assign, aid, a, b)
            if tile_min is not None:
                _scan.tile_min(maxsim, _TILE, tile_min, a // _TILE, -(-b // _TILE))
            return 0

        split(p0, p1, work, self.kernel_threads, _TILE)

    def _exact_update(self, centre: torch.Tensor, aid: int, p0: int, p1: int) -> None:
        """Exact float32 update of rows p0..p1 (real rows), from the input rows."""
        p1 = min(p1, self.n)
        if self.raw_f32 is not None and self.identity:
            self._update_native(self.raw_f32, self.dim, centre, aid, p0, p1, self.norms)
            self.lowbar[p0:p1] = (self.maxsim[p0:p1] - self.thr[p0:p1]).to(self.lowbar.dtype)
        else:
            with _torch_threads(self.kernel_threads):
                self._update(self._exact_sims(centre, p0, p1), aid, p0, p1)

    def _matvec(self, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        # oneDNN streams a long row-major matrix ~3x faster than MKL's gemv here
        if self.use_mkldnn and w.dtype != torch.float16:
            try:
                out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(q, w, None, "none", [], "")
                return out[0]
            except RuntimeError:  # shape/dtype oneDNN has no kernel for
                self.use_mkldnn = False
        return w @ q[0]

    def _raw_rows(self, p0: int, p1: int) -> tuple[FloatArray, FloatArray]:
        """Input rows (float32, not normalised) and their norms for positions p0..p1."""
        p1 = min(p1, self.n)
        if self.identity:
            x = np.asarray(self.raw[p0:p1], dtype=np.float32)
            return x, self.norms[p0:p1]
        orig = self.perm[p0:p1]
        x = np.asarray(np.take(self.raw, orig, axis=0), dtype=np.float32)
        return x, self.norms[orig]

    def _exact_rows(self, p0: int, p1: int) -> torch.Tensor:
        """Float32 unit rows for positions p0..p1 (real rows only), from the input."""
        return self._to_unit(*self._raw_rows(p0, p1))

    def _rows_at(self, pos: npt.NDArray[np.int64]) -> torch.Tensor:
        orig = self.perm[pos]
        x = np.asarray(np.take(self.raw, orig, axis=0), dtype=np.float32)
        return self._to_unit(x, self.norms[orig])

    # ---- the greedy loop --------------------------------------------------------

    def run(self, k: int, min_distance: float, pool: np.ndarray | None) -> KCenterResult:
        size = min(k, self.n) + (0 if pool is None else len(pool))
        self.anchors = torch.zeros((size, self.dim), device=self.dev)
        self.anchors_np = np.zeros((self.anchors.shape[0], self.dim), np.float32)
        self.parent = np.full(self.anchors.shape[0], -1, np.int64)
        picks: list[int] = []
        pick_dist: list[float] = []
        reason = f"reached {k} samples"
        if pool is not None:
            self._add_pool(pool)
        while len(picks) < k:
            if self.n_anchors == 0:
                pos, dist = self._first_pick(), math.inf
            else:
                if self.n_anchors >= self.next_reorder:
                    self._maybe_reorder()
                with _torch_threads(1):
                    found = self._farthest(min_distance)
                if found is None or found[1] <= 0.0:
                    reason = (
                        f"all remaining samples duplicate the selection after {len(picks)} samples"
                    )
                    break
                pos, dist = found
                if min_distance > 0 and dist < min_distance:
                    reason = f"minDistance {min_distance:g} reached after {len(picks)} samples"
                    break
            picks.append(int(self.perm[pos]))
            pick_dist.append(dist)
            self._add_centre(pos)
        return KCenterResult(
            indices=np.asarray(picks, dtype=np.int64),
            pick_distances=np.asarray(pick_dist, dtype=np.float32),
            distance_to_selection=self._distances(),
            stop_reason=reason,
        )

    def _distances(self) -> FloatArray:
        """Distance of every row to its nearest centre, by input index.

        ``sqrt(2 - 2 u.c)`` loses precision near 0 (a duplicate shows ~3e-4), so
        rows that close are re-measured as ``|u - c|`` against their centre.
        """
        sq = torch.clamp(2.0 - 2.0 * self.maxsim, min=0.0)
        d = torch.sqrt(sq).cpu().numpy()
        near = torch.nonzero((sq < 1e-4) & (self.maxsim < math.inf)).flatten().cpu().numpy()
        if near.size:
            centres = self.anchors_np[self.assign.cpu().numpy()[near]]
            d[near] = np.linalg.norm(centres - self._rows_at(near).cpu().numpy(), axis=1)
        out = np.empty(self.n, np.float32)
        real = self.perm < self.n
        out[self.perm[real]] = d[real]
        return out

    def _first_pick(self) -> int:
        """Position of the row nearest the mean direction (lowest index on ties)."""
        norm = float(torch.linalg.vector_norm(self.mean))
        if norm == 0:
            return 0
        mean = self.mean.cpu().numpy() / norm
        sims = self._dense_sims(torch.from_numpy(mean.astype(np.float32)).to(self.dev))
        best = float(sims.max())
        cand = torch.nonzero(sims >= best - 64 * _TOL).flatten().cpu().numpy()
        exact = self._rows_at(cand).cpu().numpy().astype(np.float64) @ mean
        # positions are input indices here; nonzero returns them ascending
        return int(cand[int(np.argmax(exact))])

    def _dense_sims(self, centre: torch.Tensor) -> torch.Tensor:
        """Float32 similarities of all real rows to ``centre`` (one full pass)."""
        out = torch.empty(self.n, dtype=torch.float32, device=self.dev)
        step = _CHUNK_TILES * _TILE
        for p0 in range(0, self.n, step):
            p1 = min(p0 + step, self.n)
            out[p0:p1] = self._exact_sims(centre, p0, p1)
        return out

    def _exact_sims(self, centre: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
        """Float32 similarities of real rows p0..p1 to ``centre``."""
        p1 = min(p1, self.n)
        if self.exact_scan:
            return self._matvec(self.store[p0:p1], centre[None])
        # reduced storage: read the input rows (x.c / |x|: no unit copy), in pieces
        # that bound the temporary a gather or a dtype conversion makes
        out = torch.empty(p1 - p0, dtype=torch.float32, device=self.dev)
        step = 16 * _TILE
        for s0 in range(p0, p1, step):
            s1 = min(s0 + step, p1)
            x, norms = self._raw_rows(s0, s1)
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)
            sims = self._matvec(xt, centre[None]) / torch.from_numpy(norms).to(self.dev)
            out[s0 - p0 : s1 - p0] = sims
        return out

    def _add_pool(self, pool: np.ndarray) -> None:
        """Start min-distances from earlier selections: exact, O(N * M * D)."""
        unit = _unit_rows(pool)
        m = unit.shape[0]
        self.anchors_np[:m] = unit
        self.anchors[:m] = torch.from_numpy(unit).to(self.dev)
        self.n_anchors = m
        centres = self.anchors[:m]
        step = max(_TILE, min(16 * _TILE, (1 << 22) // m // _TILE * _TILE))  # <= 16M floats
        for p0 in range(0, self.n, step):
            p1 = min(p0 + step, self.n)
            rows = self.store[p0:p1] if self.exact_scan else self._exact_rows(p0, p1)
            best, arg = (rows @ centres.T).max(dim=1)
            self.maxsim[p0:p1] = best
            self.assign[p0:p1] = arg.to(torch.int32)
        if not self.exact_scan:
            self.lowbar[: self.n] = (self.maxsim[: self.n] - self.thr[: self.n]).to(
                self.lowbar.dtype
            )
            self.dense_next = False  # distances are already short: few rows will move
        self._refresh_tiles(0, self.tiles)

    def _add_centre(self, pos: int) -> None:
        """Make row ``pos`` a centre and lower every min-distance it improves."""
        aid = self.n_anchors
        centre = self._rows_at(np.asarray([pos], dtype=np.int64))[0]
        self.anchors[aid] = centre
        self.anchors_np[aid] = centre.cpu().numpy()
        self.parent[aid] = int(self.assign[pos])
        self.n_anchors += 1
        self.maxsim[pos] = math.inf
        self.assign[pos] = aid
        if not self.exact_scan:
            self.lowbar[pos] = math.inf
        # bookkeeping and pruned steps are small ops: waking a second thread for each
        # costs more than it saves (the worker's threads sleep between ops)
        with _torch_threads(1):
            runs = self._runs(centre)
        rows = sum(t1 - t0 for t0, t1 in runs) * _TILE
        small = rows * self.pad_dim * self.store.element_size() <= _SERIAL_BYTES
        self.kernel_threads = 1 if small else self.threads
        with _torch_threads(1 if small or self.native else None):
            self._scan_runs(centre, aid, runs)
        if not (self.exact_scan and self.native):  # that scan keeps the minima itself
            with _torch_threads(1):
                for t0, t1 in runs:
                    self._refresh_tiles(t0, t1)

    def _scan_runs(self, centre: torch.Tensor, aid: int, runs: list[tuple[int, int]]) -> None:
        """Update min-distances over the active tile runs, by the cheapest exact route."""
        chunk = _CHUNK_TILES * _TILE
        if self.exact_scan and self.native:
            store = self.store.numpy()
            for t0, t1 in runs:  # one call per run: the kernel streams it at read speed
                self._update_native(store, self.pad_dim, centre, aid, t0 * _TILE, t1 * _TILE, None)
        elif self.exact_scan:
            q = self._query(centre)
            for t0, t1 in runs:
                for p0 in range(t0 * _TILE, t1 * _TILE, chunk):
                    p1 = min(p0 + chunk, t1 * _TILE)
                    self._update(self._scan(q, p0, p1), aid, p0, p1)
        elif self.dense_next:
            for t0, t1 in runs:
                for p0 in range(t0 * _TILE, min(t1 * _TILE, self.n), chunk):
                    p1 = min(p0 + chunk, t1 * _TILE, self.n)
                    self._exact_update(centre, aid, p0, p1)
            self.dense_next = self.n_anchors % 8 != 0  # now and then, try the scan again
        else:
            self._scan_and_recheck(centre, aid, runs)

    def _scan_and_recheck(
        self, centre: torch.Tensor, aid: int, runs: list[tuple[int, int]]
    ) -> None:
        """Reduced scan: flag rows the bound cannot rule out, recompute those exactly."""
        q = self._query(centre)
        chunk = _CHUNK_TILES * _TILE
        count = self.n_anchors < 64  # early on, many rows move: worth checking for dense
        flagged: list[npt.NDArray[np.int64]] = []
        rows = dense = 0
        for t0, t1 in runs:
            r0, r1 = t0 * _TILE, t1 * _TILE
            for p0 in range(r0, r1, chunk):
                p1 = min(p0 + chunk, r1)
                pos = self._flagged(q, p0, p1)
                rows += p1 - p0
                if count and pos.size * _DENSE > p1 - p0:
                    # most rows move: one exact pass beats gathering them one by one
                    dense += p1 - p0
                    self._exact_update(centre, aid, p0, p1)
                else:
                    flagged.append(pos)
        self.dense_next = dense * 2 > rows
        pos = np.concatenate(flagged) if flagged else np.zeros(0, np.int64)
        if pos.size:
            self._recheck(centre, aid, pos)

    def _flagged(self, q: torch.Tensor, p0: int, p1: int) -> npt.NDArray[np.int64]:
        """Positions in p0..p1 whose reduced similarity reaches ``lowbar``."""
        if self.native:  # the C kernel writes the positions itself
            return self._flag_native(q, p0, p1)
        flags = self.flags[p0:p1]
        torch.ge(self._scan(q, p0, p1), self.lowbar[p0:p1], out=flags)
        return self._nonzero(flags) + p0

    def _nonzero(self, flags: torch.Tensor) -> npt.NDArray[np.int64]:
        if flags.device.type == "cpu":  # numpy's is ~4x faster on sparse masks
            return np.flatnonzero(flags.numpy()).astype(np.int64, copy=False)
        return torch.nonzero(flags).flatten().cpu().numpy()

    def _update(self, sims: torch.Tensor, aid: int, p0: int, p1: int) -> None:
        cur = self.maxsim[p0:p1]
        sims = sims[: p1 - p0]
        closer = sims > cur
        torch.maximum(cur, sims, out=cur)
        self.assign[p0:p1].masked_fill_(closer, aid)
        if not self.exact_scan:
            self.lowbar[p0:p1] = (cur - self.thr[p0:p1]).to(self.lowbar.dtype)

    def _recheck(self, centre: torch.Tensor, aid: int, pos_np: npt.NDArray[np.int64]) -> None:
        """Exact float32 similarities for the rows the reduced scan flagged."""
        orig = self.perm[pos_np]
        if self.raw_f32 is not None and self.lowbar.dtype == torch.float32:
            assert _scan is not None  # raw_f32 is only kept for the C kernels
            q = np.ascontiguousarray(centre.numpy())
            maxsim, assign = self.maxsim.numpy(), self.assign.numpy()
            thr, lowbar = self.thr.numpy(), self.lowbar.numpy()
            _scan.f32_recheck(
                self.raw_f32, self.dim, self.dim, q, self.norms, orig, pos_np,
                maxsim, assign, aid, thr, lowbar,
            )  # fmt: skip
            return
        x = torch.from_numpy(np.take(self.raw, orig, axis=0).astype(np.float32, copy=False))
        norms = torch.from_numpy(self.norms[orig]).to(self.dev)
        sims = (x.to(self.dev) @ centre) / norms  # rows are hot in cache: plain gemv
        pos = torch.from_numpy(pos_np).to(self.dev)
        closer = sims > self.maxsim.index_select(0, pos)
        pos, sims = pos[closer], sims[closer]
        self.maxsim.index_copy_(0, pos, sims)
        self.assign.index_fill_(0, pos, aid)
        bar = sims - self.thr.index_select(0, pos)
        self.lowbar.index_copy_(0, pos, bar.to(self.lowbar.dtype))

    def _refresh_tiles(self, t0: int, t1: int) -> None:
        if self.native:
            assert _scan is not None
            _scan.tile_min(self.maxsim.numpy(), _TILE, self.tile_min.numpy(), t0, t1)
            return
        view = self.maxsim[t0 * _TILE : t1 * _TILE].view(t1 - t0, _TILE)
        torch.amin(view, dim=1, out=self.tile_min[t0:t1])

    # ---- pruning ------------------------------------------------------------------

    def _runs(self, centre: torch.Tensor) -> list[tuple[int, int]]:
        """Tile ranges the new centre may improve (triangle inequality per tile).

        A row x grouped under anchor a at the last regrouping has
        d(x, c) >= d(c, a) - d(x, a) >= d(c, a) - R(tile, a); if that is at least the
        tile's largest min-distance, no row of the tile gets closer to the selection.
        """
        live = self.tile_min < math.inf
        if self.pair_tile is not None:
            sims = self.anchors[: self.pair_anchors] @ centre
            d_ca = torch.sqrt(torch.clamp(2.0 - 2.0 * sims - 2 * _EPS, min=0.0))
            lower = d_ca[self.pair_anchor] - self.pair_radius
            tile_lb = torch.full((self.tiles,), math.inf, device=self.dev)
            tile_lb.scatter_reduce_(0, self.pair_tile, lower, "amin")
            max_d = torch.sqrt(torch.clamp(2.0 - 2.0 * self.tile_min + 2 * _EPS, min=0.0))
            live &= tile_lb < max_d
        idx = np.flatnonzero(live.cpu().numpy())
        if idx.size == 0:
            return []
        cut = np.flatnonzero(np.diff(idx) > _GAP_TILES[not self.exact_scan] + 1)
        starts = np.concatenate(([idx[0]], idx[cut + 1]))
        ends = np.concatenate((idx[cut], [idx[-1]])) + 1
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    def _row_dist_upper(self) -> torch.Tensor:
        return torch.sqrt(torch.clamp(2.0 - 2.0 * self.maxsim + 2 * _EPS, min=0.0))

    def _maybe_reorder(self) -> None:
        """Regroup rows by nearest centre when that would let the scan skip enough.

        Predicts the skippable share before paying for the move, on a sample of
        rows: the last few picks stand in for the next ones, and a row at distance
        d from its centre a sits (after the move) in a tile of rows about as close,
        skippable for a new centre b when d(a, b) >= 2 d.
        """
        a = self.n_anchors
        self.next_reorder = a + max(8, a // 4)
        sample = self.maxsim[: self.n : 16]
        live = sample < math.inf
        dist = torch.sqrt(torch.clamp(2.0 - 2.0 * sample[live], min=0.0))
        centre = self.assign[: self.n : 16][live].long()
        recent = self.anchors[max(0, a - 16) : a]
        d_ab = torch.sqrt(torch.clamp(2.0 - 2.0 * (self.anchors[:a] @ recent.T), min=0.0))
        gain = float((d_ab[centre] >= 2 * dist[:, None]).float().mean()) if dist.numel() else 0.0
        if gain >= _REORDER_GAIN:
            self._reorder()
            # a float32 store is rewritten from the input: regroup it less often
            self.next_reorder = 2 * a if self.exact_scan else a + max(8, a // 4)

    def _tree_order(self) -> npt.NDArray[np.int64]:
        """Rank of each centre in a depth-first walk of the pick tree (pick -> the
        centre it was nearest to), so groups of nearby centres end up in nearby
        tiles and a new centre touches few tiles."""
        a = self.n_anchors
        children: list[list[int]] = [[] for _ in range(a)]
        roots: list[int] = []
        for j in range(a):
            p = int(self.parent[j])
            (roots if p < 0 else children[p]).append(j)
        rank = np.empty(a, np.int64)
        stack = roots[::-1]
        i = 0
        while stack:
            j = stack.pop()
            rank[j] = i
            i += 1
            stack.extend(children[j][::-1])
        return rank

    def _reorder(self) -> None:
        """Sort rows by (centre in tree order, distance to it); rebuild tile bounds.

        Within a group the closest rows come first, so a group's core fills tiles
        with small radii that can be skipped even while its outskirts cannot.
        """
        a = self.n_anchors
        assign = self.assign.cpu().numpy()
        rank = np.append(self._tree_order(), a)  # padding (assign -1) sorts last
        dist = self._row_dist_upper().cpu().numpy()
        # two stable radix passes (uint8 distance, then uint16 centre) beat one sort
        by_dist = np.argsort(np.minimum(dist * 127, 255).astype(np.uint8), kind="stable")
        key = rank[assign[by_dist]]
        kind: Literal["stable"] = "stable"
        order_np = by_dist[np.argsort(key.astype(np.uint16) if a < 65535 else key, kind=kind)]
        order = torch.from_numpy(order_np).to(self.dev)
        self.perm = self.perm[order_np]
        self.identity = False
        self.maxsim = self.maxsim[order]
        self.assign = self.assign[order]
        if self.exact_scan:
            # rewrite in place from the input: a float32 copy is not worth doubling
            for p0 in range(0, self.n, 4 * _TILE):
                self._fill(p0, self._exact_rows(p0, min(p0 + 4 * _TILE, self.n)))
        else:
            # gather into a kept spare buffer: fresh pages cost more than the copy
            if self.spare is None:
                self.spare = torch.empty_like(self.store)
            torch.index_select(self.store, 0, order, out=self.spare)
            self.store, self.spare = self.spare, self.store
            self.scale = self.scale[order]
            self.thr = self.thr[order]
            self.lowbar = self.lowbar[order]
        keys_np = assign[order_np].astype(np.int64)
        keys_np[self.perm >= self.n] = a
        keys = torch.from_numpy(keys_np).to(self.dev)
        tile = torch.arange(self.npad, device=self.dev) // _TILE
        pair_key, inverse = torch.unique_consecutive(tile * (a + 1) + keys, return_inverse=True)
        radius = torch.zeros(pair_key.numel(), device=self.dev)
        radius.scatter_reduce_(0, inverse, self._row_dist_upper(), "amax")
        keep = pair_key % (a + 1) < a
        self.pair_tile = (pair_key // (a + 1))[keep]
        self.pair_anchor = (pair_key % (a + 1))[keep]
        self.pair_radius = radius[keep]
        self.pair_anchors = a
        self._refresh_tiles(0, self.tiles)

    # ---- choosing the next pick ------------------------------------------------------

    def _farthest(self, min_distance: float) -> tuple[int, float] | None:
        """Position and distance of the row farthest from the selection.

        All rows within ``_TOL`` (in similarity) of the approximate best are
        re-measured with ``|u - c|`` against their nearest centres, and the largest
        wins, ties to the lowest input index: the same rule as a float32 numpy loop.
        A lone candidate clear of 0 and of ``min_distance`` keeps its float32 value.
        """
        if self.dev.type == "cpu":  # numpy's small ops cost a fraction of torch's
            found = self._candidates_cpu()
            if found is None:
                return None
            best, pos_np = found
        else:
            best = float(self.tile_min.min())
            if best == math.inf:
                return None
            pos_np = self._candidates(best + _TOL)
        if len(pos_np) == 1:
            approx = math.sqrt(max(0.0, 2.0 - 2.0 * best))
            if approx > 0.01 and abs(approx - min_distance) > 1e-4:
                return int(pos_np[0]), approx
        dist = self._exact_distance(self._rows_at(pos_np))
        order = np.lexsort((self.perm[pos_np], -dist))
        return int(pos_np[order[0]]), float(dist[order[0]])

    def _candidates_cpu(self) -> tuple[float, npt.NDArray[np.int64]] | None:
        """``_candidates`` in numpy: the best ``maxsim`` and rows within ``_TOL`` of it."""
        tile_min, maxsim = self.tile_min.numpy(), self.maxsim.numpy()
        best = float(tile_min.min())
        if best == math.inf:
            return None
        limit = best + _TOL
        tiles = np.flatnonzero(tile_min <= limit)
        if tiles.size <= 16:
            rows = (tiles[:, None] * _TILE + np.arange(_TILE)).ravel()
            pos = rows[maxsim[rows] <= limit]
        else:
            pos = np.flatnonzero(maxsim <= limit)
        if pos.size > _CAP:
            pos = pos[np.argsort(maxsim[pos], kind="stable")[:_CAP]]
        return best, pos.astype(np.int64, copy=False)

    def _candidates(self, limit: float) -> npt.NDArray[np.int64]:
        """Positions whose ``maxsim`` is at most ``limit`` (at most ``_CAP``, the lowest)."""
        tiles = torch.nonzero(self.tile_min <= limit).flatten()
        if tiles.numel() <= 16:
            rows = tiles[:, None] * _TILE + torch.arange(_TILE, device=self.dev)
            vals = self.maxsim[rows]
            hit = vals <= limit
            pos, vals = rows[hit], vals[hit]
        else:
            pos = torch.nonzero(self.maxsim <= limit).flatten()
            vals = self.maxsim[pos]
        if pos.numel() > _CAP:
            vals, sel = torch.topk(vals, _CAP, largest=False)
            pos = pos[sel]
        out: npt.NDArray[np.int64] = pos.cpu().numpy()
        return out

    def _exact_distance(self, unit: torch.Tensor) -> npt.NDArray[np.float64]:
        """min_c |u - c| over centres, with numpy's float32 formula, per row of ``unit``."""
        centres = self.anchors[: self.n_anchors]
        sims = unit @ centres.T
        near = sims >= sims.max(dim=1, keepdim=True).values - _TOL
        unit_np = unit.cpu().numpy()
        near_np = near.cpu().numpy()
        zero_row = ~np.any(unit_np, axis=1, keepdims=False)
        zero_anchor = ~np.any(self.anchors_np[: self.n_anchors], axis=1)
        out = np.empty(unit_np.shape[0], np.float64)
        for i in range(unit_np.shape[0]):
            idx = np.flatnonzero(near_np[i])
            d = np.linalg.norm(self.anchors_np[idx] - unit_np[i], axis=1)
            # a zero row is orthogonal to everything: distance sqrt(2), as 2 - 2 u.c says
            d[zero_anchor[idx]] = _SQRT2
            out[i] = _SQRT2 if zero_row[i] else float(d.min())
        return out
