"""What every child shares: the parsed spec, labels, owner reference, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sift_worker.api.v1alpha1 import API_VERSION, KIND, SelectionRunSpec
from sift_worker.config import describe_validation_error

from sift_operator.names import child_name, label_value

Obj = dict[str, Any]

RUN_LABEL = "sift.dev/run"
RUN_UID_LABEL = "sift.dev/run-uid"
GENERATION_ANNOTATION = "sift.dev/generation"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "sift-operator"


class InvalidRunError(ValueError):
    """The run object cannot be turned into children; ``problems`` say why (no secrets)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_spec(run: Mapping[str, Any]) -> SelectionRunSpec:
    """The run's spec as the typed model (defaults filled in), or ``InvalidRunError``."""
    try:
        return SelectionRunSpec.model_validate(run.get("spec") or {})
    except ValidationError as exc:
        raise InvalidRunError([f"spec.{p}" for p in describe_validation_error(exc)]) from None


def spec_of(run: Mapping[str, Any], spec: SelectionRunSpec | None) -> SelectionRunSpec:
    """``spec`` when the caller already parsed it (once per reconcile), else parsed now."""
    return spec if spec is not None else parse_spec(run)


def identity(run: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(name, namespace, uid)``; all three are needed for namespaced owned children."""
    meta = run.get("metadata") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    missing = [k for k, v in (("name", name), ("namespace", namespace), ("uid", uid)) if not v]
    if missing:
        raise InvalidRunError([f"metadata.{k} is missing" for k in missing])
    return str(name), str(namespace), str(uid)


def selector_labels(run: Mapping[str, Any]) -> dict[str, str]:
    """Selects exactly this run's pods (the uid survives a delete and re-create by name)."""
    return {RUN_UID_LABEL: identity(run)[2]}


def run_labels(run: Mapping[str, Any], component: str = "worker") -> dict[str, str]:
    """Labels on every child. Nothing is copied from the parent's labels or annotations:
    Argo CD tracks objects by ``app.kubernetes.io/instance`` (label tracking) or the
    ``argocd.argoproj.io/tracking-id`` annotation, and a child carrying either would be
    shown as (and pruned as) a resource of the parent's Application."""
    name, _, uid = identity(run)
    return {
        "app.kubernetes.io/name": "sift",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "sift",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        RUN_LABEL: label_value(name),
        RUN_UID_LABEL: uid,
    }


def owner_reference(run: Mapping[str, Any]) -> Obj:
    name, _, uid = identity(run)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(run: Mapping[str, Any], *, annotations: Mapping[str, str] | None = None) -> Obj:
    name, namespace, _ = identity(run)
    meta: Obj = {
        "name": child_name(name),
        "namespace": namespace,
        "labels": run_labels(run),
        "ownerReferences": [owner_reference(run)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def generation(run: Mapping[str, Any]) -> int:
    value = (run.get("metadata") or {}).get("generation")
    return int(value) if value is not None else 0
