"""The FineTuneJob scenario shared by the kmock tier and the real-cluster tier."""

from __future__ import annotations

import copy
import json
from typing import Any

NS = "default"

FTJ: dict[str, Any] = {
    "apiVersion": "tuneloop.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "support-bot", "namespace": NS},
    "spec": {
        "baseModel": {"huggingFace": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"},
                      "tokenSecretRef": {"name": "tuneloop-hf-token", "key": "token"}},
        "dataset": {"train": {"pvc": {"claimName": "datasets", "path": "support/train.jsonl"}}},
        "method": {"type": "lora", "lora": {"r": 8}},
        "resources": {"nodes": 1, "gpusPerNode": 1, "memory": "16Gi", "cpu": "4"},
        "output": {"pvc": {"claimName": "models", "path": "support-bot"}},
        "evaluation": {"gates": [{"metric": "rougeL", "minImprovement": 0.05}]},
        "registry": {"modelName": "support-bot", "version": "v1"},
    },
}

PREPARE_MSG = json.dumps({
    "stage": "prepare", "outcome": "Succeeded", "dataset_sha256": "ab" * 32,
    "counts": {"read": 120, "accepted": 118, "rejected": 2, "train": 96, "validation": 11, "test": 11},
    "rejected_by_rule": {"duplicate": 2},
})
TRAIN_MSG = json.dumps({"stage": "train", "outcome": "Succeeded", "seconds": 812.5, "train_loss": 0.91, "tokens_seen": 123456})
EVALUATION = {
    "metrics": [{"name": "rougeL", "base": 0.21, "tuned": 0.48, "delta": 0.27},
                {"name": "perplexity", "base": 12.0, "tuned": 6.5, "delta": -5.5}],
    "verdict": "Passed",
    "gates": [{"metric": "rougeL", "passed": True, "reason": "rougeL improved by 0.27 ≥ 0.05"}],
    "testExamples": 11,
}
PUBLISH_MSG = json.dumps({"stage": "publish", "outcome": "Succeeded", "evaluation": EVALUATION,
                          "lineage": {"libraryVersions": {"torch": "2.13.0"}}})
REPORT_MD = "# support-bot v1\n\nrougeL 0.21 → 0.48\n"
EVAL_LOG = f"evaluating...\n----- BEGIN tuneloop-report.md -----\n{REPORT_MD}----- END tuneloop-report.md -----\n"


def ftj(**spec_overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(FTJ)
    doc["spec"].update(spec_overrides)
    return doc


def phase(obj: dict) -> str | None:
    return (obj.get("status") or {}).get("phase")


def cond(obj: dict, type: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type), None)
