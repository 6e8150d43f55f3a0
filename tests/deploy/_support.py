"""Shared by the deploy tests: render the chart, build kustomize overlays, validate every object."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "manifests" / "tools"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBE_VERSION = "1.31.0"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import chart  # noqa: E402  (manifests/tools/chart.py)
import dashboard  # noqa: E402
import generate  # noqa: E402
from tuneloop.api import schema_check  # noqa: E402

RELEASE, NAMESPACE = "tuneloop", "tuneloop-system"


def render(values: dict[str, Any] | None = None, *, monitoring_api: bool = True, namespace: str = NAMESPACE) -> dict[str, str]:
    apis = [chart.MONITORING_API] if monitoring_api else []
    return chart.render(values, name=RELEASE, namespace=namespace, api_versions=apis)


def objects(values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    return chart.objects(render(values, **kw))


def kustomize(path: str) -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/...` with no flags, as a user runs it (cached per path; a fresh copy)."""
    return copy.deepcopy(_kustomize(str(path)))


@functools.cache
def _kustomize(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _crd_schema(kind: str, group: str) -> dict[str, Any]:
    name = {"monitoring": "monitoring-v1", "argoproj": "argoproj-v1alpha1"}[group]
    return json.loads((SCHEMAS / f"{kind.lower()}-{name}.json").read_text())


def problems(obj: dict[str, Any]) -> list[str]:
    """Why Kubernetes would refuse this object ([] when valid): kubernetes-validate (strict) for
    built-in kinds, the vendored Prometheus Operator schemas, and tuneloop's own CRD schemas + models."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    where = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    if api.startswith("tuneloop.dev/"):
        return [f"{where}: {p}" for p in schema_check.check_document(obj)]
    if api in ("monitoring.coreos.com/v1", "argoproj.io/v1alpha1"):
        validator = jsonschema.Draft202012Validator(_crd_schema(kind, api.split(".")[0].split("/")[0]))
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: no schema: {exc.message}"]
    return []


def all_problems(objs: list[dict[str, Any]]) -> list[str]:
    out = []
    for o in objs:
        out.extend(problems(o))
    return out


def by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment).get("env", [])}


__all__ = ["ROOT", "chart", "dashboard", "generate", "render", "objects", "kustomize", "problems", "all_problems",
           "by_kind", "one", "container", "env", "RELEASE", "NAMESPACE"]
