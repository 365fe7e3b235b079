"""Cross-field rules declared once and enforced twice.

Each rule carries a CEL expression (rendered into the CRD's
``x-kubernetes-validations`` so the API server refuses bad specs) and a Python
predicate (run by pydantic so ``sift-worker run`` refuses the same specs locally).
Tests evaluate the CEL with a real CEL interpreter against the Python predicate
so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel


@dataclass(frozen=True)
class Rule:
    """One cross-field constraint of a model."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_validation(self) -> dict[str, str]:
        validation = {"rule": self.cel, "message": self.message}
        if self.field_path:
            validation["fieldPath"] = self.field_path
        return validation


def _alias(model: type[BaseModel], field: str) -> str:
    info = model.model_fields[field]
    return info.alias or field


def _is_set(obj: Any, field: str) -> bool:
    return getattr(obj, field) is not None


def _count_set(model: type[BaseModel], fields: tuple[str, ...], *, exact: bool) -> Rule:
    names = [_alias(model, f) for f in fields]
    total = " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names)
    listed = ", ".join(names)

    def count(obj: Any) -> int:
        return sum(_is_set(obj, f) for f in fields)

    if exact:
        message = f"exactly one of {listed} must be set"
        return Rule(f"{total} == 1", message, lambda obj: count(obj) == 1)
    message = f"at most one of {listed} may be set"
    return Rule(f"{total} <= 1", message, lambda obj: count(obj) <= 1)


def exactly_one(model: type[BaseModel], *fields: str) -> Rule:
    return _count_set(model, fields, exact=True)


def at_most_one(model: type[BaseModel], *fields: str) -> Rule:
    return _count_set(model, fields, exact=False)


def only_with(model: type[BaseModel], field: str, required: str) -> Rule:
    """``field`` may only be set when ``required`` is set."""
    name, req = _alias(model, field), _alias(model, required)
    return Rule(
        cel=f"!has(self.{name}) || has(self.{req})",
        message=f"{name} may only be set together with {req}",
        check=lambda obj: not _is_set(obj, field) or _is_set(obj, required),
        field_path=f".{name}",
    )


def not_together(model: type[BaseModel], field: str, other: str) -> Rule:
    name, oth = _alias(model, field), _alias(model, other)
    return Rule(
        cel=f"!has(self.{name}) || !has(self.{oth})",
        message=f"{name} cannot be combined with {oth}",
        check=lambda obj: not (_is_set(obj, field) and _is_set(obj, other)),
        field_path=f".{name}",
    )


def when_type_requires(
    model: type[BaseModel], type_field: str, type_values: tuple[str, ...], *fields: str
) -> Rule:
    """When ``type_field`` is one of ``type_values``, at least one of ``fields`` is set."""
    tname = _alias(model, type_field)
    names = [_alias(model, f) for f in fields]
    values = ", ".join(f"'{v}'" for v in type_values)
    has_any = " || ".join(f"has(self.{n})" for n in names)
    needs = names[0] if len(names) == 1 else f"one of {', '.join(names)}"
    kinds = " or ".join(type_values)
    return Rule(
        cel=f"!(self.{tname} in [{values}]) || {has_any}",
        message=f"{tname} {kinds} needs {needs}",
        check=lambda obj: (
            getattr(obj, type_field) not in type_values or any(_is_set(obj, f) for f in fields)
        ),
    )


def when_type_forbids(
    model: type[BaseModel], type_field: str, allowed: tuple[str, ...], field: str
) -> Rule:
    """``field`` is only meaningful for the listed types."""
    tname, name = _alias(model, type_field), _alias(model, field)
    values = ", ".join(f"'{v}'" for v in allowed)
    kinds = ", ".join(allowed)
    return Rule(
        cel=f"!has(self.{name}) || self.{tname} in [{values}]",
        message=f"{name} applies only to {tname} {kinds}",
        check=lambda obj: not _is_set(obj, field) or getattr(obj, type_field) in allowed,
        field_path=f".{name}",
    )


def rules_of(model: type[BaseModel]) -> tuple[Rule, ...]:
    rules: tuple[Rule, ...] = getattr(model, "__sift_rules__", ())
    return rules


@dataclass(frozen=True)
class TransitionRule:
    """A constraint on an *update*: CEL with ``oldSelf``, and the same check in Python.

    The API server evaluates it only when an existing object changes, so a create is
    never refused by it; ``check(old, new)`` is the Python twin the tests compare with.
    """

    cel: str
    message: str
    check: Callable[[Any, Any], bool]
    field_path: str | None = None

    def as_validation(self) -> dict[str, str]:
        validation = {"rule": self.cel, "message": self.message}
        if self.field_path:
            validation["fieldPath"] = self.field_path
        return validation


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _get(obj: Any, fields: tuple[str, ...]) -> Any:
    for field in fields:
        obj = getattr(obj, field)
    return obj


def immutable(model: type[BaseModel], *fields: str, what: str) -> TransitionRule:
    """``self.<fields>`` may not change once set at creation (also not be added or removed).

    Every field but the last must always be present (required, or defaulted to ``{}``).
    ``what`` names the field for people, e.g. ``spec.datasource``.
    """
    names: list[str] = []
    current: type[BaseModel] | None = model
    for field in fields:
        if current is None:
            raise ValueError(f"{'.'.join(fields)}: {field} is not inside a model")
        names.append(_alias(current, field))
        info = current.model_fields[field]
        last_optional = not info.is_required()
        current = _submodel(info.annotation)
    path = ".".join(names)
    if last_optional:
        cel = (
            f"has(self.{path}) == has(oldSelf.{path}) && "
            f"(!has(self.{path}) || self.{path} == oldSelf.{path})"
        )
    else:
        cel = f"self.{path} == oldSelf.{path}"
    return TransitionRule(
        cel=cel,
        message=f"{what} is immutable: create a new SelectionRun to change it",
        check=lambda old, new: _get(old, fields) == _get(new, fields),
        field_path=f".{path}",
    )


def transition_rules_of(model: type[BaseModel]) -> tuple[TransitionRule, ...]:
    rules: tuple[TransitionRule, ...] = getattr(model, "__sift_transition_rules__", ())
    return rules


def transition_errors(model: type[BaseModel], old: BaseModel, new: BaseModel) -> list[str]:
    """Messages of the transition rules of ``model`` that an update ``old -> new`` breaks."""
    return [r.message for r in transition_rules_of(model) if not r.check(old, new)]
