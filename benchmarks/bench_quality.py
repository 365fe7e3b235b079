"""Selection quality on real labelled data: does a selection teach a classifier more
than a random one of the same size?

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, shipped
inside the package, so this runs offline). Per seed: a stratified 75/25 split into a
pool (1,347) and a held-out test set (450). Selection sees only unlabelled
embeddings of the pool: the standardised pixels projected on their top principal
components (PCA fitted on the pool, no labels). A logistic regression is trained on
the selected samples' standardised pixels and scored on the test set.

Compared: random (several draws per seed), pure diversity (k-center greedy) and
Sift's default for a plain "pick n" (``DEFAULT_STRATEGIES``: diversity + typicality).
Deterministic strategies vary with the seed through the split.

Checks (the issue's requirement):
- the default's mean accuracy >= random's at every small budget (<= 50 samples);
- the default's covering radius (largest distance from any pool sample to its nearest
  pick, on the unit sphere the engine works on) <= 0.9x random's at every budget >= 20.

    python benchmarks/bench_quality.py [--seeds 10] [--budgets 10,20,50,100,200] [--dims 16]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sift-worker does, before torch loads

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sift_worker.api.v1alpha1 import SelectionSpec
from sift_worker.selection.engine import select
from sift_worker.selection.types import Candidates
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

SMALL_BUDGET = 50  # accuracy must not lose to random up to here
RADIUS_FROM = 20  # covering radius must beat random from here on
RADIUS_RATIO = 0.9
RANDOM_DRAWS = 3

KCENTER = SelectionSpec.model_validate(
    {
        "nSamples": 1,
        "strategies": [{"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}}],
    }
)
DEFAULT = SelectionSpec.model_validate({"nSamples": 1})  # empty strategies: the default


@dataclass
class Split:
    features: np.ndarray  # pool, standardised pixels (what the classifier sees)
    labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    unit: np.ndarray  # pool embeddings, L2-normalised (what selection sees)
    candidates: Candidates


def make_split(seed: int, dims: int) -> Split:
    x, y = load_digits(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    scaler = StandardScaler().fit(x_pool)
    pool, test = scaler.transform(x_pool), scaler.transform(x_test)
    emb = PCA(dims, random_state=0).fit_transform(pool).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    candidates = Candidates(ids=[str(i) for i in range(len(emb))], embeddings=emb)
    return Split(pool, y_pool, test, y_test, unit, candidates)


def accuracy(split: Split, picks: np.ndarray) -> float:
    labels = split.labels[picks]
    if len(set(labels.tolist())) == 1:  # one class: the model can only predict it
        return float(np.mean(split.test_labels == labels[0]))
    model = LogisticRegression(max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(split.features[picks], labels)
    return float(model.score(split.test_features, split.test_labels))


def covering_radius(split: Split, picks: np.ndarray) -> float:
    sq = np.clip(2.0 - 2.0 * split.unit @ split.unit[picks].T, 0.0, None)
    return float(np.sqrt(sq.min(axis=1).max()))


Picker = Callable[[Split, int, int], list[np.ndarray]]


def pick_random(split: Split, budget: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, budget])
    n = len(split.labels)
    return [rng.choice(n, size=budget, replace=False) for _ in range(RANDOM_DRAWS)]


def pick_spec(spec: SelectionSpec) -> Picker:
    def pick(split: Split, budget: int, seed: int) -> list[np.ndarray]:
        return [select(split.candidates, spec, n=budget).indices]

    return pick


METHODS: dict[str, Picker] = {
    "random": pick_random,
    "k-center": pick_spec(KCENTER),
    "default": pick_spec(DEFAULT),
}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="10,20,50,100,200")
    parser.add_argument("--dims", type=int, default=16, help="PCA components of the embedding")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    started = time.perf_counter()
    acc: dict[tuple[str, int], list[float]] = {}
    radius: dict[tuple[str, int], list[float]] = {}
    for seed in range(args.seeds):
        split = make_split(seed, args.dims)
        for budget in budgets:
            for name, picker in METHODS.items():
                for picks in picker(split, budget, seed):
                    acc.setdefault((name, budget), []).append(accuracy(split, picks))
                    radius.setdefault((name, budget), []).append(covering_radius(split, picks))
    elapsed = time.perf_counter() - started

    print(
        f"load_digits, PCA-{args.dims} embeddings, {args.seeds} seeds "
        f"(random: {RANDOM_DRAWS} draws each), logistic regression; {elapsed:.0f} s\n"
    )
    names = list(METHODS)
    head = " | ".join(f"{m} acc" for m in names) + " | " + " | ".join(f"{m} radius" for m in names)
    print(f"| budget | {head} | default/random radius |")
    print("|---:|" + "---:|" * (2 * len(names) + 1))
    failures: list[str] = []
    for budget in budgets:
        cells = []
        for name in names:
            m, s = mean_std(acc[(name, budget)])
            cells.append(f"{m:.3f} ± {s:.3f}")
        for name in names:
            m, s = mean_std(radius[(name, budget)])
            cells.append(f"{m:.3f} ± {s:.3f}")
        ratio = statistics.fmean(radius[("default", budget)]) / statistics.fmean(
            radius[("random", budget)]
        )
        print(f"| {budget} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        default_acc = statistics.fmean(acc[("default", budget)])
        random_acc = statistics.fmean(acc[("random", budget)])
        if budget <= SMALL_BUDGET and default_acc < random_acc:
            failures.append(
                f"budget {budget}: accuracy {default_acc:.3f} < random {random_acc:.3f}"
            )
        if budget >= RADIUS_FROM and ratio > RADIUS_RATIO:
            failures.append(f"budget {budget}: radius {ratio:.2f}x random's > {RADIUS_RATIO}")

    print()
    print(f"accuracy >= random at budgets <= {SMALL_BUDGET}; ", end="")
    print(f"radius <= {RADIUS_RATIO}x random at budgets >= {RADIUS_FROM}: ", end="")
    print("PASS" if not failures else "FAIL")
    for failure in failures:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
