"""The ModelVersion registered from a finished FineTuneJob, and its report ConfigMap."""

from __future__ import annotations

import json
from typing import Any

from tuneloop.api import API_VERSION, FineTuneJobSpec, ModelVersion
from tuneloop.api.evaluation import EvaluationRecord, Verdict

from ..settings import OperatorSettings
from .common import LABEL_JOB, OUTPUT_MOUNT, JobMeta, child_name, dns_label, image, labels, workdir
from .config import world_size

LABEL_MODEL = "tuneloop.dev/model-name"
REPORT_LIMIT = 900 * 1024  # ConfigMaps hold at most 1 MiB


def model_name(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return spec.registry.model_name or meta.name


def version(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return spec.registry.version or f"v{meta.generation}-{meta.uid.replace('-', '')[:8] or 'local'}"


def model_version_name(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return dns_label(f"{model_name(spec, meta)}-{version(spec, meta)}")


def _uri(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, sub: str) -> str:
    claim, wd = workdir(spec, meta, config)
    return f"pvc://{claim}{wd[len(OUTPUT_MOUNT):]}/{sub}"


def _artifact(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> dict[str, Any]:
    if spec.method.type == "full":
        return {"uri": _uri(spec, meta, config, "artifact"), "format": "full"}
    if spec.method.merge_adapter:
        return {"uri": _uri(spec, meta, config, "artifact/merged"), "format": "merged"}
    return {"uri": _uri(spec, meta, config, "artifact"), "format": "lora-adapter", "loraRank": spec.method.lora.r}


def _base(spec: FineTuneJobSpec) -> dict[str, Any]:
    b = spec.base_model
    out: dict[str, Any] = {"name": b.display_name(), "revision": b.revision()}
    if b.hugging_face:
        out["name"] = b.hugging_face.id
        out["servingPath"] = b.hugging_face.id
    elif b.pvc:
        out["servingPath"] = f"pvc://{b.pvc.claim_name}/{b.pvc.path.lstrip('/')}"
    elif b.path:
        out["servingPath"] = b.path
    return out


def _num(summary: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = summary.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return v
    return None


def model_version(
    spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *,
    evaluation: dict[str, Any] | None, data_summary: dict[str, Any] | None = None,
    train_summary: dict[str, Any] | None = None, has_report: bool = False,
) -> dict[str, Any]:
    """A validated ModelVersion manifest. `evaluation` is the EvaluationRecord (wire form) or None."""
    data_summary = data_summary or {}
    train_summary = train_summary or {}
    name = model_version_name(spec, meta)
    hp = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.hyperparameters.wire().items() if not isinstance(v, dict)}
    lineage: dict[str, Any] = {
        "fineTuneJob": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "method": spec.method.type,
        "hyperparameters": hp,
        "trainerImage": image(spec, config),
        "worldSize": world_size(spec),
    }
    sha = data_summary.get("datasetSha256") or data_summary.get("dataset_sha256") or train_summary.get("datasetSha256")
    if sha:
        lineage["datasetSha256"] = sha
    versions = train_summary.get("libraryVersions") or train_summary.get("library_versions")
    if isinstance(versions, dict):
        lineage["libraryVersions"] = {str(k): str(v) for k, v in versions.items()}
    secs = _num(train_summary, "trainSeconds", "train_seconds", "seconds")
    if secs is not None:
        lineage["trainSeconds"] = secs
    tokens = _num(train_summary, "tokensSeen", "tokens_seen")
    if tokens is not None:
        lineage["tokensSeen"] = int(tokens)
    record = EvaluationRecord.model_validate(evaluation) if evaluation else EvaluationRecord(verdict=Verdict.NOT_EVALUATED)
    report: dict[str, Any] = {"uri": _uri(spec, meta, config, "report/report.md")}
    if has_report:
        report["configMap"] = report_config_map_name(name)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": {**labels(meta, "model-version"), LABEL_MODEL: dns_label(model_name(spec, meta))},
        },
        "spec": {
            "modelName": model_name(spec, meta),
            "version": version(spec, meta),
            "baseModel": _base(spec),
            "artifact": _artifact(spec, meta, config),
            "lineage": lineage,
            "evaluation": record.wire(),
            "report": report,
        },
    }
    ModelVersion.model_validate(doc)  # the builder never emits what the CRD would refuse
    return doc


def model_version_phase(evaluation: dict[str, Any] | None) -> str:
    """Ready unless the gates failed (Rejected)."""
    verdict = (evaluation or {}).get("verdict")
    return "Rejected" if verdict == Verdict.FAILED.value else "Ready"


def report_config_map_name(mv_name: str) -> str:
    return child_name(mv_name, "report")


def report_config_map(mv: dict[str, Any], markdown: str) -> dict[str, Any]:
    """report.md for `kubectl tuneloop report`, owned by the ModelVersion (deleted with it)."""
    m = mv["metadata"]
    if len(markdown.encode()) > REPORT_LIMIT:
        markdown = markdown.encode()[:REPORT_LIMIT].decode(errors="ignore") + "\n\n… (truncated; the full report is next to the artifact)\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": report_config_map_name(m["name"]),
            "namespace": m["namespace"],
            "labels": {k: v for k, v in (m.get("labels") or {}).items() if k in (LABEL_JOB, LABEL_MODEL)}
            | {"app.kubernetes.io/component": "report", "app.kubernetes.io/managed-by": "tuneloop-operator"},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "ModelVersion", "name": m["name"], "uid": m.get("uid", ""),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "data": {"report.md": markdown},
    }
