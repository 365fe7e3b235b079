"""The worker's main job: list → embed → select → write artifacts.

Stages are plain functions over plain data; this module only sequences them,
times them and reports progress, so each stage stays testable on its own.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.capabilities import unsupported_features
from sift_worker.config import ConfigError
from sift_worker.embed import Embedded, embed_folder
from sift_worker.embeddings_file import EmbeddingsFileError, load_embeddings_file
from sift_worker.imaging import CorruptImage, make_thumbnail
from sift_worker.models import WeightsError, build_model
from sift_worker.outputs import (
    atomic_write_text,
    build_selection_table,
    corrupt_csv,
    replace_dir,
    thumbnail_name,
    to_json,
    write_embeddings,
)
from sift_worker.progress import Progress
from sift_worker.report import ReportData, Thumbnail, project_2d, render_report
from sift_worker.selection import k_center_greedy, samples_to_select
from sift_worker.sources import iter_volume_files, read_relevant_filenames

log = logging.getLogger("sift.run")

REPORT_THUMBNAILS = 500


@dataclass(frozen=True)
class RunSettings:
    threads: int
    decode_workers: int
    source: str = "<manifest>"


@dataclass
class RunSummary:
    output: Path
    listed: int
    embedded: int
    corrupt: int
    selected: int
    stop_reason: str
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(time.perf_counter() - start, 3)


def _folder(run: SelectionRun, which: str) -> Path:
    loc = getattr(run.spec.datasource, which)
    assert loc.volume is not None  # guaranteed by unsupported_features
    return Path(loc.volume.path)


def preflight(run: SelectionRun, source: str) -> tuple[Path, Path]:
    """Refuse what cannot run before any work starts; return (input, output) folders."""
    problems = unsupported_features(run)
    if problems:
        raise ConfigError(source, problems)
    input_dir, output_dir = _folder(run, "input"), _folder(run, "output")
    if not input_dir.is_dir():
        raise ConfigError(
            source, [f"spec.datasource.input.volume.path: no such folder: {input_dir}"]
        )
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise ConfigError(
            source,
            [
                "spec.datasource.output.volume.path: must not be the input folder or inside it "
                "(the next run would list its own thumbnails as input)"
            ],
        )
    emb = run.spec.input.embeddings
    for name, loc in (("weights", emb.weights), ("file", emb.file)):
        if loc is not None and loc.path is not None and not Path(loc.path).is_file():
            raise ConfigError(
                source, [f"spec.input.embeddings.{name}.path: no such file: {loc.path}"]
            )
    return input_dir, output_dir


def _relevant(run: SelectionRun, input_dir: Path, source: str) -> set[str] | None:
    rel = run.spec.datasource.relevant_filenames
    if rel is None:
        return None
    try:
        return set(read_relevant_filenames(input_dir / rel))
    except (OSError, ValueError) as exc:
        raise ConfigError(source, [f"spec.datasource.relevantFilenames: {exc}"]) from None


def _embed(
    run: SelectionRun,
    input_dir: Path,
    relevant: set[str] | None,
    settings: RunSettings,
    progress: Progress,
    timer: _Timer,
) -> tuple[list[str], Embedded, str]:
    emb = run.spec.input.embeddings
    if emb.file is not None:
        assert emb.file.path is not None
        names_path = (
            Path(emb.file.filenames.path)
            if emb.file.filenames and emb.file.filenames.path
            else None
        )
        with timer("embed"):
            try:
                names, vectors = load_embeddings_file(Path(emb.file.path), names_path)
            except EmbeddingsFileError as exc:
                raise ConfigError(settings.source, [f"spec.input.embeddings.file: {exc}"]) from None
        if relevant is not None:
            keep = [i for i, n in enumerate(names) if n in relevant]
            names, vectors = [names[i] for i in keep], vectors[keep]
        log.info(
            "loaded %d embeddings (dim %d) from %s", len(names), vectors.shape[1], emb.file.path
        )
        return names, Embedded(names, vectors), f"embeddings file {Path(emb.file.path).name}"

    assert emb.model is not None
    weights = Path(emb.weights.path) if emb.weights and emb.weights.path else None
    try:
        model = build_model(emb.model, weights=weights)
    except WeightsError as exc:
        raise ConfigError(settings.source, [f"spec.input.embeddings.weights: {exc}"]) from None
    model_desc = f"{emb.model} ({'weights: ' + weights.name if weights else 'random init, seed 0'})"
    with timer("list"), progress.stage("listing", None, unit="file") as stage:
        names = []
        for name in iter_volume_files(input_dir, relevant=relevant):
            names.append(name)
            stage.advance()
    log.info("listed %d images in %s", len(names), input_dir)
    if relevant is not None and len(names) < len(relevant):
        log.warning("%d relevant filenames are not in the input", len(relevant) - len(names))
    with timer("embed"), progress.stage("embedding", len(names)) as stage:
        embedded = embed_folder(
            input_dir,
            names,
            model,
            batch_size=emb.batch_size,
            decode_workers=settings.decode_workers,
            stage=stage,
        )
    for name, reason in embedded.corrupt:
        log.warning("skipped corrupt sample %s: %s", name, reason)
    return names, embedded, model_desc


def _thumbnails(input_dir: Path, picks: Sequence[tuple[int, str]], workers: int) -> list[Thumbnail]:
    def one(item: tuple[int, str]) -> Thumbnail | None:
        rank, name = item
        try:
            return Thumbnail(filename=name, rank=rank, jpeg=make_thumbnail(input_dir / name))
        except CorruptImage as exc:
            log.warning("no thumbnail for %s: %s", name, exc.reason)
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="thumb") as pool:
        return [t for t in pool.map(one, picks) if t is not None]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("sift", "torch", "numpy", "pillow", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def run_selection(run: SelectionRun, settings: RunSettings, progress: Progress) -> RunSummary:
    started = datetime.now(UTC)
    input_dir, output_dir = preflight(run, settings.source)
    relevant = _relevant(run, input_dir, settings.source)
    timer = _Timer()
    torch.set_num_threads(settings.threads)

    listed, embedded, model_desc = _embed(run, input_dir, relevant, settings, progress, timer)

    sel = run.spec.selection
    min_distance = sel.strategies[0].strategy.min_distance if sel.strategies else None
    k = samples_to_select(
        len(embedded.filenames), n_samples=sel.n_samples, proportion=sel.proportion
    )
    with timer("select"):
        result = k_center_greedy(embedded.embeddings, k, min_distance=min_distance or 0.0)
    log.info(
        "selected %d of %d samples: %s",
        len(result.indices),
        len(embedded.filenames),
        result.stop_reason,
    )

    with timer("write"):
        output_dir.mkdir(parents=True, exist_ok=True)
        table = build_selection_table(
            listed,
            embedded.filenames,
            result.indices,
            result.pick_distances,
            result.distance_to_selection,
            embedded.corrupt,
        )
        atomic_write_text(output_dir / "selection.csv", table.to_csv())
        atomic_write_text(output_dir / "corrupt.csv", corrupt_csv(embedded.corrupt))
        write_embeddings(output_dir, embedded.filenames, embedded.embeddings)
        picks = [(rank, embedded.filenames[i]) for rank, i in enumerate(result.indices.tolist(), 1)]
        with progress.stage("thumbnails", len(picks)) as stage:
            thumbs = []
            for start in range(0, len(picks), 256):
                chunk = _thumbnails(input_dir, picks[start : start + 256], settings.decode_workers)
                thumbs += chunk
                stage.advance(len(picks[start : start + 256]))
        replace_dir(
            output_dir / "thumbnails",
            ((thumbnail_name(t.rank, t.filename), t.jpeg) for t in thumbs),
        )

    summary = RunSummary(
        output=output_dir,
        listed=len(listed),
        embedded=len(embedded.filenames),
        corrupt=len(embedded.corrupt),
        selected=len(result.indices),
        stop_reason=result.stop_reason,
    )
    counts = {
        "listed": summary.listed,
        "decoded": summary.embedded,
        "corrupt": summary.corrupt,
        "selected": summary.selected,
    }
    with timer("report"):
        rank = np.zeros(len(embedded.filenames), dtype=np.int64)
        rank[result.indices] = np.arange(1, len(result.indices) + 1)
        strategy_text = (
            "diversity (k-center greedy), "
            + (
                f"nSamples={sel.n_samples}"
                if sel.n_samples is not None
                else f"proportion={sel.proportion:g}"
            )
            + (f", minDistance={min_distance:g}" if min_distance else "")
        )
        html = render_report(
            ReportData(
                run_name=run.metadata.name,
                created=started.isoformat(timespec="seconds"),
                model=model_desc,
                strategy_summary=strategy_text,
                counts=counts,
                timings=dict(timer.timings),
                filenames=embedded.filenames,
                points=project_2d(embedded.embeddings),
                selected_rank=rank,
                thumbnails=thumbs[:REPORT_THUMBNAILS],
                corrupt=embedded.corrupt,
                stop_reason=result.stop_reason,
                min_distance_curve=[float(d) for d in result.pick_distances[1:]],
            )
        )
        atomic_write_text(output_dir / "report.html", html)
    summary.timings = dict(timer.timings)
    run_info: dict[str, Any] = {
        "apiVersion": run.api_version,
        "name": run.metadata.name,
        "manifest": settings.source,
        "spec": run.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "startedAt": started.isoformat(timespec="seconds"),
        "finishedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "settings": {"torchThreads": settings.threads, "decodeWorkers": settings.decode_workers},
        "model": model_desc,
        "counts": counts,
        "selection": {
            "requested": k,
            "selected": summary.selected,
            "stopReason": result.stop_reason,
        },
        "timings": summary.timings,
        "artifacts": [
            "selection.csv",
            "corrupt.csv",
            "embeddings.npy",
            "embeddings.txt",
            "thumbnails/",
            "report.html",
            "run.json",
        ],
    }
    atomic_write_text(output_dir / "run.json", to_json(run_info))
    return summary
