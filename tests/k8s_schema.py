"""What the API server does to a custom resource, reproduced for tests.

Defaulting, OpenAPI v3 schema validation (jsonschema, draft 4 semantics as in
Kubernetes) and ``x-kubernetes-validations`` evaluated by a real CEL interpreter,
including transition rules (``oldSelf``) on updates.
Lets tests check that the generated CRD refuses exactly what pydantic refuses.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import celpy
import jsonschema

Schema = dict[str, Any]


def apply_defaults(schema: Schema, obj: Any) -> Any:
    if isinstance(obj, dict):
        for name, child in schema.get("properties", {}).items():
            if name not in obj and "default" in child:
                obj[name] = copy.deepcopy(child["default"])
            if name in obj:
                obj[name] = apply_defaults(child, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(obj):
                if key not in schema.get("properties", {}):
                    obj[key] = apply_defaults(extra, obj[key])
    elif isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


_MISSING = object()
_OLD_SELF = re.compile(r"\boldSelf\b")


def _correlated_items(schema: Schema, old: Any) -> dict[Any, Any]:
    """Old list items the API server pairs with new ones (map and set lists only)."""
    if not isinstance(old, list):
        return {}
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        return {tuple(item.get(k) for k in keys): item for item in old if isinstance(item, dict)}
    if schema.get("x-kubernetes-list-type") == "set":
        return {json.dumps(item, sort_keys=True): item for item in old}
    return {}


@functools.cache
def _program(rule: str) -> Any:
    """Compiling is the slow part of CEL here; each rule compiles once per test session."""
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: Schema, obj: Any, path: str = "", old: Any = _MISSING) -> list[str]:
    """CEL rules as the API server runs them. ``old`` is the stored object on an update:
    transition rules (those naming ``oldSelf``) run only where an old value correlates,
    so a create never evaluates them."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": celpy.json_to_cel(obj)}
        if _OLD_SELF.search(rule["rule"]):
            if old is _MISSING:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not _program(rule["rule"]).evaluate(activation):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        for name, child in schema.get("properties", {}).items():
            if name in obj:
                old_child = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
                errors += cel_errors(child, obj[name], f"{path}.{name}", old_child)
    elif isinstance(obj, list) and "items" in schema:
        pairs = _correlated_items(schema, old)
        keys = schema.get("x-kubernetes-list-map-keys", [])
        for i, item in enumerate(obj):
            if schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
                old_item = pairs.get(tuple(item.get(k) for k in keys), _MISSING)
            else:
                old_item = pairs.get(json.dumps(item, sort_keys=True), _MISSING)
            errors += cel_errors(schema["items"], item, f"{path}[{i}]", old_item)
    return errors


def _strict(schema: Any) -> Any:
    """Structural schemas prune unknown fields; model kubectl's strict field validation."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


def api_server_errors(schema: Schema, manifest: dict[str, Any]) -> list[str]:
    """Errors the API server would report for ``manifest`` (empty when accepted)."""
    obj = apply_defaults(schema, copy.deepcopy(manifest))
    strict = _strict(schema)
    strict["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft4Validator(strict)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if errors:
        return errors
    return cel_errors(schema, obj)


def api_server_update_errors(
    schema: Schema, old_manifest: dict[str, Any], new_manifest: dict[str, Any]
) -> list[str]:
    """Errors the API server would report for updating ``old_manifest`` to ``new_manifest``."""
    errors = api_server_errors(schema, new_manifest)
    if errors:
        return errors
    old = apply_defaults(schema, copy.deepcopy(old_manifest))
    new = apply_defaults(schema, copy.deepcopy(new_manifest))
    return cel_errors(schema, new, old=old)
