"""Scoring generations against references: pure functions, no model, no I/O.

Every score is a fraction in [0, 1] (BLEU too: sacrebleu's 0–100 score divided by 100) except
perplexity. An empty or unparsable generation scores 0 wherever it is counted; it is never skipped.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tuneloop.api.evaluation import METRICS

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n```$", re.DOTALL)


def normalize(text: str) -> str:
    """Whitespace collapsed and trimmed; case kept (JSON values are case-sensitive)."""
    return " ".join(text.split())


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the whole generation is one JSON document (surrounding whitespace allowed).

    Strict on purpose: a triage record wrapped in prose is not machine-readable. A Markdown
    ```json fence around the document is tolerated, since clients commonly strip it.
    """
    s = text.strip()
    fenced = _FENCE.match(s)
    if fenced:
        s = fenced.group(1).strip()
    if not s:
        return False, None
    try:
        return True, json.loads(s)
    except (ValueError, RecursionError):
        return False, None


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after whitespace normalization, or equal as parsed JSON (key order and spacing ignored; types
    kept apart as in field accuracy: 1 ≠ true, "1" ≠ 1, but 1 == 1.0)."""
    if normalize(prediction) == normalize(reference):
        return True
    ok_p, p = parse_json(prediction)
    ok_r, r = parse_json(reference)
    return ok_p and ok_r and json_equal(p, r)


def mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def exact_match_rate(predictions: list[str], references: list[str]) -> float | None:
    return mean(1.0 if exact_match(p, r) else 0.0 for p, r in zip(predictions, references, strict=True))


def rouge_l(predictions: list[str], references: list[str]) -> float | None:
    """Mean ROUGE-L F1 (rouge-score, with stemming). An empty prediction scores 0."""
    from rouge_score import rouge_scorer

    if not references:
        return None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return mean(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True))


def bleu(predictions: list[str], references: list[str]) -> float | None:
    """Corpus BLEU (sacrebleu, default 13a tokenization) on a 0–1 scale."""
    import sacrebleu

    if not references:
        return None
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0


def json_validity(predictions: list[str]) -> float | None:
    return mean(1.0 if parse_json(p)[0] else 0.0 for p in predictions)


def schema_validator(schema: dict[str, Any]):
    """A jsonschema validator for the schema's declared draft (2020-12 when undeclared); raises SchemaError."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def schema_compliance(predictions: list[str], schema: dict[str, Any]) -> float | None:
    validator = schema_validator(schema)

    def ok(p: str) -> bool:
        valid, value = parse_json(p)
        return valid and validator.is_valid(value)

    return mean(1.0 if ok(p) else 0.0 for p in predictions)


def schema_fields(schema: dict[str, Any] | None, references: list[Any]) -> list[str]:
    """Top-level fields scored for accuracy: the schema's properties, else the references' keys."""
    if schema and isinstance(schema.get("properties"), dict) and schema["properties"]:
        return list(schema["properties"])
    keys: list[str] = []
    for ref in references:
        if isinstance(ref, dict):
            keys += [k for k in ref if k not in keys]
    return keys


def field_accuracy(predictions: list[str], references: list[str], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-field accuracy over the references that are JSON objects.

    A field counts as right when the prediction is a JSON object holding the same value (type
    included: 1 ≠ "1", true ≠ "true"); a missing field or an unparsable prediction is wrong.
    Returns {"overall", "perField", "allFields" (every field right), "scored" (records counted)}.
    """
    parsed_refs = [parse_json(r) for r in references]
    fields = schema_fields(schema, [v for ok, v in parsed_refs if ok])
    per_field_hits = {f: 0 for f in fields}
    per_field_total = {f: 0 for f in fields}
    all_right = scored = 0
    for pred, (ok_r, ref) in zip(predictions, parsed_refs, strict=True):
        if not ok_r or not isinstance(ref, dict):
            continue
        scored += 1
        ok_p, value = parse_json(pred)
        value = value if ok_p and isinstance(value, dict) else None
        record_right = True
        for f in fields:
            if f not in ref:
                continue
            per_field_total[f] += 1
            hit = value is not None and f in value and _same(value[f], ref[f])
            per_field_hits[f] += hit
            record_right &= hit
        all_right += record_right
    total = sum(per_field_total.values())
    return {
        "overall": sum(per_field_hits.values()) / total if total else None,
        "perField": {f: per_field_hits[f] / per_field_total[f] for f in fields if per_field_total[f]},
        "allFields": all_right / scored if scored else None,
        "scored": scored,
    }


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality with types kept apart at every depth (true ≠ 1, "1" ≠ 1, [true] ≠ [1]) but 1 == 1.0.
    Python's `==` on parsed JSON says True == 1; exact match and field accuracy both use this instead."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


_same = json_equal  # the field-level comparison (items.py reads it under this name)


def perplexity(nll_sum: float, tokens: int) -> float | None:
    """exp(mean negative log-likelihood per reference token)."""
    if tokens <= 0:
        return None
    v = nll_sum / tokens
    if not math.isfinite(v):  # a diverged model: NaN / inf, never capped into a finite perplexity (gates refuse it)
        return math.inf if v == math.inf else math.nan
    return math.exp(min(v, 700.0))


def answer_found(generation: str, answers: list[str], case_sensitive: bool = False) -> bool:
    """Forgetting-set check: one of the accepted answers occurs as a whole word/phrase."""
    flags = 0 if case_sensitive else re.IGNORECASE
    return any(re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", generation, flags) for a in answers if a)


# --- scorers: the functions the metric registry (tuneloop.api.evaluation.METRICS) names ------------------
SKIP = object()  # a scorer's "not applicable here": no value, no row (e.g. schemaCompliance without a schema)


@dataclass
class Task:
    """One model's outputs on the test split: what every scorer reads."""

    predictions: list[str]
    references: list[str]
    schema: dict[str, Any] | None = None
    nll: tuple[float, int] | None = None

    @cached_property
    def refs_are_json(self) -> bool:
        return bool(self.references) and all(parse_json(r)[0] and isinstance(parse_json(r)[1], dict) for r in self.references)

    @cached_property
    def fields(self) -> dict[str, Any] | None:
        """field_accuracy() when there is a schema or the references are JSON objects, else None."""
        if self.schema is None and not self.refs_are_json:
            return None
        return field_accuracy(self.predictions, self.references, self.schema)


def score_exact_match(t: Task) -> float | None:
    return exact_match_rate(t.predictions, t.references)


def score_rouge_l(t: Task) -> float | None:
    return rouge_l(t.predictions, t.references)


def score_bleu(t: Task) -> float | None:
    return bleu(t.predictions, t.references)


def score_json_valid(t: Task) -> float | None:
    return json_validity(t.predictions)


def score_perplexity(t: Task) -> Any:
    return SKIP if t.nll is None else perplexity(*t.nll)


def score_schema_compliance(t: Task) -> Any:
    return SKIP if t.schema is None else schema_compliance(t.predictions, t.schema)


def score_field_accuracy(t: Task) -> Any:
    return SKIP if t.fields is None else t.fields["overall"]


def score_all_fields_exact(t: Task) -> Any:
    return SKIP if t.fields is None else t.fields["allFields"]


def scorers() -> dict[str, Callable[[Task], Any]]:
    """metric name → scorer, for every registered metric that is scored from the task outputs."""
    out = {}
    for info in METRICS.values():
        if info.scorer:
            module, func = info.scorer.split(":")
            out[info.name] = getattr(importlib.import_module(module), func)
    return out


def score_task(
    predictions: list[str],
    references: list[str],
    *,
    schema: dict[str, Any] | None = None,
    nll: tuple[float, int] | None = None,
) -> dict[str, Any]:
    """Every registered task metric for one model (keys: metric names), plus details."""
    task = Task(predictions, references, schema, nll)
    out: dict[str, Any] = {}
    for name, scorer in scorers().items():
        value = scorer(task)
        if value is not SKIP:
            out[name] = value
    if task.fields is not None:
        out["details"] = {"perField": task.fields["perField"], "allFieldsExact": task.fields["allFields"]}
    out["emptyGenerations"] = sum(1 for p in predictions if not p.strip())
    return out
