"""Running a FineTuneJob's stages in this process, exactly as the pods run them.

The stage functions, the StageContext and the summary files are the trainer's own
(`tuneloop_trainer.__main__`): a local run leaves the same DIR/result-<stage>.json files a pod
would, so `report` and the operator's readers see no difference.

`kubectl tuneloop local run` (tuneloop.cli.local_cmd) drives this module without importing the
trainer: it finds it through the `tuneloop.trainer` entry point `local-runner`
(tuneloop.contract.local), so the operator side never depends on the trainer package.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract import layout
from tuneloop.contract.exits import EXIT_INTERRUPTED, Reason
from tuneloop.contract.results import StageResult

from .context import StageContext, load_context
from .errors import TrainerError
from .evaluation.inputs import evaluation_fingerprint, exports_fingerprint

if TYPE_CHECKING:
    from .context import StageContext

__all__ = ["OUTPUTS", "REQUIRES", "STAGE_ORDER", "StageContext", "StageOutcome", "TrainerError", "apply_overrides", "clean_outputs",
           "completed_evaluation", "completed_exports", "completed_training", "default_workdir", "evaluation_fingerprint", "exports_fingerprint", "load_context", "missing_inputs",
           "run_chain", "run_one", "select_stages", "spec_fingerprint"]

STAGE_ORDER = list(layout.STAGES)

# What a stage needs from the earlier ones, checked before a run that starts later in the chain.
REQUIRES = {
    "train": (f"{layout.DATA_DIR}/train.jsonl", "prepare"),
    "evaluate": (layout.ARTIFACT_DIR, "train"),
    "export": (layout.ARTIFACT_DIR, "train"),
    "report": (layout.EVAL_FILE, "evaluate"),
}
# Outputs a --fresh run removes (never anything else in the directory).
OUTPUTS = [layout.DATA_DIR, layout.CHECKPOINT_DIR, layout.ARTIFACT_DIR, layout.REPORT_DIR, layout.EVAL_FILE, layout.EXPORTS_DIR,
           layout.EXPORTS_FILE, layout.PROGRESS_FILE,
           layout.LINEAGE_FILE, layout.RESULT_FILE, layout.LOCAL_RUN_FILE]


@dataclass
class StageOutcome:
    stage: str
    outcome: str  # Succeeded | Failed | Interrupted | Skipped
    seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0
    cause: str = ""


def default_workdir(ctx_name: str, spec: Any, spec_dir: Path) -> Path:
    """--workdir wins; else spec.output.path (relative to the spec file); else ./runs/<job name>."""
    if spec.output.path:
        p = Path(spec.output.path).expanduser()
        return p if p.is_absolute() else (spec_dir / p)
    return Path("runs") / ctx_name


def select_stages(from_stage: str | None, to_stage: str | None) -> list[str]:
    start = STAGE_ORDER.index(from_stage) if from_stage else 0
    end = STAGE_ORDER.index(to_stage) + 1 if to_stage else len(STAGE_ORDER)
    if start >= end:
        raise ValueError(f"--from-stage {from_stage} comes after --to-stage {to_stage}")
    return STAGE_ORDER[start:end]


def missing_inputs(workdir: Path, first_stage: str) -> str | None:
    need = REQUIRES.get(first_stage)
    if need and not (workdir / need[0]).exists():
        return f"{workdir / need[0]} is missing: run the {need[1]} stage first (drop --from-stage {first_stage})"
    return None


def clean_outputs(workdir: Path) -> list[str]:
    removed = []
    for name in OUTPUTS + [p.name for p in workdir.glob(layout.result_file("*"))] + [p.name for p in workdir.glob("vllm-*.log")]:
        p = workdir / name
        if p.is_dir():
            shutil.rmtree(p)
            removed.append(name)
        elif p.exists():
            p.unlink()
            removed.append(name)
    return removed


def apply_overrides(spec: Any, overrides: dict[str, Any]) -> None:
    """In-place changes a user asks for on the command line (recorded in local-run.json)."""
    if overrides.get("max_steps") is not None:
        spec.hyperparameters.max_steps = overrides["max_steps"]
    if overrides.get("max_samples") is not None:
        spec.evaluation.max_samples = overrides["max_samples"]
    if overrides.get("no_baseline"):
        spec.evaluation.baseline = False
    if overrides.get("no_forgetting"):
        spec.evaluation.forgetting.enabled = False


def spec_fingerprint(spec: Any) -> str:
    """sha256 of what decides the weights: the spec (after command-line overrides) minus evaluation, registry and
    the output's location (where weights are written does not change them; a sweep's final run in another
    directory reuses its winning trial's weights this way)."""
    import hashlib

    wire = spec.wire() if hasattr(spec, "wire") else dict(spec)
    keep = {k: v for k, v in wire.items() if k not in ("evaluation", "registry")}
    if isinstance(keep.get("output"), dict):
        keep["output"] = {k: v for k, v in keep["output"].items() if k not in ("path", "pvc")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def completed_training(workdir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The previous run's train summary when training already finished in `workdir` for the same spec
    (same fingerprint, result-train.json Succeeded, the artifact present); None when it must (re)train."""
    try:
        log = json.loads((workdir / layout.LOCAL_RUN_FILE).read_text())
        result = json.loads((workdir / layout.result_file("train")).read_text())
    except (OSError, ValueError):
        return None
    if log.get("specFingerprint") != fingerprint or result.get("outcome") != "Succeeded":
        return None
    if not (workdir / layout.ARTIFACT_DIR).is_dir() or not any((workdir / layout.ARTIFACT_DIR).iterdir()):
        return None
    return result


def completed_evaluation(workdir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The previous evaluate summary when DIR/eval.json was computed from the same inputs (its `inputsFingerprint`, see
    `evaluation_fingerprint`: spec, splits, artifact, forgetting set, serving eval.json, backend asked for) and
    result-evaluate.json says Succeeded; None when the evaluation must run."""
    try:
        doc = json.loads((workdir / layout.EVAL_FILE).read_text())
        result = json.loads((workdir / layout.result_file("evaluate")).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("inputsFingerprint") != fingerprint or result.get("outcome") != "Succeeded":
        return None
    return result


def completed_exports(workdir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The previous export summary when DIR/exports.json was made from the same inputs (`exports_fingerprint`: the
    evaluation's and output.exports) and result-export.json says Succeeded; None when the exports must be made."""
    try:
        doc = json.loads((workdir / layout.EXPORTS_FILE).read_text())
        result = json.loads((workdir / layout.result_file("export")).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("inputsFingerprint") != fingerprint or result.get("outcome") != "Succeeded":
        return None
    return result


def run_one(stage: str, ctx: StageContext) -> StageOutcome:
    """One stage with the runner's contract: summary file written on success and on failure."""
    from .__main__ import failure_summary, run_stage, success_summary, write_summary

    started = time.time()
    try:
        summary = success_summary(stage, started, run_stage(stage, ctx) or {})
        write_summary(ctx.workdir, stage, summary)
        return StageOutcome(stage, "Succeeded", summary["seconds"], summary)
    except KeyboardInterrupt:
        summary = StageResult.failed(stage, Reason.INTERRUPTED, "interrupted by the user").wire()
        write_summary(ctx.workdir, stage, summary)
        return StageOutcome(stage, "Interrupted", round(time.time() - started, 1), summary, EXIT_INTERRUPTED,
                            "interrupted (Ctrl-C); rerun to resume from the last checkpoint")
    except Exception as exc:  # noqa: BLE001 — the cause, not only a traceback; the traceback goes to a file
        summary, code, line = failure_summary(stage, exc)
        write_summary(ctx.workdir, stage, summary)
        if summary["reason"] == Reason.INTERNAL_ERROR.value:
            tb = ctx.workdir / f"traceback-{stage}.txt"
            tb.write_text(traceback.format_exc())
            line = f"{line} (traceback in {tb})"
        return StageOutcome(stage, "Failed", round(time.time() - started, 1), summary, code, line)


def _load() -> float | None:
    """The 1-minute load average when the stage ended (a busy shared machine stretches wall times)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _history(workdir: Path) -> list[dict[str, Any]]:
    """The stage entries of every earlier run in `workdir` (a --fresh/--force run starts a new history)."""
    try:
        prev = json.loads((workdir / layout.LOCAL_RUN_FILE).read_text())
    except (OSError, ValueError):
        return []
    runs = list(prev.get("history") or [])
    if prev.get("stages"):
        runs.append({"startedAt": prev.get("startedAt"), "stages": prev["stages"]})
    return runs


def run_chain(
    ctx: StageContext,
    stages: list[str],
    *,
    on_start: Callable[[str, int, int], None] | None = None,
    on_end: Callable[[StageOutcome], None] | None = None,
    record: dict[str, Any] | None = None,
) -> list[StageOutcome]:
    """Run `stages` in order, stopping at the first failure; later stages are reported as Skipped."""
    outcomes: list[StageOutcome] = []
    log = dict(record or {})
    log.setdefault("startedAt", datetime.now(UTC).isoformat())
    log["history"] = _history(ctx.workdir)  # every earlier run's stages in this workdir: the real cost of the artifact
    log["stages"] = []
    # written now, so that a stage of this run (the report counting runs) reads this run's record, not the last one's
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    (ctx.workdir / layout.LOCAL_RUN_FILE).write_text(json.dumps(log, indent=2, default=str))
    for i, stage in enumerate(stages, 1):
        if outcomes and outcomes[-1].outcome != "Succeeded":
            outcomes.append(StageOutcome(stage, "Skipped"))
            continue
        if on_start:
            on_start(stage, i, len(stages))
        out = run_one(stage, ctx)
        outcomes.append(out)
        log["stages"].append({"stage": stage, "outcome": out.outcome, "seconds": out.seconds, "cause": out.cause or None,
                              "loadAverage": _load()})
        (ctx.workdir / layout.LOCAL_RUN_FILE).write_text(json.dumps(log, indent=2, default=str))
        if on_end:
            on_end(out)
    log["finishedAt"] = datetime.now(UTC).isoformat()
    (ctx.workdir / layout.LOCAL_RUN_FILE).write_text(json.dumps(log, indent=2, default=str))
    return outcomes
