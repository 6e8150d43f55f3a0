"""Numbers → sentences: formatting, training-curve facts, strengths/weaknesses, next steps. Pure."""

from __future__ import annotations

import math
import os
from typing import Any

from tuneloop.api.evaluation import metric_info

# Label, direction, fraction and unit of every metric: the registry (tuneloop.api.evaluation.METRICS).


def is_fraction(name: str) -> bool:
    return metric_info(name).fraction


def label(name: str) -> str:
    return metric_info(name).label


def fmt(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    info = metric_info(name)
    if info.fraction:
        return f"{100 * v:.1f}%"
    if info.unit:
        return f"{v:.{info.decimals}f} {info.unit}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def gain(name: str, base: float | None, tuned: float | None) -> float | None:
    """Improvement in the metric's good direction (positive = better)."""
    if base is None or tuned is None:
        return None
    return base - tuned if metric_info(name).lower_is_better else tuned - base


def fmt_change(name: str, base: float | None, tuned: float | None) -> str:
    g = gain(name, base, tuned)
    if g is None or base is None or tuned is None:  # gain is None exactly when either is
        return "n/a"
    word = "better" if g > 1e-12 else "worse" if g < -1e-12 else "unchanged"
    if is_fraction(name):
        return f"{100 * (tuned - base):+.1f} pp ({word})"
    rel = f", {100 * (tuned - base) / abs(base):+.0f}%" if base else ""
    return f"{tuned - base:+.3g}{rel} ({word})"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m} min {s} s" if h else f"{m} min {s} s" if m else f"{s} s"


def curve_facts(progress: list[dict[str, Any]]) -> dict[str, Any]:
    """Start/end/min of train and validation loss, and whether validation loss turned up at the end."""
    train = [(r["step"], r["loss"]) for r in progress if isinstance(r.get("loss"), (int, float))]
    from .inputs import validation_points

    val = validation_points(progress)
    facts: dict[str, Any] = {"train_points": len(train), "val_points": len(val)}
    if train:
        head = [v for _, v in train[: max(1, len(train) // 10)]]
        tail = [v for _, v in train[-max(1, len(train) // 10) :]]
        facts.update(train_start=sum(head) / len(head), train_end=sum(tail) / len(tail), last_step=train[-1][0],
                     first_loss=train[0][1], last_loss=train[-1][1])
        facts["nan"] = any(not math.isfinite(v) for _, v in train)
    if val:
        best = min(val, key=lambda sv: sv[1])
        facts.update(val_start=val[0][1], val_end=val[-1][1], val_best=best[1], val_best_step=best[0])
        facts["val_rising"] = len(val) >= 3 and val[-1][1] > best[1] * 1.02 and best[0] != val[-1][0]
    totals = [r.get("total_steps") for r in progress if r.get("total_steps")]
    if totals:
        facts["total_steps"] = totals[-1]
    tps = [r["tokens_per_second"] for r in progress if isinstance(r.get("tokens_per_second"), (int, float)) and r["tokens_per_second"] > 0]
    if tps:
        facts["tokens_per_second"] = sum(tps) / len(tps)
    return facts


def challenges(run: Any, facts: dict[str, Any], scores: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings met along the way, from the data report, the trainer, the curve and the generations."""
    out: list[str] = []
    dr = run.data_report
    for rule, n in (dr.get("rejected_by_rule") or {}).items():
        out.append(f"Data preparation rejected {n} record(s) by rule `{rule}` (listed in data/data_report.json).")
    for w in (run.results.get("train") or {}).get("warnings") or []:
        out.append(f"Trainer warning: {w}")
    if facts.get("nan"):
        out.append("Training loss became NaN/inf at some step.")
    if facts.get("val_rising"):
        out.append(f"Validation loss rose after step {facts['val_best_step']} (best {facts['val_best']:.3f}, last {facts['val_end']:.3f}): overfitting.")
    total, last = facts.get("total_steps"), facts.get("last_step")
    if total and last and last < total:
        out.append(f"Training stopped at step {last} of {total} (early stopping or interruption).")
    for model in ("base", "tuned"):
        empty = (scores.get(model) or {}).get("emptyGenerations")
        if empty:
            out.append(f"The {model} model produced {empty} empty generation(s) (scored as wrong).")
    loads = [e.get("loadAverage") for e in (getattr(run, "local_run", None) or {}).get("stages") or [] if isinstance(e.get("loadAverage"), (int, float))]
    cpus = os.cpu_count() or 1
    if loads and max(loads) > cpus:
        out.append(f"The machine was loaded: load average up to {max(loads):.1f} on {cpus} CPUs while the stages ran, so every wall "
                   "time (and tokens/s, latency) here is pessimistic; compare timings only between runs on an idle machine.")
    for m in run.missing:
        out.append(f"`{m}` was not found in the work directory; the sections depending on it say so.")
    return out


def strengths_weaknesses(
    rows: list[dict[str, Any]],
    per_field: dict[str, dict[str, float]],
    forgetting: list[dict[str, Any]],
    generation: dict[str, Any] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    strengths: list[str] = []
    weaknesses: list[str] = []
    unexpected: list[str] = []
    quality = [r for r in rows if r["name"] not in ("latencySeconds", "tokensPerSecond")]
    ranked = sorted((r for r in quality if gain(r["name"], r.get("base"), r.get("tuned")) is not None), key=lambda r: -(gain(r["name"], r["base"], r["tuned"]) or 0))
    for r in ranked:
        g = gain(r["name"], r["base"], r["tuned"])
        if g and g > 0 and is_fraction(r["name"]) and len(strengths) < 3:
            strengths.append(f"{label(r['name'])} rose from {fmt(r['name'], r['base'])} to {fmt(r['name'], r['tuned'])}.")
        elif r["name"] == "perplexity" and g and g > 0:
            strengths.append(f"Perplexity on the reference answers fell from {fmt('perplexity', r['base'])} to {fmt('perplexity', r['tuned'])}: the tuned model finds the expected answers far more likely.")
    tuned_fields = {f: v["tuned"] for f, v in per_field.items() if v.get("tuned") is not None}
    good = [f for f, v in tuned_fields.items() if v >= 0.95]
    if good:
        strengths.append(f"Near-perfect fields (≥ 95%): {', '.join(f'`{f}`' for f in good)}.")
    weak = sorted(((f, v) for f, v in tuned_fields.items() if v < 0.9), key=lambda fv: fv[1])
    if weak:
        weaknesses.append("Weakest fields: " + ", ".join(f"`{f}` {100 * v:.0f}%" for f, v in weak[:3]) + ".")
    for r in quality:
        g = gain(r["name"], r.get("base"), r.get("tuned"))
        if g is not None and g < -1e-9:
            msg = f"{label(r['name'])} got worse: {fmt(r['name'], r['base'])} → {fmt(r['name'], r['tuned'])}."
            (unexpected if r["name"] != "forgettingAccuracy" else weaknesses).append(msg)
        if is_fraction(r["name"]) and r.get("tuned") is not None and r["tuned"] < 0.5 and r["name"] != "forgettingAccuracy":
            weaknesses.append(f"{label(r['name'])} is still low at {fmt(r['name'], r['tuned'])}.")
    lost = [f["id"] for f in forgetting if f.get("baseCorrect") and f.get("tunedCorrect") is False]
    won = [f["id"] for f in forgetting if f.get("baseCorrect") is False and f.get("tunedCorrect")]
    if lost:
        weaknesses.append(f"Forgetting set: {len(lost)} item(s) the base answered and the tuned model no longer does ({', '.join(lost[:6])}).")
    if won:
        unexpected.append(f"Forgetting set: the tuned model newly answers {len(won)} item(s) the base missed ({', '.join(won[:6])}).")
    by = {r["name"]: r for r in rows}
    tps = by.get("tokensPerSecond")
    tps_outcome = next((s.get("outcome") for s in (tps or {}).get("references") or [] if s.get("reference") == "base"), "Worse")
    # Timings swing with machine load: only a drop beyond the per-batch noise is mentioned.
    if tps and tps.get("base") and tps.get("tuned") and tps["tuned"] < 0.8 * tps["base"] and tps_outcome == "Worse":
        unexpected.append(f"Generation throughput dropped {fmt('tokensPerSecond', tps['base'])} → {fmt('tokensPerSecond', tps['tuned'])} (an unmerged adapter adds work per token; merging removes it).")
    per_prompt = {}
    for model in ("base", "tuned"):
        gen = (generation or {}).get(model) or {}
        if gen.get("prompts"):
            per_prompt[model] = gen["generatedTokens"] / gen["prompts"]
    if len(per_prompt) == 2 and per_prompt["tuned"] < 0.7 * per_prompt["base"]:
        unexpected.append(f"The tuned model's answers are shorter: {per_prompt['base']:.0f} → {per_prompt['tuned']:.0f} generated tokens per prompt "
                          "(it stops after the answer instead of running on), so its batches finish sooner.")
    return strengths or ["No metric improved over the base model."], weaknesses or ["None found in the measured metrics."], unexpected or ["None observed."]


def next_steps(record: dict[str, Any], facts: dict[str, Any], per_field: dict[str, dict[str, float]], test_examples: int | None) -> list[str]:
    steps = []
    for g in record.get("gates", []):
        if not g.get("passed"):
            steps.append(f"Fix the failing gate — {g['reason']}.")
    weak = sorted(((f, v["tuned"]) for f, v in per_field.items() if v.get("tuned") is not None and v["tuned"] < 0.9), key=lambda fv: fv[1])
    if weak:
        steps.append(f"Add training examples that exercise `{weak[0][0]}` (tuned accuracy {100 * weak[0][1]:.0f}%), or make its cue more explicit in the data.")
    if facts.get("val_points", 0) >= 2 and not facts.get("val_rising") and facts.get("val_end", 0) < facts.get("val_start", 0) * 0.98:
        steps.append("Validation loss was still falling at the end: train longer (more steps or epochs) and compare.")
    if facts.get("val_rising"):
        steps.append(f"Stop near step {facts['val_best_step']} (set hyperparameters.earlyStopping) or lower the learning rate.")
    forg = next((r for r in record.get("metrics", []) if r["name"] == "forgettingAccuracy"), None)
    if forg and forg.get("delta") is not None and forg["delta"] < 0:
        steps.append("Reduce forgetting: lower the learning rate or LoRA rank, or mix some general instruction data into the training set.")
    if test_examples is not None and test_examples < 200:
        steps.append(f"Grow the test set beyond {test_examples} examples so a 1-point change is measurable (each example is {100 / max(test_examples, 1):.1f} pp now).")
    all_right = next((r for r in record.get("metrics", []) if r["name"] == "allFieldsExact"), None)
    if record.get("verdict") == "Passed" and not (all_right and all_right.get("tuned") is not None and all_right["tuned"] < 0.5):
        steps.append("Roll it out behind a canary: apply modelversion.yaml and a Rollout that references it.")
    return steps
