"""Egress for a run's pods: DNS, the operator's broker, the results API and storage.

Two layers are built here (the third, the worker's in-process allowlist, lives in the
worker): a Kubernetes NetworkPolicy with IP blocks, and with ``egress.mode: cilium``
also a CiliumNetworkPolicy with ``toFQDNs``. Cilium adds the allows of both policies
together; the NetworkPolicy still denies all ingress and all other egress.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sift_worker.api.v1alpha1 import ObjectLocation, SelectionRunSpec, StorageLocation

from sift_operator.children.common import (
    Obj,
    child_metadata,
    parse_spec,
    selector_labels,
    spec_of,
)
from sift_operator.settings import OperatorSettings

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
HTTPS = 443


def normalize_cidrs(values: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated CIDRs; a bare address becomes a /32 or /128."""
    nets = {ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()}
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 80 if parts.scheme == "http" else HTTPS
    return (parts.hostname or ""), (parts.port or default)


def api_endpoint(spec: SelectionRunSpec, settings: OperatorSettings) -> tuple[str, int] | None:
    """The results API ``(host, port)`` when the run reports, else ``None``."""
    if spec.report is None:
        return None
    host, port = _host_port(spec.report.api.url)
    return (host or settings.results_api_host), port


def api_host(run: Mapping[str, Any], settings: OperatorSettings) -> str | None:
    """The host whose addresses the handler resolves when ``egress.apiCIDRs`` is empty."""
    endpoint = api_endpoint(parse_spec(run), settings)
    return endpoint[0] if endpoint else None


def _s3_hosts(bucket: str, region: str | None, endpoint: str | None) -> list[tuple[str, int]]:
    if endpoint:
        host, port = _host_port(endpoint)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return [(host, port), (f"{bucket}.{host}", port)]
        return [(host, port)]  # an IP address has no virtual-host form
    base = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    return [(base, HTTPS), (f"{bucket}.{base}", HTTPS)]


def _location_hosts(loc: StorageLocation | ObjectLocation) -> list[tuple[str, int]]:
    if loc.s3 is not None:
        region = getattr(loc.s3, "region", None)
        endpoint = getattr(loc.s3, "endpoint", None)
        return _s3_hosts(loc.s3.bucket, region, endpoint)
    if loc.gcs is not None:
        return [("storage.googleapis.com", HTTPS)]
    if loc.azure is not None:
        endpoint = getattr(loc.azure, "endpoint", None)  # a location's, not an object's
        if endpoint:
            return [_host_port(endpoint)]
        return [(f"{loc.azure.account}.blob.core.windows.net", HTTPS)]
    return []


def storage_endpoints(spec: SelectionRunSpec) -> list[tuple[str, int]]:
    """Every storage ``(host, port)`` the worker fetches from or writes to with signed URLs."""
    locations: list[StorageLocation | ObjectLocation] = [
        spec.datasource.input,
        spec.datasource.output,
    ]
    emb = spec.input.embeddings
    if emb.weights is not None:
        locations.append(emb.weights)
    if emb.file is not None:
        locations.append(emb.file)
        if emb.file.filenames is not None:
            locations.append(emb.file.filenames)
    for entry in spec.selection.strategies:
        query = entry.strategy.query
        if query is not None and query.embeddings is not None:
            locations.append(query.embeddings)
    found: set[tuple[str, int]] = set()
    for loc in locations:
        found.update(_location_hosts(loc))
    return sorted(found)


def storage_hosts(run: Mapping[str, Any]) -> list[str]:
    """Storage host names, for resolving storage CIDRs or a ``toFQDNs`` policy."""
    return sorted({h for h, _ in storage_endpoints(parse_spec(run))})


def _ports(protocol: str, ports: Iterable[int]) -> list[Obj]:
    return [{"protocol": protocol, "port": p} for p in sorted(set(ports))]


def _peer(namespace: str, labels: Mapping[str, str]) -> Obj:
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}},
        "podSelector": {"matchLabels": dict(labels)},
    }


def egress_api_cidrs(spec: SelectionRunSpec, resolved: Sequence[str]) -> list[str]:
    """Pinned ``egress.apiCIDRs`` win over addresses resolved at reconcile time."""
    return normalize_cidrs(spec.egress.api_cidrs or resolved)


def build_network_policy(
    run: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    api_cidrs: Sequence[str],
    storage_cidrs: Sequence[str] = (),
    spec: SelectionRunSpec | None = None,
) -> Obj:
    spec = spec_of(run, spec)
    egress: list[Obj] = [
        {
            "to": [_peer(settings.dns_namespace, settings.dns_pod_labels)],
            "ports": _ports("UDP", [53]) + _ports("TCP", [53]),
        },
        {
            "to": [_peer(settings.namespace, settings.operator_pod_labels)],
            "ports": _ports("TCP", [settings.broker_port]),
        },
    ]
    api = api_endpoint(spec, settings)
    api_blocks = egress_api_cidrs(spec, api_cidrs) if api else []
    if api and api_blocks:
        egress.append(
            {"to": [{"ipBlock": {"cidr": c}} for c in api_blocks], "ports": _ports("TCP", [api[1]])}
        )
    storage_blocks = normalize_cidrs([*spec.egress.storage_cidrs, *storage_cidrs])
    if storage_blocks:
        ports = [p for _, p in storage_endpoints(spec)] or [HTTPS]
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": c}} for c in storage_blocks],
                "ports": _ports("TCP", ports),
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(run),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(run)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def _cilium_labels(namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    out = {"k8s:io.kubernetes.pod.namespace": namespace}
    out.update({f"k8s:{k}": v for k, v in labels.items()})
    return out


def _cilium_ports(ports: Iterable[int]) -> list[Obj]:
    return [{"ports": [{"port": str(p), "protocol": "TCP"} for p in sorted(set(ports))]}]


def build_cilium_policy(
    run: Mapping[str, Any], settings: OperatorSettings, *, spec: SelectionRunSpec | None = None
) -> Obj | None:
    """A CiliumNetworkPolicy with ``toFQDNs`` for ``egress.mode: cilium``, else ``None``.

    ``toFQDNs`` works only when DNS goes through Cilium's DNS proxy, so the DNS rule
    carries an L7 ``dns`` section; the proxy learns the addresses the allowed names
    resolve to and opens exactly those.
    """
    spec = spec_of(run, spec)
    if spec.egress.mode != "cilium":
        return None
    egress: list[Obj] = [
        {
            "toEndpoints": [
                {"matchLabels": _cilium_labels(settings.dns_namespace, settings.dns_pod_labels)}
            ],
            "toPorts": [
                {
                    "ports": [{"port": "53", "protocol": "ANY"}],
                    "rules": {"dns": [{"matchPattern": settings.cilium_dns_match_pattern}]},
                }
            ],
        },
        {
            "toEndpoints": [
                {"matchLabels": _cilium_labels(settings.namespace, settings.operator_pod_labels)}
            ],
            "toPorts": _cilium_ports([settings.broker_port]),
        },
    ]
    api = api_endpoint(spec, settings)
    if api:
        egress.append({"toFQDNs": [{"matchName": api[0]}], "toPorts": _cilium_ports([api[1]])})
    storage = storage_endpoints(spec)
    if storage:
        egress.append(
            {
                "toFQDNs": [{"matchName": h} for h in sorted({h for h, _ in storage})],
                "toPorts": _cilium_ports([p for _, p in storage]),
            }
        )
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": child_metadata(run),
        "spec": {"endpointSelector": {"matchLabels": selector_labels(run)}, "egress": egress},
    }
