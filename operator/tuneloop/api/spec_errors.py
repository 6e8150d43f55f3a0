"""Validation errors in the spec's own words: the field path as written in YAML, what is wrong, and the
closest valid field name for a misspelling. Pure; used by `validate` and by the trainer's spec loading."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def path(loc: tuple[Any, ...] | list[Any], root: str = "") -> str:
    """('dataset', 'train', 0, 'path') → 'spec.dataset.train[0].path' with root 'spec' (root alone for an empty loc)."""
    out = root
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple, typing.Annotated) or origin is not None:
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def field_names(model: type[BaseModel]) -> list[str]:
    """The names a YAML document uses for the model's fields (their aliases)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def model_at(model: type[BaseModel], loc: tuple[Any, ...] | list[Any]) -> type[BaseModel] | None:
    """The model that holds the field at `loc` (walking aliases, lists and optionals), or None."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        match = next((f for name, f in current.model_fields.items() if part in (name, f.alias)), None)
        if match is None:
            return None
        models = _models_in(match.annotation)
        current = models[0] if models else None
    return current


def did_you_mean(model: type[BaseModel], loc: tuple[Any, ...] | list[Any]) -> str | None:
    """The closest valid field name for the unknown field at `loc`."""
    parent = model_at(model, tuple(loc)[:-1])
    if parent is None or not loc:
        return None
    close = difflib.get_close_matches(str(loc[-1]), field_names(parent), n=1, cutoff=0.6)
    return close[0] if close else None


def message(err: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """What is wrong, without pydantic's wording."""
    if err.get("type") == "extra_forbidden":
        guess = did_you_mean(model, err["loc"]) if model is not None else None
        return f"unknown field `{err['loc'][-1]}`" + (f"; did you mean `{guess}`?" if guess else "")
    if err.get("type") == "missing":
        return "required field is missing"
    msg = str(err.get("msg", ""))
    for prefix in _PYDANTIC_PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def problems(exc: Any, model: type[BaseModel], root: str = "spec") -> list[str]:
    """Every error of a pydantic ValidationError as 'path: what is wrong', in the spec's words."""
    return [f"{path(err['loc'], root)}: {message(err, model)}" for err in exc.errors()]
