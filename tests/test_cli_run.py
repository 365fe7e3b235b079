"""End to end: `sift-worker` on a generated folder with clusters, duplicates and corrupt files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sift_worker.cli import EXIT_CONFIG, main
from sift_worker.demo_data import DemoDataset, generate_demo_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("data"), clusters=6, per_cluster=15, duplicates=5
    )


def manifest(tmp_path: Path, data: Path, out: Path, **selection: Any) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["datasource"]["input"]["volume"]["path"] = str(data)
    doc["spec"]["datasource"]["output"]["volume"]["path"] = str(out)
    if selection:
        doc["spec"]["selection"] = {**doc["spec"]["selection"], **selection}
        if "proportion" in selection:
            del doc["spec"]["selection"]["nSamples"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def read_selection(out: Path) -> list[dict[str, str]]:
    with (out / "selection.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def selected(rows: list[dict[str, str]]) -> list[str]:
    picked = [r for r in rows if r["selected"] == "true"]
    return [r["filename"] for r in sorted(picked, key=lambda r: int(r["rank"]))]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.imgs += tag == "img"
        self.refs += [v or "" for k, v in attrs if k in ("src", "href")]


@pytest.fixture(scope="module")
def first_run(dataset: DemoDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "out"
    assert (
        main(["run", str(manifest(tmp, dataset.root, out, nSamples=24)), "--no-progress-bars"]) == 0
    )
    return out


def test_selection_covers_every_cluster_and_skips_duplicates(
    dataset: DemoDataset, first_run: Path
) -> None:
    rows = read_selection(first_run)
    picks = selected(rows)
    assert len(picks) == 24
    cluster_of = {name: c for c, names in dataset.clusters.items() for name in names}
    cluster_of.update({copy: cluster_of[orig] for copy, orig in dataset.duplicates.items()})
    assert {cluster_of[p] for p in picks} == set(dataset.clusters)
    for copy, original in dataset.duplicates.items():
        assert not (copy in picks and original in picks), (
            f"{copy} duplicates {original}; both picked"
        )


def test_corrupt_files_listed_with_reasons(dataset: DemoDataset, first_run: Path) -> None:
    with (first_run / "corrupt.csv").open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["filename", "reason"]
        listed = dict(reader)
    assert set(listed) == set(dataset.corrupt)
    for name, keyword in dataset.corrupt.items():
        assert keyword in listed[name], (name, listed[name])
    statuses = {r["filename"]: r["status"] for r in read_selection(first_run)}
    assert all(statuses[name] == "corrupt" for name in dataset.corrupt)


def test_every_output_present_and_well_formed(dataset: DemoDataset, first_run: Path) -> None:
    rows = read_selection(first_run)
    good = [n for names in dataset.clusters.values() for n in names] + list(dataset.duplicates)
    assert list(rows[0]) == [
        "filename",
        "selected",
        "rank",
        "objective",
        "diversity[0]",
        "distance_to_selection",
        "status",
        "duplicate_of",
    ]
    assert sorted(r["filename"] for r in rows) == sorted(good + list(dataset.corrupt))
    assert sorted(int(r["rank"]) for r in rows if r["rank"]) == list(range(1, 25))

    vectors = np.load(first_run / "embeddings.npy")
    names = (first_run / "embeddings.txt").read_text().splitlines()
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(good), 128)
    assert sorted(names) == sorted(good)
    assert np.isfinite(vectors).all()

    thumbs = sorted((first_run / "thumbnails").iterdir())
    assert len(thumbs) == 24
    assert thumbs[0].name.startswith("00001_")
    with Image.open(thumbs[0]) as im:
        assert im.format == "JPEG"
        assert max(im.size) <= 192

    info = json.loads((first_run / "run.json").read_text())
    assert info["counts"] == {
        "listed": len(rows),
        "decoded": len(good),
        "corrupt": len(dataset.corrupt),
        "duplicates": 0,
        "pooled": 0,
        "selected": 24,
    }
    assert set(info["timings"]) >= {"list", "embed", "select", "write", "report"}
    assert info["versions"]["torch"].startswith("2.")
    assert info["spec"]["selection"]["nSamples"] == 24

    html = (first_run / "report.html").read_text()
    parser = _Refs()
    parser.feed(html)
    assert parser.imgs == 24
    assert all(ref.startswith(("data:", "#")) for ref in parser.refs), (
        "report must be self-contained"
    )
    assert "broken/truncated.jpg" in html


def test_embeddings_file_input_reproduces_the_selection(
    dataset: DemoDataset, first_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    path = manifest(tmp_path, dataset.root, out, nSamples=24)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["input"]["embeddings"] = {"file": {"path": str(first_run / "embeddings.npy")}}
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "--no-progress-bars"]) == 0
    assert selected(read_selection(out)) == selected(read_selection(first_run))


def test_relevant_filenames_and_proportion(dataset: DemoDataset, tmp_path: Path) -> None:
    keep = sorted(dataset.clusters)[:2]
    names = [n for c in keep for n in dataset.clusters[c]]
    (dataset.root / "relevant.txt").write_text("# two clusters only\n" + "\n".join(names) + "\n")
    try:
        path = manifest(tmp_path, dataset.root, tmp_path / "out", proportion=0.2)
        doc = yaml.safe_load(path.read_text())
        doc["spec"]["datasource"]["relevantFilenames"] = "relevant.txt"
        path.write_text(yaml.safe_dump(doc))
        assert main(["run", str(path), "--no-progress-bars"]) == 0
    finally:
        (dataset.root / "relevant.txt").unlink()
    rows = read_selection(tmp_path / "out")
    assert sorted(r["filename"] for r in rows) == sorted(names)
    assert len(selected(rows)) == int(np.ceil(0.2 * len(names)))


def test_min_distance_stops_early(dataset: DemoDataset, tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        dataset.root,
        tmp_path / "out",
        nSamples=80,
        strategies=[
            {"input": {"type": "embeddings"}, "strategy": {"type": "diversity", "minDistance": 0.5}}
        ],
    )
    assert main(["run", str(path), "--no-progress-bars"]) == 0
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["counts"]["selected"] < 80
    assert "minDistance 0.5 reached" in info["selection"]["stopReason"]


def test_json_logs_and_demo_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sift_worker.cli", "demo", "--log-format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert any(r.get("stage") == "embedding" and r.get("done") == r.get("total") for r in records)
    assert records[-1]["message"].startswith("done: selected 50 of")
    assert (tmp_path / "demo-data").is_dir()
    assert (tmp_path / "demo-out" / "report.html").stat().st_size > 10_000


def test_unsupported_blocks_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(ROOT / "examples" / "full.yaml")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for path in (
        "spec.datasource.input.credentialsSecret",
        "spec.datasource.output.s3",
        "spec.input.embeddings.weights",
    ):
        assert path in err
    assert "spec.report" not in err  # its shared metadata comes from the staged side files
    assert "not supported yet" in err


def test_output_inside_input_refused(
    dataset: DemoDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, dataset.root, dataset.root / "sift-out")
    assert main(["run", str(path)]) == EXIT_CONFIG
    assert (
        "output.volume.path: must not be the input folder or inside it" in capsys.readouterr().err
    )
    assert not (dataset.root / "sift-out").exists()


def test_missing_input_folder_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest(tmp_path, tmp_path / "nope", tmp_path / "out")
    assert main(["run", str(path)]) == EXIT_CONFIG
    assert "spec.datasource.input.volume.path: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
