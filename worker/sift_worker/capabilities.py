"""What this worker release can run, so nothing in a valid spec is silently ignored.

Every block of the SelectionRun model exists from the start; blocks whose
behaviour arrives in a later release (object storage, embedding training, reporting)
are refused here with the field path.
"""

from __future__ import annotations

from sift_worker.api.v1alpha1 import SelectionRun, StorageLocation


def _storage(path: str, loc: StorageLocation) -> list[str]:
    problems = []
    for backend in ("s3", "gcs", "azure"):
        if getattr(loc, backend) is not None:
            problems.append(f"{path}.{backend}: {backend} storage is not supported yet; use volume")
    if loc.volume is not None and loc.volume.claim_name is not None:
        problems.append(
            f"{path}.volume.claimName: a PersistentVolumeClaim needs a cluster; "
            "locally give only volume.path"
        )
    return problems


def unsupported_features(run: SelectionRun) -> list[str]:
    """Field paths (with a reason) that this release cannot honour yet."""
    spec = run.spec
    problems = _storage("spec.datasource.input", spec.datasource.input)
    problems += _storage("spec.datasource.output", spec.datasource.output)
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
        problems.append("spec.report: reporting to a results API is not supported yet")
    return problems
