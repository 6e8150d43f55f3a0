"""`kubectl tuneloop local run FILE [--workdir DIR]`: a FineTuneJob's whole chain on this machine.
(`kubectl tuneloop local serve RUN_DIR` then serves its model with real vLLM: tuneloop.cli.local_serve.)

prepare → train → evaluate → export → report, in this process, with the stage code the pods run
(CPU, or the local GPU when torch sees one). Progress bars while it runs, a summary table at the
end, and a non-zero exit with the cause when a stage fails (42: the spec or data is wrong —
rerunning will not help; 1: a runtime failure; 130: interrupted).

FILE may also be a FineTuneSchedule: then one iteration of its loop runs, in ROOT/<NNN>/
(ROOT: --workdir, else ./runs/<schedule>), against the champion (the latest iteration that won,
or --champion DIR), and the terminal, the report and ROOT/schedule.json say which won and why
(tuneloop.cli.local_schedule). FILE may also be a FineTuneSweep: then its trials run one after another in
ROOT/<trial>/ with the operator's sampler and pruner, resumable (ROOT/sweep.json), and the best trial once more on the
test split in ROOT/best/; ROOT/report.md is the study report (tuneloop.cli.local_sweep).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tuneloop.contract import layout
from tuneloop.contract.exits import EXIT_CONFIG_ERROR

from . import local_schedule, local_serve

STAGES = list(layout.STAGES)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be ≥ 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="local_action", metavar="ACTION")
    r = sub.add_parser("run", help="run prepare → train → evaluate → export → report for a FineTuneJob file (or one iteration of a FineTuneSchedule)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", type=Path, metavar="FILE", help="FineTuneJob, FineTuneSchedule or FineTuneSweep manifest (YAML)")
    r.add_argument("--workdir", type=Path, help="output directory (default: spec.output.path, else ./runs/<job name>; "
                   "a FineTuneSchedule's iterations go to WORKDIR/<NNN>/, default ./runs/<schedule name>)")
    r.add_argument("--from-stage", choices=STAGES, help="start here, reusing the earlier stages' outputs in the workdir")
    r.add_argument("--to-stage", choices=STAGES, help="stop after this stage")
    r.add_argument("--max-steps", type=_positive, help="override hyperparameters.maxSteps (a quick try)")
    r.add_argument("--max-samples", type=_positive, help="override evaluation.maxSamples (fewer test examples)")
    r.add_argument("--no-baseline", action="store_true", help="skip generating with the base model on the test set")
    r.add_argument("--no-forgetting", action="store_true", help="skip the forgetting check")
    r.add_argument("--fresh", action="store_true", help="delete this job's previous outputs in the workdir first (otherwise training resumes from its checkpoints)")
    r.add_argument("--force", action="store_true", help="retrain even when this workdir already holds a completed training run of the same spec "
                   "(implies --fresh); without it a completed run is evaluated and reported again, not retrained. "
                   "FineTuneSchedule: start a new iteration even when the spec and data are those of the latest one")
    r.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice, one per core); 1 helps on a busy shared machine")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (plain stage lines only)")
    r.add_argument("--verbose", action="store_true", help="keep the libraries' own logs and progress bars")
    local_schedule.add_arguments(r)
    local_serve.add_arguments(sub)


class _ErrorsOnly:
    """A logging filter that keeps errors only."""

    @staticmethod
    def filter(record) -> bool:
        import logging

        return record.levelno >= logging.ERROR


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    # DeepSpeed's logger resets its own level to INFO when it is imported, so a level set here does not stick;
    # a filter does ("Setting accelerator to CPU…" on every CPU run).
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.setLevel(logging.ERROR)
    if not any(isinstance(f, _ErrorsOnly) for f in ds_logger.filters):
        ds_logger.addFilter(_ErrorsOnly())
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
        return f"cpu: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        return "torch is not installed"


def run(args: argparse.Namespace) -> int:
    if getattr(args, "local_action", None) == "serve":
        return local_serve.run(args)
    if getattr(args, "local_action", None) != "run":
        print("usage: kubectl tuneloop local run FILE [--workdir DIR] | local serve RUN_DIR (see --help)", file=sys.stderr)
        return 2
    return run_local(args)


# long: the local run's script top to bottom (prepare, each stage, the summary): one linear story read next to
# `kubectl tuneloop local --help`
def run_local(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tuneloop.contract.local import TrainerMissing, load_local_runner

    from . import local_progress

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        local_runner = load_local_runner()  # tuneloop_trainer.local_runner, through its entry point
    except TrainerMissing as exc:
        err.print(f"[red]error:[/] local runs need the trainer extra ({exc.name or exc} is missing): pip install 'tuneloop[trainer]'")
        return 2
    try:
        stages = local_runner.select_stages(args.from_stage, args.to_stage)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    if not args.verbose:
        _quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_context, TrainerError = local_runner.load_context, local_runner.TrainerError

    import yaml

    try:
        doc = yaml.safe_load(args.file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]error:[/] cannot read {args.file}: {exc}")
        return EXIT_CONFIG_ERROR
    if isinstance(doc, dict) and doc.get("kind") == "FineTuneSchedule":
        return local_schedule.run(args, doc, run_local)  # one iteration: a FineTuneJob from its template, run below
    if isinstance(doc, dict) and doc.get("kind") == "FineTuneSweep":
        from . import local_sweep

        return local_sweep.run(args, doc, run_local)  # its trials one after another, each a FineTuneJob run below
    if not isinstance(doc, dict) or doc.get("kind") != "FineTuneJob":
        err.print(f"[red]error:[/] {args.file} is not a FineTuneJob, FineTuneSchedule or FineTuneSweep manifest "
                  f"(kind: {doc.get('kind') if isinstance(doc, dict) else None})")
        return EXIT_CONFIG_ERROR
    if getattr(args, "champion", None) is not None:
        err.print("[red]error:[/] --champion is for a FineTuneSchedule; in a FineTuneJob set evaluation.serving "
                  "(modelVersion, evalJson: the champion's eval.json)")
        return 2
    if getattr(args, "data_dir", None) is not None:
        os.environ[layout.ENV_DATA_DIR] = str(args.data_dir.expanduser().resolve())  # where dataset *.pvc paths are read
    try:
        probe = load_context(args.file, Path(tempfile.gettempdir()))  # validates the spec; the workdir is decided below
    except TrainerError as exc:
        from rich.markup import escape

        # every spec problem on its own line, in the spec's words (not one per run)
        err.print(f"[red]error:[/] {escape(str(exc))}" + (f"\n({escape(exc.hint)})" if exc.hint else ""), soft_wrap=True)
        return exc.exit_code
    from .validate_cmd import local_path_problems

    missing_paths = local_path_problems(doc.get("spec") or {}, args.file.resolve().parent)
    if missing_paths:
        from rich.markup import escape

        err.print(f"[red]error:[/] {len(missing_paths)} local path problem(s) in {args.file}:\n"
                  + "\n".join(f"  {escape(w)}: {escape(why)}" for w, why in missing_paths), soft_wrap=True)
        return EXIT_CONFIG_ERROR
    workdir = args.workdir or local_runner.default_workdir(probe.name, probe.spec, probe.spec_dir)
    workdir = workdir.resolve()
    if (args.fresh or getattr(args, "force", False)) and workdir.exists():
        removed = local_runner.clean_outputs(workdir)
        if removed:
            console.print(f"removed previous outputs in {workdir}: {', '.join(removed)}")
    ctx = load_context(args.file, workdir)
    overrides = {k: getattr(args, k) for k in ("max_steps", "max_samples", "no_baseline", "no_forgetting") if getattr(args, k)}
    local_runner.apply_overrides(ctx.spec, overrides)
    fingerprint = local_runner.spec_fingerprint(ctx.spec)
    done = local_runner.completed_training(workdir, fingerprint) if "train" in stages else None
    if done is not None:
        stages = [s for s in stages if s not in ("prepare", "train")]
        console.print(f"training already completed in {workdir} for this spec ({done.get('seconds', '?')} s"
                      + (f", step {done['steps']}" if done.get("steps") else "") + "): not retrained — same weights, same ModelVersion; "
                      "--force retrains")
        if not stages:
            return 0
    reused_eval = None
    if stages[0] == "evaluate" and hasattr(local_runner, "completed_evaluation"):  # nothing before it runs: its inputs are final
        reused_eval = local_runner.completed_evaluation(workdir, local_runner.evaluation_fingerprint(ctx))
        if reused_eval is not None:
            stages = stages[1:]
            console.print(f"evaluation already done in {workdir} for the same spec, data and weights ({reused_eval.get('seconds', '?')} s): "
                          "reused (eval.json) — delete eval.json to evaluate again; --force retrains and re-evaluates")
            if not stages:
                return 0
    if reused_eval is not None and stages[0] == "export" and hasattr(local_runner, "completed_exports"):
        reused_exports = local_runner.completed_exports(workdir, local_runner.exports_fingerprint(ctx))
        if reused_exports is not None:
            stages = stages[1:]
            console.print("exports already made and checked for the same inputs: reused (exports.json)")
            if not stages:
                return 0
    missing = local_runner.missing_inputs(workdir, stages[0])
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return EXIT_CONFIG_ERROR

    console.print(f"[bold]tuneloop local run[/] {ctx.namespace}/{ctx.name} — base {ctx.spec.base_model.display_name()}, method {ctx.spec.method.type}")
    console.print(f"device {_device()}; workdir {workdir}" + (f"; overrides {overrides}" if overrides else ""))
    display = local_progress.StageDisplay(console, enabled=not args.no_progress)
    hook = getattr(args, "progress_hook", None)  # a FineTuneSweep's pruner (local_sweep): sees every progress event
    ctx.on_progress = display if hook is None else local_progress.chained(display, hook)
    headlines: dict[str, str] = {}

    def on_end(out) -> None:  # a tuneloop_trainer.local_runner.StageOutcome
        display.stop()
        headlines[out.stage] = local_progress.stage_headline(out.stage, out.summary)
        mark = "[green]✓[/]" if out.outcome == "Succeeded" else "[red]✗[/]"
        console.print(f"{mark} {out.stage} {out.outcome.lower()} in {out.seconds:.1f}s — {headlines[out.stage]}")

    started = time.time()
    record = {"spec": str(args.file.resolve()), "workdir": str(workdir), "stages_requested": stages, "overrides": overrides, "device": _device(),
              "specFingerprint": fingerprint}
    if reused_eval is not None:
        record["evaluationReused"] = {"evalJson": str(workdir / layout.EVAL_FILE), "seconds": reused_eval.get("seconds")}
    try:
        outcomes = local_runner.run_chain(ctx, stages, on_start=display.start, on_end=on_end, record=record)
    finally:
        display.stop()
    rows = [{"stage": o.stage, "outcome": o.outcome, "seconds": o.seconds, "headline": headlines.get(o.stage, "")} for o in outcomes]
    console.print()
    console.print(local_progress.summary_table(rows))
    evaluated = next((o.summary for o in outcomes if o.stage == "evaluate" and o.outcome == "Succeeded"), None) or reused_eval
    if evaluated and evaluated.get("metrics"):
        console.print(local_progress.metrics_table(evaluated["metrics"], evaluated.get("verdict")))
    console.print(f"total {time.time() - started:.1f}s; outputs in {workdir}")
    failed = next((o for o in outcomes if o.outcome in ("Failed", "Interrupted")), None)
    if failed:
        err.print(f"[red]error:[/] stage {failed.stage} failed: {failed.cause}")
        return failed.exit_code or 1
    reported = next((o for o in outcomes if o.stage == "report" and o.outcome == "Succeeded"), None)
    if reported:
        console.print(f"report: {reported.summary.get('report')}\nModelVersion: {reported.summary.get('modelVersion')}")
        for exported in reported.summary.get("exportModelVersions") or []:
            console.print(f"ModelVersion (export): {exported}")
    return 0
