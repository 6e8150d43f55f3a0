"""Gates pass and fail on constructed evaluation results, each with its reason."""

from __future__ import annotations

import pytest
from tuneloop.api.evaluation import ForgettingCheck, Gate
from tuneloop_trainer.evaluation.gates import check_gate, comparisons, decide

pytestmark = pytest.mark.unit

BASE = {"rougeL": 0.30, "jsonValid": 0.0, "perplexity": 8.0, "forgettingAccuracy": 0.60}
TUNED = {"rougeL": 0.80, "jsonValid": 0.95, "perplexity": 2.0, "forgettingAccuracy": 0.55}
NAMES = ["perplexity", "rougeL", "jsonValid", "forgettingAccuracy"]


def rows(base=BASE, tuned=TUNED):
    return comparisons(base, tuned, NAMES)


def test_comparisons_compute_deltas():
    r = {row.name: row for row in rows()}
    assert r["rougeL"].delta == pytest.approx(0.5)
    assert r["perplexity"].delta == pytest.approx(-6.0)


def test_all_gates_pass():
    gates = [Gate(metric="rougeL", min_improvement=0.3), Gate(metric="jsonValid", min_value=0.9), Gate(metric="perplexity", max_regression=0.0)]
    rec = decide(rows(), gates, ForgettingCheck(max_regression=0.1), test_examples=60)
    assert rec.verdict == "Passed"
    assert [g.passed for g in rec.gates] == [True, True, True, True]
    assert rec.gates[-1].metric == "forgettingAccuracy"
    assert "drop 0.050 ≤ budget 0.100" in rec.gates[-1].reason
    assert rec.test_examples == 60


def test_min_improvement_fails_with_numbers():
    rec = decide(rows(), [Gate(metric="rougeL", min_improvement=0.6)], None)
    assert rec.verdict == "Failed"
    assert "improvement +0.500" in rec.gates[0].reason and "< required 0.600" in rec.gates[0].reason


def test_perplexity_is_lower_is_better():
    worse = dict(TUNED, perplexity=9.0)
    ok = check_gate(Gate(metric="perplexity", max_regression=2.0), {r.name: r for r in rows(tuned=worse)}["perplexity"])
    bad = check_gate(Gate(metric="perplexity", max_regression=0.5), {r.name: r for r in rows(tuned=worse)}["perplexity"])
    assert ok.passed and not bad.passed
    assert "regression 1.000" in bad.reason
    lower = check_gate(Gate(metric="perplexity", min_value=3.0), {r.name: r for r in rows()}["perplexity"])
    assert lower.passed  # 2.0 ≤ 3.0
    improve = check_gate(Gate(metric="perplexity", min_improvement=5.0), {r.name: r for r in rows()}["perplexity"])
    assert improve.passed  # 8 → 2 is 6 better


def test_forgetting_budget_exceeded_fails():
    rec = decide(rows(), [], ForgettingCheck(max_regression=0.02))
    assert rec.verdict == "Failed"
    assert "drop 0.050 > budget 0.020" in rec.gates[0].reason


def test_disabled_forgetting_adds_no_gate():
    rec = decide(rows(), [], ForgettingCheck(enabled=False))
    assert rec.gates == [] and rec.verdict == "Passed"


def test_unmeasured_metric_and_missing_baseline_fail():
    rec = decide(rows(), [Gate(metric="schemaCompliance", min_value=0.5)], None)
    assert not rec.gates[0].passed and "not measured" in rec.gates[0].reason
    no_base = comparisons({}, TUNED, NAMES)
    rec = decide(no_base, [Gate(metric="rougeL", min_improvement=0.1), Gate(metric="rougeL", min_value=0.5)], ForgettingCheck())
    assert [g.passed for g in rec.gates] == [False, True, False]
    assert "no base score" in rec.gates[0].reason


def test_several_bounds_on_one_gate_all_must_hold():
    g = Gate(metric="jsonValid", min_improvement=0.5, min_value=0.99)
    res = check_gate(g, {r.name: r for r in rows()}["jsonValid"])
    assert not res.passed
    assert "≥ required 0.500" in res.reason and "< required 0.990" in res.reason


def test_record_is_a_valid_modelversion_evaluation():
    from tuneloop.api.evaluation import EvaluationRecord

    rec = decide(rows(), [Gate(metric="rougeL", min_improvement=0.1)], ForgettingCheck())
    again = EvaluationRecord.model_validate(rec.wire())
    assert again == rec
