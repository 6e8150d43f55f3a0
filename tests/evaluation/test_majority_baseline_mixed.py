"""The majority baseline of a structured task ignores non-task answers in the train split.

Rehearsal records (general prompts answered in prose, mixed into the train data to limit
forgetting) are not answers to the task: counting them would turn the per-field majority baseline
into "the most common whole answer" — a much weaker reference that flatters the tuned model.
"""

from __future__ import annotations

import json

import pytest
from tuneloop_trainer.evaluation.baselines import baseline_predictions, majority_answer

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["billing", "shipping"]}, "urgent": {"type": "boolean"}}}
TASK = ['{"category": "billing", "urgent": false}', '{"category": "shipping", "urgent": false}',
        '{"category": "billing", "urgent": true}']
PROSE = ["The capital of Peru is Lima.", "Here is a haiku about rain.", "The capital of Peru is Lima."]


def test_with_a_schema_prose_answers_in_the_train_split_do_not_count():
    assert json.loads(majority_answer(TASK + PROSE, SCHEMA)) == {"category": "billing", "urgent": False}
    assert majority_answer(TASK + PROSE, SCHEMA) == majority_answer(TASK, SCHEMA)
    preds = baseline_predictions(TASK + PROSE, ["p"], [TASK[0]], SCHEMA)
    assert preds["majority"] == [majority_answer(TASK, SCHEMA)]


def test_without_a_schema_a_mixed_split_keeps_the_majority_class():
    assert majority_answer(TASK + PROSE) == "The capital of Peru is Lima."
