"""What this worker release can run, so nothing in a valid spec is silently ignored.

Every block of the SelectionRun model exists from the start; blocks whose
behaviour arrives in a later release (a datapool in object storage, embedding
training, sharing side files read from object storage) are refused here with the
field path.
"""

from __future__ import annotations

import os

from sift_worker.api.v1alpha1 import SelectionRun, StorageLocation


def _storage(path: str, loc: StorageLocation, broker: bool) -> list[str]:
    problems = []
    if loc.credentials_secret is not None and not broker:
        problems.append(
            f"{path}.credentialsSecret: a Secret is read by the operator's broker in a cluster "
            "(SIFT_BROKER_URL), never by the worker; locally omit it and give your own "
            "credentials in the "
            "environment (AWS_* or ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, "
            "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY)"
        )
    if loc.volume is not None and loc.volume.claim_name is not None:
        problems.append(
            f"{path}.volume.claimName: a PersistentVolumeClaim needs a cluster; "
            "locally give only volume.path"
        )
    return problems


def _backend(loc: StorageLocation) -> str | None:
    for backend in ("s3", "gcs", "azure"):
        if getattr(loc, backend) is not None:
            return backend
    return None


def _remote(run: SelectionRun) -> list[str]:
    """What object storage cannot do yet (inputs of every type and side files work)."""
    spec = run.spec
    problems = []
    backend = _backend(spec.datasource.output)
    if backend is not None and spec.selection.datapool is not None:
        problems.append(
            f"spec.datasource.output.{backend}: a datapool in object storage is not supported "
            "yet; use a volume output"
        )
    return problems


def _report(run: SelectionRun) -> list[str]:
    """Side files (metadata, predictions) come from the input folder, or from the staged
    copies of a bucket's; the outbox lives anywhere."""
    spec = run.spec
    assert spec.report is not None
    problems = []
    share = spec.report.share
    if (share.metadata or share.predictions) and spec.input.type != "images":
        problems.append(
            f"spec.report.share: metadata and predictions can be shared for images only, "
            f"not {spec.input.type}, so far"
        )
    if share.metadata and spec.input.metadata is None:
        problems.append("spec.report.share.metadata: needs spec.input.metadata (where to read it)")
    if share.predictions and spec.input.predictions is None:
        problems.append(
            "spec.report.share.predictions: needs spec.input.predictions (where to read them)"
        )
    return problems


def unsupported_features(run: SelectionRun, *, broker: bool | None = None) -> list[str]:
    """Field paths (with a reason) that this release cannot honour yet.

    ``broker``: the worker signs through the operator's broker (default: whether
    ``SIFT_BROKER_URL`` is set), which reads ``credentialsSecret`` for it.
    """
    spec = run.spec
    if broker is None:
        broker = bool(os.environ.get("SIFT_BROKER_URL"))
    problems = _storage("spec.datasource.input", spec.datasource.input, broker)
    problems += _storage("spec.datasource.output", spec.datasource.output, broker)
    problems += _remote(run)
    emb = spec.input.embeddings
    if emb.train is not None:
        problems.append(
            "spec.input.embeddings.train: self-supervised training is not supported yet"
        )
    for name, obj in (("weights", emb.weights), ("file", emb.file)):
        if obj is not None and obj.path is None:
            problems.append(
                f"spec.input.embeddings.{name}: only a local path is supported yet "
                "(signed-URL fetch from s3/gcs/azure comes with the data plane)"
            )
    if emb.file is not None and emb.file.filenames is not None and emb.file.filenames.path is None:
        problems.append("spec.input.embeddings.file.filenames: only a local path is supported yet")
    if emb.file is not None and spec.input.type != "images":
        problems.append(
            "spec.input.embeddings.file: user embeddings are per image; "
            "videos and objects need a model"
        )
    for i, entry in enumerate(spec.selection.strategies):
        query = entry.strategy.query
        if query is not None and query.embeddings is not None and query.embeddings.path is None:
            problems.append(
                f"spec.selection.strategies[{i}].strategy.query.embeddings: "
                "only a local path is supported yet"
            )
    if spec.report is not None:
        problems += _report(run)
    return problems
