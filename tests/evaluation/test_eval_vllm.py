"""The evaluate stage through the real vLLM (CPU build) against the transformers path, on a tiny random model vLLM's
CPU attention can serve (head_dim 64). Needs a vLLM Python: `make vllm` (./.venv-vllm) or TUNELOOP_VLLM_PYTHON;
skipped, saying so, without one. Two vLLM servers start (~1-5 min on a 2-core machine, more under load)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from tuneloop.cli.main import main as cli
from tuneloop_trainer.evaluation import vllm_backend as vb
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
FOUND, NOTES = vb.find_interpreter(os.environ, ROOT, ROOT)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(FOUND is None, reason="vllm tier: no vLLM Python (" + "; ".join(NOTES) + "): run `make vllm` or set TUNELOOP_VLLM_PYTHON"),
]


def _server_pids(marker: str) -> list[int]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in cmd and marker in cmd:
            out.append(int(proc.name))
    return out


def test_vllm_and_transformers_give_the_same_greedy_answers_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    model = make_tiny_model(tmp_path / "tiny64", hidden=256)  # 4 heads: head_dim 64
    write_jsonl(tmp_path / "data" / "train.jsonl", chat_records(48, system=True))
    forgetting = write_jsonl(tmp_path / "forget.jsonl", [{"prompt": "say yes", "answers": ["yes"]}, {"prompt": "say red", "answers": ["red"]}])
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "hyperparameters": {"maxSteps": 2},
        "evaluation": {"maxNewTokens": 8, "batchSize": 8, "metrics": ["exactMatch", "rougeL", "perplexity"],
                       "forgetting": {"path": str(forgetting), "maxRegression": 1.0}, "samplePrompts": ["question 99 what is cat dog"]},
    })
    spec["output"] = {"pvc": {"claimName": "models", "path": "tiny"}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                   "metadata": {"name": "tiny-job", "namespace": "ml"}, "spec": spec}))
    wd = tmp_path / "wd"

    monkeypatch.setenv(vb.BACKEND_ENV, "vllm")
    assert cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress", "--to-stage", "evaluate"]) == 0, capsys.readouterr()
    by_vllm = json.loads((wd / "eval.json").read_text())
    assert by_vllm["backend"]["used"] == "vllm" and by_vllm["backend"]["vllmVersion"] == FOUND.version
    assert set(by_vllm["backend"]["servers"]) == {"base", "tuned"}
    assert not _server_pids(str(model)), "a vLLM server outlived the evaluate stage"

    monkeypatch.setenv(vb.BACKEND_ENV, "transformers")
    assert cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress", "--from-stage", "evaluate", "--to-stage", "evaluate"]) == 0
    by_hf = json.loads((wd / "eval.json").read_text())
    assert by_hf["backend"]["used"] == "transformers"

    def answers(doc):
        return ([(e["base"], e["tuned"]) for e in doc["examples"]] + [(f["base"], f["tuned"]) for f in doc["forgetting"]]
                + [(s["base"], s["tuned"]) for s in doc["samplePrompts"]])

    a, b = answers(by_vllm), answers(by_hf)
    assert len(a) == len(b) >= 8  # 5 test items, 2 forgetting items, 1 sample prompt; base and tuned each
    differing = [(x, y) for x, y in zip(a, b) if x != y]
    # Both run the fp32 weights greedily from the same token ids; the kernels differ (vLLM's CPU attention and
    # paged KV cache vs. transformers' padded batches), so a near-tie between two logits of this random model may
    # break differently. Measured: 0 of 2×(6+2+1) answers differ (vLLM 0.32.0, CPU). Allow one in ten, never more.
    assert len(differing) <= len(a) // 10, differing
    assert by_vllm["scores"]["tuned"]["perplexity"] == pytest.approx(by_hf["scores"]["tuned"]["perplexity"], rel=1e-6)  # both transformers


def test_the_output_contract_is_measured_with_and_without_enforcement(tmp_path, monkeypatch, capsys):
    """evaluation.jsonSchema through vLLM: the tuned model's test answers free and with the contract enforced
    (structured outputs), both recorded in eval.json and the report. The random model never answers JSON by itself."""
    model = make_tiny_model(tmp_path / "tiny64", hidden=256)
    write_jsonl(tmp_path / "data" / "train.jsonl", chat_records(40))
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "hyperparameters": {"maxSteps": 1},
        "evaluation": {"maxNewTokens": 16, "batchSize": 8, "metrics": ["exactMatch", "jsonValid"], "baseline": False, "baselines": False,
                       "forgetting": {"enabled": False}, "jsonSchema": {"enum": ["red", "green", "blue"]}},
    })
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                   "metadata": {"name": "tiny-contract", "namespace": "ml"}, "spec": spec}))
    wd = tmp_path / "wd"
    monkeypatch.setenv(vb.BACKEND_ENV, "vllm")
    assert cli(["local", "run", str(job), "--workdir", str(wd), "--no-progress"]) == 0, capsys.readouterr()
    doc = json.loads((wd / "eval.json").read_text())
    enf = doc["enforcement"]
    assert enf["measured"] and enf["backend"] == "vllm"
    assert enf["unenforced"]["violationRate"] == 1.0  # free: no answer of the random model is one of the three JSON strings
    assert enf["enforced"]["violationRate"] == 0.0 and enf["enforced"]["jsonValid"] == 1.0
    assert all(json.loads(p) in ("red", "green", "blue") for p in enf["predictions"])
    report = (wd / "report" / "report.md").read_text()
    assert "### Output contract: with and without enforcement" in report and "| Contract violations | 100.0 % | 0.0 % |" in report
    mv = yaml.safe_load((wd / "report" / "modelversion.yaml").read_text())
    assert mv["spec"]["outputContract"] == {"jsonSchema": {"enum": ["red", "green", "blue"]}}
