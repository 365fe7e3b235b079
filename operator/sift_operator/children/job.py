"""The worker Job: one pod, GPU, Pod Security "restricted", fails fast on config errors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sift_worker.api.v1alpha1 import SelectionRunSpec, StorageLocation

from sift_operator.children.common import (
    GENERATION_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    Obj,
    child_metadata,
    generation,
    identity,
    run_labels,
    spec_of,
)
from sift_operator.children.configmap import (
    BROKER_CA_KEY,
    BROKER_CA_PATH,
    CONFIG_DIR,
    CONFIG_KEY,
    CONFIG_PATH,
    claim_mount_path,
    claim_sub_path,
)
from sift_operator.names import child_name
from sift_operator.settings import OperatorSettings

CONTAINER = "worker"
TOKEN_DIR = "/var/run/secrets/sift.dev/broker"
TOKEN_FILE = f"{TOKEN_DIR}/token"
RESULTS_TOKEN_DIR = "/var/run/secrets/sift.dev/results"
RESULTS_TOKEN_FILE = f"{RESULTS_TOKEN_DIR}/token"
SCRATCH = "/tmp"
SHM = "/dev/shm"
MAX_THREADS = 256

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][-+]?[0-9]+|[a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024.0, "Mi": 1024.0**2}


def cpu_threads(cpu: str) -> int:
    """Whole CPUs of a quantity ("8" -> 8, "500m" -> 1): the worker's thread count.

    Inside a container ``sched_getaffinity`` reports the node's cores, not the limit.
    """
    match = _QUANTITY.match(cpu.strip())
    if not match:
        return 1
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            value = float(number + suffix)
        elif suffix in _SUFFIX:
            value = float(number) * _SUFFIX[suffix]
        else:
            return 1
    except ValueError:
        return 1
    return max(1, min(MAX_THREADS, math.floor(value)))


def _claims(spec: SelectionRunSpec) -> list[tuple[str, str, str]]:
    """``(role, claimName, path in the claim)`` for input/output locations on a PVC."""
    out = []
    for role in ("input", "output"):
        loc: StorageLocation = getattr(spec.datasource, role)
        if loc.volume is not None and loc.volume.claim_name is not None:
            out.append((role, loc.volume.claim_name, loc.volume.path))
    return out


def _volumes(
    spec: SelectionRunSpec, run_name: str, settings: OperatorSettings
) -> tuple[list[Obj], list[Obj]]:
    volumes: list[Obj] = [
        {
            "name": "config",
            "configMap": {
                "name": child_name(run_name),
                "items": [
                    {"key": k, "path": k}
                    for k in (CONFIG_KEY, *([BROKER_CA_KEY] if settings.broker_ca_pem else []))
                ],
                "defaultMode": 0o444,
            },
        },
        {
            "name": "broker-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": settings.token_audience,
                            "expirationSeconds": settings.token_expiration_seconds,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.scratch_size_limit}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size_limit}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "broker-token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": SCRATCH},
        {"name": "dshm", "mountPath": SHM},
    ]
    if spec.report is not None:
        # the results API token as a file (never an env var: those show in `kubectl describe`)
        ref = spec.report.api.token_secret
        volumes.append(
            {
                "name": "results-token",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": "token"}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "results-token", "mountPath": RESULTS_TOKEN_DIR, "readOnly": True})
    claims = _claims(spec)
    names = sorted({c for _, c, _ in claims})
    for i, claim in enumerate(names):
        read_only = all(role == "input" for role, c, _ in claims if c == claim)
        volumes.append(
            {
                "name": f"claim-{i}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        )
    for role, claim, path in claims:
        mount: Obj = {"name": f"claim-{names.index(claim)}", "mountPath": claim_mount_path(role)}
        if role == "input":
            mount["readOnly"] = True
            if claim_sub_path(path):
                mount["subPath"] = claim_sub_path(path)
        mounts.append(mount)
    return volumes, mounts


def gpu_resource_name(spec: SelectionRunSpec, settings: OperatorSettings) -> str:
    """The spec's GPU resource when it names one, else the operator's default."""
    return spec.worker.resources.gpu_resource_name or settings.gpu_resource_name


def _resources(spec: SelectionRunSpec, settings: OperatorSettings) -> Obj:
    res = spec.worker.resources
    amounts: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu > 0:
        amounts[gpu_resource_name(spec, settings)] = str(res.gpu)
    # requests == limits: Guaranteed QoS, the last pods the kubelet evicts
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(run: Mapping[str, Any], spec: SelectionRunSpec, settings: OperatorSettings) -> list[Obj]:
    name, namespace, uid = identity(run)
    env = {
        "SIFT_RUN_NAME": name,
        "SIFT_RUN_NAMESPACE": namespace,
        "SIFT_RUN_UID": uid,
        "SIFT_BROKER_URL": settings.broker_url,
        "SIFT_BROKER_TOKEN_FILE": TOKEN_FILE,
        "HOME": SCRATCH,
        "TMPDIR": SCRATCH,
        "XDG_CACHE_HOME": f"{SCRATCH}/.cache",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if settings.broker_ca_pem:
        env["SIFT_BROKER_CA_FILE"] = BROKER_CA_PATH
    if spec.report is not None:
        env["SIFT_RESULTS_TOKEN_FILE"] = RESULTS_TOKEN_FILE
    res = spec.worker.resources
    if res.gpu == 0 and gpu_resource_name(spec, settings) == "nvidia.com/gpu":
        # an image with NVIDIA_VISIBLE_DEVICES=all would otherwise see every GPU of the node
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return [{"name": k, "value": v} for k, v in env.items()]


def container_security_context(settings: OperatorSettings) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(settings: OperatorSettings) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_command(spec: SelectionRunSpec) -> list[str]:
    threads = str(cpu_threads(spec.worker.resources.cpu))
    return [
        "sift-worker",
        "run",
        CONFIG_PATH,
        "--log-format",
        "json",
        "--no-progress-bars",
        "--threads",
        threads,
        "--decode-workers",
        threads,
    ]


def pod_failure_policy(settings: OperatorSettings) -> Obj:
    return {
        "rules": [
            {
                # the spec can never run: retrying cannot help
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [settings.config_error_exit_code],
                },
            },
            {
                # preemption, node drain, eviction: not the run's fault, not counted
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def build_job(
    run: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    suspend: bool,
    spec: SelectionRunSpec | None = None,
) -> Obj:
    """The Job. ``suspend`` is its initial state; the handler decides it (``spec.suspend``,
    the operator's own concurrency queue). With a Kueue queue it is always created
    suspended: Kueue admits it by unsuspending it."""
    spec = spec_of(run, spec)
    name, _, _ = identity(run)
    worker = spec.worker
    volumes, mounts = _volumes(spec, name, settings)
    meta = child_metadata(run, annotations={GENERATION_ANNOTATION: str(generation(run))})
    if worker.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = worker.queue_name
    container: Obj = {
        "name": CONTAINER,
        "image": worker.image or settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": worker_command(spec)[:1],
        "args": worker_command(spec)[1:],
        "env": _env(run, spec, settings),
        "resources": _resources(spec, settings),
        "securityContext": container_security_context(settings),
        "volumeMounts": mounts,
    }
    pod: Obj = {
        "restartPolicy": "Never",
        "serviceAccountName": child_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": pod_security_context(settings),
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    if worker.node_selector:
        pod["nodeSelector"] = dict(worker.node_selector)
    if worker.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in worker.tolerations
        ]
    if worker.affinity is not None:
        pod["affinity"] = worker.affinity
    if worker.priority_class_name:
        pod["priorityClassName"] = worker.priority_class_name
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "suspend": suspend or worker.queue_name is not None,
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": worker.backoff_limit,
            "activeDeadlineSeconds": worker.active_deadline_seconds,
            "ttlSecondsAfterFinished": worker.ttl_seconds_after_finished,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": pod_failure_policy(settings),
            "template": {
                "metadata": {
                    "labels": run_labels(run),
                    "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER},
                },
                "spec": pod,
            },
        },
    }
