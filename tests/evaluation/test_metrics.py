"""Metrics on hand-made generations, including empty and invalid ones."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop_trainer.evaluation import metrics as m

pytestmark = pytest.mark.unit

REF = '{"category": "billing", "priority": "high", "product": null, "order_id": "ORD-123456", "sentiment": "negative", "needs_human": true}'
SCHEMA = {
    "type": "object",
    "required": ["category", "priority", "product", "order_id", "sentiment", "needs_human"],
    "additionalProperties": False,
    "properties": {
        "category": {"enum": ["billing", "shipping"]},
        "priority": {"enum": ["low", "medium", "high", "urgent"]},
        "product": {"type": ["string", "null"]},
        "order_id": {"type": ["string", "null"], "pattern": "^ORD-[0-9]{6}$"},
        "sentiment": {"enum": ["negative", "neutral", "positive"]},
        "needs_human": {"type": "boolean"},
    },
}


def test_parse_json_is_strict_but_tolerates_a_fence():
    assert m.parse_json('  {"a": 1}\n') == (True, {"a": 1})
    assert m.parse_json('```json\n{"a": 1}\n```') == (True, {"a": 1})
    assert m.parse_json('Sure! {"a": 1}') == (False, None)
    assert m.parse_json("") == (False, None)
    assert m.parse_json("   ") == (False, None)
    assert m.parse_json('{"a": 1') == (False, None)


def test_exact_match_normalizes_whitespace_and_json_key_order():
    assert m.exact_match("the  answer\n", "the answer")
    assert not m.exact_match("The answer", "the answer")
    assert m.exact_match('{"b": 2, "a": 1}', '{"a":1,"b":2}')
    assert not m.exact_match('{"a": 1}', '{"a": "1"}')
    assert not m.exact_match("", "x")


def test_exact_match_rate_counts_empty_as_wrong():
    assert m.exact_match_rate(["a", "", "c"], ["a", "b", "c"]) == pytest.approx(2 / 3)
    assert m.exact_match_rate([], []) is None


def test_rouge_l_known_values():
    assert m.rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert m.rouge_l([""], ["the cat sat"]) == 0.0
    # LCS "the cat" = 2 tokens; P = 2/2, R = 2/3 -> F1 = 0.8
    assert m.rouge_l(["the cat"], ["the cat sat"]) == pytest.approx(0.8)
    assert m.rouge_l([], []) is None


def test_bleu_scale_and_extremes():
    assert m.bleu(["the quick brown fox jumps over the lazy dog"], ["the quick brown fox jumps over the lazy dog"]) == pytest.approx(1.0)
    assert m.bleu([""], ["the quick brown fox"]) == 0.0
    partial = m.bleu(["the quick brown fox jumps over a dog"], ["the quick brown fox jumps over the lazy dog"])
    assert 0.0 < partial < 1.0


def test_json_validity_and_schema_compliance():
    good = REF
    wrong_enum = REF.replace('"billing"', '"refunds"')
    missing = '{"category": "billing"}'
    preds = [good, wrong_enum, missing, "not json", ""]
    assert m.json_validity(preds) == pytest.approx(3 / 5)
    assert m.schema_compliance(preds, SCHEMA) == pytest.approx(1 / 5)


def test_field_accuracy_per_field_and_all_fields():
    refs = [REF, REF]
    half = REF.replace('"high"', '"low"').replace("true}", "false}")
    acc = m.field_accuracy([REF, half], refs, SCHEMA)
    assert acc["perField"]["category"] == 1.0
    assert acc["perField"]["priority"] == 0.5
    assert acc["perField"]["needs_human"] == 0.5
    assert acc["overall"] == pytest.approx(10 / 12)
    assert acc["allFields"] == 0.5
    # an invalid generation gets every field wrong, and is not skipped
    bad = m.field_accuracy(["", "{oops"], refs, SCHEMA)
    assert bad["overall"] == 0.0 and bad["scored"] == 2


def test_field_accuracy_keeps_types_apart():
    acc = m.field_accuracy(['{"n": "1", "b": 1, "f": 2.0}'], ['{"n": 1, "b": true, "f": 2}'])
    assert acc["perField"] == {"n": 0.0, "b": 0.0, "f": 1.0}


def test_perplexity_from_nll():
    assert m.perplexity(0.0, 5) == 1.0
    assert m.perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert m.perplexity(1.0, 0) is None


def test_forgetting_answer_matching():
    assert m.answer_found("The capital of France is Paris.", ["Paris"])
    assert m.answer_found("paris", ["Paris"])
    assert not m.answer_found("Parisian food", ["Paris"])
    assert not m.answer_found("hello", ["HELLO"], case_sensitive=True)
    assert m.answer_found("HELLO", ["HELLO"], case_sensitive=True)
    assert m.answer_found("It is 25.", ["25"])
    assert not m.answer_found("", ["yes"])


def test_score_task_with_schema_reports_everything():
    preds = [REF, "", "I think it's billing"]
    refs = [REF, REF, REF]
    s = m.score_task(preds, refs, schema=SCHEMA, nll=(3.0, 3))
    assert s["exactMatch"] == pytest.approx(1 / 3)
    assert s["jsonValid"] == pytest.approx(1 / 3)
    assert s["schemaCompliance"] == pytest.approx(1 / 3)
    assert s["fieldAccuracy"] == pytest.approx(1 / 3)
    assert s["details"]["allFieldsExact"] == pytest.approx(1 / 3)
    assert s["perplexity"] == pytest.approx(math.e)
    assert s["emptyGenerations"] == 1
    assert 0 < s["rougeL"] < 1 and 0 < s["bleu"] < 1


def test_exact_match_does_not_count_1_equal_to_true():
    # issue 20 item 11: Python's == on parsed JSON says 1 == True; field accuracy already kept them apart
    assert not m.exact_match('{"a": 1}', '{"a": true}')
    assert not m.exact_match("1", "true") and not m.exact_match("[0]", "[false]")
    assert not m.exact_match('{"a": {"b": [1]}}', '{"a": {"b": [true]}}')
    assert m.exact_match('{"a": 1.0, "b": [true]}', '{"b": [true], "a": 1}')
    assert m.field_accuracy(['{"a": {"b": [1]}}'], ['{"a": {"b": [true]}}'])["overall"] == 0.0


_scalars = st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["1", "true", "x"]), st.none())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xyz"), inner, max_size=2),
                       max_leaves=6)


def _lookalike(v, flips):
    """v with some scalars replaced by a value Python calls equal but JSON does not (true ↔ 1, false ↔ 0)."""
    if isinstance(v, dict):
        return {k: _lookalike(x, flips) for k, x in v.items()}
    if isinstance(v, list):
        return [_lookalike(x, flips) for x in v]
    if type(v) in (bool, int) and v in (0, 1) and flips.draw(st.booleans()):
        return int(v) if isinstance(v, bool) else bool(v)
    return v


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from("abcd"), _values, min_size=1, max_size=4), st.data())
def test_exact_match_agrees_with_field_accuracy_on_json_objects(ref, data):
    pred = {k: data.draw(st.one_of(st.just(_lookalike(v, data)), _values), label=k) for k, v in ref.items()}
    p, r = json.dumps(pred), json.dumps(ref)
    same = _canonical(pred) == _canonical(ref)  # the oracle: JSON text with every number as a float, keys sorted
    assert m.exact_match(p, r) == same
    assert (m.field_accuracy([p], [r])["allFields"] == 1.0) == same


def _canonical(v):
    def floats(x):
        if isinstance(x, dict):
            return {k: floats(y) for k, y in x.items()}
        if isinstance(x, list):
            return [floats(y) for y in x]
        return float(x) if type(x) in (int, float) else x

    return json.dumps(floats(v), sort_keys=True)
