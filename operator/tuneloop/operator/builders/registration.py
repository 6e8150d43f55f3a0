"""The ModelVersion registered from a finished FineTuneJob, and its report ConfigMap."""

from __future__ import annotations

from typing import Any

from tuneloop.api import FineTuneJobSpec
from tuneloop.contract import layout, lineage
from tuneloop.contract import modelversion as contract
from tuneloop.contract.modelversion import JobIdentity
from tuneloop.contract.names import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_MODEL, MANAGED_BY, controller_reference

from ..settings import OperatorSettings
from .common import LABEL_JOB, JobMeta, image, workdir

REPORT_LIMIT = 900 * 1024  # ConfigMaps hold at most 1 MiB
__all__ = ["LABEL_MODEL", "build_export", "export_passed", "model_name", "model_version", "model_version_name", "model_version_phase", "report_config_map",
           "report_config_map_name", "version", "workdir_uri"]


def _job(meta: JobMeta) -> JobIdentity:
    return JobIdentity(meta.name, meta.namespace, meta.uid, meta.generation, contract.sweep_lineage(meta.annotations))


def model_name(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return contract.model_name(spec, _job(meta))


def version(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return contract.version(spec, _job(meta))


def model_version_name(spec: FineTuneJobSpec, meta: JobMeta) -> str:
    return contract.model_version_name(spec, _job(meta))


def model_version(
    spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings, *,
    evaluation: dict[str, Any] | None, data_summary: dict[str, Any] | None = None,
    train_summary: dict[str, Any] | None = None, has_report: bool = False,
) -> dict[str, Any]:
    """A validated ModelVersion manifest (the contract's one builder). `evaluation` is the EvaluationRecord
    (wire form) or None; the lineage facts come from the data report and the train/publish summaries."""
    return contract.build(
        spec, _job(meta), workdir_uri=layout.workdir_uri(*workdir(spec, meta, config)), trainer_image=image(spec, config),
        facts=lineage.facts(data_summary, train_summary), evaluation=evaluation, report_config_map=has_report,
    )


model_version_phase = contract.phase
build_export = contract.build_export
export_passed = contract.export_passed


def workdir_uri(spec: FineTuneJobSpec, meta: JobMeta, config: OperatorSettings) -> str:
    """DIR as the cluster sees it (pvc://CLAIM/PATH): where the exports' URIs point."""
    return layout.workdir_uri(*workdir(spec, meta, config))
report_config_map_name = contract.report_config_map_name


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
            | {LABEL_COMPONENT: "report", LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [controller_reference("ModelVersion", m["name"], m.get("uid", ""))],
        },
        "data": {"report.md": markdown},
    }
