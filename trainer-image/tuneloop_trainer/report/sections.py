"""The experiment report's Markdown, section by section, in the order of the team's template."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

from tuneloop.contract.lineage import LineageFile

from .analysis import challenges, curve_facts, duration, label
from .inputs import label_distribution

if TYPE_CHECKING:
    from ..context import StageContext
    from .inputs import RunRecord

PURPOSE_ANNOTATION = "tuneloop.dev/purpose"
OBJECTIVE_ANNOTATION = "tuneloop.dev/objective"


def _annotation(ctx: StageContext, key: str) -> str | None:
    return ((ctx.raw.get("metadata") or {}).get("annotations") or {}).get(key)


def _date(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "n/a (stage results missing)"


def _src(source: Any) -> str:
    if source is None:
        return "—"
    if source.path:
        return f"`{source.path}`"
    if source.pvc:
        return f"`pvc://{source.pvc.claim_name}/{source.pvc.path.lstrip('/')}`"
    return f"`{source.s3.uri}`"


def overview(ctx: StageContext, run: RunRecord, mv: Any) -> list[str]:
    spec = ctx.spec
    purpose = _annotation(ctx, PURPOSE_ANNOTATION) or (
        f"Adapt {spec.base_model.display_name()} to the task in `{ctx.name}`'s dataset with {spec.method.type} fine-tuning, "
        "and decide with measured gates whether the result may replace the base model."
    )
    return [
        "## Experiment Overview",
        f"- **Date Started:** {_date(run.started)}",
        f"- **Date Completed:** {_date(run.finished)}",
        f"- **Base Model:** {spec.base_model.display_name()}" + (f" (revision `{spec.base_model.revision()}`)" if spec.base_model.revision() else ""),
        f"- **Fine-Tuned Model ID:** `{mv.spec.model_name}:{mv.spec.version}` (ModelVersion `{mv.metadata.name}`, artifact `{mv.spec.artifact.uri}`)",
        f"- **FineTuneJob:** `{ctx.namespace}/{ctx.name}`" + (f" (uid `{ctx.uid}`)" if ctx.uid else ""),
        f"- **Purpose:** {purpose}",
        "",
    ]


def objective(ctx: StageContext, record: dict[str, Any]) -> list[str]:
    ev = ctx.spec.evaluation
    lines = ["## Objective"]
    text = _annotation(ctx, OBJECTIVE_ANNOTATION)
    if text:
        lines += [text, ""]
    lines.append("The run succeeds when the tuned model meets every gate below on the held-out test split:")
    for g in ev.gates:
        parts = []
        ref = str(getattr(g.reference, "value", g.reference) or "base")
        against = {"majority": "the majority baseline", "serving": "the serving version (the champion"
                   + (f" `{ev.serving.model_version}`" if ev.serving else "") + ")"}.get(ref, "the base")
        bound = " at the 95 % bound" if g.confidence_bound else ""
        if g.min_improvement is not None:
            parts.append(f"beat {against} by at least {g.min_improvement}{bound}")
        if g.max_regression is not None:
            parts.append(f"lose at most {g.max_regression} against {against}{bound}")
        if g.min_value is not None:
            parts.append(f"reach {g.min_value}")
        lines.append(f"- **{label(str(g.metric))}** (`{g.metric}`): " + ", ".join(parts) + ".")
    if ev.forgetting.enabled:
        lines.append(f"- **No catastrophic forgetting:** accuracy on the general-knowledge set drops by at most {ev.forgetting.max_regression}.")
    if not ev.gates and not ev.forgetting.enabled:
        lines.append("- No gates are configured: the verdict is Passed whenever evaluation completes.")
    if ev.json_schema is not None:
        lines.append("- Answers must be JSON documents that follow the spec's `evaluation.jsonSchema`; every field is scored.")
    return lines + [""]


def dataset(ctx: StageContext, run: RunRecord) -> list[str]:
    ds = ctx.spec.dataset
    dr = run.data_report
    c = dr.get("counts") or {}
    lines = ["## Dataset Information"]
    lineage = LineageFile.of(run.lineage)
    sha = dr.get("dataset_sha256") or (lineage.dataset.sha256 if lineage.dataset else None) or "n/a"
    lines.append(f"- **Source of Data:** train {_src(ds.train)}" + (f", validation {_src(ds.validation)}" if ds.validation else "")
                 + (f", test {_src(ds.test)}" if ds.test else "") + f"; format `{ds.format}`; sha256 `{sha}`")
    if c:
        by = c.get("read_by_source") or {}
        split_read = f" ({', '.join(f'{k} {v}' for k, v in by.items())})" if len(by) > 1 else ""
        lines.append(f"- **Size of Dataset:** {c.get('read', 'n/a')} records read{split_read}, {c.get('accepted', 'n/a')} accepted, {c.get('rejected', 'n/a')} rejected")
        lines.append(f"- **Data Distribution:** train {c.get('train')}, validation {c.get('validation')}, test {c.get('test')} records")
        for split, st in (dr.get("lengths") or {}).items():
            if st.get("records"):
                lines.append(f"  - {split} length (tokens, chat template applied): mean {st['mean']}, p50 {st['p50']}, p95 {st['p95']}, max {st['max']}")
    else:
        lines.append("- **Size of Dataset:** n/a — data/data_report.json is missing")
    dist = label_distribution(run.train_targets)
    if dist:
        lines.append("  - answer labels in the train split: " + "; ".join(f"`{k}`: " + ", ".join(f"{v} {n}" for v, n in vals.items()) for k, vals in dist.items()))
    checks = ds.checks
    split = dr.get("split") or {}
    by_rule = dr.get("rejected_by_rule") or {}
    lines += [
        "- **Data Preparation Steps:**",
        f"  1. Parsed every record as `{ds.format}` and normalized it to chat turns; checked roles, empty content and that the last turn is the answer.",
        f"  2. Measured each record with the base model's tokenizer and chat template; rejected records over maxSeqLength {dr.get('max_seq_length', checks.max_seq_length or ctx.spec.hyperparameters.max_seq_length)} tokens.",
        f"  3. Removed `{checks.dedupe}` duplicates and prompts leaking between splits; rejected by rule: "
        + (", ".join(f"{k} {v}" for k, v in by_rule.items()) if by_rule else "none") + ".",
        f"  4. Split with seed {split.get('seed', ds.split.seed)}: validation {split.get('validation', ds.split.validation)}, test {split.get('test', ds.split.test)}"
        + (f" (separate sources: {', '.join(split['separate_sources'])})" if split.get("separate_sources") else "") + ".",
        "",
    ]
    return lines


def training_parameters(ctx: StageContext, run: RunRecord) -> list[str]:
    hp, m = ctx.spec.hyperparameters, ctx.spec.method
    facts = curve_facts(run.progress)
    c = (run.data_report.get("counts") or {})
    train_n = c.get("train")
    steps = facts.get("last_step") or hp.max_steps
    epochs = f"{hp.epochs}" if not hp.max_steps else f"{hp.max_steps} steps" + (f" ≈ {steps * hp.batch_size / train_n:.2f} epochs" if train_n and steps else "")
    lines = [
        "## Training Parameters",
        f"- **Learning Rate:** {hp.learning_rate} ({hp.scheduler} schedule, warmup ratio {hp.warmup_ratio})",
        f"- **Batch Size:** {hp.batch_size} records per optimizer step (micro-batch {hp.micro_batch_size})",
        f"- **Number of Epochs:** {epochs}",
        f"- **Training/Validation Split:** {c.get('train', 'n/a')} / {c.get('validation', 'n/a')} records (test {c.get('test', 'n/a')})",
        "- **Other Hyperparameters:**",
        f"  - Method: {m.type}" + (f" (r {m.lora.r}, alpha {m.lora.alpha}, dropout {m.lora.dropout}, targets {', '.join(m.lora.target_modules)})" if m.type != "full" else ""),
        f"  - Max sequence length: {hp.max_seq_length}; packing: {hp.packing}; gradient checkpointing: {hp.gradient_checkpointing}",
        f"  - Precision: {hp.precision}; weight decay: {hp.weight_decay}; seed: {hp.seed}",
    ]
    if ctx.spec.deepspeed and ctx.spec.deepspeed.enabled:
        lines.append(f"  - DeepSpeed ZeRO stage {ctx.spec.deepspeed.zero_stage}, offload {ctx.spec.deepspeed.offload}")
    eff = LineageFile.of(run.lineage).hyperparameters
    if eff:
        lines.append("  - Effective values recorded by the trainer: " + ", ".join(f"{k}={v}" for k, v in list(eff.items())[:16]))
    return lines + [""]


def _hardware(run: RunRecord) -> str:
    world = LineageFile.of(run.lineage).world_size
    if run.local_run.get("device"):
        return f"this machine (local run): {run.local_run['device']}; world size {world or 1}"
    here = f"{platform.machine()} CPU, {os.cpu_count()} cores visible ({platform.system()})"
    try:
        import torch

        if torch.cuda.is_available():
            here = f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 — a broken CUDA setup must not stop the report
        pass
    return f"world size {world or 1}; the trainer did not record its devices — the report host has {here}"


def training_process(ctx: StageContext, run: RunRecord, scores: dict[str, Any]) -> list[str]:
    facts = curve_facts(run.progress)
    lineage = LineageFile.of(run.lineage)
    lib_text = ", ".join(f"{k} {v}" for k, v in (lineage.libraries or {}).items()) or "versions not recorded"
    train_s = lineage.wall_time_seconds or run.stage_seconds("train")
    lines = [
        "## Training Process",
        "- **Training Platform/Tool:** tuneloop trainer (Hugging Face Trainer + peft" + (", DeepSpeed" if ctx.spec.deepspeed and ctx.spec.deepspeed.enabled else "") + f"); {lib_text}; image `{ctx.spec.image or 'local run'}`",
        f"- **Compute Resources Used:** {_hardware(run)}",
        f"- **Training Duration:** {duration(train_s)}" + (f" for {facts['last_step']} steps" if facts.get("last_step") else "")
        + (f", {facts['tokens_per_second']:.0f} tokens/s on average" if facts.get("tokens_per_second") else "")
        + (f", {lineage.tokens_seen} tokens seen" if lineage.tokens_seen else ""),
    ]
    if facts.get("train_points"):
        lines.append(f"- **Loss:** train {facts['first_loss']:.3f} at the first logged step → {facts['last_loss']:.3f} at step {facts['last_step']}"
                     f" (mean of the first/last tenth of steps {facts['train_start']:.3f} → {facts['train_end']:.3f})"
                     + (f"; validation {facts['val_start']:.3f} → {facts['val_end']:.3f} (best {facts['val_best']:.3f} at step {facts['val_best_step']})" if facts.get("val_points") else "")
                     + " — see `loss.png`.")
    lines.append("- **Challenges Encountered:**")
    lines += [f"  - {c}" for c in challenges(run, facts, scores) or ["None: no data rejections, trainer warnings, loss anomalies or empty generations."]]
    return lines + [""]
