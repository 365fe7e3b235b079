"""The outbox: every request body of a report, written to the output folder before sending.

Layout under ``<output>/report/`` (docs/reporting.md):

* ``create.json``: the body of ``PUT /v1/runs/{runUid}``;
* ``chunk-000000.json`` ...: the body of each ``PUT /v1/runs/{runUid}/chunks/{index}``;
* ``complete.json``: the body of ``POST /v1/runs/{runUid}/complete``;
* ``outbox.json``: the run uid, the API URL, the chunk count and each chunk's
  idempotency key; written last, so an outbox without it is incomplete and rebuilt;
* ``state.json``: which requests the API acknowledged (written atomically after each).

The files are exactly the bytes that are sent (before gzip), so a reviewer can read
what left, or would leave, the cluster. The builder reads only the run's outputs
(``selection.csv``, ``embeddings.npy``/``.txt``, ``run.json``) and, for allowlisted
metadata keys and predictions, the input's side files; nothing else goes in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sift_worker.api.v1alpha1 import ReportSpec, SelectionRun
from sift_worker.outputs import atomic_write_text
from sift_worker.reporting.salt import hash_filename, load_or_create_salt, salt_path
from sift_worker.reporting.schema import (
    MAX_SAMPLES_PER_CHUNK,
    Chunk,
    Complete,
    PredictedObject,
    Predictions,
    RunCreate,
    Sample,
    SampleStatus,
    ShareSettings,
    Summary,
    check_chunk,
    plain_text,
    share_settings,
)

log = logging.getLogger("sift.reporting")

OUTBOX_DIR = "report"
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # uncompressed; the receiver accepts up to 8 MiB

ReportedState = Literal["Pending", "Retrying", "Reported", "Rejected", "Disabled"]


class OutboxError(Exception):
    """The outputs needed to build a report are missing or unreadable."""


def outbox_dir(output_dir: Path) -> Path:
    return output_dir / OUTBOX_DIR


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.json"


def dumps(model: Any) -> str:
    """The wire form of a payload: compact JSON, absent fields left out, stable order."""
    return str(model.model_dump_json(by_alias=True, exclude_none=True))


def idempotency_key(run_uid: str, index: int, body: str) -> str:
    return f"{run_uid}.{index}.{hashlib.sha256(body.encode()).hexdigest()[:32]}"


# --- state ------------------------------------------------------------------------------


@dataclass
class OutboxState:
    """What the API acknowledged; ``reported`` feeds the run's Reported condition."""

    created: bool = False
    acked: set[int] = field(default_factory=set)
    completed: bool = False
    reported: ReportedState = "Pending"
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "created": self.created,
                "acked": sorted(self.acked),
                "completed": self.completed,
                "reported": self.reported,
                "reason": self.reason,
            },
            indent=1,
        )

    @classmethod
    def load(cls, folder: Path) -> OutboxState:
        path = folder / "state.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            created=bool(data["created"]),
            acked={int(i) for i in data["acked"]},
            completed=bool(data["completed"]),
            reported=data.get("reported", "Pending"),
            reason=str(data.get("reason", "")),
        )

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / "state.json", self.to_json() + "\n")


@dataclass(frozen=True)
class Outbox:
    folder: Path
    run_uid: str
    api_url: str
    chunks: int
    keys: tuple[str, ...]

    def create_body(self) -> str:
        return (self.folder / "create.json").read_text(encoding="utf-8")

    def chunk_body(self, index: int) -> str:
        return (self.folder / chunk_name(index)).read_text(encoding="utf-8")

    def complete_body(self) -> str:
        return (self.folder / "complete.json").read_text(encoding="utf-8")

    def requests(self) -> Iterator[tuple[str, str, str]]:
        """(method, path, body) of every request, in order: what would be sent."""
        base = f"/v1/runs/{self.run_uid}"
        yield "PUT", base, self.create_body()
        for i in range(self.chunks):
            yield "PUT", f"{base}/chunks/{i}", self.chunk_body(i)
        yield "POST", f"{base}/complete", self.complete_body()

    @classmethod
    def open(cls, output_dir: Path) -> Outbox | None:
        folder = outbox_dir(output_dir)
        manifest = folder / "outbox.json"
        if not manifest.is_file():
            return None
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return cls(folder, data["runUid"], data["apiUrl"], int(data["chunks"]), tuple(data["keys"]))


# --- building ---------------------------------------------------------------------------


def _status(raw: str) -> SampleStatus:
    if raw.startswith("excluded"):
        return "excluded"
    if raw in ("ok", "corrupt", "duplicate", "pooled"):
        return raw  # type: ignore[return-value]
    raise OutboxError(f"selection.csv: unknown status {raw!r}")


def _read_selection(output_dir: Path) -> list[tuple[str, bool, int | None, SampleStatus]]:
    path = output_dir / "selection.csv"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OutboxError(f"{path}: {exc.strerror or exc}") from None
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        selected = row["selected"] == "true"
        rank = int(row["rank"]) if selected and row["rank"] else None
        rows.append((row["filename"], selected, rank, _status(row["status"])))
    return rows


def _read_embeddings(output_dir: Path) -> dict[str, np.ndarray]:
    try:
        vectors = np.load(output_dir / "embeddings.npy", allow_pickle=False)
        names = (output_dir / "embeddings.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise OutboxError(f"{output_dir}: embeddings.npy/.txt unreadable: {exc}") from None
    if len(names) != len(vectors):
        raise OutboxError(f"{output_dir}: embeddings.txt and embeddings.npy disagree in length")
    return {n: vectors[i] for i, n in enumerate(names)}


def _summary(output_dir: Path) -> Summary:
    try:
        info = json.loads((output_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutboxError(f"{output_dir / 'run.json'}: {exc}") from None
    counts = info.get("counts", {})
    return Summary(
        listed=counts.get("listed", 0),
        decoded=counts.get("decoded", 0),
        corrupt=counts.get("corrupt", 0),
        duplicates=counts.get("duplicates", 0),
        pooled=counts.get("pooled", 0),
        selected=counts.get("selected", 0),
        stop_reason=str(info.get("selection", {}).get("stopReason", ""))[:256],
    )


def _safe_value(value: Any) -> bool | int | float | str | None:
    """A metadata value the schema accepts, or None (dropped) for anything else."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, str):
        try:
            return plain_text(value) if len(value) <= 256 else None
        except ValueError:
            return None
    return None


def _metadata(
    run: SelectionRun, input_dir: Path, names: Sequence[str], keys: Sequence[str]
) -> list[dict[str, Any]]:
    from sift_worker.inputs.metadata import load_metadata

    prefix = run.spec.input.metadata.prefix if run.spec.input.metadata else ".sift/metadata/"
    columns, _ = load_metadata(input_dir, list(names), prefix, keys)
    out: list[dict[str, Any]] = [{} for _ in names]
    dropped = 0
    for key in keys:
        column = columns[f"metadata:{key}"]
        for i, raw in enumerate(column.tolist()):
            value = _safe_value(raw)
            if value is None and raw is not None and not (isinstance(raw, float) and raw != raw):
                dropped += 1
            if value is not None:
                out[i][key] = value
    if dropped:
        log.warning("report: %d metadata values left out (too long, a URL or not plain)", dropped)
    return out


def _predictions(
    run: SelectionRun, input_dir: Path, names: Sequence[str]
) -> tuple[list[Predictions | None], list[str], str]:
    from sift_worker.inputs.predictions import load_predictions

    spec = run.spec.input.predictions
    if spec is None:
        return [None] * len(names), [], "classification"
    preds, _ = load_predictions(input_dir, list(names), spec.prefix, spec.task)
    out: list[Predictions | None] = []
    for i in range(len(names)):
        if not preds.present[i]:
            out.append(None)
        elif spec.task == "classification":
            out.append(
                Predictions(
                    probabilities=[round(float(p), 6) for p in preds.probabilities[i].tolist()]
                )
            )
        else:
            rows = preds.object_rows(i)
            objs = [
                PredictedObject(
                    label=preds.classes[int(c)],
                    score=round(float(s), 6),
                    box=[round(float(b), 3) for b in box],
                )
                for c, s, box in zip(
                    preds.object_classes[rows].tolist(),
                    preds.object_scores[rows].tolist(),
                    preds.boxes[rows].tolist(),
                    strict=True,
                )
            ][:256]
            out.append(Predictions(objects=objs))
    return out, preds.classes, spec.task


def _worker_version() -> str:
    try:
        return f"sift {importlib_metadata.version('sift')}"
    except importlib_metadata.PackageNotFoundError:
        return "sift unknown"


def run_uid(run: SelectionRun, output_dir: Path) -> str:
    """metadata.uid in a cluster; locally a uid made once and kept in the outbox."""
    if run.metadata.uid:
        return "".join(c for c in run.metadata.uid if c.isalnum() or c == "-")[:64]
    keep = outbox_dir(output_dir) / "local-uid"
    if keep.is_file():
        return keep.read_text(encoding="utf-8").strip()
    uid = f"local-{uuid.uuid4()}"
    atomic_write_text(keep, uid + "\n")
    return uid


def begin_local_run(output_dir: Path) -> str:
    """A local run starts: forget the last run's outbox, make and keep a new run uid."""
    folder = outbox_dir(output_dir)
    for name in ("outbox.json", "state.json", "local-uid"):
        (folder / name).unlink(missing_ok=True)
    uid = f"local-{uuid.uuid4()}"
    atomic_write_text(folder / "local-uid", uid + "\n")
    return uid


def build_samples(
    run: SelectionRun, report: ReportSpec, output_dir: Path, input_dir: Path | None
) -> tuple[list[Sample], ShareSettings, dict[str, Any]]:
    """Every sample of the run as the share settings allow, and the run-level extras."""
    share = report.share
    settings = share_settings(
        share.filenames, share.embeddings, list(share.metadata), share.predictions
    )
    rows = _read_selection(output_dir)
    names = [r[0] for r in rows]
    extras: dict[str, Any] = {}
    vectors = _read_embeddings(output_dir) if share.embeddings else {}
    if share.embeddings and vectors:
        extras["embedding_dim"] = len(next(iter(vectors.values())))
    salt = (
        load_or_create_salt(salt_path(output_dir, run.spec.datasource.input))
        if share.filenames == "hashed"
        else b""
    )
    meta: list[dict[str, Any]] = [{} for _ in names]
    preds: list[Predictions | None] = [None] * len(names)
    if (settings.metadata_keys or share.predictions) and input_dir is None:
        raise OutboxError("metadata and predictions can be reported from a volume input only")
    if settings.metadata_keys and input_dir is not None:
        meta = _metadata(run, input_dir, names, settings.metadata_keys)
    if share.predictions and input_dir is not None:
        preds, classes, task = _predictions(run, input_dir, names)
        extras["classes"] = classes
        extras["prediction_task"] = task
    samples = []
    for i, (name, selected, rank, status) in enumerate(rows):
        vec = vectors.get(name)
        samples.append(
            Sample(
                index=i,
                filename=name if share.filenames == "plain" else None,
                filename_hash=hash_filename(salt, name) if share.filenames == "hashed" else None,
                selected=selected,
                rank=rank,
                status=status,
                embedding=(
                    [round(float(v), 6) for v in vec.tolist()]
                    if share.embeddings and vec is not None
                    else None
                ),
                metadata=meta[i] if settings.metadata_keys else None,
                predictions=preds[i] if share.predictions else None,
            )
        )
    return samples, settings, extras


def split_chunks(samples: Sequence[Sample], max_bytes: int = MAX_CHUNK_BYTES) -> list[Chunk]:
    """Bounded chunks: at most MAX_SAMPLES_PER_CHUNK samples and about ``max_bytes`` each."""
    chunks: list[Chunk] = []
    current: list[Sample] = []
    size = 0
    for s in samples:
        n = len(dumps(s)) + 1
        if current and (len(current) >= MAX_SAMPLES_PER_CHUNK or size + n > max_bytes):
            chunks.append(Chunk(index=len(chunks), samples=current))
            current, size = [], 0
        current.append(s)
        size += n
    if current:
        chunks.append(Chunk(index=len(chunks), samples=current))
    return chunks


def build_outbox(
    run: SelectionRun,
    output_dir: Path,
    input_dir: Path | None,
    *,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    new_run: bool = False,
) -> Outbox:
    """Write every request body to ``<output>/report/``; reuse an outbox already sent from.

    An outbox some of whose chunks the API acknowledged is kept as it is (a retried pod
    of the same run must not send other content under the same chunk index); an unsent
    one is rebuilt. ``new_run``: the outputs were just written by a run without a
    ``metadata.uid`` (a local run), which is a new run: it gets a new uid and outbox.
    """
    report = run.spec.report
    assert report is not None
    folder = outbox_dir(output_dir)
    if new_run and not run.metadata.uid:
        begin_local_run(output_dir)
    existing = Outbox.open(output_dir)
    if existing is not None:
        state = OutboxState.load(folder)
        if state.created or state.acked or state.completed:
            log.info("report: reusing the outbox in %s (already partly sent)", folder)
            return existing
    uid = run_uid(run, output_dir)
    samples, share, extras = build_samples(run, report, output_dir, input_dir)
    chunks = split_chunks(samples, max_chunk_bytes)
    create = RunCreate(
        name=run.metadata.name,
        namespace=run.metadata.namespace,
        share=share,
        worker_version=_worker_version(),
        samples=len(samples),
        chunks=len(chunks),
        **extras,
    )
    for c in chunks:
        bad = check_chunk(c, create)
        assert not bad, bad  # the builder only makes what the share settings allow
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "outbox.json").unlink(missing_ok=True)
    for old in folder.glob("chunk-*.json"):
        old.unlink()
    atomic_write_text(folder / "create.json", dumps(create))
    keys = []
    for c in chunks:
        body = dumps(c)
        atomic_write_text(folder / chunk_name(c.index), body)
        keys.append(idempotency_key(uid, c.index, body))
    complete = Complete(chunks=len(chunks), samples=len(samples), summary=_summary(output_dir))
    atomic_write_text(folder / "complete.json", dumps(complete))
    OutboxState().save(folder)
    manifest = {"runUid": uid, "apiUrl": report.api.url, "chunks": len(chunks), "keys": keys}
    atomic_write_text(folder / "outbox.json", json.dumps(manifest, indent=1) + "\n")
    log.info("report: %d samples in %d chunks written to %s", len(samples), len(chunks), folder)
    return Outbox(folder, uid, report.api.url, len(chunks), tuple(keys))
