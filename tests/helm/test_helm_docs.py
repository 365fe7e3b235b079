"""docs/install.md and docs/operations.md stay true to the chart and the operator."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from chart import CHART, ROOT
from sift_operator import conditions
from sift_operator.handlers import reconcile
from sift_worker.api.v1alpha1 import SelectionRun

INSTALL = (ROOT / "docs" / "install.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def _leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
    props = schema.get("properties")
    if not props:
        return {prefix}
    out: set[str] = set()
    for name, child in props.items():
        if name != "global":
            out |= _leaves(child, f"{prefix}.{name}" if prefix else name)
    return out


def _documented_keys() -> set[str]:
    section = INSTALL.split("## Values", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        last = ""
        for token in re.findall(r"`([^`]+)`", first_cell):
            if token.startswith(".") and last:
                token = last.rsplit(".", 1)[0] + token
            keys.add(token)
            last = token
    return keys


def test_every_value_is_in_the_install_values_table() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = _leaves(schema) - _documented_keys()
    assert not missing, f"values missing from docs/install.md's table: {sorted(missing)}"
    stale = _documented_keys() - _leaves(schema)
    assert not stale, f"docs/install.md documents values the chart lacks: {sorted(stale)}"


def test_the_first_run_of_the_install_guide_is_valid() -> None:
    block = INSTALL.split("# first-run.yaml\n", 1)[1].split("```", 1)[0]
    run = SelectionRun.model_validate(yaml.safe_load(block))
    assert run.spec.selection.n_samples == 50


def test_every_condition_reason_is_in_the_troubleshooting_guide() -> None:
    reasons = {
        value
        for module in (conditions, reconcile)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value)
    } | {"NoPolicy"}
    assert len(reasons) > 30
    section = OPERATIONS.split("## Troubleshooting by condition reason", 1)[1]
    missing = sorted(r for r in reasons if f"`{r}`" not in section)
    assert not missing, f"reasons missing from docs/operations.md: {missing}"
