import math

import numpy as np
import pytest
import torch
from sift_worker.selection import k_center_greedy, samples_to_select


def clusters(
    n_clusters: int = 5, per: int = 50, dim: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 10
    labels = np.repeat(np.arange(n_clusters), per)
    points = centres[labels] + rng.normal(size=(n_clusters * per, dim)) * 0.3
    return points.astype(np.float32), labels


def brute_force_cover_radius(x: np.ndarray, picks: np.ndarray) -> float:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(u[:, None, :] - u[picks][None, :, :], axis=2)
    return float(d.min(axis=1).max())


def test_one_pick_per_cluster_before_any_second() -> None:
    x, labels = clusters()
    result = k_center_greedy(x, 5)
    assert sorted(labels[result.indices]) == [0, 1, 2, 3, 4]


def test_deterministic_and_independent_of_threads() -> None:
    x, _ = clusters(seed=3)
    a = k_center_greedy(x, 20)
    b = k_center_greedy(x, 20)
    assert np.array_equal(a.indices, b.indices)


def test_pick_distances_do_not_increase_and_match_cover() -> None:
    x, _ = clusters(seed=1)
    result = k_center_greedy(x, 30)
    d = result.pick_distances
    assert math.isinf(d[0])
    assert np.all(np.diff(d[1:]) <= 1e-5)
    # distance_to_selection is the true nearest-pick distance
    radius = brute_force_cover_radius(x, result.indices)
    assert result.distance_to_selection.max() == pytest.approx(radius, abs=1e-4)
    assert np.all(result.distance_to_selection[result.indices] == 0)


def test_min_distance_stops_early() -> None:
    x, _ = clusters(n_clusters=4, seed=2)
    result = k_center_greedy(x, 100, min_distance=0.5)
    assert len(result.indices) == 4
    assert "minDistance 0.5" in result.stop_reason
    assert result.distance_to_selection.max() < 0.5


def test_exact_duplicates_never_picked_twice() -> None:
    base = np.eye(3, dtype=np.float32)
    x = np.concatenate([base, base, base])  # 3 unique rows, each three times
    result = k_center_greedy(x, 9)
    assert len(result.indices) == 3
    assert sorted(x[result.indices].argmax(axis=1).tolist()) == [0, 1, 2]
    assert "duplicate" in result.stop_reason


@pytest.mark.parametrize(
    ("available", "n_samples", "proportion", "expected"),
    [
        (100, 10, None, 10),
        (5, 10, None, 5),
        (100, None, 0.1, 10),
        (101, None, 0.1, 11),
        (3, None, 1.0, 3),
        (0, None, 0.5, 0),
    ],
)
def test_samples_to_select(
    available: int, n_samples: int | None, proportion: float | None, expected: int
) -> None:
    assert samples_to_select(available, n_samples=n_samples, proportion=proportion) == expected


def test_empty_input() -> None:
    result = k_center_greedy(np.zeros((0, 4), np.float32), 3)
    assert result.indices.size == 0


# ---- exactness against a plain numpy loop, precisions, pool, edge cases ----------


def numpy_reference(
    x: np.ndarray, k: int, pool: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward loop the optimised one must agree with, pick for pick."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    if pool is None:
        mean = u.mean(axis=0, dtype=np.float64)
        mean /= np.linalg.norm(mean)
        first = int(np.argmax(u.astype(np.float64) @ mean))
        picks, mind = [first], np.linalg.norm(u - u[first], axis=1)
    else:
        p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
        mind = np.linalg.norm(u[:, None, :] - p[None, :, :], axis=2).min(axis=1)
        picks = []
    while len(picks) < k:
        best = int(np.argmax(mind))
        if mind[best] <= 0:
            break
        picks.append(best)
        np.minimum(mind, np.linalg.norm(u - u[best], axis=1), out=mind)
    return np.asarray(picks), mind


def blobs(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + rng.normal(size=(n, dim)) * spread / np.sqrt(dim)).astype(np.float32)


PRECISIONS = ["float32", "bfloat16", "float16", "int8", "auto"]


@pytest.mark.parametrize(
    ("n", "dim", "k", "seed"), [(1, 8, 3, 0), (97, 3, 40, 1), (3000, 64, 60, 2)]
)
def test_same_picks_as_numpy_loop_on_random_data(n: int, dim: int, k: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    want, mind = numpy_reference(x, k)
    got = k_center_greedy(x, k)
    assert got.indices.tolist() == want.tolist()
    assert_same_distances(got.distance_to_selection, mind)
    assert_same_distances(got.pick_distances[1:], mind_at_picks(x, want))


def assert_same_distances(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float32 rounding of a dot product (1e-6 on squared distance)."""
    np.testing.assert_allclose(got.astype(np.float64) ** 2, want.astype(np.float64) ** 2, atol=1e-6)
    np.testing.assert_array_equal(got == 0, want == 0)


def mind_at_picks(x: np.ndarray, picks: np.ndarray) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.array(
        [np.linalg.norm(u[picks[:i]] - u[picks[i]], axis=1).min() for i in range(1, len(picks))]
    )


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_picks_like_float32_with_pruning(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20k rows in tight clusters: enough tiles and centres for regrouping and tile skips
    from sift_worker.selection import kcenter

    regroups: list[int] = []
    original = kcenter._Greedy._reorder

    def counting(self: kcenter._Greedy) -> None:
        regroups.append(self.n_anchors)
        original(self)

    monkeypatch.setattr(kcenter._Greedy, "_reorder", counting)
    x = blobs(20_000, 32, 40, 0.3, seed=5)
    want = k_center_greedy(x, 100, precision="float32")
    got = k_center_greedy(x, 100, precision=precision)  # type: ignore[arg-type]
    assert regroups, "pruning path not exercised"
    # reduced storage only pre-filters: picks (hence the covering radius) equal float32's
    assert got.indices.tolist() == want.indices.tolist()
    assert_same_distances(got.distance_to_selection, want.distance_to_selection)
    radius = got.distance_to_selection.max()
    assert radius <= want.distance_to_selection.max() * 1.02


def test_pruned_run_matches_numpy_loop() -> None:
    x = blobs(20_000, 16, 25, 0.4, seed=8)
    want, mind = numpy_reference(x, 80)
    for precision in ("float32", "int8"):
        got = k_center_greedy(x, 80, precision=precision)  # type: ignore[arg-type]
        assert got.indices.tolist() == want.tolist()
        assert_same_distances(got.distance_to_selection, mind)


def test_initial_centers_start_the_distances() -> None:
    x, labels = clusters(n_clusters=6, per=40, dim=16, seed=4)
    pool = x[labels < 3][::7]  # the pool already covers clusters 0-2
    result = k_center_greedy(x, 3, initial_centers=pool)
    # picks cover the three clusters the pool does not, one each
    assert sorted(labels[result.indices]) == [3, 4, 5]
    # rows equal to a pool centre are at distance 0 and never picked
    pool_rows = {tuple(r) for r in pool}
    assert not any(tuple(x[i]) in pool_rows for i in result.indices)
    assert np.isfinite(result.pick_distances[0])
    want, mind = numpy_reference(x, 3, pool=pool)
    assert result.indices.tolist() == want.tolist()
    assert_same_distances(result.distance_to_selection, mind)


def test_point_equal_to_pool_centre_is_not_picked_first() -> None:
    x = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0]], np.float32)
    # the mean direction would start at row 3; with a pool, the farthest from it does
    result = k_center_greedy(x, 1, initial_centers=x[[1, 2]])
    assert result.indices.tolist() == [0]
    assert result.pick_distances[0] == pytest.approx(math.sqrt(2))
    all_dup = k_center_greedy(x[[1, 2]], 2, initial_centers=x[[1, 2]])
    assert all_dup.indices.size == 0
    assert "duplicate" in all_dup.stop_reason


@pytest.mark.parametrize("precision", PRECISIONS)
def test_stops_hold_in_every_precision(precision: str) -> None:
    x, _ = clusters(n_clusters=4, seed=2)
    result = k_center_greedy(x, 100, min_distance=0.5, precision=precision)  # type: ignore[arg-type]
    assert len(result.indices) == 4
    assert "minDistance 0.5" in result.stop_reason
    base = np.eye(3, dtype=np.float32)
    dup = k_center_greedy(np.concatenate([base] * 5), 9, precision=precision)  # type: ignore[arg-type]
    assert len(dup.indices) == 3
    assert "duplicate" in dup.stop_reason


def test_ties_go_to_the_lowest_index() -> None:
    # mean is zero -> row 0 first, then its opposite; rows 1 and 2 then tie at sqrt(2)
    x = np.array([[1, 0], [0, 1], [0, -1], [-1, 0]], np.float32)
    assert k_center_greedy(x, 4).indices.tolist() == [0, 3, 1, 2]
    swapped = x[[0, 2, 1, 3]]
    assert k_center_greedy(swapped, 4).indices.tolist() == [0, 3, 1, 2]


def test_k_larger_than_n_and_single_row() -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    result = k_center_greedy(x, 50)
    assert sorted(result.indices.tolist()) == list(range(7))
    assert np.all(result.distance_to_selection == 0)
    one = k_center_greedy(x[:1], 5)
    assert one.indices.tolist() == [0]
    assert math.isinf(one.pick_distances[0])


def test_deterministic_across_threads_and_explicit_cpu() -> None:
    x = blobs(5000, 24, 10, 0.5, seed=9)
    a = k_center_greedy(x, 40, threads=1, device="cpu")
    b = k_center_greedy(x, 40, threads=2, device=torch.device("cpu"), precision="int8")
    before = torch.get_num_threads()
    c = k_center_greedy(x, 40, threads=1)
    assert torch.get_num_threads() == before  # restored
    assert a.indices.tolist() == b.indices.tolist() == c.indices.tolist()
    np.testing.assert_array_equal(a.distance_to_selection, c.distance_to_selection)


def test_zero_rows_and_non_float32_input() -> None:
    x = np.random.default_rng(1).normal(size=(50, 6))  # float64, not contiguous below
    x[5] = 0
    got = k_center_greedy(x[:, ::1], 10)
    assert got.indices.dtype == np.int64
    assert got.distance_to_selection.dtype == np.float32
    assert len(set(got.indices.tolist())) == 10


def test_rejects_bad_arguments() -> None:
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="precision"):
        k_center_greedy(x, 2, precision="float64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_centers"):
        k_center_greedy(x, 2, initial_centers=np.ones((2, 4), np.float32))


def test_kernel_outside_its_bound_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    from sift_worker.selection import kcenter

    def broken(self: kcenter._Greedy) -> None:
        raise kcenter._BoundError("test")

    monkeypatch.setattr(kcenter._Greedy, "_check_error_bound", broken)
    x = blobs(3000, 16, 5, 0.5, seed=1)
    assert (
        k_center_greedy(x, 20, precision="int8").indices.tolist()
        == k_center_greedy(x, 20).indices.tolist()
    )


# ---- the C kernels (_scan.c) and the torch route pick the same rows ---------------------


def test_native_kernels_are_built_here() -> None:
    """CI installs with a compiler: the fast path must not silently go missing."""
    import platform

    from sift_worker.selection import kcenter, native

    assert kcenter._NATIVE
    assert native.kernels is not None
    want = "avx2" if platform.machine() == "x86_64" and "avx2" in _cpu_flags() else "none"
    assert native.kernels.simd() == want


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.parametrize("dim", [1, 7, 8, 13, 64, 130])
@pytest.mark.parametrize(("p0", "p1"), [(0, 67), (5, 64), (0, 0), (16, 17)])
def test_f32_update_matches_numpy(dim: int, p0: int, p1: int) -> None:
    from sift_worker.selection import _scan

    rng = np.random.default_rng(dim)
    n, ld = 80, dim + 3  # a row stride wider than the row: the kernel must not read the gap
    x = rng.normal(size=(n, ld)).astype(np.float32)
    x[:, dim:] = np.nan
    q = rng.normal(size=dim).astype(np.float32)
    norms = rng.uniform(0.5, 2, n).astype(np.float32)
    maxsim = rng.normal(size=n).astype(np.float32)
    assign = np.arange(n, dtype=np.int32)
    sims = (x[:, :dim].astype(np.float64) @ q) / norms
    closer = np.zeros(n, bool)
    closer[p0:p1] = sims[p0:p1] > maxsim[p0:p1]
    want_max = np.where(closer, sims, maxsim)
    want_assign = np.where(closer, 99, assign)
    _scan.f32_update(x, ld, dim, q, norms, maxsim, assign, 99, p0, p1)
    np.testing.assert_allclose(maxsim, want_max, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(assign, want_assign)


@pytest.mark.parametrize("ld", [16, 64, 24])  # 24: not a multiple of 16 (plain C route)
def test_i8_scan_values_and_flags_match_numpy(ld: int) -> None:
    from sift_worker.selection import _scan

    rng = np.random.default_rng(ld)
    n = 203
    x = rng.integers(-127, 128, (n, ld), dtype=np.int8)
    q = rng.integers(-32767, 32768, ld).astype(np.int16)
    scale_f = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    scale = torch.from_numpy(scale_f).to(torch.bfloat16)
    scale_bits = scale.view(torch.int16).numpy()
    qscale = 3e-5
    want = (x.astype(np.int64) @ q.astype(np.int64)) * (scale.float().numpy() * np.float32(qscale))
    out = np.empty(n - 3, np.float32)
    assert _scan.i8_scan(x, ld, q, qscale, scale_bits, None, out, None, 3, n) == 0
    np.testing.assert_allclose(out, want[3:], rtol=1e-6)
    lowbar = np.quantile(want, 0.8).astype(np.float32) + np.zeros(n, np.float32)
    pos = np.full(n, -1, np.int64)
    count = _scan.i8_scan(x, ld, q, qscale, scale_bits, lowbar, None, pos, 0, n)
    assert pos[:count].tolist() == np.flatnonzero(want >= lowbar).tolist()


@pytest.mark.parametrize("dim", [5, 16, 37])
def test_f32_recheck_matches_numpy(dim: int) -> None:
    from sift_worker.selection import _scan

    rng = np.random.default_rng(dim)
    n = 50
    x = rng.normal(size=(n, dim)).astype(np.float32)
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    q = rng.normal(size=dim).astype(np.float32)
    q /= np.linalg.norm(q)
    rows = rng.choice(n, 20, replace=False).astype(np.int64)
    pos = rng.permutation(n)[:20].astype(np.int64)  # positions differ from input rows
    maxsim = np.zeros(n, np.float32)
    assign = np.full(n, -1, np.int32)
    thr = np.full(n, 0.25, np.float32)
    lowbar = np.full(n, -9.0, np.float32)
    sims = (x[rows] @ q) / norms[rows]
    changed = _scan.f32_recheck(x, dim, dim, q, norms, rows, pos, maxsim, assign, 4, thr, lowbar)
    up = sims > 0
    assert changed == int(up.sum())
    np.testing.assert_allclose(maxsim[pos[up]], sims[up], rtol=1e-5)
    assert (assign[pos[up]] == 4).all()
    assert (assign[pos[~up]] == -1).all()
    np.testing.assert_allclose(lowbar[pos[up]], sims[up] - 0.25, atol=1e-6)
    assert (maxsim[np.setdiff1d(np.arange(n), pos[up])] == 0).all()
    bad = np.array([n], np.int64)
    with pytest.raises(IndexError, match="out of range"):
        _scan.f32_recheck(x, dim, dim, q, norms, bad, bad * 0, maxsim, assign, 4, thr, lowbar)


@pytest.mark.parametrize("dim", [37, 64])
def test_unit_rows_match_the_torch_formulas(dim: int) -> None:
    from sift_worker.selection import _scan

    rng = np.random.default_rng(dim)
    ld, rows = 64, 50
    x = (rng.normal(size=(rows, dim)) * 3).astype(np.float32)
    x[7] = 0.0  # a zero row keeps scale 1
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    norms[norms == 0] = 1.0
    u = torch.from_numpy(x / norms[:, None])
    # float32 store: the unit rows bit for bit, and their column sums
    store32 = np.full((rows + 2, ld), 7.0, np.float32)
    colsum = np.zeros(dim, np.float64)
    _scan.unit_rows(x, dim, norms, colsum, store32, ld, 2, None, None)
    assert (store32[2:, :dim] == u.numpy()).all()
    assert (store32[:2] == 7.0).all()
    np.testing.assert_allclose(colsum, u.numpy().astype(np.float64).sum(axis=0), atol=1e-12)
    # int8 store
    store = np.full((rows + 2, ld), 99, np.int8)
    scale = np.zeros(rows + 2, np.int16)
    err = np.empty(rows, np.float32)
    _scan.unit_rows(x, dim, norms, np.zeros(dim), store, ld, 2, scale, err)
    amax = u.abs().amax(dim=1)
    want_scale = (amax / 127 * (1 + 2.0**-7)).to(torch.bfloat16)
    want_scale[amax == 0] = 1.0
    s32 = want_scale.float()
    q = torch.round(u / s32[:, None]).clamp_(-127, 127)
    assert scale[2:].tolist() == want_scale.view(torch.int16).tolist()
    assert (store[2:, :dim] == q.to(torch.int8).numpy()).all()
    assert (store[2:, dim:] == 0).all()
    assert (store[:2] == 99).all()  # rows before row0 untouched
    want_err = (u - q * s32[:, None]).norm(dim=1).numpy()
    np.testing.assert_allclose(err, want_err, rtol=1e-4, atol=1e-7)


def test_kernels_refuse_short_buffers_by_name() -> None:
    from sift_worker.selection import _scan

    x = np.zeros((8, 4), np.float32)
    small = np.zeros(3, np.float32)
    assign = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="maxsim"):
        _scan.f32_update(x, 4, 4, np.zeros(4, np.float32), None, small, assign, 0, 0, 8)
    with pytest.raises(ValueError, match="row range"):
        _scan.f32_update(x, 2, 4, np.zeros(4, np.float32), None, small, assign, 0, 0, 8)
    tiles = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="values"):
        _scan.tile_min(small, 4, tiles, 0, 2)


def test_tile_min_matches_numpy() -> None:
    from sift_worker.selection import _scan

    values = np.random.default_rng(0).normal(size=64).astype(np.float32)
    out = np.full(8, 99, np.float32)
    _scan.tile_min(values, 16, out, 1, 4)
    np.testing.assert_array_equal(out[1:4], values[16:].reshape(3, 16).min(axis=1))
    assert (out[[0, 4, 5, 6, 7]] == 99).all()


@pytest.mark.parametrize("precision", ["float32", "int8"])
@pytest.mark.parametrize("data", ["clusters", "noise"])
def test_native_and_torch_routes_pick_the_same(
    precision: str, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sift_worker.selection import kcenter

    rng = np.random.default_rng(11)
    if data == "noise":
        x = rng.normal(size=(70_000, 24)).astype(np.float32)
    else:
        x = blobs(70_000, 24, 30, 0.3, seed=12)
    pool = x[rng.choice(len(x), 5, replace=False)] * 1.5
    got = k_center_greedy(x, 120, precision=precision, threads=2)  # type: ignore[arg-type]
    got_pool = k_center_greedy(x, 40, precision=precision, initial_centers=pool)  # type: ignore[arg-type]
    ref, _ = numpy_reference(x[:20_000], 50)
    assert k_center_greedy(x[:20_000], 50, precision=precision).indices.tolist() == ref.tolist()  # type: ignore[arg-type]
    monkeypatch.setattr(kcenter, "_NATIVE", False)
    want = k_center_greedy(x, 120, precision=precision, threads=2)  # type: ignore[arg-type]
    want_pool = k_center_greedy(x, 40, precision=precision, initial_centers=pool)  # type: ignore[arg-type]
    assert got.indices.tolist() == want.indices.tolist()
    assert got_pool.indices.tolist() == want_pool.indices.tolist()
    assert_same_distances(got.distance_to_selection, want.distance_to_selection)


def test_diversity_term_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The general greedy loop's distance bookkeeping: C kernel and torch gemv agree."""
    from sift_worker.selection import native, strategies

    rng = np.random.default_rng(4)
    x = torch.nn.functional.normalize(torch.from_numpy(blobs(150_000, 16, 9, 0.5, seed=4)), dim=1)
    pool = x[:3] * 1.0

    def distances(kernels: object) -> torch.Tensor:
        monkeypatch.setattr(native, "kernels", kernels)
        div = strategies.Diversity(x, pool)
        assert (div._maxdot is not None) == (kernels is not None)
        for row in rng.choice(len(x), 6, replace=False).tolist():
            div.add(row)
            assert float(div.min_sq[row]) == 0.0  # type: ignore[index]
        out = div.distances()
        assert out is not None
        return out

    rng = np.random.default_rng(4)
    fast = distances(native.kernels)
    rng = np.random.default_rng(4)
    slow = distances(None)
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), atol=1e-3)
    np.testing.assert_allclose(fast.numpy() ** 2, slow.numpy() ** 2, atol=1e-6)


def test_candidate_search_torch_route_matches_numpy_route() -> None:
    """The torch search (the route CUDA takes) finds the rows the CPU route finds."""
    from sift_worker.selection import kcenter

    x = blobs(30_000, 8, 6, 0.05, seed=9)  # tight blobs: many rows tie near the best
    greedy = kcenter._Greedy(x, "float32", torch.device("cpu"))
    greedy.run(12, 0.0, None)
    found = greedy._candidates_cpu()
    assert found is not None
    best, pos = found
    assert best == float(greedy.tile_min.min())
    assert sorted(greedy._candidates(best + kcenter._TOL).tolist()) == sorted(pos.tolist())
    wide = float(np.quantile(greedy.maxsim.numpy()[: len(x)], 0.5))  # > _CAP rows qualify
    assert len(greedy._candidates(wide)) == kcenter._CAP
