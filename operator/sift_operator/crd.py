"""Generate the SelectionRun CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI
v3.0 schema. The conversion is a pure function so the checked-in
``crds/selectionrun.yaml`` can be regenerated and drift-tested.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from sift_worker.api.v1alpha1 import GROUP, KIND, VERSION, SelectionRun

PLURAL = "selectionruns"
SINGULAR = "selectionrun"
CRD_NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]

_DROP = {"title", "$defs", "propertyNames"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.progress.stage"},
    {"name": "Done", "type": "integer", "jsonPath": ".status.progress.done"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.total"},
    {"name": "Selected", "type": "integer", "jsonPath": ".status.result.selected"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline ``$ref`` and collapse ``anyOf [X, null]`` (optional fields are simply omitted)."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions are not structural: {options}")
        node = {**_resolve(options[0], defs), **node}
    if node.get("default", ...) is None:
        del node["default"]
    return node


def to_structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Convert one JSON-Schema node (recursively) to a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out["properties"] = {k: to_structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = to_structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = to_structural(value, defs)
            # `false` is implied: the API server prunes (or, strict, refuses) unknown fields.
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


_FIRST = ("type", "description", "default", "enum")


def _ordered(node: Schema) -> Schema:
    """A stable, readable key order: type and description first."""
    head = {k: node[k] for k in _FIRST if k in node}
    return head | {k: v for k, v in node.items() if k not in head}


def openapi_schema() -> Schema:
    """The ``openAPIV3Schema`` of the CRD."""
    raw = SelectionRun.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = to_structural(raw, defs)
    props = schema["properties"]
    # metadata belongs to the API server; a structural schema must say only "object".
    props["metadata"] = {"type": "object"}
    props["apiVersion"] = {"type": "string", "description": "sift.dev/v1alpha1"}
    props["kind"] = {"type": "string", "description": KIND}
    schema["required"] = ["spec"]
    return schema


def build_crd() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "sift", "app.kubernetes.io/part-of": "sift"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": ["sr"],
                "categories": ["sift"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `sift-operator crd` from the SelectionRun models. Do not edit.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
