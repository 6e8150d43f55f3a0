"""The ModelVersion manifest for the trained artifact (pure: inputs in, API model out)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from tuneloop.api.evaluation import EvaluationRecord
from tuneloop.api.modelversion import (
    Artifact,
    ArtifactFormat,
    BaseModelRecord,
    FineTuneJobRef,
    Lineage,
    ModelVersion,
    ModelVersionSpec,
    ReportLocation,
)

LABEL_JOB = "tuneloop.dev/finetunejob"
LABEL_MODEL = "tuneloop.dev/model-name"


def pick(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first present, non-None value among several spellings (snake_case and camelCase)."""
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return default


def dns_name(text: str, limit: int = 63) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-")) or "model"


def output_uri(spec: Any, workdir: Path, sub: str) -> str:
    """Where `sub` (artifact, report/report.md) lives as seen from the cluster, or file:// locally."""
    out = spec.output
    if out.pvc:
        base = "/".join(p for p in (out.pvc.claim_name, out.pvc.path.strip("/")) if p)
        return f"pvc://{base}/{sub}"
    if out.s3:
        return f"{out.s3.uri.rstrip('/')}/{sub}"
    return (workdir / sub).resolve().as_uri()


def version_label(ctx: Any, lineage: dict[str, Any]) -> str:
    """spec.registry.version, else v<generation>-<short uid>, else v1-<hash of the lineage> (local runs)."""
    if ctx.spec.registry.version:
        return ctx.spec.registry.version
    meta = ctx.raw.get("metadata") or {}
    generation = meta.get("generation") or 1
    short = (ctx.uid or "").replace("-", "")[:8]
    if not short:
        short = hashlib.sha256(json.dumps(lineage, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"v{generation}-{short}"


def artifact_format(ctx: Any) -> ArtifactFormat:
    if (ctx.artifact_dir / "adapter_config.json").exists() or ctx.spec.method.type in ("lora", "qlora") and not (ctx.artifact_dir / "config.json").exists():
        return ArtifactFormat.LORA_ADAPTER
    return ArtifactFormat.FULL


def build(ctx: Any, lineage: dict[str, Any], data_report: dict[str, Any], record: EvaluationRecord) -> ModelVersion:
    spec = ctx.spec
    model_name = spec.registry.model_name or ctx.name
    version = version_label(ctx, lineage)
    fmt = artifact_format(ctx)
    hp = pick(lineage, "hyperparameters", "effective_hyperparameters", default=None)
    if not isinstance(hp, dict):
        hp = spec.hyperparameters.wire()
    meta: dict[str, Any] = {
        "name": dns_name(f"{model_name}-{version}"),
        "labels": {LABEL_JOB: dns_name(ctx.name), LABEL_MODEL: dns_name(model_name)},
    }
    if ctx.namespace:
        meta["namespace"] = ctx.namespace
    base_name = spec.base_model.display_name()
    return ModelVersion.model_validate(
        {
            "metadata": meta,
            "spec": ModelVersionSpec(
                model_name=model_name,
                version=version,
                base_model=BaseModelRecord(name=base_name, revision=spec.base_model.revision() or str(pick(lineage, "base_revision", default="") or "")),
                artifact=Artifact(
                    uri=output_uri(spec, ctx.workdir, "artifact"),
                    format=fmt,
                    lora_rank=spec.method.lora.r if fmt == ArtifactFormat.LORA_ADAPTER else None,
                ),
                lineage=Lineage(
                    fine_tune_job=FineTuneJobRef(name=ctx.name, namespace=ctx.namespace or None, uid=ctx.uid or None),
                    dataset_sha256=pick(lineage, "dataset_sha256") or (lineage.get("dataset") or {}).get("sha256") or data_report.get("dataset_sha256"),
                    method=spec.method.type if isinstance(spec.method.type, str) else spec.method.type.value,
                    hyperparameters={str(k): _s(v) for k, v in hp.items() if v is not None and not isinstance(v, (dict, list))},
                    trainer_image=spec.image or pick(lineage, "trainer_image", default="local"),
                    library_versions={str(k): str(v) for k, v in (pick(lineage, "library_versions", "libraries", default={}) or {}).items()},
                    world_size=pick(lineage, "world_size", "worldSize"),
                    train_seconds=_round(pick(lineage, "train_seconds", "wall_time_seconds", "wall_seconds", "trainSeconds")),
                    tokens_seen=pick(lineage, "tokens_seen", "tokensSeen"),
                ),
                evaluation=record,
                report=ReportLocation(uri=output_uri(spec, ctx.workdir, "report/report.md")),
            ).wire(),
        }
    )


def _s(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


def _round(v: Any) -> float | None:
    return round(float(v), 1) if isinstance(v, (int, float)) else None
