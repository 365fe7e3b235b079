"""The worker's main job: list → embed → select → write artifacts.

Stages are plain functions over plain data; this module only sequences them,
times them and reports progress, so each stage stays testable on its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sift_worker import explain
from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.capabilities import unsupported_features
from sift_worker.checkpoint import (
    CHECKPOINT_DIR,
    BucketCheckpointStore,
    Checkpoint,
    CheckpointStore,
    VolumeCheckpointStore,
    listing_digest,
)
from sift_worker.config import ConfigError
from sift_worker.dataplane import (
    DataPlane,
    RemoteInput,
    max_download_bytes,
    open_data_plane,
    scratch_bytes,
)
from sift_worker.datapool import PoolError, save_pool
from sift_worker.embed import Embedded, embed_samples
from sift_worker.embeddings_file import EmbeddingsFileError, load_embeddings_file
from sift_worker.fetch import FetchError
from sift_worker.imaging import CorruptImage, make_thumbnail
from sift_worker.inputs import InputProblem
from sift_worker.inputs.staging import stage_side_files
from sift_worker.keystream import KeyStream
from sift_worker.models import EmbeddingModel, WeightsError, build_model
from sift_worker.outputs import (
    SampleStatus,
    atomic_write_text,
    build_selection_table,
    corrupt_csv,
    duplicates_csv,
    problems_csv,
    replace_dir,
    thumbnail_name,
    to_json,
    write_embeddings,
)
from sift_worker.progress import Progress
from sift_worker.report import ReportData, Thumbnail, project_2d, render_report
from sift_worker.sampling import SamplePlan, input_extensions, plan_files, plan_samples
from sift_worker.selecting import SelectionInputError, SelectStage, run_select_stage
from sift_worker.sources import read_relevant_filenames
from sift_worker.sources.objects import crop_thumbnail
from sift_worker.sources.samples import SampleRef
from sift_worker.sources.video import frame_thumbnail
from sift_worker.sources.volume import parse_relevant_filenames
from sift_worker.storage import StorageError
from sift_worker.values import MissingInputError, build_values, required_keys

log = logging.getLogger("sift.run")

REPORT_THUMBNAILS = 500
REMOTE_EXTRA_WORKERS = 6  # decode threads beyond the cores for object reads not read ahead
CHECKPOINT_SAMPLES = 1024  # embeddings are saved every this many input samples


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
    location: str = ""  # where the artifacts are: the folder, or s3://bucket/prefix/


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
    _check_local_files(run, source)
    return input_dir, output_dir


def _check_local_files(run: SelectionRun, source: str) -> None:
    emb = run.spec.input.embeddings
    for name, loc in (("weights", emb.weights), ("file", emb.file)):
        if loc is not None and loc.path is not None and not Path(loc.path).is_file():
            raise ConfigError(
                source, [f"spec.input.embeddings.{name}.path: no such file: {loc.path}"]
            )


def _fetching_workers(
    settings: RunSettings, input_dir: Path | RemoteInput, read_ahead: bool = False
) -> int:
    """Decode threads: a fetch in a decode thread waits on the network, so more threads
    than cores keep the cores busy; objects read ahead (images and object crops while
    embedding: sift_worker.readahead) are in memory when asked for."""
    extra = 0 if isinstance(input_dir, Path) or read_ahead else REMOTE_EXTRA_WORKERS
    return settings.decode_workers + extra


def _relevant(run: SelectionRun, source_root: Path | RemoteInput, source: str) -> set[str] | None:
    rel = run.spec.datasource.relevant_filenames
    if rel is None:
        return None
    try:
        if isinstance(source_root, Path):
            return set(read_relevant_filenames(source_root / rel))
        key = Path(rel).as_posix()
        try:
            text = source_root.read_text(key)
        except (FetchError, CorruptImage) as exc:
            raise ValueError(f"{source_root.uri(key)}: {getattr(exc, 'reason', exc)}") from None
        return set(parse_relevant_filenames(text, source_root.uri(key)))
    except (OSError, ValueError, StorageError) as exc:
        raise ConfigError(source, [f"spec.datasource.relevantFilenames: {exc}"]) from None


def _embed(
    run: SelectionRun,
    input_dir: Path | RemoteInput,
    relevant: set[str] | None,
    settings: RunSettings,
    progress: Progress,
    timer: _Timer,
    store: CheckpointStore | None = None,
) -> tuple[SamplePlan, Embedded, str]:
    spec = run.spec.input
    emb = spec.embeddings
    if isinstance(input_dir, RemoteInput) and _can_stream(run, relevant):
        return _embed_streamed(run, input_dir, settings, progress, timer, store)
    with timer("list"):
        if isinstance(input_dir, Path):
            plan = plan_samples(input_dir, spec, relevant)
        else:  # object storage: side files are copied to a folder, then read as on a volume
            files = input_dir.list(input_extensions(spec), relevant)
            plan = _remote_plan(run, input_dir, files)
    _log_listed(run, input_dir, plan)
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
        refs = [SampleRef.image(n) for n in names]
        plan.files = names
        return (
            plan,
            Embedded(names, vectors, [], refs),
            f"embeddings file {Path(emb.file.path).name}",
        )

    model, weights, model_desc = _model(run, settings)
    total = None if spec.type == "videos" else len(plan.samples)
    samples = plan.samples
    checkpoint = _checkpoint(
        run,
        store,
        lambda start, stop: listing_digest([_sample_id(s) for s in samples[start:stop]]),
        input_dir.listing_digest if isinstance(input_dir, RemoteInput) else None,
        weights,
        settings,
    )
    embedded = _embed_all(
        run, input_dir, samples, total, model, settings, progress, timer, checkpoint
    )
    return plan, embedded, model_desc


def _can_stream(run: SelectionRun, relevant: set[str] | None) -> bool:
    """Whether the embedding can start before the listing ends: plain images with no
    side files to stage first (predictions, metadata that is read) and no filter."""
    spec = run.spec.input
    return (
        spec.type == "images"
        and spec.embeddings.file is None
        and spec.predictions is None
        and (spec.metadata is None or not _reads_metadata(run))
        and relevant is None
    )


def _embed_streamed(
    run: SelectionRun,
    input_dir: RemoteInput,
    settings: RunSettings,
    progress: Progress,
    timer: _Timer,
    store: CheckpointStore | None,
) -> tuple[SamplePlan, Embedded, str]:
    """Images from object storage: the decoders start on the listing's first page while
    later pages are listed (a bucket lists 1,000 keys a page, one after another)."""
    with timer("list"):  # only starts it
        stream = input_dir.stream(input_extensions(run.spec.input))
    try:
        model, weights, model_desc = _model(run, settings)
        # each chunk checks its own keys and sizes: saving one lists no further than it
        checkpoint = _checkpoint(run, store, stream.digest, None, weights, settings)
        embedded = _embed_all(
            run, input_dir, stream, None, model, settings, progress, timer, checkpoint
        )
    except BaseException:
        stream.close()
        raise
    plan = _remote_plan(run, input_dir, input_dir.listed(stream))
    _log_listed(run, input_dir, plan)
    return plan, embedded, model_desc


def _remote_plan(run: SelectionRun, input_dir: RemoteInput, files: list[str]) -> SamplePlan:
    """Side files are copied to a folder, then read as on a volume."""
    spec = run.spec.input
    side_dir, staged = stage_side_files(input_dir, spec, files, metadata=_reads_metadata(run))
    plan = plan_files(side_dir, files, spec)
    plan.problems = [*staged, *plan.problems]
    return plan


def _log_listed(run: SelectionRun, input_dir: Path | RemoteInput, plan: SamplePlan) -> None:
    label = input_dir if isinstance(input_dir, Path) else input_dir.uri()
    log.info("listed %d files in %s (input type %s)", len(plan.files), label, run.spec.input.type)


def _model(run: SelectionRun, settings: RunSettings) -> tuple[EmbeddingModel, Path | None, str]:
    emb = run.spec.input.embeddings
    assert emb.model is not None
    weights = Path(emb.weights.path) if emb.weights and emb.weights.path else None
    try:
        model = build_model(emb.model, weights=weights)
    except WeightsError as exc:
        raise ConfigError(settings.source, [f"spec.input.embeddings.weights: {exc}"]) from None
    return (
        model,
        weights,
        f"{emb.model} ({'weights: ' + weights.name if weights else 'random init, seed 0'})",
    )


def _embed_all(
    run: SelectionRun,
    input_dir: Path | RemoteInput,
    samples: Sequence[str | SampleRef] | KeyStream,
    total: int | None,
    model: EmbeddingModel,
    settings: RunSettings,
    progress: Progress,
    timer: _Timer,
    checkpoint: Checkpoint | None,
) -> Embedded:
    spec = run.spec.input
    emb = spec.embeddings
    frames = spec.frames
    with timer("embed"), progress.stage("embedding", total) as stage:
        embedded = embed_samples(
            input_dir,
            samples,
            model,
            batch_size=emb.batch_size,
            decode_workers=_fetching_workers(settings, input_dir, spec.type != "videos"),
            stage=stage,
            expected=total or 0,
            every_n=frames.every_n_frames if frames else 1,
            max_frames=frames.max_frames_per_video if frames else None,
            checkpoint=checkpoint,
        )
    for name, reason in embedded.corrupt:
        log.warning("skipped corrupt sample %s: %s", name, reason)
    return embedded


def _reads_metadata(run: SelectionRun) -> bool:
    """Whether a strategy or the report reads per-sample metadata."""
    report = run.spec.report
    return bool(required_keys(run.spec.selection)[0]) or bool(
        report is not None and report.share.metadata
    )


def _checkpoint(
    run: SelectionRun,
    store: CheckpointStore | None,
    samples_digest: Callable[[int, int], str],
    objects: str | None,
    weights: Path | None,
    settings: RunSettings,
) -> Checkpoint | None:
    """The run's embedding checkpoint (``SIFT_CHECKPOINT_SAMPLES``: chunk size, 0: off).

    ``samples_digest``: of the input samples in a range, kept with each chunk;
    ``objects``: the digest of a whole bucket listing when it is known before the first
    chunk (keys and sizes: an object replaced since is noticed)."""
    raw = os.environ.get("SIFT_CHECKPOINT_SAMPLES", str(CHECKPOINT_SAMPLES))
    try:
        every = int(raw)
    except ValueError:
        raise ConfigError(
            settings.source, [f"SIFT_CHECKPOINT_SAMPLES: not a whole number: {raw[:20]!r}"]
        ) from None
    if store is None or every <= 0:
        return None

    def parts() -> dict[str, Any]:  # when first needed: a weights file is read then
        return {
            "input": run.spec.input.model_dump(mode="json", by_alias=True, exclude_none=True),
            "weights": _file_sha256(weights) if weights else None,
            "threads": settings.threads,
            "chunkSamples": every,
            "objects": objects,
        }

    return Checkpoint(store, parts, every, samples_digest)


def _sample_id(sample: str | SampleRef) -> str:
    return sample if isinstance(sample, str) else sample.id


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _thumbnail(source: Path | bytes, ref: SampleRef) -> bytes:
    """The thumbnail of ``ref`` from its file (a path) or, for an image, its bytes."""
    if ref.box is not None:
        return crop_thumbnail(source, ref.box)
    if ref.frame is not None:
        assert isinstance(source, Path)
        return frame_thumbnail(source, ref.frame)
    return make_thumbnail(source)


def _thumbnails(
    input_dir: Path | RemoteInput, picks: Sequence[tuple[int, SampleRef]], workers: int
) -> list[Thumbnail]:
    """Thumbnails of ``picks`` in their order. From object storage the picks of one file
    share one fetch (a video's temporary copy, an image's bytes), not one per pick."""
    groups: dict[str, list[int]] = {}
    for i, (_, ref) in enumerate(picks):
        groups.setdefault(ref.file if not isinstance(input_dir, Path) else ref.id, []).append(i)
    out: list[Thumbnail | None] = [None] * len(picks)

    def warn(ref: SampleRef, exc: Exception) -> None:
        log.warning("no thumbnail for %s: %s", ref.id, getattr(exc, "reason", exc))

    def group(indices: list[int]) -> None:
        file = picks[indices[0]][1].file
        copy: Path | None = None
        try:
            source: Path | bytes
            if isinstance(input_dir, Path):
                source = input_dir / file
            elif any(picks[i][1].frame is not None for i in indices):
                source = copy = input_dir.temp_copy(file)
            else:
                source = input_dir.read_bytes(file)
        except (CorruptImage, OSError) as exc:
            for i in indices:
                warn(picks[i][1], exc)
            return
        try:
            for i in indices:
                rank, ref = picks[i]
                try:
                    out[i] = Thumbnail(filename=ref.id, rank=rank, jpeg=_thumbnail(source, ref))
                except (CorruptImage, OSError) as exc:
                    warn(ref, exc)
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="thumb") as pool:
        list(pool.map(group, groups.values()))
    return [t for t in out if t is not None]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("sift", "torch", "numpy", "pillow", "pydantic", "av"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _select(
    run: SelectionRun,
    embedded: Embedded,
    plan: SamplePlan,
    source_root: Path | RemoteInput,
    output_dir: Path,
    settings: RunSettings,
) -> tuple[SelectStage, dict[str, Any], list[InputProblem]]:
    spec = run.spec
    # object storage: side files from their staging copy, no content hashes
    local = isinstance(source_root, Path)
    input_dir = source_root if isinstance(source_root, Path) else source_root.side_dir
    try:
        values, problems = build_values(
            input_dir, embedded.refs, plan.files, spec.input, spec.selection, plan.predictions
        )
        stage = run_select_stage(
            embedded,
            values,
            spec.selection,
            input_dir=input_dir,
            output_dir=output_dir,
            hash_files=spec.input.type == "images" and local,
        )
    except (MissingInputError, SelectionInputError, PoolError) as exc:
        raise ConfigError(settings.source, [str(exc)]) from None
    except ValueError as exc:  # the engine names the strategy and the key it could not read
        raise ConfigError(settings.source, [f"spec.selection.strategies: {exc}"]) from None
    return stage, values, problems


def run_selection(
    run: SelectionRun,
    settings: RunSettings,
    progress: Progress,
    after_upload: Callable[[DataPlane], None] | None = None,
) -> RunSummary:
    """Run one SelectionRun: a folder, or object storage through signed URLs.

    ``after_upload``: called with the data plane once the artifacts are in place (a
    bucket output's uploaded), while its staging folders and signer still exist, for
    runs on object storage (reporting: the outbox, the staged side files of a bucket
    input).
    """
    problems = unsupported_features(run)
    if problems:
        raise ConfigError(settings.source, problems)
    _check_local_files(run, settings.source)
    try:
        max_download_bytes()
        scratch_bytes()
    except ValueError as exc:
        raise ConfigError(settings.source, [str(exc)]) from None
    with open_data_plane(run, lambda: preflight(run, settings.source)) as plane:
        summary = _run_selection(run, settings, progress, plane)
        if plane.upload is not None:
            with progress.stage("upload", None):
                plane.upload.upload_dir(plane.output_dir)
        if after_upload is not None and (
            plane.upload is not None or isinstance(plane.input, RemoteInput)
        ):
            after_upload(plane)
        summary.location = plane.output_label
        return summary


def _run_selection(
    run: SelectionRun, settings: RunSettings, progress: Progress, plane: DataPlane
) -> RunSummary:
    started = datetime.now(UTC)
    input_dir, output_dir = plane.input, plane.output_dir
    relevant = _relevant(run, input_dir, settings.source)
    timer = _Timer()
    torch.set_num_threads(settings.threads)

    store: CheckpointStore = (
        BucketCheckpointStore(plane.upload.signer, plane.upload.fetcher)
        if plane.upload is not None
        else VolumeCheckpointStore(output_dir)
    )
    plan, embedded, model_desc = _embed(run, input_dir, relevant, settings, progress, timer, store)
    sel = run.spec.selection
    with timer("select"):
        stage, values, value_problems = _select(
            run, embedded, plan, input_dir, output_dir, settings
        )
    problems = [(p.filename, p.reason) for p in [*plan.problems, *value_problems]]
    for file, reason in problems:
        log.warning("input problem in %s: %s", file, reason)
    result = stage.selection
    picked = stage.picked_rows
    picked_ids = [embedded.filenames[r] for r in picked]
    n_dups = len(stage.duplicates.duplicate_of) if stage.duplicates else 0
    log.info(
        "selected %d of %d samples (%d duplicates, %d pooled): %s",
        len(picked),
        len(embedded.filenames),
        n_dups,
        int(stage.pooled.sum()),
        result.stop_reason,
    )

    with timer("write"):
        output_dir.mkdir(parents=True, exist_ok=True)
        distance = dict.fromkeys(embedded.filenames, float("nan"))
        for r, d in zip(stage.candidate_rows, result.distance_to_selection, strict=True):
            distance[embedded.filenames[r]] = float(d)
        dup_of, pooled, excluded = explain.status_maps(embedded, stage)
        table = build_selection_table(
            explain.all_samples(embedded),
            picked_ids,
            result.objective,
            result.contributions,
            distance,
            SampleStatus([n for n, _ in embedded.corrupt], dup_of, pooled, excluded),
        )
        atomic_write_text(output_dir / "selection.csv", table.to_csv())
        atomic_write_text(output_dir / "corrupt.csv", corrupt_csv(embedded.corrupt))
        dup_rows = explain.duplicate_rows(embedded, stage)
        atomic_write_text(
            output_dir / "duplicates.csv",
            duplicates_csv((d.filename, d.original, d.kind, d.distance) for d in dup_rows),
        )
        atomic_write_text(output_dir / "input_problems.csv", problems_csv(problems))
        write_embeddings(output_dir, embedded.filenames, embedded.embeddings)
        picks = [(rank, embedded.refs[r]) for rank, r in enumerate(picked.tolist(), 1)]
        with progress.stage("thumbnails", len(picks)) as bar:
            thumbs = []
            for start in range(0, len(picks), 256):
                thumbs += _thumbnails(
                    input_dir, picks[start : start + 256], _fetching_workers(settings, input_dir)
                )
                bar.advance(len(picks[start : start + 256]))
        replace_dir(
            output_dir / "thumbnails",
            ((thumbnail_name(t.rank, t.filename), t.jpeg) for t in thumbs),
        )

    summary = RunSummary(
        output=output_dir,
        listed=len(plan.files),
        embedded=len(embedded.filenames),
        corrupt=len(embedded.corrupt),
        selected=len(picked),
        stop_reason=result.stop_reason,
    )
    counts = {
        "listed": summary.listed,
        "decoded": summary.embedded,
        "corrupt": summary.corrupt,
        "duplicates": n_dups,
        "pooled": int(stage.pooled.sum()),
        "selected": summary.selected,
    }
    with timer("report"):
        rank = np.zeros(len(embedded.filenames), dtype=np.int64)
        rank[picked] = np.arange(1, len(picked) + 1)
        html = render_report(
            ReportData(
                run_name=run.metadata.name,
                created=started.isoformat(timespec="seconds"),
                model=model_desc,
                strategy_summary=explain.strategy_summary(sel),
                counts={  # cards only for features in use; run.json keeps every count
                    k: v
                    for k, v in counts.items()
                    if not (k == "duplicates" and sel.remove_duplicates is None)
                    and not (k == "pooled" and sel.datapool is None)
                },
                timings=dict(timer.timings),
                filenames=embedded.filenames,
                points=project_2d(embedded.embeddings),
                selected_rank=rank,
                thumbnails=thumbs[:REPORT_THUMBNAILS],
                corrupt=embedded.corrupt,
                stop_reason=result.stop_reason,
                min_distance_curve=explain.coverage_curve(embedded.embeddings[picked]),
                distributions=explain.distributions(sel, values, stage),
                duplicates=dup_rows,
                strategy_effects=explain.strategy_effects(sel, stage),
                input_problems=problems,
            )
        )
        atomic_write_text(output_dir / "report.html", html)
    if stage.pool is not None and len(picked):
        # last: the pool only learns of picks whose artifacts are safely written
        new = save_pool(output_dir, stage.pool, picked_ids, embedded.embeddings[picked])
        log.info(
            "datapool %r now holds %d samples (generation %d)",
            new.name,
            len(new.ids),
            new.generation,
        )
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
            "requested": stage.requested,
            "selected": summary.selected,
            "stopReason": result.stop_reason,
            "strategies": explain.strategy_summary(sel),
        },
        "timings": summary.timings,
        "artifacts": [
            "selection.csv",
            "corrupt.csv",
            "duplicates.csv",
            "input_problems.csv",
            "embeddings.npy",
            "embeddings.txt",
            "thumbnails/",
            "report.html",
            "run.json",
        ],
    }
    atomic_write_text(output_dir / "run.json", to_json(run_info))
    if plane.upload is None:  # finished: the checkpoint has done its job (buckets keep it)
        shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)
    return summary
