"""``sift.dev/v1alpha1`` SelectionRun: spec and status.

Field names follow Kubernetes API conventions (camelCase on the wire). Every block
users may write exists here, including ones a later release implements; the worker
refuses those with a "not supported yet" error instead of ignoring them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from sift_worker.api.rules import (
    Rule,
    TransitionRule,
    at_most_one,
    exactly_one,
    immutable,
    not_together,
    only_with,
    rules_of,
    transition_rules_of,
    when_type_forbids,
    when_type_requires,
)

GROUP = "sift.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SelectionRun"

# --- constrained scalars (bounds keep the API server's CEL cost estimates finite) ---

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
SecretKey = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
]
BucketName = Annotated[
    str, StringConstraints(min_length=3, max_length=222, pattern=r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
]
Prefix = Annotated[str, StringConstraints(max_length=1024, pattern=r"^([^/].*)?$")]
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
LocalPath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=253)]
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
]
CategoryValue = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Quantity = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"),
]
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
# no user:password@ (credentials belong in Secrets), no query string or fragment
ApiURL = Annotated[
    str,
    StringConstraints(
        max_length=2048,
        pattern=r"^(https://[^\s/?#@]+|http://(127\.0\.0\.1|localhost)(:[0-9]+)?)(/[^\s?#]*)?$",
    ),
]


def _valid_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not a CIDR: {value!r}") from exc
    return value


CIDR = Annotated[
    str,
    StringConstraints(max_length=49, pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"),
    AfterValidator(_valid_cidr),
]


# --- base ---

M = TypeVar("M", bound=type[BaseModel])


def _schema_extra(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: list[Rule | TransitionRule] = [*rules_of(cls), *transition_rules_of(cls)]
    if rules:
        schema["x-kubernetes-validations"] = [r.as_validation() for r in rules]


class SiftModel(BaseModel):
    """Strict camelCase model: unknown fields are errors, as with ``kubectl --validate=strict``."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=_schema_extra,
    )
    __sift_rules__: ClassVar[tuple[Rule, ...]] = ()
    __sift_transition_rules__: ClassVar[tuple[TransitionRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> SiftModel:
        for rule in rules_of(type(self)):
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


def with_rules(make: Callable[[type[BaseModel]], Iterable[Rule]]) -> Callable[[M], M]:
    """Attach cross-field rules once the class (and so its aliases) exists."""

    def decorate(cls: M) -> M:
        cls.__sift_rules__ = tuple(make(cls))  # type: ignore[attr-defined]
        return cls

    return decorate


def _default_obj(factory: Callable[[], BaseModel]) -> Any:
    """Schema default ``{}`` so the API server fills nested defaults of an omitted block."""
    return Field(default_factory=factory, json_schema_extra={"default": {}})


# --- datasource ---


class S3Location(SiftModel):
    """An S3 (or S3-compatible) bucket and key prefix."""

    bucket: BucketName
    prefix: Prefix = Field("", description="Key prefix; empty means the whole bucket.")
    region: ShortText | None = None
    endpoint: ApiURL | None = Field(
        None, description="Endpoint of an S3-compatible service; AWS when omitted."
    )


class GCSLocation(SiftModel):
    """A Google Cloud Storage bucket and object prefix."""

    bucket: BucketName
    prefix: Prefix = ""


class AzureLocation(SiftModel):
    """An Azure Blob Storage container and blob prefix."""

    account: Annotated[str, StringConstraints(min_length=3, max_length=24, pattern=r"^[a-z0-9]+$")]
    container: Annotated[
        str,
        StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    ]
    prefix: Prefix = ""
    endpoint: ApiURL | None = Field(
        None,
        description="Blob service URL for a private endpoint, Azure Stack Hub or Azurite "
        "(e.g. https://acct.blob.local.azurestack.external, or "
        "http://127.0.0.1:10000/devstoreaccount1); https://<account>.blob.core.windows.net "
        "when omitted.",
    )


class VolumeLocation(SiftModel):
    """A folder: a PersistentVolumeClaim in a cluster, or a local path when run locally."""

    claim_name: ObjectName | None = Field(
        None, description="PVC mounted into the worker; omit for a local run."
    )
    path: LocalPath = Field(
        description="Folder; inside the claim when claimName is set, else a local path "
        "(relative paths are relative to the current directory)."
    )


@with_rules(
    lambda m: [
        exactly_one(m, "s3", "gcs", "azure", "volume"),
        not_together(m, "credentials_secret", "volume"),
    ]
)
class StorageLocation(SiftModel):
    """Where samples are read from or artifacts written to: exactly one backend."""

    s3: S3Location | None = None
    gcs: GCSLocation | None = None
    azure: AzureLocation | None = None
    volume: VolumeLocation | None = None
    credentials_secret: ObjectName | None = Field(
        None,
        description="Secret in the run's namespace with storage credentials. Read by the "
        "operator only; never mounted into the worker. Omit to use the operator's ambient "
        "identity (e.g. IRSA).",
    )


class Datasource(SiftModel):
    """Input (read-only) and output (artifacts) storage."""

    input: StorageLocation
    output: StorageLocation
    relevant_filenames: LocalPath | None = Field(
        None,
        description="A text file in the input (one relative filename per line) restricting "
        "the run to those samples.",
    )


# --- input ---


class S3Object(SiftModel):
    bucket: BucketName
    key: ObjectKey


class GCSObject(SiftModel):
    bucket: BucketName
    key: ObjectKey


class AzureObject(SiftModel):
    account: Annotated[str, StringConstraints(min_length=3, max_length=24, pattern=r"^[a-z0-9]+$")]
    container: Annotated[str, StringConstraints(min_length=3, max_length=63)]
    blob: ObjectKey


@with_rules(lambda m: [exactly_one(m, "s3", "gcs", "azure", "path")])
class ObjectLocation(SiftModel):
    """One object: in a bucket (fetched through a signed URL) or a path the worker can read."""

    s3: S3Object | None = None
    gcs: GCSObject | None = None
    azure: AzureObject | None = None
    path: LocalPath | None = Field(
        None, description="A file path: local, in the worker image or in a mounted volume."
    )


@with_rules(lambda m: [exactly_one(m, "s3", "gcs", "azure", "path")])
class EmbeddingsFileLocation(ObjectLocation):
    """A user-provided embeddings file (.npy, .csv or .parquet)."""

    filenames: ObjectLocation | None = Field(
        None,
        description="For .npy: a text file with one filename per row of the array; "
        "defaults to the .npy path with a .txt suffix.",
    )


class TrainSpec(SiftModel):
    """Self-supervised training of the embedding model on this run's data."""

    method: Literal["simclr"] = "simclr"
    epochs: int = Field(20, ge=1, le=1000)


ModelName = Literal["tiny", "resnet18", "resnet50", "vit_tiny"]


@with_rules(
    lambda m: [
        exactly_one(m, "model", "file", "train"),
        only_with(m, "weights", "model"),
    ]
)
class EmbeddingsSpec(SiftModel):
    """How embeddings are obtained: a built-in model, a user file, or self-supervised training."""

    model: ModelName | None = Field(None, description="A built-in architecture (pure torch).")
    weights: ObjectLocation | None = Field(
        None,
        description="safetensors weights for the model; deterministic random init when omitted.",
    )
    file: EmbeddingsFileLocation | None = None
    train: TrainSpec | None = None
    batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass.")


class MetadataSpec(SiftModel):
    """Per-sample metadata: one JSON file per sample under a prefix of the input."""

    prefix: Prefix = ".sift/metadata/"


class PredictionsSpec(SiftModel):
    """Per-sample model predictions under a prefix of the input."""

    prefix: Prefix = ".sift/predictions/"
    task: Literal["classification", "detection"]


class FrameSampling(SiftModel):
    """Which frames of each video become samples (input type videos)."""

    every_n_frames: int = Field(1, ge=1, le=100_000, description="Keep every n-th frame.")
    max_frames_per_video: int | None = Field(None, ge=1, le=10_000_000)


class ObjectSampling(SiftModel):
    """How detected objects become samples (input type objects)."""

    min_size: float = Field(
        4.0, ge=0, le=10_000, description="Skip boxes narrower or shorter than this (pixels)."
    )


@with_rules(
    lambda m: [
        Rule(
            cel="self.type != 'objects' || "
            "(has(self.predictions) && self.predictions.task == 'detection')",
            message="type objects needs predictions with task detection (the boxes to crop)",
            check=lambda o: (
                o.type != "objects"
                or (o.predictions is not None and o.predictions.task == "detection")
            ),
        ),
        when_type_forbids(m, "type", ("videos",), "frames"),
        when_type_forbids(m, "type", ("objects",), "objects"),
    ]
)
class InputSpec(SiftModel):
    """What a sample is and what is known about it."""

    type: Literal["images", "videos", "objects"] = Field(
        "images", description="images, frames of videos, or object crops from predictions."
    )
    embeddings: EmbeddingsSpec
    metadata: MetadataSpec | None = None
    predictions: PredictionsSpec | None = None
    frames: FrameSampling | None = None
    objects: ObjectSampling | None = None


# --- selection ---

StrategyInputType = Literal["embeddings", "scores", "metadata", "predictions", "random"]
StrategyType = Literal[
    "diversity", "weights", "threshold", "balance", "similarity", "typicality", "random"
]


@with_rules(
    lambda m: [
        when_type_requires(m, "type", ("metadata",), "key"),
        when_type_requires(m, "type", ("scores",), "score"),
        when_type_forbids(m, "type", ("metadata", "predictions"), "key"),
        when_type_forbids(m, "type", ("scores",), "score"),
        when_type_forbids(m, "type", ("scores", "predictions"), "task"),
    ]
)
class StrategyInput(SiftModel):
    """The values a strategy works on."""

    type: StrategyInputType
    key: MetadataKey | None = Field(None, description="Metadata key; nested keys by dotted path.")
    task: Literal["classification", "detection"] | None = None
    score: MetadataKey | None = Field(
        None, description="A score derived from predictions, e.g. entropy, margin."
    )


class SimilarityQuery(SiftModel):
    filenames: list[LocalPath] | None = Field(None, max_length=10000)
    embeddings: ObjectLocation | None = None


@with_rules(
    lambda m: [
        when_type_requires(m, "type", ("threshold",), "min", "max", "in_"),
        when_type_requires(m, "type", ("balance",), "target", "distribution"),
        at_most_one(m, "target", "distribution"),
        when_type_requires(m, "type", ("similarity",), "query"),
        when_type_forbids(m, "type", ("diversity",), "min_distance"),
        when_type_forbids(m, "type", ("threshold",), "min"),
        when_type_forbids(m, "type", ("threshold",), "max"),
        when_type_forbids(m, "type", ("threshold",), "in_"),
        when_type_forbids(m, "type", ("balance",), "target"),
        when_type_forbids(m, "type", ("balance",), "distribution"),
        when_type_forbids(m, "type", ("similarity",), "query"),
        when_type_forbids(m, "type", ("random",), "seed"),
    ]
)
class Strategy(SiftModel):
    """How a strategy ranks samples. Fields apply to the strategy types named."""

    type: StrategyType
    strength: float = Field(
        1.0, ge=-1e6, le=1e6, description="Weight of this strategy in the combined objective."
    )
    min_distance: float | None = Field(
        None, ge=0, le=2, description="diversity: stop once no sample is farther than this."
    )
    min: float | None = Field(None, description="threshold: keep values >= min.")
    max: float | None = Field(None, description="threshold: keep values <= max.")
    in_: list[CategoryValue] | None = Field(
        None, alias="in", max_length=256, description="threshold: keep these categories."
    )
    target: dict[CategoryValue, Annotated[float, Field(ge=0)]] | None = Field(
        None, max_length=256, description="balance: target share per category."
    )
    distribution: Literal["uniform", "input"] | None = Field(
        None, description="balance: a uniform target, or proportional to the input."
    )
    query: SimilarityQuery | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random: the seed.")


EMBEDDING_STRATEGIES = ("diversity", "typicality", "similarity")


@with_rules(
    lambda m: [
        Rule(
            cel="!(self.strategy.type in ['diversity', 'typicality', 'similarity']) "
            "|| self.input.type == 'embeddings'",
            message="strategies diversity, typicality and similarity need input type embeddings",
            check=lambda o: (
                o.strategy.type not in EMBEDDING_STRATEGIES or o.input.type == "embeddings"
            ),
        ),
        Rule(
            cel="(self.strategy.type == 'random') == (self.input.type == 'random')",
            message="input type random goes with strategy random, and only with it",
            check=lambda o: (o.strategy.type == "random") == (o.input.type == "random"),
        ),
    ]
)
class StrategyEntry(SiftModel):
    """One strategy and the input it reads."""

    input: StrategyInput
    strategy: Strategy


class RemoveDuplicates(SiftModel):
    """Drop duplicates before selection: exact (content hash) and near (embedding distance)."""

    max_distance: float = Field(0.0, ge=0, le=2)


class Datapool(SiftModel):
    """A named pool of everything selected before, for incremental runs."""

    name: LabelName


@with_rules(lambda m: [exactly_one(m, "n_samples", "proportion")])
class SelectionSpec(SiftModel):
    """How many samples to select and how they are ranked."""

    n_samples: int | None = Field(None, ge=1, le=100_000_000)
    proportion: float | None = Field(None, gt=0, le=1, description="Share of the input to select.")
    strategies: list[StrategyEntry] = Field(
        default_factory=list,
        max_length=16,
        description="Empty: the recommended default for a plain 'pick n' (docs/selection.md).",
    )
    remove_duplicates: RemoveDuplicates | None = None
    datapool: Datapool | None = None


# --- report ---


class SecretKeySelector(SiftModel):
    name: ObjectName
    key: SecretKey


class ResultsApi(SiftModel):
    url: ApiURL = Field(
        "https://api.lightly.ai", description="The results API; the only external host."
    )
    token_secret: SecretKeySelector


class Share(SiftModel):
    """Exactly what may leave the cluster. Defaults share the least."""

    filenames: Literal["plain", "hashed", "none"] = "hashed"
    embeddings: bool = False
    metadata: list[MetadataKey] = Field(default_factory=list, max_length=64)
    predictions: bool = False


class ReportSpec(SiftModel):
    """Non-sensitive results sent to the results API after they are safe in the output storage."""

    api: ResultsApi
    share: Share = _default_obj(Share)


# --- worker & egress ---


class Resources(SiftModel):
    gpu: int = Field(1, ge=0, le=16)
    # None: the operator's default (its gpu_resource_name setting, nvidia.com/gpu unless
    # the cluster admin changed it), so one Helm value covers every run
    gpu_resource_name: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = (
        Field(
            None,
            description="Extended resource of the GPU (default: the operator's setting, "
            "nvidia.com/gpu out of the box).",
        )
    )
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"


class Toleration(SiftModel):
    key: Annotated[str, StringConstraints(max_length=317)] | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class WorkerSpec(SiftModel):
    """The worker Job's pod."""

    image: ImageRef | None = Field(
        None, description="Worker image; the operator's default when omitted."
    )
    resources: Resources = _default_obj(Resources)
    node_selector: dict[
        Annotated[str, StringConstraints(max_length=317)],
        Annotated[str, StringConstraints(max_length=63)],
    ] = Field(default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] | None = Field(
        None, description="A core/v1 Affinity, passed to the pod unchanged."
    )
    priority_class_name: ObjectName | None = None
    queue_name: LabelName | None = Field(
        None, description="Hand admission to this Kueue LocalQueue."
    )
    active_deadline_seconds: int = Field(86400, ge=60, le=30 * 86400)
    backoff_limit: int = Field(2, ge=0, le=20)
    ttl_seconds_after_finished: int = Field(7 * 86400, ge=0, le=365 * 86400)


class EgressSpec(SiftModel):
    """Where the worker may connect (besides DNS and the operator)."""

    mode: Literal["networkpolicy", "cilium"] = "networkpolicy"
    api_cidrs: list[CIDR] = Field(default_factory=list, alias="apiCIDRs", max_length=32)
    storage_cidrs: list[CIDR] = Field(default_factory=list, alias="storageCIDRs", max_length=64)


class SelectionRunSpec(SiftModel):
    """Desired state of a SelectionRun.

    What the run reads, computes and selects (datasource, input, selection) and the
    Kueue queue that admits it are fixed at creation: the API server refuses an update
    that changes them. Other fields may change; once the Job exists, such a change is
    not applied to it (the run says SpecChangeIgnored), except suspend.
    """

    datasource: Datasource
    input: InputSpec
    selection: SelectionSpec
    report: ReportSpec | None = None
    worker: WorkerSpec = _default_obj(WorkerSpec)
    egress: EgressSpec = _default_obj(EgressSpec)
    suspend: bool = Field(False, description="Hold the run (its Job stays suspended).")


SelectionRunSpec.__sift_transition_rules__ = (
    immutable(SelectionRunSpec, "datasource", what="spec.datasource"),
    immutable(SelectionRunSpec, "input", what="spec.input"),
    immutable(SelectionRunSpec, "selection", what="spec.selection"),
    immutable(SelectionRunSpec, "worker", "queue_name", what="spec.worker.queueName"),
)


# --- status (written by the operator only) ---

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
Timestamp = Annotated[
    str, StringConstraints(max_length=64), Field(json_schema_extra={"format": "date-time"})
]


class Condition(SiftModel):
    """A metav1.Condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: Timestamp
    observed_generation: int | None = Field(None, ge=0)


class Progress(SiftModel):
    stage: Annotated[str, StringConstraints(max_length=63)]
    done: int = Field(ge=0)
    total: int | None = Field(None, ge=0)
    percent: int | None = Field(None, ge=0, le=100, description="floor(100 * done / total).")


class RunResult(SiftModel):
    selected: int = Field(ge=0)
    total: int = Field(ge=0)
    corrupt: int = Field(0, ge=0)
    duplicates: int = Field(0, ge=0)
    artifacts: Annotated[str, StringConstraints(max_length=2048)] | None = None


class SelectionRunStatus(SiftModel):
    """Observed state. The conditions are the contract; phase summarises them."""

    phase: Phase | None = None
    observed_generation: int | None = Field(None, ge=0)
    start_time: Timestamp | None = Field(
        None, description="When the worker pod started running (else when its Job started)."
    )
    completion_time: Timestamp | None = Field(None, description="When the run succeeded or failed.")
    progress: Progress | None = None
    result: RunResult | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the worker reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: ObjectName
    namespace: LabelName | None = None
    uid: str | None = None


class SelectionRun(SiftModel):
    """A request to select the most valuable subset of a dataset."""

    api_version: Literal["sift.dev/v1alpha1"] = Field("sift.dev/v1alpha1", alias="apiVersion")
    kind: Literal["SelectionRun"] = "SelectionRun"
    metadata: ObjectMeta
    spec: SelectionRunSpec
    status: SelectionRunStatus | None = None
