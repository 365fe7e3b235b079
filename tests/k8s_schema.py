"""What the API server does to a custom resource, reproduced for tests.

Defaulting, OpenAPI v3 schema validation (jsonschema, draft 4 semantics as in
Kubernetes) and ``x-kubernetes-validations`` evaluated by a real CEL interpreter.
Lets tests check that the generated CRD refuses exactly what pydantic refuses.
"""

from __future__ import annotations

import copy
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


def cel_errors(schema: Schema, obj: Any, path: str = "") -> list[str]:
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(obj)}):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        for name, child in schema.get("properties", {}).items():
            if name in obj:
                errors += cel_errors(child, obj[name], f"{path}.{name}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
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
