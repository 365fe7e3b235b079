"""Operator settings: one pydantic model, read from ``SIFT_*`` environment variables.

Every field has a default that works in a standard cluster; the Helm chart sets the
environment. ``from_env`` is pure over the mapping it is given, so tests pass a dict.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "SIFT_"


class SettingsError(ValueError):
    """A ``SIFT_*`` variable has a value the operator cannot use (named in the message)."""


class OperatorSettings(BaseModel):
    """What the operator needs to know about its own deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_image: str = Field(
        "ghcr.io/sift-dev/sift-worker:0.1.0",
        min_length=1,
        description="Default worker image when spec.worker.image is omitted.",
    )
    namespace: str = Field("sift-system", min_length=1, description="The operator's namespace.")
    service_name: str = Field("sift-operator", min_length=1, description="The broker Service.")
    broker_port: int = Field(8443, ge=1, le=65535, description="The broker's container port.")
    operator_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "sift",
            "app.kubernetes.io/component": "operator",
        },
        description="Labels of the operator pods (NetworkPolicy egress to the broker).",
    )
    max_running_runs: int | None = Field(
        None, ge=1, description="Operator-wide limit of running runs; None means unlimited."
    )
    results_api_host: str = Field(
        "api.lightly.ai", min_length=1, description="Results API host when the spec names none."
    )
    config_error_exit_code: int = Field(
        3, ge=1, le=255, description="The worker's exit code for a spec that can never run."
    )
    token_audience: str = Field("sift.dev/broker", min_length=1)
    token_expiration_seconds: int = Field(3600, ge=600, le=86400)
    dns_namespace: str = Field("kube-system", min_length=1)
    dns_pod_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    cilium_dns_match_pattern: str = Field(
        "*",
        min_length=1,
        description="Names the worker may resolve through Cilium's DNS proxy "
        "(egress.mode cilium). '*' lets DNS queries for any name out; narrow it where "
        "cluster search domains allow.",
    )
    scratch_size_limit: str = Field("20Gi", description="emptyDir size limit for /tmp.")
    shm_size_limit: str = Field("8Gi", description="Memory-backed /dev/shm size limit.")
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    image_pull_secrets: tuple[str, ...] = Field(
        (), description="Names of pull Secrets in the run's namespace (names only)."
    )
    termination_grace_period_seconds: int = Field(60, ge=0, le=3600)
    report_retry_seconds: int = Field(
        3600,
        ge=0,
        le=7 * 86400,
        description="How long after a run finished a follow-up report Job keeps retrying a "
        "report the worker left Pending (0: never; the outbox waits for `sift-worker report`).",
    )
    run_as_user: int = Field(65532, ge=1)
    # --- defaults for runs whose spec leaves these out (the chart's runDefaults) ---
    gpu_resource_name: str = Field(
        "nvidia.com/gpu",
        min_length=1,
        max_length=253,
        description="GPU resource when spec.worker.resources.gpuResourceName is omitted.",
    )
    api_cidrs: tuple[str, ...] = Field(
        (), description="Results API CIDRs when spec.egress.apiCIDRs is empty (else resolved)."
    )
    storage_cidrs: tuple[str, ...] = Field(
        (), description="Storage CIDRs when spec.egress.storageCIDRs is empty (else resolved)."
    )
    # --- the broker (docs/broker.md) ---
    broker_enabled: bool = Field(True, description="Serve the broker in the operator process.")
    broker_listen_address: str = Field("0.0.0.0", min_length=1)
    broker_public_url: str | None = Field(
        None, description="The broker URL workers use; default https://<service>.<ns>.svc:<port>."
    )
    broker_url_lifetime_seconds: int = Field(
        600, ge=60, le=86400, description="Lifetime of signed URLs (capped by the backend)."
    )
    broker_body_limit_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    broker_request_timeout_seconds: float = Field(30.0, gt=0, le=600)
    broker_progress_interval_seconds: float = Field(
        5.0, ge=0, le=3600, description="At most one status.progress write per run this often."
    )
    broker_tls_secret: str | None = Field(
        None, description="Secret (operator namespace) with tls.crt/tls.key/ca.crt."
    )
    broker_tls_cert_file: str | None = None
    broker_tls_key_file: str | None = None
    broker_tls_ca_file: str | None = None
    broker_tls_extra_names: tuple[str, ...] = Field(
        (), description="Extra DNS names / IPs of the self-made serving certificate."
    )
    broker_ca_pem: str | None = Field(
        None, description="The CA workers trust (set by the operator from its TLS at startup)."
    )

    @property
    def broker_url(self) -> str:
        if self.broker_public_url:
            return self.broker_public_url
        return f"https://{self.service_name}.{self.namespace}.svc:{self.broker_port}"

    @field_validator("api_cidrs", "storage_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Each entry an IPv4/IPv6 network ("10.0.0.0/8", or one address)."""
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the entry
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Fields from ``SIFT_<FIELD_NAME>`` (upper case); dicts and lists as JSON."""
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            key = ENV_PREFIX + name.upper()
            if key not in env:
                continue
            raw = env[key]
            annotation = str(info.annotation)
            if "dict" in annotation or "tuple" in annotation:
                try:
                    values[name] = json.loads(raw)
                except json.JSONDecodeError:
                    raise SettingsError(f"{key}: not valid JSON") from None
            elif "None" in annotation and raw.strip() in ("", "none", "None"):
                values[name] = None
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
            raise SettingsError("; ".join(problems)) from None
