"""Evaluation numbers with their uncertainty → the report's tables and conclusions. Pure.

Everything said about the model here follows from the record: the verdict, the trivial baselines
(majority, copyPrompt), the serving version and the 95 % intervals. A model that does not beat the
majority baseline is called that, whatever the gates against the base model said.
"""

from __future__ import annotations

from typing import Any

from tuneloop.api.evaluation import metric_info

from ..evaluation.stats import wilson
from .analysis import fmt, label

REFERENCE_LABELS = {"base": "Base", "majority": "Majority baseline", "copyPrompt": "Copy the prompt", "serving": "Serving version"}
TIMINGS = ("latencySeconds", "tokensPerSecond")
JUDGED_ON = ("fieldAccuracy", "exactMatch", "rougeL", "allFieldsExact")


def ref(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = next((s for s in row.get("references") or [] if s.get("reference") == name), None)
    if found is None and name == "base" and row.get("base") is not None:
        found = {"reference": "base", "value": row["base"], "difference": row.get("delta")}
    return found


def fmt_interval(name: str, iv: dict[str, float] | None) -> str:
    if not iv:
        return ""
    if metric_info(name).fraction:
        return f" [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"
    return f" [{iv['low']:.3g}, {iv['high']:.3g}]"


def fmt_difference(name: str, s: dict[str, Any] | None) -> str:
    """tuned − reference with its paired 95 % interval and the outcome word (timings: 'within noise' unless beyond it)."""
    if not s or s.get("difference") is None:
        return "n/a"
    d, iv, out = s["difference"], s.get("differenceInterval"), s.get("outcome")
    word = {"Better": "better", "Worse": "worse", "NoSignificantDifference": "no significant difference"}.get(out or "", "no interval: significance unknown")
    if name in TIMINGS:
        word = {"Better": "better, beyond noise", "Worse": "worse, beyond noise"}.get(out or "", "within noise")
    if metric_info(name).fraction:
        text = f"{100 * d:+.1f} pp" + (f" [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]" if iv else "")
    else:
        text = f"{d:+.3g}" + (f" [{iv['low']:+.3g}, {iv['high']:+.3g}]" if iv else "")
    return f"{text} ({word}{_test_text(s)})" if word else text


TEST_LABELS = {"McNemarExact": "McNemar exact", "PairedSignFlip": "paired sign-flip"}


def _test_text(s: dict[str, Any]) -> str:
    """', <the test that decided> p=…' (older records: McNemar's p, which did not decide)."""
    test, p = s.get("test"), s.get("pValue")
    if test:
        return f", {TEST_LABELS.get(test, test)} p={p:.3g}" if p is not None else f", {TEST_LABELS.get(test, test)}: a score is not finite"
    p = s.get("mcnemarPValue")
    return f", McNemar p={p:.3g}" if p is not None else ""


def references_present(rows: list[dict[str, Any]]) -> list[str]:
    present = []
    for name in REFERENCE_LABELS:
        if any(ref(r, name) for r in rows):
            present.append(name)
    return present


def _spread(s: dict[str, Any] | None) -> str:
    """Per-batch wall time of one model: mean ± sd, min–max, batches."""
    if not s:
        return ""
    return f" (batches {s['mean']:.2f} ± {s['sd']:.2f} s, {s['min']:.2f}–{s['max']:.2f} s, n={s['n']})"


def quantitative_table(rows: list[dict[str, Any]], confidence: float | None, spreads: dict[str, Any] | None = None) -> list[str]:
    refs = references_present(rows)
    level = f"{round(100 * (confidence or 0.95))} %"
    head = ["Metric", *(REFERENCE_LABELS[r] for r in refs), f"Tuned ({level} CI)", *(f"Tuned − {REFERENCE_LABELS[r].lower()}" for r in refs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        n = r["name"]
        cells = [f"{label(n)} (`{n}`)"]
        timing = n == "latencySeconds" and spreads
        for x in refs:
            s = ref(r, x)
            cells.append(fmt(n, s.get("value")) + fmt_interval(n, s.get("interval")) + (_spread((spreads or {}).get(x)) if timing else "") if s else "—")
        cells.append(fmt(n, r.get("tuned")) + fmt_interval(n, r.get("tunedInterval")) + (_spread((spreads or {}).get("tuned")) if timing else ""))
        cells += [fmt_difference(n, ref(r, x)) if ref(r, x) else "—" for x in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_field_table(per_field_items: dict[str, dict[str, list[int | None]]]) -> list[str]:
    """Per-field accuracy of every model that has it, with Wilson 95 % intervals."""
    models = [m for m in ("base", "majority", "serving", "tuned") if per_field_items.get(m)]
    if "tuned" not in models:
        return []
    fields = list(per_field_items["tuned"])
    head = ["Field", *(REFERENCE_LABELS.get(m, "Tuned") for m in models)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for f in fields:
        cells = [f"`{f}`"]
        for m in models:
            hits = [h for h in per_field_items[m].get(f, []) if h is not None]
            iv = wilson(sum(hits), len(hits))
            cells.append(f"{100 * sum(hits) / len(hits):.1f}% [{100 * iv.low:.0f}, {100 * iv.high:.0f}]" if hits and iv else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def judged_metric(record: dict[str, Any], reference: str = "majority") -> dict[str, Any] | None:
    """The quality metric the model is judged on against `reference`: the first gated one, else fieldAccuracy,
    exactMatch, rougeL, allFieldsExact (the first the reference was scored on)."""
    rows = {r["name"]: r for r in record.get("metrics", [])}
    gated = [g["metric"] for g in record.get("gates", []) if g.get("reference") == reference]
    for name in [*gated, *JUDGED_ON]:
        if name in rows and ref(rows[name], reference):
            return rows[name]
    return None


def trivial_baseline_finding(record: dict[str, Any], ev: dict[str, Any]) -> tuple[str | None, str | None]:
    """('beats'|'not better'|'worse', sentence) against the majority baseline, or (None, None) when none was scored."""
    row = judged_metric(record, "majority")
    if row is None:
        return None, None
    s = ref(row, "majority")
    if not s:  # (judged_metric returns a row only where it has this reference)
        return None, None
    n = row["name"]
    answer = ((ev.get("baselines") or {}).get("majority") or {}).get("answer")
    what = f"always answering `{answer}`" if answer and len(answer) <= 160 else "always giving the train split's majority answer"
    diff = fmt_difference(n, s)
    if s.get("outcome") == "Better":
        return "beats", (f"It beats the trivial baseline: {label(n)} {fmt(n, row.get('tuned'))} vs {fmt(n, s.get('value'))} for {what} "
                         f"(tuned − majority {diff}).")
    verdict = "worse than" if s.get("outcome") == "Worse" else "not measurably better than"
    return ("worse" if s.get("outcome") == "Worse" else "not better"), (
        f"It is {verdict} the trivial baseline: {label(n)} {fmt(n, row.get('tuned'))} vs {fmt(n, s.get('value'))} for {what} "
        f"(tuned − majority {diff}); the fine-tuning has not yet learned the task beyond its label frequencies.")


def serving_finding(record: dict[str, Any]) -> str | None:
    s = record.get("serving")
    if not s:
        return None
    mv = s.get("modelVersion") or "the serving version"
    return {"Better": f"It beats {mv} (champion/challenger): {s.get('reason')}.",
            "Worse": f"It lost to {mv}, the version it would replace: {s.get('reason')}. A Rollout refuses it.",
            "NoSignificantDifference": f"It is not measurably better than {mv}: {s.get('reason')}.",
            }.get(s.get("outcome"), f"It could not be compared with {mv}: {s.get('reason')}.")


def fields_not_beating_majority(ev: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(field, tuned, majority) for every field where the tuned model is below the majority answer."""
    items = ev.get("perFieldItems") or {}
    tuned, majority = items.get("tuned") or {}, items.get("majority") or {}
    out = []
    for f, hits in tuned.items():
        pairs = [(t, m) for t, m in zip(hits, majority.get(f) or []) if t is not None and m is not None]
        if pairs:
            t, m = sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)
            if t < m:
                out.append((f, t, m))
    return out


def fully_right(record: dict[str, Any]) -> tuple[float, int] | None:
    """(share of answers with every field right, test items) when measured."""
    row = next((r for r in record.get("metrics", []) if r["name"] == "allFieldsExact"), None)
    if row is None or row.get("tuned") is None:
        return None
    return row["tuned"], record.get("testExamples") or 0


def assessment(record: dict[str, Any], ev: dict[str, Any]) -> str:
    verdict = record.get("verdict", "NotEvaluated")
    gates = record.get("gates", [])
    failed = [g for g in gates if not g.get("passed")]
    head = (f"**{verdict}** — all {len(gates)} gate(s) hold." if verdict == "Passed" and gates else
            f"**{verdict}** — {len(failed)} of {len(gates)} gate(s) failed: " + "; ".join(g["reason"] for g in failed) + "."
            if failed else f"**{verdict}**.")
    parts = [head]
    kind, sentence = trivial_baseline_finding(record, ev)
    if sentence:
        parts.append(sentence)
    if kind in ("not better", "worse") and verdict == "Passed":
        parts.append("The gates passed only because they do not compare against the majority baseline; treat it as not yet useful.")
    weak = fields_not_beating_majority(ev)
    if weak:
        parts.append("Per field it is below the majority answer on " + ", ".join(f"`{f}` ({100 * t:.0f}% vs {100 * m:.0f}%)" for f, t, m in weak) + ".")
    full = fully_right(record)
    if full and full[0] < 0.5:
        parts.append(f"Only {round(full[0] * full[1])} of {full[1]} answers have every field right ({100 * full[0]:.0f}%).")
    s = serving_finding(record)
    if s:
        parts.append(s)
    return " ".join(parts)


def practical_use(record: dict[str, Any], ev: dict[str, Any]) -> str:
    verdict = record.get("verdict")
    kind, _ = trivial_baseline_finding(record, ev)
    serving = (record.get("serving") or {}).get("outcome")
    if verdict != "Passed":
        return ("Do not serve it: the ModelVersion records the Failed verdict so a Rollout will refuse it. "
                "Use it to diagnose the data or hyperparameters.")
    if kind in ("not better", "worse"):
        return ("Do not serve it: a rule that always returns the majority answer does as well at no cost. "
                "Add a gate with `reference: majority` and `confidenceBound: true` so the verdict says so.")
    if serving == "Worse":
        return "Do not serve it: it lost to the serving version; a Rollout refuses it."
    full = fully_right(record)
    if full and full[0] < 0.5:
        return (f"Not for unattended use yet: it passed its gates and beats the trivial baseline, but only {100 * full[0]:.0f}% of its "
                "answers have every field right. Serve it (canary Rollout) only as a draft a person confirms, or improve it first "
                "(next steps).")
    if serving == "NoSignificantDifference":
        return ("Serving it is optional: it is not measurably better than the serving version on this test set; "
                "grow the test set or improve the model before a canary.")
    return ("Register it (`kubectl apply -f modelversion.yaml`) and serve it with a canary Rollout; the ModelVersion carries the "
            "metrics, intervals and verdict the Rollout checks.")


def next_steps(record: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    kind, _ = trivial_baseline_finding(record, ev)
    if kind not in ("not better", "worse"):
        return []
    steps = [
        "Beat the majority baseline first: check the training answers are learnable from the prompt (cues present, labels "
        "consistent), train longer or at a higher learning rate, and watch the per-field table — a field stuck at its majority "
        "value has not been learned.",
    ]
    if not any(g.get("reference") == "majority" for g in record.get("gates", [])):
        steps.append("Gate on it: `gates: [{metric: fieldAccuracy, reference: majority, confidenceBound: true, minImprovement: 0.02}]`.")
    return steps
