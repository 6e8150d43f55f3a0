"""The ModelVersion of a finished FineTuneJob — one builder for both sides.

The operator registers it from the termination messages (`tuneloop.operator.builders.registration`);
the trainer's report stage writes the same manifest to DIR/report/modelversion.yaml
(`tuneloop_trainer.report.modelversion`). Both call `build` with the same inputs:

- `job`: the FineTuneJob's identity (the trainer reads it from the spec.yaml the operator wrote);
- `workdir_uri`: where DIR lives as the cluster sees it (`layout.output_location` / `workdir_uri`);
- `trainer_image`: the image the stages ran in;
- `facts`: `lineage.facts(...)` of whatever trainer output is at hand;
- `evaluation`: the EvaluationRecord (wire form) or None;
- `base_serving_path`: where vLLM loads the base from when the spec's source does not say (a GGUF base,
  de-quantised by a local run's trainer), else None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneloop.api import API_VERSION, FineTuneJobSpec, ModelVersion
from tuneloop.api.evaluation import EvaluationRecord, Verdict
from tuneloop.api.modelversion import ArtifactFormat

from . import layout
from .deepspeed import world_size
from .lineage import LineageFacts
from .names import LABEL_MODEL, child_name, dns_label, job_labels

COMPONENT = "model-version"


@dataclass(frozen=True)
class JobIdentity:
    """The FineTuneJob's metadata a ModelVersion records."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 1
    sweep: dict[str, Any] | None = None  # a FineTuneSweep's final run: the sweep and trial (api.modelversion.SweepLineage)


def model_name(spec: FineTuneJobSpec, job: JobIdentity) -> str:
    return spec.registry.model_name or job.name


def version(spec: FineTuneJobSpec, job: JobIdentity, no_uid: str = "local") -> str:
    """spec.registry.version, else v<generation>-<first 8 hex of the uid>, else v<generation>-<no_uid>."""
    return spec.registry.version or f"v{job.generation}-{job.uid.replace('-', '')[:8] or no_uid}"


def model_version_name(spec: FineTuneJobSpec, job: JobIdentity, no_uid: str = "local") -> str:
    return dns_label(f"{model_name(spec, job)}-{version(spec, job, no_uid)}")


def report_config_map_name(mv_name: str) -> str:
    return child_name(mv_name, "report")


def artifact(spec: FineTuneJobSpec, workdir_uri: str) -> dict[str, Any]:
    """What training leaves in DIR: full weights, the merged model (artifact/merged) or the adapter."""
    if spec.method.type == "full":
        return {"uri": f"{workdir_uri}/{layout.ARTIFACT_DIR}", "format": ArtifactFormat.FULL.value}
    if spec.method.merge_adapter:
        return {"uri": f"{workdir_uri}/{layout.MERGED_DIR}", "format": ArtifactFormat.MERGED.value}
    return {"uri": f"{workdir_uri}/{layout.ARTIFACT_DIR}", "format": ArtifactFormat.LORA_ADAPTER.value, "loraRank": spec.method.lora.r}


def base_model(spec: FineTuneJobSpec, serving_path: str | None = None) -> dict[str, Any]:
    """The base model record; `serving_path` (what vLLM loads it from) overrides the one the source implies —
    a local run of a GGUF base records the trainer's de-quantised safetensors directory there."""
    b = spec.base_model
    out: dict[str, Any] = {"name": b.display_name(), "revision": b.revision()}
    if serving_path:
        out["servingPath"] = serving_path
        return out
    if b.hugging_face:
        out["name"] = b.hugging_face.id
        out["servingPath"] = b.hugging_face.id
    elif b.pvc:
        out["servingPath"] = f"pvc://{b.pvc.claim_name}/{b.pvc.path.lstrip('/')}"
    elif b.path:
        out["servingPath"] = b.path
    return out


def hyperparameters(spec: FineTuneJobSpec) -> dict[str, str]:
    """The effective hyperparameters as strings (JSON for non-strings)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.hyperparameters.wire().items() if not isinstance(v, dict)}


def build(
    spec: FineTuneJobSpec, job: JobIdentity, *, workdir_uri: str, trainer_image: str, facts: LineageFacts | None = None,
    evaluation: dict[str, Any] | EvaluationRecord | None = None, report_config_map: bool = False, no_uid: str = "local",
    base_serving_path: str | None = None,
) -> dict[str, Any]:
    """A validated ModelVersion manifest (wire form). `report_config_map`: the report is (or will be)
    in the ModelVersion's report ConfigMap (only the operator creates it, from the evaluation pod's log)."""
    facts = facts or LineageFacts()
    name = model_version_name(spec, job, no_uid)
    lineage: dict[str, Any] = {
        "fineTuneJob": {"name": job.name, "namespace": job.namespace, **({"uid": job.uid} if job.uid else {})},
        "method": spec.method.type,
        "hyperparameters": hyperparameters(spec),
        "trainerImage": trainer_image,
        "worldSize": facts.world_size or world_size(spec),
    }
    if job.sweep:
        lineage["sweep"] = dict(job.sweep)
    if facts.dataset_sha256:
        lineage["datasetSha256"] = facts.dataset_sha256
    if facts.library_versions:
        lineage["libraryVersions"] = dict(facts.library_versions)
    if facts.train_seconds is not None:
        lineage["trainSeconds"] = facts.train_seconds
    if facts.tokens_seen is not None:
        lineage["tokensSeen"] = facts.tokens_seen
    if facts.token_lengths:
        lineage["tokenLengths"] = facts.token_lengths
    if isinstance(evaluation, EvaluationRecord):
        record = evaluation
    else:
        record = EvaluationRecord.model_validate(evaluation) if evaluation else EvaluationRecord(verdict=Verdict.NOT_EVALUATED)
    report: dict[str, Any] = {"uri": f"{workdir_uri}/{layout.REPORT_FILE}"}
    if report_config_map:
        report["configMap"] = report_config_map_name(name)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {**job_labels(job.name, COMPONENT), LABEL_MODEL: dns_label(model_name(spec, job))},
        },
        "spec": {
            "modelName": model_name(spec, job),
            "version": version(spec, job, no_uid),
            "baseModel": base_model(spec, base_serving_path),
            "artifact": artifact(spec, workdir_uri),
            "lineage": lineage,
            "evaluation": record.wire(),
            "report": report,
            **({"outputContract": {"jsonSchema": spec.evaluation.json_schema}} if spec.evaluation.json_schema is not None else {}),
            # the evaluation wrote DIR/topic-profile.json when its record says it built one
            **({"topicProfile": {"uri": f"{workdir_uri}/{layout.TOPIC_PROFILE_FILE}"}} if record.topic_profile is not None else {}),
        },
    }
    ModelVersion.model_validate(doc)  # never emits what the CRD would refuse
    return doc


def phase(evaluation: dict[str, Any] | None) -> str:
    """The registered ModelVersion's phase: Ready unless the gates failed (Rejected)."""
    verdict = (evaluation or {}).get("verdict")
    return "Rejected" if verdict == Verdict.FAILED.value else "Ready"


def sweep_lineage(annotations: Any) -> dict[str, Any] | None:
    """The sweep lineage a FineTuneJob's annotation `tuneloop.dev/sweep-lineage` carries (JSON), or None."""
    from .names import ANNOTATION_SWEEP_LINEAGE

    text = dict(annotations or {}).get(ANNOTATION_SWEEP_LINEAGE)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- exports (output.exports): one ModelVersion per export that held up against its source -----------------------
EXPORT_VERSION_MAX = 63


def export_version(source_version: str, fmt: str) -> str:
    """The export's version label: the source's, then the format (cut to 63 characters, a hash keeps it unique)."""
    v = f"{source_version}-{fmt}"
    return v if len(v) <= EXPORT_VERSION_MAX else dns_label(v, EXPORT_VERSION_MAX)


def export_artifact(fmt: str, workdir_uri: str, size_bytes: int | None = None) -> dict[str, Any]:
    """The artifact record of one export: a merged model directory, or one GGUF file with its tensor type."""
    out: dict[str, Any] = {"uri": f"{workdir_uri}/{layout.export_path(fmt)}"}
    if fmt.startswith("gguf-"):
        out.update(format=ArtifactFormat.GGUF.value, quantization=fmt.removeprefix("gguf-"))
    else:
        out["format"] = ArtifactFormat.MERGED.value
    if size_bytes is not None:
        out["sizeBytes"] = int(size_bytes)
    return out


def build_export(source: dict[str, Any], export: dict[str, Any], *, workdir_uri: str) -> dict[str, Any]:
    """The ModelVersion of one export (wire form), derived from its source's manifest (`build`'s output): same model
    name, base, lineage and evaluation record (the export answers like the source: `equivalence` says how closely),
    its own artifact and version, and `lineage.exportOf` naming the source. `export` is one entry of the export stage's
    summary: {"format", "sizeBytes", "equivalence"}."""
    fmt = str(export["format"])
    meta, spec = source["metadata"], source["spec"]
    version_ = export_version(spec["version"], fmt)
    lineage = {**spec.get("lineage", {}), "exportOf": {"modelVersion": meta["name"], "format": fmt}}
    doc = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": dns_label(f"{meta['name']}-{fmt}"), "namespace": meta["namespace"], "labels": dict(meta.get("labels") or {})},
        "spec": {
            **{k: v for k, v in spec.items() if k not in ("artifact", "lineage", "version")},
            "version": version_,
            "artifact": export_artifact(fmt, workdir_uri, export.get("sizeBytes")),
            "lineage": lineage,
            "equivalence": export["equivalence"],
        },
    }
    ModelVersion.model_validate(doc)
    return doc


def export_passed(export: dict[str, Any]) -> bool:
    """Whether an export held up against its source (only those are registered)."""
    return bool((export.get("equivalence") or {}).get("passed"))
