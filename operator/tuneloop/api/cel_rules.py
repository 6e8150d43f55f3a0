"""CEL: evaluate a CRD's x-kubernetes-validations the way the API server does: defaults first, then every
rule on the node it is attached to, with `oldSelf` only for updates where the old value exists."""

from __future__ import annotations

import copy
from typing import Any

import celpy

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: fill absent properties that have a default, recursively."""
    obj = copy.deepcopy(obj)
    _default(schema, obj)
    return obj


def _default(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default(sub, obj[name])
        if isinstance(schema.get("additionalProperties"), dict):
            for value in obj.values():
                _default(schema["additionalProperties"], value)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default(schema["items"], item)


def _typed(schema: dict[str, Any], value: Any) -> Any:
    """JSON numbers in `type: number` fields are doubles to CEL, as in Kubernetes."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _typed(props.get(k, extra), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(schema.get("items", {}), v) for v in value]
    return value


def violations(schema: dict[str, Any], obj: Any, old: Any = None, path: str = "") -> list[tuple[str, str]]:
    """(field path, message) for every failing rule. `old` is the previous object on update."""
    out: list[tuple[str, str]] = []
    if obj is None:
        return out
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(_typed(schema, obj))}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(_typed(schema, old))
        try:
            result = program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as exc:  # the API server reports an evaluation error as invalid
            out.append((path or "<root>", f"{rule['message']} (rule error: {exc.args[0] if exc.args else exc})"))
            continue
        if isinstance(result, Exception) or not bool(result):
            out.append((path or "<root>", rule["message"]))
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                old_sub = old.get(name) if isinstance(old, dict) else None
                out += violations(sub, obj[name], old_sub, f"{path}.{name}" if path else name)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += violations(schema["items"], item, None, f"{path}[{i}]")
    return out
