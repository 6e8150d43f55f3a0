"""The equivalence gate of an export (evaluation/equivalence.py): a decision the system takes alone, so its rules are
properties checked over generated inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop_trainer.evaluation.equivalence import EPSILON, compare, decide, drop

pytestmark = pytest.mark.unit

METRICS = ["exactMatch", "rougeL", "bleu", "jsonValid", "schemaCompliance"]
score = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
scores = st.dictionaries(st.sampled_from(METRICS), st.tuples(score, score), max_size=5)
gate = st.tuples(score, score)  # (minAgreement, maxDrop)


@settings(max_examples=300, deadline=None)
@given(agreement=score, metrics=scores, g=gate)
def test_passes_exactly_when_agreement_and_every_drop_hold(agreement, metrics, g):
    min_agreement, max_drop = g
    d = decide(agreement, 20, metrics, min_agreement=min_agreement, max_drop=max_drop)
    expected = agreement + EPSILON >= min_agreement and all(drop(m, s, e) <= max_drop + EPSILON for m, (s, e) in metrics.items())
    assert d.passed == expected
    assert d.reason.startswith("refused: ") != d.passed
    for m, (s, e) in metrics.items():
        assert d.metric_passed[m] == (drop(m, s, e) <= max_drop + EPSILON)
        if not d.metric_passed[m]:
            assert m in d.reason  # a refusal names every metric that failed


@settings(max_examples=300, deadline=None)
@given(agreement=score, metrics=scores, g=gate, looser=st.tuples(score, score))
def test_a_looser_gate_never_refuses_what_a_stricter_one_accepts(agreement, metrics, g, looser):
    min_agreement, max_drop = g
    strict = decide(agreement, 20, metrics, min_agreement=min_agreement, max_drop=max_drop)
    loose = decide(agreement, 20, metrics, min_agreement=min_agreement * looser[0], max_drop=max_drop + looser[1])
    assert not strict.passed or loose.passed


@settings(max_examples=200, deadline=None)
@given(agreement=score, metrics=scores, g=gate)
def test_an_export_that_is_better_on_every_metric_is_judged_on_agreement_alone(agreement, metrics, g):
    better = {m: (s, max(s, e)) for m, (s, e) in metrics.items()}
    d = decide(agreement, 20, better, min_agreement=g[0], max_drop=g[1])
    assert d.passed == (agreement + EPSILON >= g[0])


@settings(max_examples=30, deadline=None)
@given(answers=st.lists(st.sampled_from(["the answer is red cat", "{\"a\": 1}", "no", "", "the answer is blue dog"]), min_size=1, max_size=12),
       g=gate)
def test_identical_answers_always_pass_with_zero_differences(answers, g):
    refs = list(reversed(answers))
    rec = compare(answers, list(answers), refs, schema=None, min_agreement=g[0], max_drop=g[1])
    assert rec["passed"] and rec["agreement"] == 1.0 and rec["testItems"] == len(answers)
    assert all(m["difference"] == 0 for m in rec["metrics"])


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["a b", "c d", "e"]), st.sampled_from(["a b", "c d", "e"])), min_size=1, max_size=15))
def test_agreement_is_the_share_of_identical_answers(pairs):
    src, exp = [a for a, _ in pairs], [b for _, b in pairs]
    rec = compare(src, exp, src, schema=None, min_agreement=0.0, max_drop=1.0)
    assert rec["agreement"] == pytest.approx(sum(a == b for a, b in pairs) / len(pairs), abs=1e-6)
    iv = rec.get("agreementInterval")
    assert iv is None or iv["low"] - 1e-6 <= rec["agreement"] <= iv["high"] + 1e-6


def test_a_broken_export_is_refused_with_the_numbers():
    src = ["the answer is red cat"] * 10
    exp = ["zzz"] * 10
    rec = compare(src, exp, src, schema=None, min_agreement=0.9, max_drop=0.02, metrics=["exactMatch", "rougeL"])
    assert not rec["passed"]
    assert rec["reason"].startswith("refused: same greedy answer on 0.0% of 10 test items (at least 90.0% required)")
    assert "exactMatch 0 vs 1 for the source: drop 1 > maxDrop 0.02" in rec["reason"]
    em = next(m for m in rec["metrics"] if m["name"] == "exactMatch")
    assert em["difference"] == -1.0 and em["differenceInterval"]["high"] < 0


def test_lengths_must_pair():
    with pytest.raises(ValueError, match="paired answers"):
        compare(["a"], ["a", "b"], ["a"], schema=None, min_agreement=0.9, max_drop=0.0)
