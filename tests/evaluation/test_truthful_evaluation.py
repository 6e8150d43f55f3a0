"""Issue 12's done-when: a deliberately useless model (1 step, learning rate ~0, tiny random weights) fails
gates against the majority baseline on a confidence bound, and the report and ModelVersion say why."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from tuneloop.cli.main import main as cli
from tuneloop_trainer.testing import make_tiny_model, tiny_spec, write_jsonl

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def triage_records(n: int, seed: int = 3) -> list[dict]:
    """JSON answers whose fields are skewed (kind 'billing' ~70 %, urgent false ~75 %): a majority baseline scores well."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = "billing" if rng.random() < 0.7 else "shipping"
        urgent = rng.random() < 0.25
        out.append({"messages": [
            {"role": "user", "content": f"ticket {i}: my {kind} question" + (" asap" if urgent else "")},
            {"role": "assistant", "content": json.dumps({"kind": kind, "urgent": urgent})},
        ]})
    return out


SCHEMA = {"type": "object", "required": ["kind", "urgent"], "additionalProperties": False,
          "properties": {"kind": {"enum": ["billing", "shipping"]}, "urgent": {"type": "boolean"}}}


def job(tmp: Path, model: Path, gates: list[dict], **evaluation) -> Path:
    write_jsonl(tmp / "data" / "train.jsonl", triage_records(120))
    spec = tiny_spec(model, "data/train.jsonl", "out", **{
        "dataset": {"split": {"validation": 0.1, "test": 0.3, "seed": 1}},
        "hyperparameters": {"maxSteps": 1, "learningRate": 1e-12},
        "evaluation": {"maxNewTokens": 12, "batchSize": 16, "metrics": ["exactMatch", "jsonValid", "fieldAccuracy"],
                       "jsonSchema": SCHEMA, "gates": gates, "forgetting": {"enabled": False}, **evaluation},
        "registry": {"modelName": "useless"},
    })
    spec["output"] = {"pvc": {"claimName": "models", "path": "useless"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "useless", "namespace": "ml"}, "spec": spec}))
    return path


MAJORITY_GATE = {"metric": "fieldAccuracy", "reference": "majority", "confidenceBound": True, "minImprovement": 0.02}


def test_useless_model_fails_against_the_majority_baseline_and_the_report_says_why(tmp_path, tiny):
    wd = tmp_path / "wd"
    # the old gate alone (improvement over a base model that scores ~0) would pass; the majority gate must not
    path = job(tmp_path, tiny, [{"metric": "fieldAccuracy", "maxRegression": 1.0}, MAJORITY_GATE])
    assert cli(["local", "run", str(path), "--workdir", str(wd), "--no-progress"]) == 0
    ev = json.loads((wd / "eval.json").read_text())
    rec = ev["record"]
    assert rec["verdict"] == "Failed"
    base_gate, majority_gate = rec["gates"]
    assert base_gate["passed"] and base_gate["reference"] == "base"
    assert not majority_gate["passed"] and majority_gate["reference"] == "majority" and majority_gate["confidenceBound"]
    assert "95% lower bound" in majority_gate["reason"] and "over majority" in majority_gate["reason"]

    # the baseline is built from the train split and scored on the same items; intervals on everything
    answer = json.loads(ev["baselines"]["majority"]["answer"])
    assert answer == {"kind": "billing", "urgent": False}
    fa = next(m for m in rec["metrics"] if m["name"] == "fieldAccuracy")
    maj = next(r for r in fa["references"] if r["reference"] == "majority")
    assert maj["value"] > 0.5 and fa["tuned"] < maj["value"]
    assert fa["tunedInterval"]["low"] <= fa["tuned"] <= fa["tunedInterval"]["high"]
    assert maj["differenceInterval"]["high"] < 0.02 and maj["outcome"] in ("Worse", "NoSignificantDifference")
    em = next(m for m in rec["metrics"] if m["name"] == "exactMatch")
    assert any(r.get("mcnemarPValue") is not None for r in em["references"])
    assert len(ev["itemKeys"]) == rec["testExamples"] and len(ev["itemScores"]["tuned"]["fieldAccuracy"]["num"]) == rec["testExamples"]
    assert rec["confidenceLevel"] == 0.95 and "bootstrap" in rec["intervalMethod"]

    report = (wd / "report" / "report.md").read_text()
    assert "Majority baseline" in report and "Tuned (95 % CI)" in report
    assert "the trivial baseline" in report and "Do not serve it" in report
    assert "Beat the majority baseline first" in report
    assert "Register it" not in report

    mv = yaml.safe_load((wd / "report" / "modelversion.yaml").read_text())
    mv_ev = mv["spec"]["evaluation"]
    assert mv_ev["verdict"] == "Failed" and mv_ev["gates"][1]["reference"] == "majority"
    mv_fa = next(m for m in mv_ev["metrics"] if m["name"] == "fieldAccuracy")
    assert {r["reference"] for r in mv_fa["references"]} >= {"base", "majority"}
    assert cli(["validate", str(wd / "report" / "modelversion.yaml")]) == 0

    # champion/challenger: the same useless model compared with itself as the serving version is not better
    wd2 = tmp_path / "wd2"
    path = job(tmp_path, tiny, [{"metric": "fieldAccuracy", "reference": "serving", "confidenceBound": True, "minImprovement": 0.0}],
               serving={"modelVersion": "useless-v1", "evalJson": str(wd / "eval.json")})
    assert cli(["local", "run", str(path), "--workdir", str(wd2), "--no-progress"]) == 0
    rec2 = json.loads((wd2 / "eval.json").read_text())["record"]
    assert rec2["serving"]["modelVersion"] == "useless-v1" and rec2["serving"]["metric"] == "fieldAccuracy"
    assert rec2["serving"]["outcome"] in ("NoSignificantDifference", "Worse", "Better")
    fa2 = next(m for m in rec2["metrics"] if m["name"] == "fieldAccuracy")
    assert any(r["reference"] == "serving" for r in fa2["references"])
