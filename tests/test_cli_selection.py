"""The selection engine through `sift-worker run`, on data built to show each effect."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import yaml
from sift_worker.cli import main
from sift_worker.demo_data import DemoDataset, generate_demo_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    data = generate_demo_dataset(
        tmp_path_factory.mktemp("sel"), clusters=6, per_cluster=15, duplicates=5, corrupt=0
    )
    rng = np.random.default_rng(7)
    good = [n for names in data.clusters.values() for n in names] + list(data.duplicates)
    for i, name in enumerate(sorted(good)):
        meta = {"weather": "sunny" if i % 3 == 0 else "rain", "blur": round(float(rng.random()), 3)}
        path = data.root / ".sift" / "metadata" / Path(name).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta))
    return data


def run(tmp_path: Path, data: Path, selection: dict[str, Any], **input_spec: Any) -> Path:
    out = tmp_path / "out"
    doc = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": "t"},
        "spec": {
            "datasource": {
                "input": {"volume": {"path": str(data)}},
                "output": {"volume": {"path": str(out)}},
            },
            "input": {"type": "images", "embeddings": {"model": "tiny"}, **input_spec},
            "selection": selection,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "--no-progress-bars"]) == 0
    return out


def rows(out: Path, name: str = "selection.csv") -> list[dict[str, str]]:
    with (out / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


def picked(out: Path) -> list[dict[str, str]]:
    return sorted((r for r in rows(out) if r["selected"] == "true"), key=lambda r: int(r["rank"]))


def metadata(data: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (data / ".sift/metadata" / Path(name).with_suffix(".json")).read_text()
    )
    return loaded


def test_threshold_and_balance_with_diversity(dataset: DemoDataset, tmp_path: Path) -> None:
    out = run(
        tmp_path,
        dataset.root,
        {
            "nSamples": 20,
            "strategies": [
                {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}},
                {
                    "input": {"type": "metadata", "key": "blur"},
                    "strategy": {"type": "threshold", "max": 0.6},
                },
                {
                    "input": {"type": "metadata", "key": "weather"},
                    "strategy": {"type": "balance", "target": {"sunny": 0.5, "rain": 0.5}},
                },
            ],
        },
        metadata={"prefix": ".sift/metadata/"},
    )
    chosen = picked(out)
    assert len(chosen) == 20
    blurs = [metadata(dataset.root, r["filename"])["blur"] for r in chosen]
    assert max(blurs) <= 0.6, "a threshold must never let an excluded sample through"
    weather = Counter(metadata(dataset.root, r["filename"])["weather"] for r in chosen)
    assert abs(weather["sunny"] - 10) <= 1
    assert abs(weather["rain"] - 10) <= 1
    excluded = [r for r in rows(out) if r["status"] == "excluded by threshold[1]"]
    assert excluded
    assert all(metadata(dataset.root, r["filename"])["blur"] > 0.6 for r in excluded)
    assert {"objective", "diversity[0]", "balance[2]"} <= set(chosen[0])  # threshold: a filter
    html = (out / "report.html").read_text()
    assert "metadata: weather" in html


def test_duplicates_removed_and_listed(dataset: DemoDataset, tmp_path: Path) -> None:
    out = run(tmp_path, dataset.root, {"nSamples": 30, "removeDuplicates": {"maxDistance": 0.0}})
    dups = {r["filename"]: r for r in rows(out, "duplicates.csv")}
    selected = {r["filename"] for r in picked(out)}
    for copy, original in dataset.duplicates.items():
        pair = {copy, original}
        removed = pair & set(dups)
        assert len(removed) == 1, f"exactly one of {pair} is a duplicate"
        (gone,) = removed
        assert dups[gone]["kind"] == "exact"
        assert dups[gone]["duplicate_of"] == (pair - {gone}).pop()
        assert gone not in selected
    statuses = {r["filename"]: r["status"] for r in rows(out)}
    assert all(statuses[name] == "duplicate" for name in dups)


def test_datapool_never_reselects(dataset: DemoDataset, tmp_path: Path) -> None:
    selection = {"nSamples": 12, "datapool": {"name": "cams"}}
    first = {r["filename"] for r in picked(run(tmp_path, dataset.root, selection))}
    second_out = run(tmp_path, dataset.root, selection)
    second = {r["filename"] for r in picked(second_out)}
    assert len(first) == len(second) == 12
    assert not first & second, "a datapool run must never re-select a pooled sample"
    statuses = {r["filename"]: r["status"] for r in rows(second_out)}
    assert all(statuses[name] == "pooled" for name in first)
    ids = (second_out / "datapools" / "cams").rglob("ids.txt")
    assert max(len(p.read_text().splitlines()) for p in ids) == 24


def test_objects_from_detections(tmp_path: Path) -> None:
    data = generate_demo_dataset(
        tmp_path / "data", clusters=2, per_cluster=4, duplicates=0, corrupt=0
    )
    preds = data.root / ".sift" / "predictions"
    preds.mkdir(parents=True)
    (preds / "schema.json").write_text(
        json.dumps({"task": "detection", "classes": ["thing", "other"]})
    )
    names = sorted(n for group in data.clusters.values() for n in group)
    for i, name in enumerate(names):
        objects = [
            {"box": [10, 10, 60, 50], "class": "thing", "score": 0.9},
            {"box": [100, 80, 80, 90], "class": "other", "score": 0.55 + 0.01 * i},
            {"box": [0, 0, 2, 2], "class": "thing", "score": 0.5},  # below minSize: skipped
        ]
        target = preds / Path(name).with_suffix(".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"objects": objects}))
    out = run(
        tmp_path,
        data.root,
        {
            "nSamples": 6,
            "strategies": [
                {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}},
                {"input": {"type": "scores", "score": "entropy"}, "strategy": {"type": "weights"}},
            ],
        },
        type="objects",
        predictions={"prefix": ".sift/predictions/", "task": "detection"},
    )
    all_rows = rows(out)
    assert len(all_rows) == 2 * len(names)
    assert all("#object=" in r["filename"] for r in all_rows)
    assert not any(r["filename"].endswith("#object=2") for r in all_rows)
    assert len(list((out / "thumbnails").iterdir())) == 6


def make_video(path: Path, frames: int, colour: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), (colour + 10 * i) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_become_samples(tmp_path: Path) -> None:
    data = tmp_path / "videos"
    data.mkdir()
    make_video(data / "a.mp4", 20, 0)
    make_video(data / "b.mp4", 20, 128)
    out = run(tmp_path, data, {"nSamples": 4}, type="videos", frames={"everyNFrames": 5})
    ids = [r["filename"] for r in rows(out)]
    assert ids == [f"{v}.mp4#frame={f:06d}" for v in "ab" for f in (0, 5, 10, 15)]
    assert len(picked(out)) == 4
    assert len(list((out / "thumbnails").iterdir())) == 4


def test_similarity_picks_the_query_cluster_first(dataset: DemoDataset, tmp_path: Path) -> None:
    cluster = sorted(dataset.clusters)[2]
    query = dataset.clusters[cluster][:2]
    out = run(
        tmp_path,
        dataset.root,
        {
            "nSamples": 5,
            "strategies": [
                {
                    "input": {"type": "embeddings"},
                    "strategy": {"type": "similarity", "query": {"filenames": query}},
                }
            ],
        },
    )
    members = set(dataset.clusters[cluster])
    members |= {copy for copy, original in dataset.duplicates.items() if original in members}
    assert all(r["filename"] in members for r in picked(out))


def test_weights_prefer_high_scores_and_random_is_seeded(
    dataset: DemoDataset, tmp_path: Path
) -> None:
    weights = {
        "nSamples": 8,
        "strategies": [
            {"input": {"type": "metadata", "key": "blur"}, "strategy": {"type": "weights"}}
        ],
    }
    out = run(tmp_path, dataset.root, weights, metadata={"prefix": ".sift/metadata/"})
    chosen = [metadata(dataset.root, r["filename"])["blur"] for r in picked(out)]
    every = sorted((metadata(dataset.root, r["filename"])["blur"] for r in rows(out)), reverse=True)
    assert sorted(chosen, reverse=True) == every[:8]

    def random_run(seed: int) -> list[str]:
        spec = {
            "nSamples": 8,
            "strategies": [
                {"input": {"type": "random"}, "strategy": {"type": "random", "seed": seed}}
            ],
        }
        return [r["filename"] for r in picked(run(tmp_path, dataset.root, spec))]

    assert random_run(1) == random_run(1)
    assert random_run(1) != random_run(2)
