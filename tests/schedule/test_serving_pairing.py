"""Pairing a run's test items with the serving version's (the champion/challenger comparison a schedule hands off on):
issue 20 item 10 (text datasets) and the suspicion that multi-turn items sharing their last user message pair wrongly."""

from __future__ import annotations

import math

import pytest
from tuneloop_trainer.evaluation import analysis as eval_analysis
from tuneloop_trainer.evaluation import items as eval_items

pytestmark = pytest.mark.unit


def text_run(nll_per_token: float, n: int = 30):
    records = [{"text": f"ticket {i}: the printer on floor {i % 5} is jammed again"} for i in range(n)]
    nll_items = [(nll_per_token * (10 + i % 3), 10 + i % 3) for i in range(n)]
    nll = (sum(a for a, _ in nll_items), sum(c for _, c in nll_items))
    return records, {"tuned": {"nll": nll, "nllItems": nll_items}}, {"tuned": {"perplexity": math.exp(nll[0] / nll[1])}}


def doc_of(a) -> dict:
    return {"itemKeys": a.keys, "itemScores": a.items_doc(), "examples": []}


def analyse(records, results, scores, references=(), serving_doc=None):
    return eval_analysis.analyse(records=records, references=list(references), schema=None, results=results, scores=scores,
                                 forgetting=None, train_answers=[], serving_doc=serving_doc,
                                 serving_name="v1" if serving_doc is not None else None)


def test_a_text_dataset_run_is_compared_with_the_serving_version_by_perplexity():
    """Before: text items were keyed only from chat records: 'scored 0 of this run's 0 test items' (NotComparable)
    for every run, so a schedule on a text dataset never handed off a second version."""
    first = analyse(*text_run(2.0))
    assert len(first.keys) == 30 and "perplexity" in first.items["tuned"]
    second = analyse(*text_run(1.5), serving_doc=doc_of(first))
    assert second.serving_problem is None
    assert second.scores["serving"]["perplexity"] == pytest.approx(math.exp(2.0))
    rows = eval_analysis.metric_rows(["perplexity"], second)
    outcome = eval_analysis.serving_outcome(rows, second, [])
    assert outcome.metric == "perplexity" and str(getattr(outcome.outcome, "value", outcome.outcome)) == "Better"  # lower perplexity


def test_a_text_champion_without_per_item_perplexity_is_not_comparable_and_says_why():
    first = analyse(*text_run(2.0))
    doc = {**doc_of(first), "itemScores": {}}
    second = analyse(*text_run(1.5), serving_doc=doc)
    assert "text items with a per-item perplexity" in second.serving_problem


def chat(turns: list[tuple[str, str]], answer: str) -> dict:
    msgs = [{"role": "system", "content": "You are the support bot."}]
    for role, content in turns:
        msgs.append({"role": role, "content": content})
    return {"messages": [*msgs, {"role": "assistant", "content": answer}]}


def test_multi_turn_items_that_share_their_last_user_message_are_different_items():
    """Before: the key was the last user message and the reference, so two conversations ending in the same question
    with the same expected answer were one key, and the serving version's outputs could be paired with the wrong one."""
    a = chat([("user", "My order 1 is late"), ("assistant", "Sorry, checking."), ("user", "Any news?")], "yes")
    b = chat([("user", "My order 2 is lost"), ("assistant", "Sorry, checking."), ("user", "Any news?")], "yes")
    assert eval_items.record_key(a) != eval_items.record_key(b)
    single = chat([("user", "Hello")], "Hi")
    assert eval_items.record_key(single) == eval_items.item_key("Hello", "Hi")  # single-turn keys as before


def test_the_serving_outputs_pair_with_the_same_conversation_not_the_one_sharing_its_last_message():
    a = chat([("user", "My order 1 is late"), ("assistant", "Checking."), ("user", "Any news?")], "A")
    b = chat([("user", "My order 2 is lost"), ("assistant", "Checking."), ("user", "Any news?")], "A")
    keys = [eval_items.record_key(r) for r in (a, b)]
    # the serving version's eval.json lists the same two items in the other order; its answer to a was right, to b wrong
    doc = {"itemKeys": [keys[1], keys[0]], "examples": [{"prompt": "Any news?", "reference": "A", "tuned": "B"},
                                                        {"prompt": "Any news?", "reference": "A", "tuned": "A"}]}
    results = {"tuned": {"predictions": ["A", "A"]}}
    got = analyse([a, b], results, {"tuned": {"exactMatch": 1.0}}, references=["A", "A"], serving_doc=doc)
    assert got.serving_problem is None
    assert list(got.items["serving"]["exactMatch"].num) == [1.0, 0.0]  # a: right, b: wrong


def test_a_champion_evaluated_with_the_old_keys_still_pairs_when_the_old_keys_are_unambiguous():
    a = chat([("user", "My order 1 is late"), ("assistant", "Checking."), ("user", "Any news on 1?")], "A")
    b = chat([("user", "My order 2 is lost"), ("assistant", "Checking."), ("user", "Any news on 2?")], "B")
    old_keys = [eval_items.item_key("Any news on 1?", "A"), eval_items.item_key("Any news on 2?", "B")]
    doc = {"itemKeys": old_keys, "examples": [{"tuned": "A"}, {"tuned": "x"}]}
    got = analyse([a, b], {"tuned": {"predictions": ["A", "B"]}}, {"tuned": {"exactMatch": 1.0}}, references=["A", "B"], serving_doc=doc)
    assert got.serving_problem is None and list(got.items["serving"]["exactMatch"].num) == [1.0, 0.0]
