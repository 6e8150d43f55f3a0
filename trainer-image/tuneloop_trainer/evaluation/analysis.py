"""The evaluate stage's analysis: model outputs → per-item scores of tuned, base, the trivial baselines and
the serving version → MetricComparison rows with intervals. Pure: no model, no file I/O (the caller reads
the serving version's eval.json and passes it in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.evaluation import Gate, MetricComparison, ServingComparison

from . import compare as eval_compare
from . import items as eval_items
from . import metrics as eval_metrics
from .baselines import baseline_predictions
from .stats import ItemScores, spread


@dataclass
class Analysis:
    keys: list[str]
    scores: dict[str, dict[str, Any]]  # model → metric → value
    items: dict[str, dict[str, ItemScores]]  # model → metric → per-item scores
    baselines: dict[str, list[str]] = field(default_factory=dict)
    per_field: dict[str, dict[str, list[int | None]]] = field(default_factory=dict)  # model → field → per-item hit
    timing_spread: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    serving_name: str | None = None
    serving_problem: str | None = None
    legacy_keys: list[str] = field(default_factory=list)  # last user message + reference (eval.json before multi-turn keys)

    def items_doc(self) -> dict[str, Any]:
        return {model: eval_items.wire(items) for model, items in self.items.items()}

    def per_field_doc(self) -> dict[str, Any]:
        return self.per_field

    def baseline_doc(self) -> dict[str, Any]:
        return {name: {"answer": preds[0] if preds and len(set(preds)) == 1 else None,
                       "scores": {k: v for k, v in (self.scores.get(name) or {}).items() if k != "details"}}
                for name, preds in self.baselines.items()}


def _prompt(rec: dict[str, Any]) -> str:
    user = [m["content"] for m in rec.get("messages", [])[:-1] if m.get("role") == "user"]
    return user[-1] if user else ""


def analyse(
    *, records: list[dict[str, Any]], references: list[str], schema: dict[str, Any] | None,
    results: dict[str, dict[str, Any] | None], scores: dict[str, dict[str, Any]], forgetting: list[dict[str, Any]] | None,
    train_answers: list[str], serving_doc: dict[str, Any] | None = None, serving_name: str | None = None,
) -> Analysis:
    chat = [r for r in records if "messages" in r]
    prompts = [_prompt(r) for r in chat]
    # one key per test record (chat and text), in the order of the per-record scores (nllItems)
    keys = [eval_items.record_key(r) for r in records]
    a = Analysis(keys=keys, scores={k: dict(v) for k, v in scores.items() if v}, items={}, serving_name=serving_name,
                 legacy_keys=[eval_items.item_key(p, r) for p, r in zip(prompts, references)] if len(chat) == len(records) else [])
    for model in ("base", "tuned"):
        res = results.get(model) or {}
        preds = res.get("predictions")
        its: dict[str, ItemScores] = {}
        if preds is not None and len(preds) == len(references):
            its = eval_items.task_items(preds, references, schema, res.get("nllItems"))
            a.per_field[model] = eval_items.field_hits(preds, references, schema) if "fieldAccuracy" in its else {}
        elif res.get("nllItems") and len(res["nllItems"]) == len(keys):
            its = {"perplexity": ItemScores.of([n for n, _ in res["nllItems"]], [c for _, c in res["nllItems"]], transform="exp")}
        hits = (scores.get(model) or {}).get("forgettingHits")
        if hits:
            its["forgettingAccuracy"] = ItemScores.of(hits)
        if its:
            a.items[model] = its
        if res.get("batchSeconds"):
            a.timing_spread[model] = spread(res["batchSeconds"])
    a.baselines = baseline_predictions(train_answers, prompts, references, schema) if references else {}
    for name, preds in a.baselines.items():
        a.scores[name] = eval_metrics.score_task(preds, references, schema=schema)
        a.items[name] = eval_items.task_items(preds, references, schema)
        if "fieldAccuracy" in a.items[name]:
            a.per_field[name] = eval_items.field_hits(preds, references, schema)
    if serving_doc is not None:
        _add_serving(a, serving_doc, references, schema, forgetting)
    return a


def _add_serving(a: Analysis, doc: dict[str, Any], references: list[str], schema: dict[str, Any] | None,
                 forgetting: list[dict[str, Any]] | None) -> None:
    """The serving version's tuned outputs on the same items, re-scored with this run's scorers, paired by item key
    (the k-th occurrence of a key with the k-th). Text items have no outputs to score: only their stored per-item
    perplexity is paired."""
    examples = doc.get("examples") or []
    their_keys = doc.get("itemKeys") or [eval_items.item_key(e.get("prompt", ""), e.get("reference", "")) for e in examples]
    index = eval_items.pair_index(their_keys)
    ours = eval_items.occurrences(a.keys)
    missing = [k for k in ours if k not in index]
    if missing and a.legacy_keys and len(set(a.legacy_keys)) == len(a.legacy_keys) == len(set(their_keys)) == len(their_keys):
        # a serving version evaluated before multi-turn items were keyed by their turns: pair by the old keys when they
        # are unambiguous on both sides (otherwise two items sharing their last user message could be swapped)
        legacy = eval_items.occurrences(a.legacy_keys)
        if all(k in index for k in legacy):
            ours, missing = legacy, []
    stored = eval_items.unwire(((doc.get("itemScores") or {}).get("tuned")) or {})
    has_nll = "perplexity" in stored and len(stored["perplexity"]) == len(their_keys)
    if missing or not a.keys or (references and len(examples) != len(their_keys)) or (not references and not has_nll):
        what = "test items" if references else "text items with a per-item perplexity"
        scored = 0 if (not references and not has_nll) else len(ours) - len(missing)
        a.serving_problem = (f"the serving version's eval.json scored {scored} of this run's {len(ours)} {what}; "
                             "champion/challenger needs the same test set")
        return
    scores: dict[str, Any] = {}
    items: dict[str, ItemScores] = {}
    if references:
        preds = [examples[index[k]].get("tuned") or "" for k in ours]
        scores = eval_metrics.score_task(preds, references, schema=schema)
        items = eval_items.task_items(preds, references, schema)
    if has_nll:
        p = stored["perplexity"]
        items["perplexity"] = ItemScores.of([p.num[index[k]] for k in ours], [p.den[index[k]] for k in ours], "exp")
        scores["perplexity"] = items["perplexity"].value()
    their_forgetting = {f.get("id"): f.get("tunedCorrect") for f in doc.get("forgetting") or []}
    if forgetting and all(their_forgetting.get(f["id"]) is not None for f in forgetting):
        hits = [bool(their_forgetting[f["id"]]) for f in forgetting]
        items["forgettingAccuracy"] = ItemScores.of(hits)
        scores["forgettingAccuracy"] = sum(hits) / len(hits)
    a.scores["serving"] = scores
    a.items["serving"] = items


def metric_rows(names: list[str], a: Analysis) -> list[MetricComparison]:
    return eval_compare.rows(names, a.scores, a.items, a.timing_spread)


def serving_outcome(rows: list[MetricComparison], a: Analysis, gates: list[Gate]) -> ServingComparison | None:
    if a.serving_name is None and "serving" not in a.scores and a.serving_problem is None:
        return None
    gated = next((g.metric if isinstance(g.metric, str) else g.metric.value for g in gates
                  if str(getattr(g.reference, "value", g.reference)) == "serving"), None)
    return eval_compare.serving_comparison(rows, a.serving_name, gated, a.serving_problem)
