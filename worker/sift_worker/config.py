"""Load a SelectionRun manifest and validate it exactly as the API server would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sift_worker.api import SelectionRun


class ConfigError(Exception):
    """The manifest is unusable; ``problems`` name each field path and what is wrong."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"invalid SelectionRun in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in {"literal", "str", "int", "float"}:
            continue  # pydantic's internal validator names, not field names
        else:
            out += f".{part}" if out else part
    return out or "(document)"


def _shown(value: Any) -> str:
    if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
        text = repr(value)
        return f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
    return ""


def describe_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] in {"missing", "value_error"} else _shown(err.get("input"))
        problems.append(f"{_path(err['loc'])}: {message}{got}")
    return problems


def parse_manifest(document: Any, source: str = "<manifest>") -> SelectionRun:
    if not isinstance(document, dict):
        raise ConfigError(source, ["(document): expected a SelectionRun mapping"])
    try:
        return SelectionRun.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, describe_validation_error(exc)) from None


def load_manifest(path: Path) -> SelectionRun:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot read: {exc.__class__.__name__}"]) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(source, [f"{where}{problem}"]) from None
    if len(documents) != 1:
        raise ConfigError(source, [f"expected one YAML document, found {len(documents)}"])
    return parse_manifest(documents[0], source)
