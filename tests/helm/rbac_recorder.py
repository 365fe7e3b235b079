"""Record every Kubernetes API request the real operator makes, as RBAC sees it.

A KMock emulator of the operator harness (tests/operator/harness) that notes, for each
request carrying the operator's credentials, the attributes an RBAC authorizer checks:
namespace (None: cluster scope), API group, resource (with ``/subresource``), verb and
object name. The test's own client sends no credentials, so only the operator's
requests are recorded. Discovery (``/api``, ``/apis/...`` without a resource) is
allowed to every authenticated user by Kubernetes' default ``system:discovery`` role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import attrs
from harness.emulator import SiftEmulator
from harness.server import EmulatorServer

OPERATOR_TOKEN = "Bearer test-token"  # harness.server.EmulatorServer.write_kubeconfig


@dataclass(frozen=True, order=True)
class Request:
    namespace: str | None
    group: str
    resource: str
    verb: str
    name: str | None


def parse(method: str, path: str, query: dict[str, str]) -> Request | None:
    """The RBAC attributes of one HTTP request; None for discovery and other paths."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else None
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, "")
        if method == "DELETE":
            verb = "delete" if name else "deletecollection"
    return Request(namespace, group, resource, verb, name)


@attrs.define(kw_only=True)
class RecordingEmulator(SiftEmulator):
    recorded: set[Request] = attrs.field(factory=set, init=False)

    async def _handle(self, request: Any) -> Any:
        raw = request._raw_request
        if raw is not None and raw.headers.get("Authorization") == OPERATOR_TOKEN:
            seen = parse(raw.method, raw.path, dict(raw.query))
            if seen is not None:
                self.recorded.add(seen)
        return await super()._handle(request)


class RecordingServer(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.emulator = RecordingEmulator()


@dataclass(frozen=True)
class Grant:
    """One (apiGroup, resource, verb) of a rule, where it applies (None: cluster-wide)."""

    namespace: str | None
    group: str
    resource: str
    verb: str
    names: frozenset[str] | None  # resourceNames

    def allows(self, req: Request) -> bool:
        return (
            (self.namespace is None or self.namespace == req.namespace)
            and (self.group, self.resource, self.verb) == (req.group, req.resource, req.verb)
            and (self.names is None or req.name in self.names)
        )


def grants(objs: Iterable[dict[str, Any]], service_account: str, namespace: str) -> list[Grant]:
    """What the rendered (Cluster)Roles grant the ServiceAccount through its bindings."""
    objs = list(objs)
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
    }
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    out: list[Grant] = []
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        where = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding
        ref = binding["roleRef"]
        role_ns = where if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role["rules"]:
            names = frozenset(rule["resourceNames"]) if rule.get("resourceNames") else None
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.append(Grant(where, group, resource, verb, names))
    return out
