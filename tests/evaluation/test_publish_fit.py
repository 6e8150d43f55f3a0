"""The richer EvaluationRecord (intervals, references) still fits the 4 KiB publish message; the verdict,
the serving outcome and the majority comparison are what survive longest."""

from __future__ import annotations

import json

import pytest
from tuneloop.api.evaluation import EvaluationRecord, Gate
from tuneloop.contract.termination import TERMINATION_LIMIT, fit_publish
from tuneloop_trainer.evaluation import compare as eval_compare
from tuneloop_trainer.evaluation.gates import decide
from tuneloop_trainer.evaluation.stats import ItemScores

pytestmark = pytest.mark.unit

NAMES = ["perplexity", "rougeL", "bleu", "exactMatch", "jsonValid", "schemaCompliance", "fieldAccuracy", "forgettingAccuracy",
         "allFieldsExact", "latencySeconds", "tokensPerSecond"]


def big_record() -> EvaluationRecord:
    n = 60
    items, scores = {}, {}
    for k, model in enumerate(("tuned", "base", "majority", "copyPrompt", "serving")):
        its = {m: ItemScores.of([(i + k) % 3 == 0 for i in range(n)]) for m in NAMES if m not in ("bleu", "latencySeconds", "tokensPerSecond")}
        items[model] = its
        scores[model] = {m: s.value() for m, s in its.items()} | {"bleu": 0.3, "latencySeconds": 9.1 + k, "tokensPerSecond": 40.0 - k}
    rows = eval_compare.rows(NAMES, scores, items, {"tuned": None, "base": None})
    gates = [Gate(metric=m, reference=r, confidence_bound=True, min_improvement=0.02)
             for m in ("fieldAccuracy", "exactMatch", "schemaCompliance") for r in ("majority", "serving")]
    serving = eval_compare.serving_comparison(rows, "support-triage-v1", "fieldAccuracy")
    return decide(rows, gates, None, 60, serving=serving, interval_method=eval_compare.METHOD, confidence_level=0.95)


def test_a_full_record_fits_and_keeps_verdict_serving_and_majority():
    rec = big_record().wire()
    assert len(json.dumps(rec)) > 2 * TERMINATION_LIMIT
    text = fit_publish({"stage": "publish", "outcome": "Succeeded", "evaluation": rec, "lineage": {"trainSeconds": 200}})
    assert len(text.encode()) <= TERMINATION_LIMIT
    out = json.loads(text)["evaluation"]
    assert out["verdict"] == rec["verdict"] and out["serving"] == rec["serving"]
    EvaluationRecord.model_validate(out)  # still a valid record for the ModelVersion
    fa = next(m for m in out["metrics"] if m["name"] == "fieldAccuracy")
    assert "tunedInterval" in fa
    assert {r["reference"] for r in fa["references"]} == {"majority", "serving"}  # the gated comparisons stay
    assert len(out["gates"]) == 6 and all(g["reference"] in ("majority", "serving") for g in out["gates"])
