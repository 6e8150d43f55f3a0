"""Check documents against the generated CRD schemas (as the API server would) and the models."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from . import KINDS
from .cel_rules import apply_defaults, violations
from .common import API_VERSION
from .crdgen import openapi_schema


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document, located by a field path like spec.dataset.split.test."""

    source: str
    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.kind}/{self.name}" if self.name else f"{self.source}: {self.kind or 'document'}"
        return f"{where}: {self.path or '<root>'}: {self.message}"


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (structural) → JSON Schema draft 4: nullable becomes a null type; k8s extensions dropped."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in ("nullable", "default", "description"):
            continue
        if key in ("properties", "additionalProperties") and isinstance(value, dict) and key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        else:
            out[key] = to_jsonschema(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@cache
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_jsonschema(openapi_schema(kind)))


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_document(doc: Any, source: str = "<input>") -> list[Problem]:
    """Every problem with one object, from the CRD schema and from the models (cross-field rules)."""
    if not isinstance(doc, dict):
        return [Problem(source, "", "", "", "not a YAML mapping")]
    kind = doc.get("kind", "")
    name = (doc.get("metadata") or {}).get("name", "") if isinstance(doc.get("metadata"), dict) else ""
    if doc.get("apiVersion") != API_VERSION:
        return [Problem(source, kind, name, "apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")]
    if kind not in KINDS:
        return [Problem(source, kind, name, "kind", f"must be one of {', '.join(KINDS)}")]
    problems = [
        Problem(source, kind, name, _path(err.absolute_path), err.message)
        for err in sorted(crd_validator(kind).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems:  # CEL runs on schema-valid objects only, as in the API server
        schema = openapi_schema(kind)
        for path, text in violations(schema, apply_defaults(schema, doc)):
            problems.append(Problem(source, kind, name, path, text))
    try:
        KINDS[kind].model_validate(copy.deepcopy(doc))
    except ValidationError as exc:
        # The schema already named these fields; the models add only what it cannot see.
        seen_paths = {p.path for p in problems}
        seen_messages = {p.message for p in problems}
        from .spec_errors import message

        for err in exc.errors():
            path = _path(err["loc"]) or "(top level)"
            msg = message(err, KINDS[kind])
            if path not in seen_paths and msg not in seen_messages:
                problems.append(Problem(source, kind, name, path, msg))
    return problems


def load_documents(path: Path) -> list[Any]:
    text = Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def check_files(paths: Iterable[Path]) -> tuple[int, list[Problem]]:
    """(documents checked, problems) over YAML files, multi-document files included."""
    count, problems = 0, []
    for path in paths:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(Problem(str(path), "", "", "", f"cannot read: {exc}"))
            continue
        if not docs:
            problems.append(Problem(str(path), "", "", "", "no YAML documents"))
        for doc in docs:
            count += 1
            problems.extend(check_document(doc, str(path)))
    return count, problems
