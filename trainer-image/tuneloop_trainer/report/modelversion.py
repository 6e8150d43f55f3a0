"""The ModelVersion manifest for the trained artifact: the contract's one builder
(`tuneloop.contract.modelversion.build`, which the operator registers with), fed from the work directory.

A local run of a GGUF base records the trainer's de-quantised safetensors directory as baseModel.servingPath
(what `kubectl tuneloop local serve` gives vLLM). In a pod the operator's environment says where DIR lives ($TUNELOOP_WORKDIR_URI) and which image ran
($TUNELOOP_IMAGE), so report/modelversion.yaml is the manifest the operator registers. A local run —
of a cluster spec (output.pvc) too — names the local directory (file://), where the artifact is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuneloop.api.evaluation import EvaluationRecord
from tuneloop.api.modelversion import ModelVersion
from tuneloop.contract import layout
from tuneloop.contract import lineage as lineage_facts
from tuneloop.contract import modelversion as contract
from tuneloop.contract.lineage import LineageFile
from tuneloop.contract.modelversion import JobIdentity, sweep_lineage
from tuneloop.contract.names import LABEL_JOB, LABEL_MODEL

from ..settings import TrainerSettings

if TYPE_CHECKING:
    from ..context import StageContext

__all__ = ["LABEL_JOB", "LABEL_MODEL", "build", "job_identity", "manifest"]


def job_identity(ctx: StageContext) -> JobIdentity:
    meta = ctx.raw.get("metadata") or {}
    return JobIdentity(ctx.name, ctx.namespace, ctx.uid or "", int(meta.get("generation") or 1), sweep_lineage(meta.get("annotations")))


def _no_uid(lineage: dict[str, Any], artifact: Any = None) -> str:
    """Local runs have no uid: the version ends in a hash of the trained weights (the files in DIR/artifact),
    so the same weights always get the same ModelVersion; without an artifact, a hash of the lineage."""
    from pathlib import Path

    art = Path(artifact) if artifact else None
    files = sorted(p for p in art.rglob("*") if p.is_file()) if art and art.is_dir() else []
    h = hashlib.sha256()
    if art is not None and files:  # (files come from art)
        for p in files:
            h.update(str(p.relative_to(art)).encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:8]
    return hashlib.sha256(json.dumps(lineage, sort_keys=True, default=str).encode()).hexdigest()[:8]


def manifest(ctx: StageContext, lineage: LineageFile | dict[str, Any], data_report: dict[str, Any],
             record: EvaluationRecord | dict[str, Any] | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ModelVersion (wire form) for the job in `ctx`, from lineage.json, the data report and the evaluation record."""
    env = os.environ if env is None else env
    settings = TrainerSettings.from_env(env)
    spec = ctx.spec
    lin = LineageFile.of(lineage)
    in_cluster = settings.workdir_uri is not None
    return contract.build(
        spec, job_identity(ctx),
        workdir_uri=layout.resolve_workdir_uri(spec, ctx.name, ctx.namespace, ctx.workdir, dict(env)),
        trainer_image=settings.image or spec.image or "local",
        facts=lineage_facts.facts(lin.facts(), data_report),
        evaluation=record,
        report_config_map=in_cluster,  # the operator copies report.md into the ModelVersion's ConfigMap
        no_uid=_no_uid(lin.doc(), getattr(ctx, "artifact_dir", None)),
        base_serving_path=None if in_cluster else _local_serving_path(ctx),
    )


def _local_serving_path(ctx: StageContext) -> str | None:
    """A local run of a GGUF base: the de-quantised safetensors the trainer cached, which `kubectl tuneloop local serve`
    (vLLM) loads; vLLM cannot load the GGUF file itself. A pod's cache is not a place a serving pod can mount: there the
    record keeps no servingPath, and a Rollout says BaseModelNotServable."""
    from ..modeling import gguf_serving_dir

    found = gguf_serving_dir(ctx) if getattr(ctx, "spec", None) is not None else None
    return str(found) if found else None


def build(ctx: StageContext, lineage: LineageFile | dict[str, Any], data_report: dict[str, Any], record: EvaluationRecord | None) -> ModelVersion:
    return ModelVersion.model_validate(manifest(ctx, lineage, data_report, record))
