"""Gates pass and fail on constructed evaluation results, each with its reason."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.api.evaluation import ForgettingCheck, Gate
from tuneloop_trainer.evaluation import compare as eval_compare
from tuneloop_trainer.evaluation import metrics as m
from tuneloop_trainer.evaluation.gates import check_gate, comparisons, decide
from tuneloop_trainer.evaluation.stats import ItemScores, difference_interval, interval

pytestmark = pytest.mark.unit

BASE = {"rougeL": 0.30, "jsonValid": 0.0, "perplexity": 8.0, "forgettingAccuracy": 0.60}
TUNED = {"rougeL": 0.80, "jsonValid": 0.95, "perplexity": 2.0, "forgettingAccuracy": 0.55}
NAMES = ["perplexity", "rougeL", "jsonValid", "forgettingAccuracy"]
NAN = float("nan")


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


def test_nan_perplexity_does_not_pass_a_max_regression_gate():
    # issue 20 item 7: max(0.0, nan) is 0.0, so a NaN regression read as none
    r = {x.name: x for x in comparisons({"perplexity": 12.0}, {"perplexity": NAN}, ["perplexity"])}
    res = check_gate(Gate(metric="perplexity", max_regression=0.5), r["perplexity"])
    assert not res.passed and "not a finite number" in res.reason
    rec = decide(list(r.values()), [Gate(metric="perplexity", max_regression=0.5)], None, test_examples=50)
    assert rec.verdict == "Failed"
    # an infinite mean nll is an infinite perplexity, not exp(700)
    assert ItemScores.of([math.inf, 1.0], [3, 3], "exp").value() == math.inf and m.perplexity(math.inf, 4) == math.inf
    assert math.isnan(m.perplexity(NAN, 4))


def test_nan_forgetting_accuracy_fails_the_budget_saying_why():
    row = comparisons({"forgettingAccuracy": 0.6}, {"forgettingAccuracy": NAN}, ["forgettingAccuracy"])
    rec = decide(row, [], ForgettingCheck(max_regression=0.1))
    assert rec.verdict == "Failed" and "not a finite number" in rec.gates[0].reason


def test_a_single_test_item_passes_no_gate():
    rec = decide(rows(), [Gate(metric="rougeL", min_improvement=0.1)], None, test_examples=1)
    assert rec.verdict == "Failed" and "only 1 test item(s)" in rec.gates[0].reason
    one = ItemScores.of([0.9])
    assert interval(one) is None and difference_interval(one, ItemScores.of([0.1])) is None  # one item has no spread


_numbers = st.one_of(st.floats(-5, 5), st.sampled_from([NAN, math.inf, -math.inf]), st.just(0.0))


@st.composite
def _gate(draw, metric: str, reference: str):
    bound = draw(st.booleans())
    kind = draw(st.sampled_from(["min_improvement", "max_regression", "min_value"]))
    value = draw(st.floats(0, 2)) if kind != "min_improvement" else draw(st.floats(-2, 2))
    return Gate.model_validate({"metric": metric, "reference": reference, "confidenceBound": bound,
                                {"min_improvement": "minImprovement", "max_regression": "maxRegression", "min_value": "minValue"}[kind]: value})


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.sampled_from(["rougeL", "perplexity", "exactMatch"]), st.sampled_from(["base", "serving"]), st.integers(0, 4), st.data())
def test_gates_never_pass_on_nan_inf_empty_or_single_item_inputs(metric, reference, n, data):
    """Per-item scores of any size 0..4 with any numbers in them → rows → one gate. Whenever an input is not
    finite, or there are fewer than 2 items, the verdict is Failed with a reason; never Passed."""
    if metric == "exactMatch":
        tuned = data.draw(st.lists(st.sampled_from([0.0, 1.0, NAN]), min_size=n, max_size=n), label="tuned")
        ref = data.draw(st.lists(st.sampled_from([0.0, 1.0, math.inf]), min_size=n, max_size=n), label="ref")
    else:
        tuned = data.draw(st.lists(_numbers, min_size=n, max_size=n), label="tuned")
        ref = data.draw(st.lists(_numbers, min_size=n, max_size=n), label="ref")
    transform, den = ("exp", [4.0] * n) if metric == "perplexity" else ("", None)
    t_items, r_items = ItemScores.of(tuned, den, transform), ItemScores.of(ref, den, transform)
    scores = {"tuned": {metric: t_items.value()}, reference: {metric: r_items.value()}}
    rows_ = eval_compare.rows([metric], scores, {"tuned": {metric: t_items}, reference: {metric: r_items}})
    gate = data.draw(_gate(metric, reference), label="gate")
    rec = decide(rows_, [gate], None, test_examples=n)
    bad = n < 2 or not all(math.isfinite(v) for v in (*tuned, *ref))
    assert rec.gates and all(g.reason for g in rec.gates)
    if bad:
        assert rec.verdict == "Failed" and not rec.gates[0].passed, rec.gates[0].reason
