"""The evaluate stage: base vs tuned on the held-out test split and the forgetting set, then the gates.

    python -m tuneloop_trainer evaluate --spec FILE --workdir DIR

Reads DIR/data/test.jsonl (prepare) and DIR/artifact (train); writes DIR/eval.json with the
EvaluationRecord (the ModelVersion's `spec.evaluation`), both models' scores and generation
performance, per-example predictions and the qualitative samples the report shows. Returns the
compact summary the runner writes to the termination log. Metric libraries are used directly
(rouge-score, sacrebleu, jsonschema) — nothing is fetched from a hub.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tuneloop.api.evaluation import METRICS, EvaluationRecord, MetricName, Verdict
from tuneloop.contract import layout

from ..errors import ConfigError
from ..evaluation import analysis as eval_analysis
from ..evaluation import metrics as eval_metrics
from ..evaluation.compare import CONFIDENCE_LEVEL, METHOD
from ..evaluation.inputs import load_train_answers

FORGETTING_MAX_NEW_TOKENS = 48


def extra_rows() -> list[str]:
    """Rows of the record after the selected metrics, in registry order, when measured: the registered
    metrics nobody selects (allFieldsExact, latency, throughput, …)."""
    return [i.name for i in METRICS.values() if not i.selectable]


def _progress(ctx: Any, phase: str, done: int, total: int) -> None:
    if ctx.on_progress:
        ctx.on_progress({"stage": "evaluate", "phase": phase, "done": done, "total": total})


def wanted_metrics(ev: Any) -> list[str]:
    """Metrics to compute: those asked for, those the gates read, schema metrics when a schema is given."""
    names = {m if isinstance(m, str) else m.value for m in ev.metrics}
    names |= {g.metric if isinstance(g.metric, str) else g.metric.value for g in ev.gates}
    if ev.json_schema is not None:
        names |= {MetricName.SCHEMA_COMPLIANCE.value, MetricName.FIELD_ACCURACY.value}
    if ev.forgetting.enabled:
        names.add(MetricName.FORGETTING_ACCURACY.value)
    return [m.value for m in MetricName if m.value in names]


def _check_schema(schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    import jsonschema

    try:
        eval_metrics.schema_validator(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"evaluation.jsonSchema is not a valid JSON Schema: {exc.message}") from None


def _evaluate_model(
    ctx: Any,
    label: str,
    loader: Callable[[], tuple[Any, Any]],
    records: list[dict[str, Any]],
    forgetting: list[dict[str, Any]] | None,
    *,
    task: bool,
    nll: bool,
) -> dict[str, Any]:
    """Generate and score what this model needs; the model is freed before returning."""
    from ..evaluation.generate import chat_prompt, generate, reference_nll, reference_pair

    ev = ctx.spec.evaluation
    seed = ctx.spec.hyperparameters.seed
    t0 = time.perf_counter()
    model, tok = loader()
    out: dict[str, Any] = {"loadSeconds": round(time.perf_counter() - t0, 2)}
    # One tiny untimed call first, so one-off costs (lazy init, allocator warm-up) don't land in the first model's latency.
    generate(model, tok, [chat_prompt(tok, [{"role": "user", "content": "hi"}])], batch_size=1, max_new_tokens=2)
    chat = [r for r in records if "messages" in r]
    if task and chat:
        prompts = [chat_prompt(tok, r["messages"][:-1]) for r in chat]
        gen = generate(
            model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, decoding=ev.decoding, seed=seed,
            on_batch=lambda d, n: _progress(ctx, f"{label}: test set", d, n),
        )
        out["predictions"] = gen.texts
        out["generation"] = gen.stats()
        out["batchSeconds"] = [round(x, 4) for x in gen.batch_seconds]
    if nll:
        pairs = [reference_pair(tok, r) for r in records]
        _progress(ctx, f"{label}: perplexity", 0, 1)
        per_item: list[tuple[float, int]] = []
        out["nll"] = reference_nll(model, tok, pairs, batch_size=ev.batch_size, per_item=per_item)
        out["nllItems"] = per_item
        _progress(ctx, f"{label}: perplexity", 1, 1)
    if forgetting:
        prompts = [chat_prompt(tok, [{"role": "user", "content": f["prompt"]}]) for f in forgetting]
        fgen = generate(
            model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=min(ev.max_new_tokens, FORGETTING_MAX_NEW_TOKENS),
            decoding=ev.decoding, seed=seed, on_batch=lambda d, n: _progress(ctx, f"{label}: forgetting set", d, n),
        )
        out["forgetting"] = fgen.texts
    if task and ev.sample_prompts:
        prompts = [chat_prompt(tok, [*_system(chat), {"role": "user", "content": p}]) for p in ev.sample_prompts]
        out["samplePrompts"] = generate(model, tok, prompts, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, decoding=ev.decoding, seed=seed).texts
    out["seconds"] = round(time.perf_counter() - t0, 2)
    del model, tok
    gc.collect()
    return out


def _system(chat: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The test set's system prompt (when its records share one), so sample prompts see the same instructions."""
    first = chat[0]["messages"][0] if chat else None
    if first and first.get("role") == "system" and all(r["messages"][0] == first for r in chat):
        return [first]
    return []


def _scores(result: dict[str, Any] | None, references: list[str], schema: dict | None, forgetting: list[dict] | None) -> dict[str, Any]:
    if not result:
        return {}
    scores: dict[str, Any] = {}
    if "predictions" in result:
        scores = eval_metrics.score_task(result["predictions"], references, schema=schema, nll=result.get("nll"))
    elif "nll" in result:
        scores["perplexity"] = eval_metrics.perplexity(*result["nll"])
    if "details" in scores:
        scores["allFieldsExact"] = scores["details"]["allFieldsExact"]
    if forgetting and "forgetting" in result:
        hits = [eval_metrics.answer_found(g, f["answers"], f.get("caseSensitive", False)) for g, f in zip(result["forgetting"], forgetting)]
        scores["forgettingAccuracy"] = sum(hits) / len(hits)
        scores["forgettingHits"] = hits
    gen = result.get("generation") or {}
    scores["latencySeconds"] = gen.get("latencyMeanSeconds")
    scores["tokensPerSecond"] = gen.get("tokensPerSecond")
    return scores


def _serving_doc(ctx: Any, ev: Any) -> dict[str, Any] | None:
    """The serving ModelVersion's eval.json (evaluation.serving.evalJson), read whole."""
    serving = getattr(ev, "serving", None)
    if serving is None:
        return None
    path = ctx.resolve(serving.eval_json)
    if not path.exists():
        raise ConfigError(f"evaluation.serving.evalJson: {path} does not exist",
                          hint="point it at the eval.json next to the serving ModelVersion's artifact")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"evaluation.serving.evalJson: {path} is not JSON ({exc})") from None


def run(ctx: Any) -> dict[str, Any]:
    from ..evaluation.gates import decide
    from ..evaluation.inputs import load_forgetting_set, load_test_split

    ev = ctx.spec.evaluation
    started = datetime.now(UTC)
    out_path = ctx.workdir / layout.EVAL_FILE
    if not ev.enabled:
        record = EvaluationRecord(verdict=Verdict.NOT_EVALUATED)
        out_path.write_text(json.dumps({"record": record.wire(), "enabled": False, "startedAt": started.isoformat()}, indent=2))
        return {"verdict": Verdict.NOT_EVALUATED.value, "evalJson": str(out_path), "message": "evaluation.enabled is false"}

    _check_schema(ev.json_schema)
    records = load_test_split(ctx.data_dir, ev.max_samples)
    references = [r["messages"][-1]["content"] for r in records if "messages" in r]
    forgetting, forgetting_source = (None, None)
    if ev.forgetting.enabled:
        forgetting, forgetting_source = load_forgetting_set(ctx.resolve(ev.forgetting.path) if ev.forgetting.path else None)
    metrics = wanted_metrics(ev)
    need_nll = MetricName.PERPLEXITY.value in metrics

    from ..modeling import load_base, load_tuned

    results: dict[str, dict[str, Any] | None] = {"base": None, "tuned": None}
    if ev.baseline or forgetting:
        results["base"] = _evaluate_model(ctx, "base", lambda: load_base(ctx), records, forgetting, task=ev.baseline, nll=ev.baseline and need_nll)
    results["tuned"] = _evaluate_model(ctx, "tuned", lambda: load_tuned(ctx), records, forgetting, task=True, nll=need_nll)

    base_scores = _scores(results["base"], references, ev.json_schema, forgetting)
    tuned_scores = _scores(results["tuned"], references, ev.json_schema, forgetting)
    extra = [m for m in extra_rows() if m != "allFieldsExact" or ev.json_schema is not None or "allFieldsExact" in tuned_scores]
    analysis = eval_analysis.analyse(
        records=records, references=references, schema=ev.json_schema, results=results, scores={"base": base_scores, "tuned": tuned_scores},
        forgetting=forgetting, train_answers=load_train_answers(ctx.data_dir) if getattr(ev, "baselines", True) else [],
        serving_doc=_serving_doc(ctx, ev), serving_name=ev.serving.model_version if getattr(ev, "serving", None) else None,
    )
    rows = eval_analysis.metric_rows(metrics + extra, analysis)
    serving = eval_analysis.serving_outcome(rows, analysis, ev.gates)
    record = decide(rows, ev.gates, ev.forgetting if forgetting else None, test_examples=len(records), serving=serving,
                    interval_method=METHOD, confidence_level=CONFIDENCE_LEVEL)

    doc = {
        "record": record.wire(),
        "startedAt": started.isoformat(),
        "finishedAt": datetime.now(UTC).isoformat(),
        "settings": {
            "testExamples": len(records),
            "decoding": ev.decoding,
            "maxNewTokens": ev.max_new_tokens,
            "batchSize": ev.batch_size,
            "metrics": metrics,
            "jsonSchema": ev.json_schema is not None,
            "forgettingSet": forgetting_source,
            "forgettingItems": len(forgetting or []),
        },
        "scores": {
            label: {k: v for k, v in s.items() if k not in ("forgettingHits",)} for label, s in (("base", base_scores), ("tuned", tuned_scores))
        },
        "generation": {label: (r or {}).get("generation") for label, r in results.items()},
        "baselines": analysis.baseline_doc(),
        "itemKeys": analysis.keys,
        "itemScores": analysis.items_doc(),
        "perFieldItems": analysis.per_field_doc(),
        "timingSpread": analysis.timing_spread,
        "seconds": {label: (r or {}).get("seconds") for label, r in results.items()},
        "examples": _examples(records, results),
        "forgetting": _forgetting_rows(forgetting, results, base_scores, tuned_scores),
        "samplePrompts": [
            {"prompt": p, "base": (results["base"] or {}).get("samplePrompts", [None] * len(ev.sample_prompts))[i], "tuned": results["tuned"]["samplePrompts"][i]}
            for i, p in enumerate(ev.sample_prompts)
        ]
        if ev.sample_prompts and "samplePrompts" in results["tuned"]
        else [],
    }
    out_path.write_text(json.dumps(doc, indent=2, default=str))
    return summary(record, out_path)


def _examples(records: list[dict[str, Any]], results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    chat = [r for r in records if "messages" in r]
    base_preds = (results["base"] or {}).get("predictions")
    tuned_preds = (results["tuned"] or {}).get("predictions") or []
    rows = []
    for i, (rec, tuned) in enumerate(zip(chat, tuned_preds)):
        user = [m["content"] for m in rec["messages"][:-1] if m["role"] == "user"]
        rows.append(
            {
                "sourceLine": rec.get("source_line"),
                "prompt": user[-1] if user else "",
                "reference": rec["messages"][-1]["content"],
                "base": base_preds[i] if base_preds else None,
                "tuned": tuned,
                "exactMatch": {"base": eval_metrics.exact_match(base_preds[i], rec["messages"][-1]["content"]) if base_preds else None,
                               "tuned": eval_metrics.exact_match(tuned, rec["messages"][-1]["content"])},
            }
        )
    return rows


def _forgetting_rows(forgetting, results, base_scores, tuned_scores) -> list[dict[str, Any]]:
    if not forgetting:
        return []
    rows = []
    for i, item in enumerate(forgetting):
        rows.append(
            {
                "id": item["id"],
                "prompt": item["prompt"],
                "answers": item["answers"],
                "base": (results["base"] or {}).get("forgetting", [None] * len(forgetting))[i],
                "tuned": (results["tuned"] or {}).get("forgetting", [None] * len(forgetting))[i],
                "baseCorrect": (base_scores.get("forgettingHits") or [None] * len(forgetting))[i],
                "tunedCorrect": (tuned_scores.get("forgettingHits") or [None] * len(forgetting))[i],
            }
        )
    return rows


def summary(record: EvaluationRecord, path: Any) -> dict[str, Any]:
    """The compact summary for the termination log: verdict, tuned/base per metric, failed gates."""
    return {
        "verdict": record.verdict if isinstance(record.verdict, str) else record.verdict.value,
        "testExamples": record.test_examples,
        "metrics": {m.name: _summary_row(m) for m in record.metrics},
        "gates": {"passed": sum(g.passed for g in record.gates), "total": len(record.gates)},
        "failedGates": [g.reason for g in record.gates if not g.passed],
        "evalJson": str(path),
    }


def _summary_row(m: Any) -> dict[str, Any]:
    """base, tuned, the majority baseline, the serving version (champion) and the tuned score's 95 % interval, when measured."""
    row: dict[str, Any] = {"base": m.base, "tuned": m.tuned}
    for ref in ("majority", "serving"):
        found = next((r for r in m.references or [] if r.reference == ref), None)
        if found is not None and found.value is not None:
            row[ref] = found.value
    if m.tuned_interval is not None:
        row["tunedInterval"] = [m.tuned_interval.low, m.tuned_interval.high]
    return row
