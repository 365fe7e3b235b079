"""The worker's config: the SelectionRun manifest the worker runs, as a ConfigMap.

Only the spec (with defaults filled in) and the run's name, namespace and uid go in:
never the parent's annotations (``kubectl.kubernetes.io/last-applied-configuration``
and friends), never its status. The spec itself can only *name* Secrets
(``credentialsSecret``, ``tokenSecret``); their values are read by the operator and
never reach the worker's config. PersistentVolumeClaims are mounted by the Job, so
their locations are rewritten to the mount paths the worker sees.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import yaml
from sift_worker.api.v1alpha1 import API_VERSION, KIND, SelectionRunSpec

from sift_operator.children.common import (
    GENERATION_ANNOTATION,
    Obj,
    child_metadata,
    generation,
    identity,
    spec_of,
)

CONFIG_KEY = "run.yaml"
CONFIG_DIR = "/etc/sift"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
BROKER_CA_KEY = "broker-ca.crt"  # the broker's CA (public), when the operator serves one
BROKER_CA_PATH = f"{CONFIG_DIR}/{BROKER_CA_KEY}"
MOUNT_ROOT = "/mnt/sift"


def claim_mount_path(role: str) -> str:
    """Where the claim of the ``input`` or ``output`` location is mounted."""
    return f"{MOUNT_ROOT}/{role}"


def claim_sub_path(path: str) -> str:
    """``path`` inside its claim, normalised; ``normpath`` of an absolute path cannot
    climb above "/", so "../../etc" stays inside the claim. Empty means the whole claim."""
    return posixpath.normpath("/" + path).lstrip("/")


def claim_worker_path(role: str, path: str) -> str:
    """The folder the worker reads (input) or writes (output) on a claim.

    The input is mounted read-only *at* its folder (a subPath: nothing else of the claim
    is visible); the output claim is mounted whole, since its folder may not exist yet.
    """
    inner = claim_sub_path(path)
    base = claim_mount_path(role)
    return base if role == "input" or not inner else f"{base}/{inner}"


def worker_spec(spec: SelectionRunSpec) -> dict[str, Any]:
    """The spec as the worker gets it: claims replaced by their mount paths."""
    doc: dict[str, Any] = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    for role in ("input", "output"):
        volume = doc["datasource"][role].get("volume")
        if volume is not None and "claimName" in volume:
            doc["datasource"][role]["volume"] = {"path": claim_worker_path(role, volume["path"])}
    return doc


def worker_manifest(run: Mapping[str, Any], spec: SelectionRunSpec | None = None) -> dict[str, Any]:
    name, namespace, uid = identity(run)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": worker_spec(spec_of(run, spec)),
    }


def build_config_map(
    run: Mapping[str, Any],
    broker_ca_pem: str | None = None,
    *,
    spec: SelectionRunSpec | None = None,
) -> Obj:
    # libyaml's emitter when present: the pure-Python one was the largest CPU cost per run
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(worker_manifest(run, spec), Dumper=dumper, sort_keys=False, width=100)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(run, annotations={GENERATION_ANNOTATION: str(generation(run))}),
        "data": {CONFIG_KEY: text, **({BROKER_CA_KEY: broker_ca_pem} if broker_ca_pem else {})},
    }
