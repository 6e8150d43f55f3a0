"""Render the tuneloop Helm chart offline with helm-python-sdk (Helm v4 as a library).

`Chart.render` takes no API versions, so `.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"`
would always be false; helm-python-sdk's C layer (`helm_render`) accepts `api_versions` and
`kube_version` in its options JSON (the same as `helm template --api-versions/--kube-version`), so
this calls it directly when they are given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneloop"
MONITORING_API = "monitoring.coreos.com/v1"
KUBE_VERSION = "v1.31.0"


def render(values: dict[str, Any] | None = None, *, name: str = "tuneloop", namespace: str = "tuneloop-system",
           api_versions: list[str] | None = None, kube_version: str = KUBE_VERSION, chart: Path = CHART) -> dict[str, str]:
    """Template path → rendered text (NOTES.txt included), like `helm template`."""
    import helm_python as helm
    from helm_python import _native

    opts = {"name": name, "namespace": namespace, "is_install": True, "kube_version": kube_version,
            "api_versions": list(api_versions or [])}
    with helm.Chart.load(chart) as c:
        c.validate_schema(values)
        return json.loads(_native.call_string("helm_render", c._raw(), json.dumps(values) if values is not None else None, json.dumps(opts)))


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render, in template order (NOTES.txt and empty documents skipped)."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return out


HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def strip_helm(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without Helm's release bookkeeping labels (for the kustomize copies)."""
    def clean(meta: dict[str, Any] | None) -> None:
        if meta and meta.get("labels"):
            for label in HELM_LABELS:
                meta["labels"].pop(label, None)
    clean(obj.get("metadata"))
    clean(((obj.get("spec") or {}).get("template") or {}).get("metadata"))
    return obj
