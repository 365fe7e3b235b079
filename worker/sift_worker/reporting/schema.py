"""The results-API payloads: the only things the worker's reporting client can send.

Every model forbids unknown fields and bounds every string, list and number, so a
payload cannot carry pixels, thumbnails, signed URLs, storage credentials or paths
beyond what ``share`` allows:

* there is no bytes field, no free-form object and no string longer than
  :data:`MAX_TEXT` (a filename: :data:`MAX_FILENAME`); a thumbnail does not fit;
* every string is checked by :func:`plain_text`: no URL with a query string or
  fragment (where signatures live), no ``data:`` URI, no control characters;
* a plain filename must be relative (no leading ``/``, no ``..``, no ``scheme://``);
* which optional fields a sample may have is fixed by the run's share settings
  (:func:`check_chunk`), which the receiver checks against the share settings the
  run was created with.

The OpenAPI document (``docs/results-api.openapi.yaml``) is generated from these
models by :mod:`sift_worker.reporting.openapi`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

API_VERSION = "v1"
MAX_TEXT = 256
MAX_FILENAME = 1024
MAX_SAMPLES_PER_CHUNK = 1000
MAX_EMBEDDING_DIM = 4096
MAX_METADATA_KEYS = 64
MAX_CLASSES = 1000
MAX_OBJECTS = 256

_URL_WITH_SECRETS = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]*[?#]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_text(value: str) -> str:
    if _URL_WITH_SECRETS.search(value):
        raise ValueError("must not contain a URL with a query string or fragment")
    if value.lstrip().lower().startswith("data:"):
        raise ValueError("must not be a data: URI")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _relative_name(value: str) -> str:
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        raise ValueError("must be relative to the input (no absolute path)")
    if "://" in value:
        raise ValueError("must be a name, not a URL")
    if any(part == ".." for part in re.split(r"[\\/]", value)):
        raise ValueError("must not contain '..'")
    return value


# plain_text's rules, for the JSON schema (reviewers, generators): no control characters,
# no URL with a query string or fragment, not a data: URI. Validation runs plain_text.
PLAIN_TEXT_PATTERN = (
    r"^(?![\s\S]*[a-zA-Z][a-zA-Z0-9+.\-]*://\S*[?#])(?!\s*[dD][aA][tT][aA]:)[^\x00-\x1f\x7f]*$"
)
_PLAIN = Field(json_schema_extra={"pattern": PLAIN_TEXT_PATTERN})

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(plain_text), _PLAIN]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT),
    AfterValidator(plain_text),
    _PLAIN,
]
PlainFilename = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_FILENAME),
    AfterValidator(plain_text),
    AfterValidator(_relative_name),
    _PLAIN,
]
FilenameHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
RunUid = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"),
]


def _integral(value: object) -> object:
    """JSON Schema's integer includes 1.0; booleans and strings stay refused (strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_INTEGRAL = BeforeValidator(_integral)  # after the constraints: the JSON schema keeps them
Int = Annotated[int, _INTEGRAL]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=10**12), _INTEGRAL]
MetadataValue = bool | Int | FiniteFloat | Text | None

FilenameMode = Literal["plain", "hashed", "none"]
Stage = Literal[
    "listing", "embedding", "selecting", "writing", "thumbnails", "uploading", "reporting"
]
SampleStatus = Literal["ok", "corrupt", "duplicate", "pooled", "excluded"]


class Payload(BaseModel):
    """camelCase on the wire; unknown fields are errors; no coercion (strict); immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
    )


class ShareSettings(Payload):
    """The run's ``spec.report.share``, echoed so the receiver can check every chunk."""

    filenames: FilenameMode
    embeddings: bool
    metadata_keys: list[MetadataKey] = Field(max_length=MAX_METADATA_KEYS)
    predictions: bool


class RunCreate(Payload):
    """``PUT /v1/runs/{runUid}``: create the run, or resume it (same body → same run)."""

    name: Name = Field(description="metadata.name of the SelectionRun.")
    namespace: Name | None = Field(None, description="Its namespace; absent for a local run.")
    share: ShareSettings
    worker_version: Text
    samples: Count = Field(description="Samples described by the chunks, in total.")
    chunks: Annotated[int, Field(ge=0, le=10**7), _INTEGRAL] = Field(
        description="Chunks to expect."
    )
    embedding_dim: Annotated[int, Field(ge=1, le=MAX_EMBEDDING_DIM), _INTEGRAL] | None = Field(
        None, description="Length of every embedding; only when share.embeddings."
    )
    prediction_task: Literal["classification", "detection"] | None = Field(
        None, description="Only when share.predictions."
    )
    classes: list[Name] | None = Field(
        None, max_length=MAX_CLASSES, description="Class names; only when share.predictions."
    )


class RunState(Payload):
    """What the API holds for a run: the chunks it has acknowledged."""

    run_uid: RunUid
    status: Literal["open", "complete"]
    received_chunks: list[Annotated[int, Field(ge=0), _INTEGRAL]] = Field(max_length=10**7)


class Heartbeat(Payload):
    """``POST /v1/runs/{runUid}/heartbeats``: the stage the worker is in and how far it is."""

    stage: Stage
    done: Count
    total: Count | None = None


class PredictedObject(Payload):
    label: Name
    score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    box: list[FiniteFloat] = Field(min_length=4, max_length=4, description="x, y, width, height.")


class Predictions(Payload):
    """Classification: ``probabilities`` (one per class); detection: ``objects``."""

    probabilities: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] | None = Field(
        None, max_length=MAX_CLASSES
    )
    objects: list[PredictedObject] | None = Field(None, max_length=MAX_OBJECTS)


class Sample(Payload):
    """One sample. Which optional fields are present is fixed by the share settings."""

    index: Annotated[int, Field(ge=0, le=10**12), _INTEGRAL] = Field(
        description="Row of the sample in the run (selection.csv order)."
    )
    filename: PlainFilename | None = Field(None, description="Only with filenames: plain.")
    filename_hash: FilenameHash | None = Field(
        None, description="HMAC-SHA256 of the filename (hex); only with filenames: hashed."
    )
    selected: bool
    rank: Annotated[int, Field(ge=1, le=10**12), _INTEGRAL] | None = Field(
        None, description="1 = picked first; only for selected samples."
    )
    status: SampleStatus
    embedding: list[FiniteFloat] | None = Field(
        None, max_length=MAX_EMBEDDING_DIM, description="Only with embeddings: true."
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=MAX_METADATA_KEYS, description="Only allowlisted keys."
    )
    predictions: Predictions | None = Field(None, description="Only with predictions: true.")


class Chunk(Payload):
    """``PUT /v1/runs/{runUid}/chunks/{index}``: a bounded slice of the run's samples."""

    index: Annotated[int, Field(ge=0, le=10**7), _INTEGRAL]
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_CHUNK)


class Summary(Payload):
    listed: Count
    decoded: Count
    corrupt: Count
    duplicates: Count
    pooled: Count
    selected: Count
    stop_reason: Text


class Complete(Payload):
    """``POST /v1/runs/{runUid}/complete``: every chunk is sent; the run's counts."""

    chunks: Annotated[int, Field(ge=0, le=10**7), _INTEGRAL]
    samples: Count
    summary: Summary


ErrorCode = Literal[
    "unauthorized",
    "invalid_payload",
    "not_found",
    "conflict",
    "too_large",
    "unsupported_media_type",
    "rate_limited",
    "unavailable",
]


class Error(Payload):
    """Every error response."""

    error: ErrorCode
    message: Annotated[str, StringConstraints(max_length=4096)]
    missing_chunks: list[Int] | None = Field(
        None, description="For complete: the chunks not received yet."
    )


def share_settings(
    filenames: FilenameMode, embeddings: bool, metadata: list[str], predictions: bool
) -> ShareSettings:
    return ShareSettings(
        filenames=filenames,
        embeddings=embeddings,
        metadata_keys=sorted(set(metadata)),
        predictions=predictions,
    )


def sample_fields(share: ShareSettings) -> frozenset[str]:
    """The exact wire fields a sample carries under ``share`` (docs/reporting.md's table)."""
    fields = {"index", "selected", "status"}
    if share.filenames == "plain":
        fields.add("filename")
    elif share.filenames == "hashed":
        fields.add("filenameHash")
    if share.embeddings:
        fields.add("embedding")
    if share.metadata_keys:
        fields.add("metadata")
    if share.predictions:
        fields.add("predictions")
    return frozenset(fields)


OPTIONAL_SAMPLE_FIELDS = frozenset({"rank"})  # present exactly when selected


def check_chunk(chunk: Chunk, run: RunCreate) -> list[str]:
    """What in ``chunk`` the run's share settings do not allow (empty: all allowed)."""
    allowed = sample_fields(run.share)
    keys = set(run.share.metadata_keys)
    problems = []
    for s in chunk.samples:
        present = set(s.model_dump(by_alias=True, exclude_none=True))
        extra = present - allowed - OPTIONAL_SAMPLE_FIELDS
        if extra:
            problems.append(f"sample {s.index}: fields not allowed by share: {sorted(extra)}")
        if s.selected != (s.rank is not None):
            problems.append(f"sample {s.index}: rank must be set exactly when selected")
        if s.metadata is not None and set(s.metadata) - keys:
            problems.append(
                f"sample {s.index}: metadata keys not allowlisted: {sorted(set(s.metadata) - keys)}"
            )
        if (
            s.embedding is not None
            and run.embedding_dim is not None
            and len(s.embedding) != run.embedding_dim
        ):
            problems.append(f"sample {s.index}: embedding length != {run.embedding_dim}")
        if len(problems) >= 10:
            break
    return problems
