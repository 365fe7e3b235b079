"""Desired children of a SelectionRun, built by pure functions from the run object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sift_worker.api.v1alpha1 import SelectionRunSpec

from sift_operator.children.common import (
    GENERATION_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    RUN_LABEL,
    RUN_UID_LABEL,
    InvalidRunError,
    child_metadata,
    owner_reference,
    parse_spec,
    run_labels,
    selector_labels,
    spec_of,
)
from sift_operator.children.configmap import build_config_map, worker_manifest
from sift_operator.children.job import build_job
from sift_operator.children.networkpolicy import (
    api_host,
    build_cilium_policy,
    build_network_policy,
    storage_hosts,
)
from sift_operator.children.serviceaccount import build_service_account
from sift_operator.settings import OperatorSettings

__all__ = [
    "GENERATION_ANNOTATION",
    "KUEUE_QUEUE_LABEL",
    "RUN_LABEL",
    "RUN_UID_LABEL",
    "Children",
    "InvalidRunError",
    "api_host",
    "build_cilium_policy",
    "build_config_map",
    "build_job",
    "build_network_policy",
    "build_service_account",
    "child_metadata",
    "desired_children",
    "owner_reference",
    "parse_spec",
    "run_labels",
    "selector_labels",
    "storage_hosts",
    "worker_manifest",
]


@dataclass(frozen=True)
class Children:
    service_account: dict[str, Any]
    config_map: dict[str, Any]
    network_policy: dict[str, Any]
    cilium_policy: dict[str, Any] | None
    job: dict[str, Any]

    def all(self) -> list[dict[str, Any]]:
        """In creation order: the Job last, so its pod finds everything it needs."""
        out = [self.service_account, self.config_map, self.network_policy]
        if self.cilium_policy is not None:
            out.append(self.cilium_policy)
        out.append(self.job)
        return out


def desired_children(
    run: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    api_cidrs: Sequence[str],
    storage_cidrs: Sequence[str] = (),
    suspend: bool,
    spec: SelectionRunSpec | None = None,
) -> Children:
    """Every child of ``run``. Raises ``InvalidRunError`` when the run cannot have children.

    ``spec``: the run's spec already parsed (the handler parses it once per reconcile).
    """
    spec = spec_of(run, spec)  # one clear error before any builder runs
    return Children(
        service_account=build_service_account(run),
        config_map=build_config_map(run, settings.broker_ca_pem, spec=spec),
        network_policy=build_network_policy(
            run, settings, api_cidrs=api_cidrs, storage_cidrs=storage_cidrs, spec=spec
        ),
        cilium_policy=build_cilium_policy(run, settings, spec=spec),
        job=build_job(run, settings, suspend=suspend, spec=spec),
    )
