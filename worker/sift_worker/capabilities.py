"""What this worker release can run, so nothing in a valid spec is silently ignored.

Every block of the SelectionRun model exists from the start; blocks whose
behaviour arrives in a later release are refused here with the field path.
"""

from __future__ import annotations

from sift_worker.api.v1alpha1 import SelectionRun, StorageLocation

SUPPORTED_STRATEGIES = frozenset({"diversity"})


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
    if spec.input.type != "images":
        problems.append(f"spec.input.type: {spec.input.type!r} is not supported yet; use 'images'")
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
    if spec.input.metadata is not None:
        problems.append("spec.input.metadata: metadata inputs are not supported yet")
    if spec.input.predictions is not None:
        problems.append("spec.input.predictions: prediction inputs are not supported yet")
    sel = spec.selection
    for i, entry in enumerate(sel.strategies):
        if entry.strategy.type not in SUPPORTED_STRATEGIES:
            problems.append(
                f"spec.selection.strategies[{i}].strategy.type: {entry.strategy.type!r} is not "
                "supported yet; this release selects with 'diversity'"
            )
    if len(sel.strategies) > 1:
        problems.append(
            "spec.selection.strategies: combining several strategies is not supported yet"
        )
    if sel.remove_duplicates is not None:
        problems.append("spec.selection.removeDuplicates: duplicate removal is not supported yet")
    if sel.datapool is not None:
        problems.append("spec.selection.datapool: incremental datapools are not supported yet")
    if spec.report is not None:
        problems.append("spec.report: reporting to a results API is not supported yet")
    return problems
