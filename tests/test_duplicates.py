from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sift_worker.selection.duplicates as dup_module
import torch
from sift_worker.selection.duplicates import content_hashes, find_duplicates


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These inputs are tiny: with OpenMP threads on a busy 2-core box, waking them up
    costs 30x more than the arithmetic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return out


def at_distance(base: np.ndarray, direction: np.ndarray, dist: float) -> np.ndarray:
    """A unit vector at exactly ``dist`` from unit ``base``, rotated towards ``direction``."""
    ortho = unit(direction - (direction @ base) * base)
    angle = 2 * np.arcsin(dist / 2)
    out: np.ndarray = np.cos(angle) * base + np.sin(angle) * ortho
    return out


def pairwise(e: np.ndarray) -> np.ndarray:
    u = unit(e.astype(np.float64))
    out: np.ndarray = np.sqrt(np.clip(2 - 2 * u @ u.T, 0, None))
    return out


def brute_force(e: np.ndarray, max_distance: float) -> tuple[np.ndarray, dict[int, int]]:
    """The documented semantics, literally: index order, compare with kept rows only;
    a row identical to an earlier one goes wherever that one went."""
    d = pairwise(e)
    first: dict[bytes, int] = {}
    kept: list[int] = []
    dup: dict[int, int] = {}
    for i in range(len(e)):
        j = first.setdefault(e[i].tobytes(), i)
        if j != i:
            dup[i] = dup.get(j, j)
            continue
        if kept:
            j = int(np.argmin(d[i, kept]))
            if d[i, kept[j]] <= max_distance:
                dup[i] = kept[j]
                continue
        kept.append(i)
    keep = np.zeros(len(e), dtype=bool)
    keep[kept] = True
    return keep, dup


def test_content_hashes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    c.write_bytes(b"y")
    paths = [a, b, c, tmp_path / "missing", tmp_path]
    for workers in (1, 2):
        h = content_hashes(paths, workers=workers)
        assert h[0] == h[1] != h[2]
        assert h[0] is not None
        assert len(h[0]) == 64
        assert h[3] is None
        assert h[4] is None


def test_exact_duplicates_by_hash_keep_the_first() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 8)).astype(np.float32)
    result = find_duplicates(e, hashes=["h1", "h2", "h1", None, "h1"], max_distance=0.0)
    assert result.keep.tolist() == [True, True, False, True, False]
    assert result.duplicate_of == {2: 0, 4: 0}
    assert result.kind == {2: "exact", 4: "exact"}
    assert result.distance == {2: 0.0, 4: 0.0}
    # unreadable files (None) never match each other
    none = find_duplicates(e[:2], hashes=[None, None], max_distance=0.0)
    assert none.keep.all()


def test_near_duplicates_at_threshold() -> None:
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(2, 32)))
    close = at_distance(base[0], rng.normal(size=32), 0.01)
    far = at_distance(base[1], rng.normal(size=32), 0.2)
    e = np.stack([base[0], base[1], close, far]).astype(np.float32) * 3.0  # scale-invariant
    result = find_duplicates(e, hashes=None, max_distance=0.05)
    assert result.keep.tolist() == [True, True, False, True]
    assert result.duplicate_of == {2: 0}
    assert result.kind == {2: "near"}
    assert result.distance[2] == pytest.approx(0.01, abs=1e-5)
    # and at a larger threshold the 0.2 pair goes too
    wider = find_duplicates(e, hashes=None, max_distance=0.25)
    assert wider.duplicate_of == {2: 0, 3: 1}


def test_chains_only_break_at_kept_rows() -> None:
    """A drift 0.04 per step with threshold 0.05: every other row survives, not just row 0."""
    rng = np.random.default_rng(2)
    start, towards = unit(rng.normal(size=16)), rng.normal(size=16)
    chain = np.stack([at_distance(start, towards, 0.04 * k) for k in range(7)]).astype(np.float32)
    result = find_duplicates(chain, hashes=None, max_distance=0.05)
    assert np.flatnonzero(result.keep).tolist() == [0, 2, 4, 6]
    assert result.duplicate_of == {1: 0, 3: 2, 5: 4}


def test_zero_distance_removes_identical_embeddings_only() -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(size=(6, 8)).astype(np.float32)
    e[3] = e[1]
    e[5] = e[1] * 2  # same direction (power-of-two scale: bit-identical once normalised)
    e[4] = e[0] + 1e-3  # close, but not identical
    result = find_duplicates(e, hashes=None, max_distance=0.0)
    assert np.flatnonzero(~result.keep).tolist() == [3, 5]
    assert result.duplicate_of == {3: 1, 5: 1}
    assert result.kind == {3: "near", 5: "near"}
    assert result.distance == {3: 0.0, 5: 0.0}


def test_exact_copy_of_a_near_duplicate_points_at_a_kept_row() -> None:
    rng = np.random.default_rng(4)
    base = unit(rng.normal(size=16))
    near = at_distance(base, rng.normal(size=16), 0.02)
    e = np.stack([base, near, near]).astype(np.float32)
    result = find_duplicates(e, hashes=["a", "b", "b"], max_distance=0.05)
    assert result.keep.tolist() == [True, False, False]
    assert result.duplicate_of == {1: 0, 2: 0}
    assert result.kind == {1: "near", 2: "exact"}
    assert result.distance[2] == pytest.approx(0.02, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blockwise_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # clusters of various tightness plus repeats, so there is plenty to remove
    centres = rng.normal(size=(20, 8))
    e = (centres[rng.integers(0, 20, 300)] + rng.normal(size=(300, 8)) * 0.15).astype(np.float32)
    e[200:220] = e[10:30]
    hashless_reference = {t: brute_force(e, t) for t in (0.05, 0.2, 0.5)}
    for t, (keep, dup) in hashless_reference.items():
        assert np.abs(pairwise(e) - t).min() > 2e-6, "a pair on the threshold would make this flaky"
        assert (~keep).sum() > 20
        for block in (1, 7, 64, 1000):
            result = find_duplicates(e, hashes=None, max_distance=t, block_size=block)
            assert np.array_equal(result.keep, keep), (t, block)
            assert result.duplicate_of == dup, (t, block)
            assert all(0 <= result.distance[i] <= t + 1e-5 for i in dup)


def test_bounded_prefilter_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide embeddings take the projection-bound path; it must not change the answer."""
    monkeypatch.setattr(dup_module, "_BOUND_TILE_CPU", (16, 32))  # many tiles, also partial
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(12, 128))  # mostly low-rank, like real embeddings
    e = rng.normal(size=(400, 12)) @ basis + rng.normal(size=(400, 128)) * 0.3
    e[300:330] = e[0:30] + rng.normal(size=(30, 128)) * 0.02
    e = e.astype(np.float32)
    for t in (0.05, 0.3):
        keep, dup = brute_force(e, t)
        assert (~keep).sum() >= 30
        for block in (50, 128):
            result = find_duplicates(e, hashes=None, max_distance=t, block_size=block)
            assert np.array_equal(result.keep, keep), (t, block)
            assert result.duplicate_of == dup, (t, block)


def test_deterministic() -> None:
    rng = np.random.default_rng(6)
    e = rng.normal(size=(500, 4)).astype(np.float32)
    a = find_duplicates(e, hashes=None, max_distance=0.3, block_size=64)
    b = find_duplicates(e, hashes=None, max_distance=0.3, block_size=64)
    assert np.array_equal(a.keep, b.keep)
    assert a.duplicate_of == b.duplicate_of
    assert a.distance == b.distance


def test_edge_cases() -> None:
    empty = find_duplicates(np.zeros((0, 4), np.float32), hashes=[], max_distance=0.1)
    assert empty.keep.shape == (0,)
    assert not empty.duplicate_of
    one = find_duplicates(np.ones((1, 4), np.float32), hashes=None, max_distance=0.1)
    assert one.keep.tolist() == [True]
    with pytest.raises(ValueError, match="hashes"):
        find_duplicates(np.ones((2, 4), np.float32), hashes=["a"], max_distance=0.1)
    with pytest.raises(ValueError, match="max_distance"):
        find_duplicates(np.ones((2, 4), np.float32), hashes=None, max_distance=-1)
