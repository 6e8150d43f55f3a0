"""Per-item scores of one model's outputs on the test items: the input of every interval. Pure.

Each metric becomes an `ItemScores` (per-item numerator and denominator) whose ratio is exactly the
metric `metrics.score_task` reports — field accuracy is hits over fields, perplexity exp(nll/tokens).
Corpus BLEU is kept as per-item n-gram statistics (summed, they give corpus BLEU exactly).
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import metrics as em
from .stats import ItemScores


def item_key(prompt: str, reference: str) -> str:
    """Identity of a test item across runs (pairs this run's items with the serving version's)."""
    return hashlib.sha256(f"{prompt}\x00{reference}".encode()).hexdigest()[:16]


def record_key(rec: dict[str, Any]) -> str:
    """The item key of one test record. Chat: the last user message and the reference (the answer), as before; when
    the conversation has earlier turns, they are part of the key too, so two multi-turn items that share their last
    user message are different items. Text records (no answer to score): the whole text."""
    if "messages" not in rec:
        return item_key("\x01text", str(rec.get("text", "")))
    msgs = rec["messages"]
    context = [m for m in msgs[:-1] if m.get("role") != "system"]
    users = [m["content"] for m in msgs[:-1] if m.get("role") == "user"]
    reference = msgs[-1]["content"] if msgs else ""
    if len(context) <= 1:
        return item_key(users[-1] if users else "", reference)
    turns = "\x00".join(f"{m.get('role')}:{m.get('content')}" for m in context)
    return item_key(f"\x02turns\x00{turns}", reference)


def pair_index(their_keys: list[str]) -> dict[tuple[str, int], int]:
    """(key, occurrence) → position: the k-th item of a key pairs with the k-th item of the same key on the other side
    (test sets may hold the same item twice)."""
    seen: dict[str, int] = {}
    out: dict[tuple[str, int], int] = {}
    for i, k in enumerate(their_keys):
        n = seen.get(k, 0)
        out[(k, n)] = i
        seen[k] = n + 1
    return out


def occurrences(keys: list[str]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        n = seen.get(k, 0)
        out.append((k, n))
        seen[k] = n + 1
    return out


def task_items(
    predictions: list[str], references: list[str], schema: dict[str, Any] | None = None,
    nll_items: list[tuple[float, int]] | None = None,
) -> dict[str, ItemScores]:
    """metric name → per-item scores for the generation metrics (and perplexity when nll_items is given)."""
    out: dict[str, ItemScores] = {}
    if not references:
        return out
    out["exactMatch"] = ItemScores.of([em.exact_match(p, r) for p, r in zip(predictions, references, strict=True)])
    out["jsonValid"] = ItemScores.of([em.parse_json(p)[0] for p in predictions])
    try:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        out["rougeL"] = ItemScores.of([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)])
    except ImportError:  # pragma: no cover - rouge-score is a trainer dependency
        pass
    bleu = bleu_items(predictions, references)
    if bleu is not None:
        out["bleu"] = bleu
    if schema is not None:
        validator = em.schema_validator(schema)

        def ok(p: str) -> bool:
            valid, value = em.parse_json(p)
            return valid and validator.is_valid(value)

        out["schemaCompliance"] = ItemScores.of([ok(p) for p in predictions])
    task = em.Task(predictions, references, schema)
    if task.fields is not None:
        hits, totals, exact = _field_items(predictions, references, schema)
        out["fieldAccuracy"] = ItemScores.of(hits, totals)
        out["allFieldsExact"] = ItemScores.of(exact, [1.0 if t else 0.0 for t in totals])
    if nll_items is not None and len(nll_items) == len(references):
        out["perplexity"] = ItemScores.of([n for n, _ in nll_items], [c for _, c in nll_items], transform="exp")
    return out


def bleu_items(predictions: list[str], references: list[str]) -> ItemScores | None:
    """Per-item sacrebleu n-gram statistics, so resampled items give corpus BLEU exactly (sacrebleu's default 13a)."""
    try:
        from sacrebleu.metrics import BLEU

        stats = BLEU()._extract_corpus_statistics(list(predictions), [list(references)])
    except (ImportError, AttributeError):  # pragma: no cover - another sacrebleu: BLEU keeps no interval
        return None
    return ItemScores.of_stats(stats, "bleu")


def _field_items(predictions: list[str], references: list[str], schema: dict[str, Any] | None) -> tuple[list[int], list[int], list[int]]:
    """Per item: fields right, fields scored, every field right — as `metrics.field_accuracy` counts them."""
    parsed = [em.parse_json(r) for r in references]
    fields = em.schema_fields(schema, [v for ok, v in parsed if ok])
    hits, totals, exact = [], [], []
    for pred, (ok_r, ref) in zip(predictions, parsed, strict=True):
        if not ok_r or not isinstance(ref, dict):
            hits.append(0)
            totals.append(0)
            exact.append(0)
            continue
        ok_p, value = em.parse_json(pred)
        value = value if ok_p and isinstance(value, dict) else None
        h = t = 0
        for f in fields:
            if f not in ref:
                continue
            t += 1
            h += value is not None and f in value and em._same(value[f], ref[f])
        hits.append(h)
        totals.append(t)
        exact.append(int(h == t))
    return hits, totals, exact


def field_hits(predictions: list[str], references: list[str], schema: dict[str, Any] | None) -> dict[str, list[int | None]]:
    """Per field, per item: 1 right, 0 wrong, None when the reference lacks the field (per-field intervals)."""
    parsed = [em.parse_json(r) for r in references]
    fields = em.schema_fields(schema, [v for ok, v in parsed if ok])
    out: dict[str, list[int | None]] = {f: [] for f in fields}
    for pred, (ok_r, ref) in zip(predictions, parsed, strict=True):
        ok_p, value = em.parse_json(pred)
        value = value if ok_p and isinstance(value, dict) else None
        for f in fields:
            if not ok_r or not isinstance(ref, dict) or f not in ref:
                out[f].append(None)
            else:
                out[f].append(int(value is not None and f in value and em._same(value[f], ref[f])))
    return out


def wire(items: dict[str, ItemScores]) -> dict[str, Any]:
    """JSON form for eval.json (per-item scores are kept, so any interval can be recomputed)."""
    out: dict[str, Any] = {}
    for name, s in items.items():
        if s.stats is not None:
            out[name] = {"stats": [list(r) for r in s.stats], "transform": s.transform}
        else:
            out[name] = {"num": list(s.num), "den": list(s.den), **({"transform": s.transform} if s.transform else {})}
    return out


def unwire(doc: dict[str, Any]) -> dict[str, ItemScores]:
    return {name: ItemScores.of_stats(v["stats"], v.get("transform", "")) if "stats" in v else ItemScores.of(v["num"], v["den"], v.get("transform", ""))
            for name, v in (doc or {}).items()}
