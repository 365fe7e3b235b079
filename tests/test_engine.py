"""The selection engine: each strategy's effect, on data built to show it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sift_worker.api.v1alpha1 import SelectionSpec
from sift_worker.selection import k_center_greedy
from sift_worker.selection import strategies as st
from sift_worker.selection.engine import (
    DEFAULT_STRATEGIES,
    _greedy_loop,
    _plan,
    select,
)
from sift_worker.selection.types import Candidates, Values

EMB = {"type": "embeddings"}


def entry(kind: str, inp: dict[str, Any] | None = None, **strategy: Any) -> dict[str, Any]:
    return {"input": inp or EMB, "strategy": {"type": kind, **strategy}}


def spec(*entries: dict[str, Any]) -> SelectionSpec:
    return SelectionSpec.model_validate({"nSamples": 1, "strategies": list(entries)})


def score(name: str = "s") -> dict[str, Any]:
    return {"type": "scores", "score": name}


def meta(key: str) -> dict[str, Any]:
    return {"type": "metadata", "key": key}


def blobs(
    n_clusters: int = 5, per: int = 40, dim: int = 16, seed: int = 0, spread: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 10
    labels = np.repeat(np.arange(n_clusters), per)
    points = centres[labels] + rng.normal(size=(n_clusters * per, dim)) * spread
    return points.astype(np.float32), labels


def cands(x: np.ndarray, values: Values | None = None) -> Candidates:
    return Candidates(ids=[f"s{i}" for i in range(len(x))], embeddings=x, values=values or {})


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_distance(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest-centre distance in float64 (float32 sqrt near 0 is only good to ~1e-3)."""
    u, c = unit(x.astype(np.float64)), unit(centres.astype(np.float64))
    return np.sqrt(np.clip(2 - 2 * u @ c.T, 0, None)).min(axis=1)


# --- threshold ---


def test_numeric_threshold_never_lets_an_excluded_sample_through() -> None:
    x, _ = blobs()
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 10, len(x))
    v[::7] = np.nan  # missing
    c = cands(x, {"scores:q": v, "scores:w": rng.random(len(x))})
    for extra in (
        [entry("diversity")],
        [entry("weights", score("w"))],
        [entry("random", {"type": "random"})],
    ):
        sel = select(c, spec(entry("threshold", score("q"), min=2.0, max=7.5), *extra), n=len(x))
        picked = v[sel.indices]
        assert np.all((picked >= 2.0) & (picked <= 7.5))
        excluded = sel.excluded["threshold[0]"]
        assert np.array_equal(excluded, ~((v >= 2.0) & (v <= 7.5)))  # NaN -> excluded
        assert not np.isin(sel.indices, np.flatnonzero(excluded)).any()
        assert len(sel.indices) == int((~excluded).sum())
        assert "no eligible samples left" in sel.stop_reason


def test_categorical_threshold_and_missing_category() -> None:
    x, _ = blobs()
    cats = np.array(["day", "night", "dusk", None] * (len(x) // 4), dtype=object)
    c = cands(x, {"metadata:time": cats})
    sel = select(
        c,
        spec(entry("threshold", meta("time"), **{"in": ["day", "dusk"]}), entry("diversity")),
        n=500,
    )
    assert set(cats[sel.indices].tolist()) == {"day", "dusk"}
    assert len(sel.indices) == int(np.isin(cats, ["day", "dusk"]).sum())


def test_thresholds_combine_and_in_matches_numbers() -> None:
    x, _ = blobs()
    cam = np.arange(len(x), dtype=np.float64) % 4  # numeric metadata, matched by "in"
    q = np.linspace(0, 1, len(x))
    c = cands(x, {"metadata:cam": cam, "scores:q": q})
    sel = select(
        c,
        spec(
            entry("threshold", meta("cam"), **{"in": ["1", "3"]}),
            entry("threshold", score("q"), min=0.5),
            entry("diversity"),
        ),
        n=1000,
    )
    assert set(cam[sel.indices].tolist()) <= {1.0, 3.0}
    assert q[sel.indices].min() >= 0.5
    assert set(sel.excluded) == {"threshold[0]", "threshold[1]"}


# --- balance ---


def balance_counts(sel_cats: np.ndarray, names: list[str]) -> np.ndarray:
    return np.array([int(np.sum(sel_cats == c)) for c in names])


@pytest.mark.parametrize("with_diversity", [False, True])
def test_balance_target_met_within_one(with_diversity: bool) -> None:
    x, _ = blobs(per=60)
    rng = np.random.default_rng(2)
    cats = rng.choice(["a", "b", "c"], size=len(x), p=[0.7, 0.2, 0.1]).astype(object)
    c = cands(x, {"metadata:k": cats, "scores:w": rng.random(len(x))})
    target = {"a": 0.2, "b": 0.3, "c": 0.5}
    other = entry("diversity") if with_diversity else entry("weights", score("w"))
    for n in (10, 20, 37):
        sel = select(c, spec(entry("balance", meta("k"), target=target), other), n=n)
        assert len(sel.indices) == n
        got = balance_counts(cats[sel.indices], ["a", "b", "c"])
        want = np.array([n * target[k] for k in "abc"])
        assert np.all(np.abs(got - want) < 1.0), (n, got, want)


@pytest.mark.parametrize("distribution", ["uniform", "input"])
def test_balance_uniform_and_input(distribution: str) -> None:
    x, _ = blobs(per=60)
    cats = np.array(["a"] * 150 + ["b"] * 100 + ["c"] * 50, dtype=object)
    c = cands(x, {"metadata:k": cats})
    n = 30
    sel = select(
        c, spec(entry("balance", meta("k"), distribution=distribution), entry("diversity")), n=n
    )
    got = balance_counts(cats[sel.indices], ["a", "b", "c"])
    shares = (
        np.array([1, 1, 1]) / 3 if distribution == "uniform" else np.array([150, 100, 50]) / 300
    )
    assert np.all(np.abs(got - n * shares) < 1.0), got


def test_balance_prefixes_stay_balanced_and_missing_is_never_picked() -> None:
    x, _ = blobs(per=60)
    cats = np.array(["a", "b", None] * 100, dtype=object)
    c = cands(x, {"metadata:k": cats})
    sel = select(
        c, spec(entry("balance", meta("k"), distribution="uniform"), entry("diversity")), n=40
    )
    picked = cats[sel.indices]
    assert None not in picked.tolist()
    for k in range(2, 41, 2):  # the soft term alternates categories
        assert abs(int(np.sum(picked[:k] == "a")) - k // 2) <= 1


def test_balance_scarce_category_gives_its_share_to_the_others() -> None:
    quota = st.quotas(np.array([0.5, 0.25, 0.25]), np.array([100, 2, 100]), 20)
    assert quota.tolist() == [12, 2, 6]  # b has only 2; the 3 it lacks split 2:1
    assert st.quotas(np.array([1.0, 1.0]), np.array([3, 4]), 50).tolist() == [3, 4]
    assert st.quotas(np.array([1.0, 1.0, 1.0]), np.array([9, 9, 9]), 10).sum() == 10


# --- weights, similarity, typicality, random ---


def test_weights_alone_picks_the_top_values() -> None:
    x, _ = blobs()
    rng = np.random.default_rng(3)
    w = rng.random(len(x))
    w[:10] = np.nan
    c = cands(x, {"scores:w": w})
    sel = select(c, spec(entry("weights", score("w"))), n=25)
    assert sel.indices.tolist() == np.argsort(-np.nan_to_num(w, nan=-1))[:25].tolist()
    low = select(c, spec(entry("weights", score("w"), strength=-1.0)), n=25)
    assert low.indices.tolist() == np.argsort(np.nan_to_num(w, nan=2))[:25].tolist()  # missing last


def test_similarity_picks_nearest_to_the_query_first() -> None:
    x, _ = blobs()
    query = x[[3, 77]] + 0.01
    sel = select(
        cands(x),
        spec(entry("similarity", query={"filenames": ["q.jpg"]})),
        n=20,
        query_embeddings=query,
    )
    cos = (unit(x) @ unit(query).T).max(axis=1)
    assert sel.indices.tolist() == np.argsort(-cos, kind="stable")[:20].tolist()
    assert set(sel.indices[:2].tolist()) == {3, 77}


def test_similarity_without_query_is_an_error() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match=r"similarity\[0\]"):
        select(cands(x), spec(entry("similarity", query={"filenames": ["q.jpg"]})), n=5)


def test_typicality_prefers_dense_points_over_outliers() -> None:
    rng = np.random.default_rng(4)
    dense = rng.normal(size=(300, 8)) * 0.05 + np.eye(8)[0]
    outliers = rng.normal(size=(30, 8))
    x = np.concatenate([dense, outliers]).astype(np.float32)
    sel = select(cands(x), spec(entry("typicality")), n=50)
    assert np.all(sel.indices < 300)
    term = st.typicality_term(torch.from_numpy(unit(x)).float())
    assert term[:300].mean() > 0.5 > term[300:].mean()
    # estimated against a subsample: the same ranking of dense vs outliers
    small = st.typicality_term(torch.from_numpy(unit(x)).float(), reference=64)
    assert small[:300].min() > small[300:].max()


def test_random_is_seeded() -> None:
    x, _ = blobs()
    c = cands(x)
    a = select(c, spec(entry("random", {"type": "random"}, seed=7)), n=30)
    b = select(c, spec(entry("random", {"type": "random"}, seed=7)), n=30)
    other = select(c, spec(entry("random", {"type": "random"}, seed=8)), n=30)
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(np.sort(a.indices), np.sort(other.indices))


# --- diversity, combinations ---


def test_pure_diversity_equals_k_center_greedy() -> None:
    x, _ = blobs(seed=5)
    sel = select(cands(x), spec(entry("diversity")), n=40)
    kc = k_center_greedy(x, 40)
    assert np.array_equal(sel.indices, kc.indices)
    assert sel.stop_reason == kc.stop_reason == "reached 40 samples"
    np.testing.assert_allclose(sel.distance_to_selection, kc.distance_to_selection, atol=1e-5)
    # the general loop computes the same thing (it runs whenever other terms score)
    plan = _plan(cands(x), spec(entry("diversity")).strategies, 40, None, None, "cpu")
    assert _greedy_loop(plan, 40).picks == kc.indices.tolist()


def test_pure_diversity_with_thresholds_equals_k_center_on_eligible_rows() -> None:
    x, _ = blobs(seed=6)
    q = np.random.default_rng(6).random(len(x))
    sel = select(
        cands(x, {"scores:q": q}),
        spec(entry("threshold", score("q"), min=0.3), entry("diversity")),
        n=25,
    )
    rows = np.flatnonzero(q >= 0.3)
    assert np.array_equal(sel.indices, rows[k_center_greedy(x[rows], 25).indices])
    # every candidate, filtered ones too, gets its distance to the nearest pick
    np.testing.assert_allclose(
        sel.distance_to_selection, brute_distance(x, x[sel.indices]), atol=2e-3
    )


def test_zero_strength_weights_reproduce_pure_diversity() -> None:
    x, _ = blobs(seed=7)
    w = np.random.default_rng(7).random(len(x))
    c = cands(x, {"scores:w": w})
    sel = select(c, spec(entry("diversity"), entry("weights", score("w"), strength=0.0)), n=30)
    assert np.array_equal(sel.indices, k_center_greedy(x, 30).indices)
    assert np.all(sel.contributions["weights[1]"] == 0)


def test_diversity_and_weights_trade_off_as_the_strengths_say() -> None:
    x, _ = blobs(n_clusters=8, per=50, seed=8, spread=2.0)
    w = np.random.default_rng(8).random(len(x))
    c = cands(x, {"scores:w": w})
    mean_w, radius = [], []
    for strength in (0.0, 0.3, 1.0, 100.0):
        sel = select(
            c, spec(entry("diversity"), entry("weights", score("w"), strength=strength)), n=30
        )
        mean_w.append(w[sel.indices].mean())
        radius.append(sel.distance_to_selection.max())
    assert mean_w == sorted(mean_w)
    assert mean_w[-1] > mean_w[0] + 0.2
    assert radius[0] == min(radius)
    assert radius[-1] > radius[0]
    top = select(c, spec(entry("diversity"), entry("weights", score("w"), strength=1e6)), n=30)
    assert set(top.indices.tolist()) == set(np.argsort(-w)[:30].tolist())


def test_contributions_sum_to_the_objective() -> None:
    x, _ = blobs(seed=9)
    rng = np.random.default_rng(9)
    cats = rng.choice(["a", "b"], size=len(x)).astype(object)
    c = cands(x, {"scores:w": rng.random(len(x)), "metadata:k": cats})
    s = spec(
        entry("diversity", strength=2.0),
        entry("weights", score("w"), strength=0.5),
        entry("typicality", strength=0.3),
        entry("random", {"type": "random"}, strength=0.1, seed=1),
        entry("balance", meta("k"), distribution="uniform", strength=0.2),
    )
    sel = select(c, s, n=20)
    assert list(sel.contributions) == [
        "diversity[0]",
        "weights[1]",
        "typicality[2]",
        "random[3]",
        "balance[4]",
    ]
    total = sum(sel.contributions.values())
    np.testing.assert_allclose(total, sel.objective)
    for label, strength in [("diversity[0]", 2.0), ("weights[1]", 0.5), ("balance[4]", 0.2)]:
        assert np.all(sel.contributions[label] >= 0)
        assert np.all(sel.contributions[label] <= strength + 1e-6)


def test_min_distance_stops_and_covers() -> None:
    x, _ = blobs(n_clusters=4, seed=10)
    w = np.random.default_rng(10).random(len(x))
    c = cands(x, {"scores:w": w})
    for extra in ([], [entry("weights", score("w"), strength=0.5)]):
        sel = select(c, spec(entry("diversity", minDistance=0.5), *extra), n=100)
        assert sel.stop_reason == f"minDistance 0.5 reached after {len(sel.indices)} samples"
        assert len(sel.indices) == 4
        assert sel.distance_to_selection.max() < 0.5


def test_pool_samples_near_it_come_last() -> None:
    x, labels = blobs(n_clusters=5, per=40, seed=11)
    pool = x[labels == 0][:5] + 0.01  # cluster 0 is already in the datapool
    for s in (
        spec(entry("diversity")),
        spec(entry("diversity"), entry("typicality", strength=0.25)),
    ):
        sel = select(cands(x), s, n=8, pool_embeddings=pool)
        firsts = labels[sel.indices[:4]]
        assert 0 not in firsts.tolist()
        assert len(set(firsts.tolist())) == 4
        # distance is to picks and pool alike
        np.testing.assert_allclose(
            sel.distance_to_selection,
            brute_distance(x, np.concatenate([x[sel.indices], pool])),
            atol=2e-3,
        )


def test_pure_diversity_with_a_pool_equals_k_center_from_the_pool() -> None:
    x, labels = blobs(n_clusters=6, per=30, seed=13)
    pool = x[labels == 2][:3]
    sel = select(cands(x), spec(entry("diversity")), n=20, pool_embeddings=pool)
    kc = k_center_greedy(x, 20, initial_centers=pool)
    assert np.array_equal(sel.indices, kc.indices)
    plan = _plan(cands(x), spec(entry("diversity")).strategies, 20, pool, None, "cpu")
    assert _greedy_loop(plan, 20).picks == kc.indices.tolist()


def test_default_for_an_empty_strategy_list() -> None:
    x, _ = blobs(seed=12)
    sel = select(cands(x), SelectionSpec.model_validate({"nSamples": 10}), n=10)
    assert list(sel.contributions) == [
        f"{e.strategy.type}[{i}]" for i, e in enumerate(DEFAULT_STRATEGIES)
    ]
    assert len(set(sel.indices.tolist())) == 10


# --- errors and edges ---


def test_missing_value_key_names_strategy_and_key() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match=r"weights\[1\].*scores:entropy"):
        select(cands(x), spec(entry("diversity"), entry("weights", score("entropy"))), n=5)
    with pytest.raises(ValueError, match=r"threshold\[0\].*metadata:weather"):
        select(cands(x), spec(entry("threshold", meta("weather"), **{"in": ["sun"]})), n=5)
    with pytest.raises(ValueError, match=r"weights\[0\].*non-numeric"):
        select(
            cands(x, {"metadata:w": np.array(["x"] * len(x), dtype=object)}),
            spec(entry("weights", meta("w"))),
            n=5,
        )


def test_no_picks_and_too_few_eligible() -> None:
    x, _ = blobs()
    c = cands(x, {"scores:q": np.zeros(len(x))})
    none = select(c, spec(entry("threshold", score("q"), min=1.0), entry("diversity")), n=5)
    assert none.indices.size == 0
    assert none.stop_reason == "no eligible samples left after 0 samples"
    assert np.all(np.isinf(none.distance_to_selection))
    zero = select(c, spec(entry("diversity")), n=0)
    assert zero.indices.size == 0
    assert zero.stop_reason == "reached 0 samples"
