import math

import numpy as np
import pytest
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
