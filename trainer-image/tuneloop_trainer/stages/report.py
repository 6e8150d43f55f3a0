"""The report stage: the experiment report, its figures, and the ModelVersion manifest.

    python -m tuneloop_trainer report --spec FILE --workdir DIR

Writes DIR/report/report.md (every section of the team's experiment template, filled from the
work directory's measurements), DIR/report/loss.png, DIR/report/metrics.png and
DIR/report/modelversion.yaml (a ModelVersion that `kubectl tuneloop validate` accepts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import yaml
from tuneloop.api.evaluation import METRICS, EvaluationRecord
from tuneloop.api.modelversion import ModelVersion
from tuneloop.contract import layout
from tuneloop.contract.lineage import LineageFile

from ..errors import ConfigError
from ..report import verdict as report_verdict
from ..report.analysis import curve_facts, duration, fmt, label, next_steps, strengths_weaknesses
from ..report.sections import dataset, objective, overview, training_parameters, training_process

if TYPE_CHECKING:
    from ..context import StageContext

SAMPLES = 3


def _code(text: str | None) -> list[str]:
    body = (text if text else "(empty generation)").replace("```", "ˋˋˋ")
    return ["  ```", *("  " + line for line in body.splitlines() or [""]), "  ```"]


def _per_field(ev: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in ("base", "tuned"):
        for f, v in (((ev.get("scores") or {}).get(model) or {}).get("details") or {}).get("perField", {}).items():
            out.setdefault(f, {})[model] = v
    return out


def _backend_sentence(backend: dict[str, Any] | None) -> str:
    """Which engine generated the answers, and why (eval.json `backend`); nothing for an eval.json from before it was recorded."""
    if not backend or not backend.get("used"):
        return ""
    if backend["used"] == "vllm":
        return f" Answers generated with vLLM {backend.get('vllmVersion', '')} ({backend.get('reason', '')})."
    return f" Answers generated with transformers ({backend.get('reason', '')})."


def evaluation_section(ev: dict[str, Any], record: dict[str, Any]) -> list[str]:
    rows = record.get("metrics", [])
    settings = ev.get("settings") or {}
    lines = [
        "## Evaluation",
        (
            f"{record.get('testExamples', 'n/a')} held-out test examples, {settings.get('decoding', 'greedy')} decoding, "
            f"at most {settings.get('maxNewTokens', 'n/a')} new tokens, batches of {settings.get('batchSize', 'n/a')}; "
            f"forgetting set: {settings.get('forgettingItems', 0)} items from `{settings.get('forgettingSet') or 'disabled'}`."
            + _backend_sentence(ev.get("backend"))
        ),
        "",
        "### Quantitative Metrics",
        f"Every score with its {round(100 * (record.get('confidenceLevel') or 0.95))} % confidence interval in brackets; "
        "differences are tuned minus the reference on the same test items. "
        + (f"Method: {record['intervalMethod']}. " if record.get("intervalMethod") else "")
        + "Corpus BLEU is resampled from per-item n-gram counts. The majority baseline answers every item with the train split's most common "
        "value per field (or its most common answer).",
        "",
        *report_verdict.quantitative_table(rows, record.get("confidenceLevel"), ev.get("timingSpread")),
    ]
    field_table = report_verdict.per_field_table(ev.get("perFieldItems") or {})
    per_field = _per_field(ev)
    if field_table:
        lines += ["", "Per-field accuracy (95 % Wilson intervals):", "", *field_table]
    elif per_field:
        lines += ["", "Per-field accuracy:", "", "| Field | Base | Tuned |", "|-------|------|-------|"]
        lines += [f"| `{f}` | {fmt('fieldAccuracy', v.get('base'))} | {fmt('fieldAccuracy', v.get('tuned'))} |" for f, v in per_field.items()]
    lines += ["", "Gates:", "", "| Gate | Against | Result | Reason |", "|------|---------|--------|--------|"]
    lines += [f"| `{g['metric']}` | {g.get('reference') or 'base'}{' (95% bound)' if g.get('confidenceBound') else ''} | "
              f"{'✅ passed' if g['passed'] else '❌ failed'} | {g['reason']} |" for g in record.get("gates", [])] or ["| — | — | — | no gates configured |"]
    examples = (ev.get("examples") or [])[:SAMPLES]
    extra = ev.get("samplePrompts") or []
    lines += ["", "### Qualitative Evaluation", "- **Sample Prompts Used for Testing:**"]
    prompts = [e["prompt"] for e in examples] + [s["prompt"] for s in extra]
    lines += [f"  {i}. {p}" for i, p in enumerate(prompts, 1)] or ["  (no chat examples in the test split)"]
    lines.append("")
    lines.append("- **Before Fine-Tuning Sample Responses:**")
    for i, item in enumerate(examples + extra, 1):
        lines += [f"  {i}. base:", *_code(item.get("base") if item.get("base") is not None else "(baseline disabled)")]
    lines.append("")
    lines.append("- **After Fine-Tuning Sample Responses:**")
    for i, item in enumerate(examples + extra, 1):
        lines += [f"  {i}. tuned" + (" (reference below)" if item.get("reference") else "") + ":", *_code(item.get("tuned"))]
        if item.get("reference"):
            lines += ["     reference:", *_code(item["reference"])]
    lines += ["", "### Comparison Analysis", comparison_text(ev, record), ""]
    return lines


def comparison_text(ev: dict[str, Any], record: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in record.get("metrics", [])}
    examples = ev.get("examples") or []
    parts = []
    if examples:
        both = sum(1 for e in examples if e["exactMatch"].get("base") and e["exactMatch"].get("tuned"))
        fixed = sum(1 for e in examples if not e["exactMatch"].get("base") and e["exactMatch"].get("tuned"))
        broke = sum(1 for e in examples if e["exactMatch"].get("base") and not e["exactMatch"].get("tuned"))
        parts.append(f"Of {len(examples)} test prompts, the tuned model answers {fixed} exactly right that the base did not, "
                     f"{both} are right for both, and {broke} regressed from right to wrong.")
    for name in _ranked("comparison"):
        r = rows.get(name)
        if r and r.get("base") is not None and r.get("tuned") is not None:
            parts.append(f"{label(name)}: {fmt(name, r['base'])} → {fmt(name, r['tuned'])} "
                         f"({report_verdict.fmt_difference(name, report_verdict.ref(r, 'base'))}).")
    f = rows.get("forgettingAccuracy")
    if f and f.get("base") is not None:
        parts.append(f"On the general-knowledge set accuracy went {fmt('forgettingAccuracy', f['base'])} → {fmt('forgettingAccuracy', f['tuned'])}.")
    _, trivial = report_verdict.trivial_baseline_finding(record, ev)
    if trivial:
        parts.append(trivial)
    serving = report_verdict.serving_finding(record)
    if serving:
        parts.append(serving)
    return " ".join(parts) or "No comparison possible: the baseline was not evaluated."


def _ranked(attr: str) -> list[str]:
    """Metric names with a `comparison`/`headline` position in the registry, in that order."""
    ranked = [i for i in METRICS.values() if getattr(i, attr) is not None]
    return [i.name for i in sorted(ranked, key=lambda i: getattr(i, attr))]


def conclusions(ctx: StageContext, run: Any, record: dict[str, Any], ev: dict[str, Any] | None = None) -> list[str]:
    ev = ev or {}
    seconds = {s: run.stage_seconds(s) for s in ("prepare", "train", "evaluate")}
    total = sum(v for v in seconds.values() if v)
    world = LineageFile.of(run.lineage).world_size or 1
    gpus = ctx.spec.resources.gpus_per_node
    unit = "GPU-hours" if gpus else "CPU-process-hours"
    compute = (seconds.get("train") or 0) * world / 3600
    rows = {r["name"]: r for r in record.get("metrics", [])}
    candidates = [rows[n] for n in _ranked("headline") if n in rows and rows[n].get("delta") is not None]
    headline = max(candidates, key=lambda r: r["delta"], default=None)
    assessment = report_verdict.assessment(record, ev)
    roi = (f"Training took {duration(seconds.get('train'))} ({compute:.3f} {unit} at world size {world}); the whole pipeline "
           f"(prepare {duration(seconds.get('prepare'))}, train {duration(seconds.get('train'))}, evaluate {duration(seconds.get('evaluate'))}) took {duration(total)}.")
    if headline:
        hb = report_verdict.ref(headline, "base")
        roi += f" For that, {label(headline['name'])} moved {fmt(headline['name'], headline['base'])} → {fmt(headline['name'], headline['tuned'])} ({report_verdict.fmt_difference(headline['name'], hb)})."
    runs = all_runs_cost(getattr(run, "local_run", None) or {})
    if runs and runs["runs"] > 1:
        roi += (f" Producing this artifact took {runs['runs']} runs in this work directory (resumes and re-evaluations included): "
                f"train {duration(runs['train'])}, all stages {duration(runs['total'])} — that, not the last run alone, is its cost.")
    kind, _ = report_verdict.trivial_baseline_finding(record, ev)
    if kind in ("not better", "worse"):
        roi += " The return is nil so far: the majority baseline gets as much for free."
    use = report_verdict.practical_use(record, ev)
    return ["## Conclusions", f"- **Overall Assessment:** {assessment}", f"- **ROI Analysis:** {roi}", f"- **Practical Applications:** {use}", ""]


def all_runs_cost(local_run: dict[str, Any]) -> dict[str, Any] | None:
    """Seconds spent by every run recorded in local-run.json (earlier runs' history plus this one)."""
    if not local_run:
        return None
    # this run counts even before any of its stages is recorded (a rerun that reuses training and evaluation runs
    # only the report, which is being written now)
    runs = [r for r in local_run.get("history") or [] if r.get("stages")] + [{"stages": local_run.get("stages") or []}]
    entries = [e for r in runs for e in r["stages"] if isinstance(e.get("seconds"), (int, float))]
    return {"runs": len(runs), "train": sum(e["seconds"] for e in entries if e.get("stage") == "train"),
            "total": sum(e["seconds"] for e in entries)}


def resources(ctx: StageContext, mv: Any, figures: dict[str, bool]) -> list[str]:
    wd = ctx.workdir
    lines = [
        "## Resources",
        f"- FineTuneJob spec: `{ctx.spec_dir}` (job `{ctx.name}`); training code: the `tuneloop_trainer` package",
        f"- Dataset splits and data report: `{wd / 'data'}` (data_report.txt lists every rejected record)",
        f"- Model: `{mv.spec.artifact.uri}` ({mv.spec.artifact.format}); ModelVersion manifest: `report/modelversion.yaml`",
        f"- Evaluation details (every prediction, forgetting items): `{wd / 'eval.json'}`",
    ]
    lines += [f"- Figure: `{name}`" + ("" if ok else " (not drawn: no data)") for name, ok in figures.items()]
    return lines + [""]


def _exports_doc(ctx: StageContext) -> dict[str, Any] | None:
    """DIR/exports.json (the export stage), or None."""
    import json

    try:
        doc = json.loads((ctx.workdir / layout.EXPORTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _workdir_uri(ctx: StageContext) -> str:
    import os

    return layout.resolve_workdir_uri(ctx.spec, ctx.name, ctx.namespace, ctx.workdir, dict(os.environ))


def run(ctx: StageContext) -> dict[str, Any]:
    from ..report import charts as report_charts
    from ..report import contract as report_contract
    from ..report import exports as report_exports
    from ..report import inputs as report_inputs
    from ..report import modelversion as report_modelversion

    run_rec = report_inputs.load(ctx.workdir)
    ev = run_rec.evaluation
    if not ev and ctx.spec.evaluation.enabled:
        raise ConfigError(f"no evaluation results at {ctx.workdir / 'eval.json'}", hint="run the evaluate stage first")
    record = EvaluationRecord.model_validate(ev.get("record") or {}) if ev else EvaluationRecord()
    rec_wire = record.wire()
    mv_doc = report_modelversion.manifest(ctx, run_rec.lineage, run_rec.data_report, record)
    mv = ModelVersion.model_validate(mv_doc)
    out = ctx.report_dir
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "loss.png": report_charts.loss_plot(run_rec.progress, out / "loss.png", f"{ctx.name}: loss"),
        "metrics.png": report_charts.metrics_plot(rec_wire.get("metrics", []), out / "metrics.png", f"{ctx.name}: tuned vs references (95% CI)"),
    }
    facts = curve_facts(run_rec.progress)
    per_field = _per_field(ev)
    strengths, weaknesses, unexpected = strengths_weaknesses(rec_wire.get("metrics", []), per_field, ev.get("forgetting") or [], ev.get("generation"))
    md = [f"# {ctx.name}: fine-tuning experiment report", "",
          f"Generated by tuneloop on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}. Verdict: **{rec_wire.get('verdict')}**.", ""]
    md += overview(ctx, run_rec, mv) + objective(ctx, rec_wire) + dataset(ctx, run_rec) + training_parameters(ctx, run_rec)
    md += training_process(ctx, run_rec, ev.get("scores") or {})
    if figures["loss.png"]:
        md += ["![training and validation loss](loss.png)", ""]
    md += evaluation_section(ev, rec_wire) if ev else ["## Evaluation", "Evaluation was disabled (`evaluation.enabled: false`).", ""]
    if figures["metrics.png"]:
        md += ["![tuned vs base and trivial baselines, 95% intervals](metrics.png)", ""]
    md += report_contract.section(ev)
    md += report_contract.topic_section(ev)
    exports_doc = _exports_doc(ctx)
    md += report_exports.section(exports_doc)
    md += ["## Observations", "- **Strengths of Fine-Tuned Model:**", *(f"  - {s}" for s in strengths),
           "- **Weaknesses/Limitations:**", *(f"  - {w}" for w in weaknesses),
           "- **Unexpected Behaviors:**", *(f"  - {u}" for u in unexpected), ""]
    md += conclusions(ctx, run_rec, rec_wire, ev)
    steps = report_verdict.next_steps(rec_wire, ev or {}) + next_steps(rec_wire, facts, per_field, rec_wire.get("testExamples"))
    md += ["## Next Steps", *(f"- {s}" for s in steps or ["Nothing pending."]), ""]
    md += resources(ctx, mv, figures)
    report_md, mv_yaml = ctx.workdir / layout.REPORT_FILE, ctx.workdir / layout.MODELVERSION_FILE
    report_md.write_text("\n".join(md))
    mv_yaml.write_text(yaml.safe_dump(mv_doc, sort_keys=False, allow_unicode=True))
    export_mvs = report_exports.manifests(mv_doc, exports_doc, _workdir_uri(ctx))
    for fmt_, doc in export_mvs.items():
        (ctx.workdir / layout.export_modelversion_file(fmt_)).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return {
        "verdict": rec_wire.get("verdict"),
        "report": str(report_md),
        "modelVersion": str(mv_yaml),
        "modelVersionName": mv.metadata.name,
        "exportModelVersions": [str(ctx.workdir / layout.export_modelversion_file(f)) for f in export_mvs],
        "figures": [str(out / n) for n, ok in figures.items() if ok],
        "missingInputs": run_rec.missing,
    }
