"""Intervals, paired differences, McNemar and timing noise (tuneloop_trainer.evaluation.stats / compare). Pure."""

from __future__ import annotations

import pytest
from tuneloop_trainer.evaluation import compare as eval_compare
from tuneloop_trainer.evaluation.baselines import baseline_predictions, majority_answer
from tuneloop_trainer.evaluation.items import task_items
from tuneloop_trainer.evaluation.stats import (
    ItemScores,
    beyond_noise,
    difference_interval,
    interval,
    mcnemar_exact,
    paired_test,
    spread,
    wilson,
)

pytestmark = pytest.mark.unit


def test_wilson_matches_the_textbook_values():
    iv = wilson(30, 60)
    assert iv.low == pytest.approx(0.3773, abs=1e-3) and iv.high == pytest.approx(0.6227, abs=1e-3)
    zero = wilson(0, 60)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.0602, abs=1e-3)


def test_mcnemar_exact_two_sided():
    # 10 discordant pairs split 9:1 → 2 * P(X ≤ 1 | n=10, p=½) = 2 * 11/1024
    t = [1] * 9 + [0] + [1] * 20
    r = [0] * 9 + [1] + [1] * 20
    m = mcnemar_exact(t, r)
    assert (m["tunedOnly"], m["referenceOnly"]) == (9, 1)
    assert m["pValue"] == pytest.approx(22 / 1024)
    assert mcnemar_exact([1, 0], [1, 0])["pValue"] == 1.0
    assert mcnemar_exact([0.5], [1]) is None


def test_bootstrap_is_seeded_and_paired():
    a = ItemScores.of([3, 2, 3, 1] * 15, [3] * 60)  # ratio metric (field accuracy: hits / fields)
    b = ItemScores.of([2, 2, 2, 1] * 15, [3] * 60)
    first, second = difference_interval(a, b), difference_interval(a, b)
    assert first == second  # fixed seed
    assert first.low > 0  # a is never worse than b on any item: the paired interval excludes 0
    iv = interval(a)
    assert iv.low < a.value() < iv.high


def test_identical_models_are_not_different():
    a = ItemScores.of([1, 0] * 30)
    d = difference_interval(a, a)
    assert d.low == d.high == 0
    assert eval_compare.outcome("fieldAccuracy", 0.0, paired_test(a, a)) == "NoSignificantDifference"


def test_timings_within_noise_are_never_better_or_worse():
    base = spread([8.4, 11.3, 9.0, 10.1])
    tuned = spread([9.5, 10.0, 8.9, 12.0])
    assert not beyond_noise(base, tuned)
    assert beyond_noise(spread([1.0, 1.1, 0.9]), spread([5.0, 5.2, 4.9]))
    assert not beyond_noise(spread([1.0]), spread([5.0]))  # one measurement each: no noise estimate


def test_per_field_majority_from_the_train_split():
    train = ['{"category": "billing", "urgent": false}', '{"category": "billing", "urgent": true}',
             '{"category": "returns", "urgent": false}']
    assert majority_answer(train) == '{"category": "billing", "urgent": false}'
    refs = ['{"category": "returns", "urgent": false}', '{"category": "billing", "urgent": true}']
    preds = baseline_predictions(train, ["p1", "p2"], refs)
    assert set(preds) == {"majority"}  # copyPrompt is meaningless for structured answers
    items = task_items(preds["majority"], refs)
    assert items["fieldAccuracy"].value() == 0.5 and items["allFieldsExact"].value() == 0.0
    text = baseline_predictions(["yes", "no", "yes"], ["a long prompt"], ["no"])
    assert text == {"majority": ["yes"], "copyPrompt": ["a long prompt"]}


def test_rows_carry_intervals_references_and_outcomes():
    refs = [f'{{"a": {i % 2}}}' for i in range(40)]
    tuned = list(refs)
    majority = ['{"a": 0}'] * 40
    items = {"tuned": task_items(tuned, refs), "majority": task_items(majority, refs)}
    scores = {"tuned": {"fieldAccuracy": 1.0}, "majority": {"fieldAccuracy": 0.5}, "base": {}}
    (row,) = eval_compare.rows(["fieldAccuracy"], scores, items)
    (maj,) = row.references
    assert maj.reference == "majority" and maj.difference == 0.5 and maj.outcome == "Better"
    assert maj.difference_interval.low > 0.3
    assert maj.mcnemar_p_value == pytest.approx(2 / 2**20, rel=1e-3)  # one field: binary per item, 20 discordant pairs all for tuned
    assert row.tuned_interval.high == 1.0


def test_corpus_bleu_is_resampled_exactly_from_per_item_counts():
    from tuneloop_trainer.evaluation.items import bleu_items, unwire, wire
    from tuneloop_trainer.evaluation.metrics import bleu

    preds = ["the cat sat on the mat today", "a dog ran in the big park", "hello world", "json please"]
    refs = ["the cat sat on the mat", "a dog ran in the park", "hello there world", "json please now"]
    items = bleu_items(preds, refs)
    assert items.value() == pytest.approx(bleu(preds, refs))
    assert unwire(wire({"bleu": items}))["bleu"].value() == pytest.approx(items.value())
    iv = interval(items)
    assert iv is not None and iv.low <= items.value() <= iv.high
