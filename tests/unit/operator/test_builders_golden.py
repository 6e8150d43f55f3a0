"""Every builder against golden YAML (UPDATE_GOLDEN=1 rewrites them after a reviewed change).

Cases: single GPU LoRA, 2×8 GPU full fine-tune with ZeRO-3, QLoRA, suspended, custom GPU resource name, exports,
and a job's own metrics port from trainer_metrics_port_range (with its NetworkPolicy).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from tuneloop.api import FineTuneJob
from tuneloop.operator import builders
from tuneloop.operator.builders.registration import build_export
from tuneloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[3]
CONFIG = OperatorSettings(trainer_image="ghcr.io/tuneloop/trainer:0.1.0", model_cache_pvc=None)
UID = "7f1c2a9e-0d4b-4c1e-9a57-3b2f8e6d1c00"
EVALUATION = {
    "metrics": [{"name": "rougeL", "base": 0.2, "tuned": 0.45, "delta": 0.25}],
    "verdict": "Passed",
    "gates": [{"metric": "rougeL", "passed": True, "reason": "rougeL improved by 0.25 ≥ 0.05"}],
    "testExamples": 40,
}

BASE = {
    "baseModel": {"huggingFace": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}},
    "dataset": {"train": {"pvc": {"claimName": "datasets", "path": "tickets/train.jsonl"}}},
    "output": {"pvc": {"claimName": "models", "path": "tickets"}},
    "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "8", "memory": "32Gi"},
}


def _case(name: str) -> dict:
    if name == "zero3-2x8":
        return yaml.safe_load((ROOT / "manifests/samples/finetunejob-llama-2x8-zero3.yaml").read_text())
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    if name == "qlora":
        spec["method"] = {"type": "qlora", "quantization": {"bits": 4}, "lora": {"r": 32, "alpha": 64}}
        spec["baseModel"] = {"pvc": {"claimName": "base-models", "path": "llama-3.1-8b"}}
        spec["hyperparameters"] = {"batchSize": 16, "microBatchSize": 2, "gradientCheckpointing": True}
    elif name == "suspend":
        spec["suspend"] = True
        spec["method"] = {"type": "lora", "mergeAdapter": True}
        spec["ttlSecondsAfterFinished"] = 3600
    elif name == "custom-gpu":
        spec["resources"] = {"nodes": 2, "gpusPerNode": 4, "gpuResourceName": "amd.com/gpu", "shmSize": "16Gi",
                             "nodeSelector": {"accelerator": "mi300x"},
                             "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
        spec["deepspeed"] = {"zeroStage": 2}
        spec["baseModel"]["tokenSecretRef"] = {"name": "tuneloop-hf-token"}
    elif name == "exports":
        spec["output"]["exports"] = [{"format": "merged"}, {"format": "gguf-q8_0", "minAgreement": 0.8}]
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": f"tickets-{name}", "namespace": "ml", "uid": UID, "generation": 1}, "spec": spec}


# pods that share the host's ports: each job's trainer on its own port (env, container port, Service, NetworkPolicy)
PORT_RANGE = CONFIG.model_copy(update={"trainer_metrics_port_range": (20000, 29999), "operator_namespace": "tuneloop-system"})


def render(name: str) -> str:
    doc = _case(name)
    doc["metadata"].update(uid=UID, generation=1)
    spec = FineTuneJob.model_validate(doc).spec
    meta = builders.JobMeta.from_body(doc)
    if name == "port-range":
        docs = [builders.headless_service(spec, meta, PORT_RANGE), builders.rendezvous_policy(spec, meta, PORT_RANGE),
                builders.train_job(spec, meta, PORT_RANGE), builders.eval_job(spec, meta, PORT_RANGE)]
        return "---\n".join(yaml.safe_dump(d, sort_keys=False, allow_unicode=True) for d in docs)
    mv = builders.model_version(spec, meta, CONFIG, evaluation=EVALUATION, data_summary={"datasetSha256": "ab" * 32},
                                train_summary={"seconds": 120.5, "tokens_seen": 4096}, has_report=True)
    mv_with_uid = {**mv, "metadata": {**mv["metadata"], "uid": "11111111-2222-3333-4444-555555555555"}}
    docs = [
        builders.config_map(spec, meta, CONFIG),
        builders.headless_service(spec, meta, CONFIG),
        builders.data_job(spec, meta, CONFIG),
        builders.train_job(spec, meta, CONFIG),
        builders.eval_job(spec, meta, CONFIG),
        mv,
        builders.report_config_map(mv_with_uid, "# report\n"),
    ]
    if spec.output.exports:  # the export Job and the ModelVersion of an export that held up
        equivalence = {"testItems": 40, "agreement": 0.95, "minAgreement": 0.8, "passed": True, "reason": "same greedy answer on 95.0%",
                       "metrics": [{"name": "rougeL", "source": 0.45, "export": 0.44, "difference": -0.01, "maxDrop": 0.02, "passed": True}]}
        docs += [builders.export_job(spec, meta, CONFIG),
                 build_export(mv, {"format": "gguf-q8_0", "sizeBytes": 145_000_000, "equivalence": equivalence},
                              workdir_uri=builders.workdir_uri(spec, meta, CONFIG))]
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, allow_unicode=True) for d in docs)


CASES = ["single-gpu", "zero3-2x8", "qlora", "suspend", "custom-gpu", "exports", "port-range"]


@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    path = GOLDEN / f"{name}.yaml"
    text = render(name)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name}: builders changed; review and run with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", CASES)
def test_manifests_are_valid_kubernetes(name):
    """Every Job/Service/ConfigMap passes the Kubernetes OpenAPI schema (kubernetes-validate)."""
    import kubernetes_validate

    for doc in yaml.safe_load_all(render(name)):
        if doc["apiVersion"].startswith("tuneloop.dev"):
            continue
        kubernetes_validate.validate(doc, "1.31", strict=True)
