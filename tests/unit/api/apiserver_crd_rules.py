"""The checks kube-apiserver runs when a CRD is created, which emulators (kmock, cel_rules with its
defaulting) skip. CI has no API server, so this module reproduces them from the generated CRD:

- every `default` is validated against *its own node's* schema (types, enum, bounds, pattern,
  required) and every CEL rule of that node and its descendants, with **no nested defaulting**
  (apiextensions-apiserver `pkg/apiserver/schema/defaulting/validation.go`: the default is pruned,
  then validated as given);
- a default holds no field the schema would prune (`must not have unknown fields`);
- transition rules (`oldSelf`) never sit under a list that is not `x-kubernetes-list-type: map|set`
  (the API server cannot correlate old and new items there and refuses the rule);
- enum values and defaults match the node's type; `nullable` nodes are the only ones defaulted to null.

Each function returns a list of problems (strings naming the node), so a test can assert `== []`
and print every one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
from tuneloop.api.cel_rules import violations
from tuneloop.api.schema_check import to_jsonschema

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def walk(node: dict[str, Any], path: str = "", in_list: str | None = None) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(path, node, enclosing non-correlatable list path or None) for every schema node."""
    yield path, node, in_list
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}", in_list)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]", in_list)
    if isinstance(node.get("items"), dict):
        correlatable = node.get("x-kubernetes-list-type") in ("map", "set")
        yield from walk(node["items"], f"{path}[]", in_list if correlatable else (in_list or path))


def pruned(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Fields a structural schema would drop from `value` (the API server refuses such defaults)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                out += pruned(props[key], sub, f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(extra, sub, f"{path}[{key}]")
            else:
                out.append(f"{path}.{key}: unknown field in default")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += pruned(schema["items"], item, f"{path}[{i}]")
    return out


def _type_ok(node: dict[str, Any], value: Any) -> bool:
    kind = node.get("type")
    if value is None:
        return bool(node.get("nullable"))
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = _TYPES.get(kind or "")
    return expected is None or isinstance(value, expected)


def default_problems(schema: dict[str, Any], kind: str) -> list[str]:
    """Every default the API server would refuse at CRD creation."""
    out: list[str] = []
    for path, node, _ in walk(schema):
        if "default" not in node:
            continue
        where = f"{kind}{path}.default"
        value = node["default"]
        if not _type_ok(node, value):
            out.append(f"{where}: {value!r} is not of type {node.get('type')}")
            continue
        out += [f"{kind}{p}" for p in pruned(node, value, path)]
        for err in jsonschema.Draft4Validator(to_jsonschema(node)).iter_errors(value):
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
            out.append(f"{where}{loc}: {err.message}")
        # CEL on the default exactly as given: no nested defaults are filled in first.
        for loc, message in violations(node, value):
            out.append(f"{where}: CEL {loc}: {message}")
    return out


def transition_rule_problems(schema: dict[str, Any], kind: str) -> list[str]:
    out = []
    for path, node, in_list in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"] and in_list is not None:
                out.append(f"{kind}{path}: transition rule {rule['rule']!r} under list {in_list} that is not a map/set list")
    return out


def enum_problems(schema: dict[str, Any], kind: str) -> list[str]:
    out = []
    for path, node, _ in walk(schema):
        for value in node.get("enum", []):
            if not _type_ok(node, value):
                out.append(f"{kind}{path}: enum value {value!r} is not of type {node.get('type')}")
    return out


def all_problems(schema: dict[str, Any], kind: str) -> list[str]:
    return default_problems(schema, kind) + transition_rule_problems(schema, kind) + enum_problems(schema, kind)
