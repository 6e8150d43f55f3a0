"""Trivial baselines: the answers a model must beat to be worth anything. Pure.

- majority: for JSON-object answers, one object holding each field's most common value in the TRAIN
  split (the per-field majority answer; for a classification-like field that is its majority class;
  with a jsonSchema, over the train answers that are JSON objects, so rehearsal records don't count);
  for other answers, the train split's most common whole answer (the majority class).
- copyPrompt: the prompt itself as the answer — for free-text answers only (summaries, rewrites), where
  overlap metrics reward copying; meaningless for structured answers, so not computed there.

Ties go to the value seen first in the train split, so the baseline is deterministic.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from . import metrics as em

MAJORITY = "majority"
COPY_PROMPT = "copyPrompt"


def _most_common(values: list[Any]) -> Any:
    counts = Counter(json.dumps(v, sort_keys=True) for v in values)
    best = max(counts.values())
    for v in values:  # first seen among the most common
        if counts[json.dumps(v, sort_keys=True)] == best:
            return v
    return None


def majority_answer(train_answers: list[str], schema: dict[str, Any] | None = None) -> str | None:
    """The majority baseline's one answer, or None without train answers."""
    if not train_answers:
        return None
    parsed = [em.parse_json(a) for a in train_answers]
    objects = [v for ok, v in parsed if ok and isinstance(v, dict)]
    # With a jsonSchema the task's answers are the JSON objects; other train answers (general
    # rehearsal records mixed in to limit forgetting) are not answers to the task and are left out.
    if objects and (schema is not None or len(objects) == len(train_answers)):
        fields = em.schema_fields(schema, objects)
        return json.dumps({f: _most_common([o[f] for o in objects if f in o]) for f in fields if any(f in o for o in objects)})
    return _most_common([em.normalize(a) for a in train_answers])


def baseline_predictions(
    train_answers: list[str], prompts: list[str], references: list[str], schema: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """reference name → one prediction per test item."""
    out: dict[str, list[str]] = {}
    answer = majority_answer(train_answers, schema)
    if answer is not None:
        out[MAJORITY] = [answer] * len(references)
    structured = bool(references) and all(em.parse_json(r)[0] for r in references)
    if not structured and schema is None and prompts:
        out[COPY_PROMPT] = list(prompts)
    return out
