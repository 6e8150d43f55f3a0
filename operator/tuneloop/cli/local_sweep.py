"""`kubectl tuneloop local run SWEEP.yaml`: a FineTuneSweep's trials one after another on this machine.

The same study as the operator's (`tuneloop.operator.sweep.study`: seeded Optuna asks rebuilt from the recorded
trials) and the same decisions (`sweep.decide`: the objective on the validation split, the median / successive-halving
pruner on the live validation loss). Each trial is the FineTuneJob the operator would create (`builders.sweep`), run in
ROOT/<trial>/ (ROOT: --workdir, else ./runs/<sweep name>) through prepare → train → evaluate; the pruner sees every
validation loss as training reports it and stops a trial that falls behind (its training ends there; it is not
evaluated). ROOT/sweep.json is the journal: every trial's parameters, losses, value and state, written after each
event, so that a run stopped with Ctrl-C resumes where it stopped (the interrupted trial continues from its
checkpoint). When every trial has ended, the best trial's configuration runs once more in ROOT/best/ with all stages,
evaluated on the test split with the template's gates, and ROOT/report.md shows the study: the trials, the objective
with its 95 % interval, parameter importances and a slice plot (PNG), and what the winner changes in the spec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tuneloop.api.sweep import FineTuneSweep, FineTuneSweepSpec, IntermediateValue, SweepTrial, TrialState, get_path
from tuneloop.contract import layout
from tuneloop.contract.exits import EXIT_CONFIG_ERROR

from . import local_schedule

JOURNAL = "sweep.json"
REPORT = "report.md"


class TrialPruned(RuntimeError):
    """Raised from the progress callback: the pruner stopped this trial (its training stage ends here)."""


def _v(x: Any) -> str:
    return str(getattr(x, "value", x))


def spec_key(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc.get("spec"), sort_keys=True).encode()).hexdigest()[:16]


def read_journal(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / JOURNAL).read_text())
    except (OSError, ValueError):
        return {}


def write_journal(root: Path, journal: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (JOURNAL + ".tmp")
    tmp.write_text(json.dumps(journal, indent=2, default=str))
    tmp.replace(root / JOURNAL)


def localized(job: dict[str, Any], spec_dir: Path, workdir: Path) -> dict[str, Any]:
    """The operator's FineTuneJob with local paths absolute (relative to the sweep file) and output in `workdir`."""
    body = job["spec"]
    for keys in local_schedule.LOCAL_PATH_KEYS:
        parent = local_schedule._get(body, keys[:-1])
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if isinstance(value, str) and value and "://" not in value:
            parent[keys[-1]] = str(local_schedule._local(value, spec_dir))
    body["output"] = {"path": str(workdir)}
    job["metadata"].pop("ownerReferences", None)
    return job


def objective_of(run_dir: Path, metric: str) -> tuple[float | None, list[float] | None, str | None]:
    """(value, [low, high], split) of the tuned model's metric in DIR/eval.json."""
    try:
        record = json.loads((run_dir / layout.EVAL_FILE).read_text())["record"]
    except (OSError, ValueError, KeyError):
        return None, None, None
    row = next((m for m in record.get("metrics") or [] if m.get("name") == metric), None)
    if row is None or not isinstance(row.get("tuned"), int | float):
        return None, None, record.get("split") or "test"
    iv = row.get("tunedInterval") or {}
    interval = [iv["low"], iv["high"]] if "low" in iv and "high" in iv else None
    return float(row["tuned"]), interval, record.get("split") or "test"


def _stage_outcomes(run_dir: Path) -> list[str]:
    try:
        return [s.get("outcome", "") for s in json.loads((run_dir / layout.LOCAL_RUN_FILE).read_text()).get("stages", [])]
    except (OSError, ValueError):
        return []


def run(args: argparse.Namespace, doc: dict[str, Any], run_job: Callable[[argparse.Namespace], int]) -> int:
    from rich.console import Console
    from rich.markup import escape

    from tuneloop.api.schema_check import check_document

    console = Console(highlight=False)
    problems = check_document(doc, str(args.file))
    if problems:
        Console(stderr=True).print(f"[red]error:[/] {len(problems)} problem(s) in {escape(str(args.file))}:\n"
                                   + "\n".join(f"  {p.path or '<root>'}: {escape(p.message)}" for p in problems), soft_wrap=True)
        return EXIT_CONFIG_ERROR
    sweep = FineTuneSweep.model_validate(doc)
    root = (args.workdir or Path("runs") / sweep.metadata.name).resolve()
    journal = read_journal(root)
    if journal and journal.get("spec") != spec_key(doc):
        Console(stderr=True).print(f"[red]error:[/] {root / JOURNAL} records a sweep of another spec: pass --workdir DIR for a "
                                   "new one, or delete it to start over", soft_wrap=True)
        return EXIT_CONFIG_ERROR
    journal = journal or {"sweep": sweep.metadata.name, "spec": spec_key(doc), "startedAt": datetime.now(UTC).isoformat(), "trials": []}
    return Sweep(args, doc, sweep, root, journal, run_job, console).run()


class Sweep:
    """One local sweep: the trials in order, then the best trial's final run and the report."""

    def __init__(self, args: argparse.Namespace, doc: dict[str, Any], sweep: FineTuneSweep, root: Path, journal: dict[str, Any],
                 run_job: Callable[[argparse.Namespace], int], console: Any) -> None:
        self.args, self.doc, self.sweep, self.root, self.journal = args, doc, sweep, root, journal
        self.run_job, self.console = run_job, console
        self.spec: FineTuneSweepSpec = sweep.spec
        self.trials = [SweepTrial.model_validate(t) for t in journal.get("trials", [])]
        self.spec_dir = args.file.resolve().parent
        self.obj = {"metadata": {"name": sweep.metadata.name, "namespace": sweep.metadata.namespace or "default", "uid": "local"}}

    def save(self) -> None:
        self.journal["trials"] = [t.wire() for t in self.trials]
        write_journal(self.root, self.journal)

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def run(self) -> int:
        from tuneloop.operator.sweep import decide

        self.say(f"[bold]FineTuneSweep {self.sweep.metadata.name}[/] — {decide.budget(self.spec)} trial(s), objective "
                 f"{_v(self.spec.objective.metric)} ({self.spec.objective.direction().value}) on the validation split; journal {self.root / JOURNAL}")
        while True:
            current = next((t for t in self.trials if _v(t.state) == TrialState.RUNNING.value), None)
            if current is None:
                if len(self.trials) >= decide.budget(self.spec):
                    break
                current = self.new_trial()
            rc = self.run_trial(current)
            if rc is not None:
                return rc
        return self.finish()

    def new_trial(self) -> SweepTrial:
        from tuneloop.operator.sweep import study

        number = len(self.trials)
        params = study.ask(self.spec, self.trials, number)
        from tuneloop.operator.builders.sweep import trial_name

        t = SweepTrial(number=number, name=trial_name(self.sweep.metadata.name, number), params=params, started_at=datetime.now(UTC))
        self.trials.append(t)
        self.save()
        return t

    def _index(self, t: SweepTrial) -> int:
        return next(i for i, x in enumerate(self.trials) if x.number == t.number)

    def run_trial(self, t: SweepTrial) -> int | None:
        """Run one trial to its end; an exit code when the sweep must stop here (interrupted), else None."""
        from tuneloop.operator.builders.sweep import trial_job

        trial_dir = self.root / t.name
        trial_dir.mkdir(parents=True, exist_ok=True)
        job = localized(trial_job(self.obj, self.spec, t.number, t.params), self.spec_dir, trial_dir)
        job_file = trial_dir / local_schedule.JOB_FILE
        job_file.write_text(yaml.safe_dump(job, sort_keys=False))
        self.say(f"\n[bold]trial {t.number}[/] {t.name}: {json.dumps(t.params, sort_keys=True)}")
        pruned: list[str] = []
        inner = argparse.Namespace(**{**vars(self.args), "file": job_file, "workdir": trial_dir, "force": False, "fresh": False,
                                      "from_stage": None, "to_stage": "evaluate", "progress_hook": self._pruner(t, pruned)})
        rc = self.run_job(inner)
        i, now = self._index(t), datetime.now(UTC)
        t = self.trials[i]
        if pruned:
            self.trials[i] = t.model_copy(update={"state": TrialState.PRUNED, "finished_at": now, "message": pruned[0]})
        elif rc != 0 and "Interrupted" in _stage_outcomes(trial_dir):
            self.save()
            self.say(f"stopped during {t.name}: rerun the same command to resume the sweep (journal {self.root / JOURNAL})")
            return rc
        elif rc != 0:
            self.trials[i] = t.model_copy(update={"state": TrialState.FAILED, "finished_at": now, "message": f"the trial exited {rc}"})
        else:
            value, interval, split = objective_of(trial_dir, _v(self.spec.objective.metric))
            ok = value is not None and math.isfinite(value)
            self.trials[i] = t.model_copy(update={
                "state": TrialState.COMPLETE if ok else TrialState.FAILED, "value": value, "split": split, "finished_at": now,
                "message": (f"{_v(self.spec.objective.metric)} {value:.4g}" + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else "")
                            + f" on the {split} split") if ok else "no objective value in eval.json"})
            if interval:
                self.journal.setdefault("intervals", {})[t.name] = interval
        self.save()
        self.say(f"  → {_v(self.trials[i].state)}: {self.trials[i].message}")
        return None

    def _pruner(self, t: SweepTrial, pruned: list[str]) -> Callable[[dict[str, Any]], None]:
        """The progress hook: record each validation loss in the journal and stop the trial when the pruner says so."""
        from tuneloop.operator.sweep import decide

        def hook(event: dict[str, Any]) -> None:
            if event.get("event") != "eval" or not isinstance(event.get("eval_loss"), int | float):
                return
            i = self._index(t)
            cur = self.trials[i]
            step = int(event.get("step") or 0)
            if cur.intermediate and cur.intermediate[-1].step >= step:
                return
            cur = cur.model_copy(update={"intermediate": [*cur.intermediate, IntermediateValue(step=step, eval_loss=float(event["eval_loss"]))]})
            self.trials[i] = cur
            self.save()
            why = decide.prune_reason(cur, self.trials, self.spec)
            if why:
                pruned.append(why)
                raise TrialPruned(why)

        return hook

    def finish(self) -> int:
        from tuneloop.operator.sweep import decide

        winner = decide.best(self.trials, self.spec.objective.direction())
        if winner is None:
            self.say("[red]no trial completed with an objective value on the validation split: no winner[/]")
            write_report(self.root, self.sweep, self.trials, self.journal, None, None)
            return 1
        rc, mv = self.final_run(winner)
        path = write_report(self.root, self.sweep, self.trials, self.journal, winner, mv)
        self.say(f"\n[bold]best trial[/] {winner.name}: {_v(self.spec.objective.metric)} {winner.value:.4g} on validation; "
                 f"final run {'succeeded' if rc == 0 else f'exited {rc}'}; report {path}")
        return rc

    def final_run(self, winner: SweepTrial) -> tuple[int, dict[str, Any] | None]:
        """The best trial's configuration with every stage, evaluated on the test split (ROOT/best/)."""
        from tuneloop.operator.builders.sweep import best_job

        best_dir = self.root / "best"
        best_dir.mkdir(parents=True, exist_ok=True)
        job, _ = best_job(self.obj, self.spec, winner, None)
        job = localized(job, self.spec_dir, best_dir)
        job_file = best_dir / local_schedule.JOB_FILE
        job_file.write_text(yaml.safe_dump(job, sort_keys=False))
        self.say(f"\n[bold]final run[/] of {winner.name} on the test split in {best_dir}")
        if reuse_trial_weights(self.root / winner.name, best_dir, job_file):
            self.say(f"the final run reuses {winner.name}'s weights (same training spec; they are the weights its validation "
                     "value was measured on): evaluated on the test split without training again")
        inner = argparse.Namespace(**{**vars(self.args), "file": job_file, "workdir": best_dir, "force": False, "fresh": False,
                                      "from_stage": None, "to_stage": None, "progress_hook": None})
        rc = self.run_job(inner)
        self.journal["best"] = {"trial": winner.name, "dir": str(best_dir), "exit": rc}
        self.save()
        try:
            mv = yaml.safe_load((best_dir / layout.MODELVERSION_FILE).read_text())
        except (OSError, yaml.YAMLError):
            mv = None
        return rc, mv


# Inputs of the evaluate and report stages that prepare and train wrote; a final run that reuses a trial's weights gets
# them as hard links (copies across file systems). eval.json, report/ and exports are the final run's own.
TRAINED_OUTPUTS = (layout.DATA_DIR, layout.ARTIFACT_DIR, layout.PROGRESS_FILE, "train-time.json", layout.LINEAGE_FILE,
                   layout.RESULT_FILE, layout.result_file("prepare"), layout.result_file("train"))


def reuse_trial_weights(trial_dir: Path, best_dir: Path, job_file: Path) -> bool:
    """Seed BEST with the winning trial's trained outputs when both train the same spec (the local runner's
    fingerprint ignores evaluation, registry and the output's location), so the final run only evaluates on the test
    split. False (nothing copied) when BEST already trained, the trial's training did not finish, or the specs differ."""
    import os
    import shutil

    from tuneloop.contract.local import TrainerMissing, load_local_runner

    try:
        runner = load_local_runner()
    except TrainerMissing:
        return False
    fingerprint = runner.spec_fingerprint(runner.load_context(job_file, best_dir).spec)
    if runner.completed_training(best_dir, fingerprint) is not None:
        return False  # a rerun: it already has them
    if runner.completed_training(trial_dir, fingerprint) is None:
        return False
    for name in TRAINED_OUTPUTS:
        src, dst = trial_dir / name, best_dir / name
        if not src.exists():
            continue
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()

        def link(a: str, b: str) -> None:
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)

        if src.is_dir():
            shutil.copytree(src, dst, copy_function=link)
        else:
            link(str(src), str(dst))
    record = json.loads((trial_dir / layout.LOCAL_RUN_FILE).read_text())
    # the trial's stage history becomes the final run's (the real cost of its weights), marked with where it ran
    history = [*record.get("history", []), {"startedAt": record.get("startedAt"), "stages": record.get("stages", []),
                                            "trainedIn": str(trial_dir)}]
    (best_dir / layout.LOCAL_RUN_FILE).write_text(json.dumps(
        {"specFingerprint": fingerprint, "history": history, "stages": []}, indent=2))
    return True


# --- the study report ------------------------------------------------------------------------------------------------
def importances(spec: FineTuneSweepSpec, trials: list[SweepTrial]) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the complete validation trials; empty with fewer than 2."""
    from tuneloop.operator.sweep import decide, study

    done = [t for t in trials if decide.comparable(t)]
    if len(done) < 2:
        return {}
    import optuna

    s = optuna.create_study(direction=spec.objective.direction().value)
    dists = {p.path: study.distribution(p) for p in spec.search_space}
    for t in done:
        s.add_trial(optuna.trial.create_trial(params={p.path: study.encode(t.params[p.path]) for p in spec.search_space},
                                              distributions=dists, value=t.value))
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(s).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def plots(root: Path, spec: FineTuneSweepSpec, trials: list[SweepTrial], imp: dict[str, float]) -> list[str]:
    """importance.png and slice.png (objective against each parameter); the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneloop.operator.sweep import decide

    metric = _v(spec.objective.metric)
    out = []
    if imp:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(imp)))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="#4c72b0")
        ax.set_xlabel(f"importance for {metric} (fANOVA)")
        fig.tight_layout()
        fig.savefig(root / "importance.png", dpi=110)
        plt.close(fig)
        out.append("importance.png")
    done = [t for t in trials if decide.comparable(t)]
    if done:
        n = len(spec.search_space)
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False)
        for ax, p in zip(axes[0], spec.search_space, strict=True):
            xs = [t.params[p.path] if isinstance(t.params[p.path], int | float) else str(t.params[p.path]) for t in done]
            ax.scatter(xs, [t.value for t in done], c=[t.number for t in done], cmap="viridis")
            if p.float_ is not None and p.float_.log:
                ax.set_xscale("log")
            ax.set_xlabel(p.path)
            ax.set_ylabel(metric)
        fig.suptitle(f"{metric} on the validation split by parameter (colour: trial number)")
        fig.tight_layout()
        fig.savefig(root / "slice.png", dpi=110)
        plt.close(fig)
        out.append("slice.png")
    return out


def write_report(root: Path, sweep: FineTuneSweep, trials: list[SweepTrial], journal: dict[str, Any], winner: SweepTrial | None,
                 mv: dict[str, Any] | None) -> Path:
    spec = sweep.spec
    metric = _v(spec.objective.metric)
    imp = importances(spec, trials)
    figures = plots(root, spec, trials, imp)
    intervals = journal.get("intervals") or {}
    lines = [f"# Sweep {sweep.metadata.name}", "",
             f"Objective: **{metric}** ({spec.objective.direction().value}) on the validation split; "
             f"sampler {_v(spec.sampler.type)} (seed {spec.sampler.seed}), pruner {_v(spec.pruner.type)}; "
             f"{len(trials)} trial(s). Intervals are the evaluation's 95 % intervals of the tuned score.", "",
             "| trial | state | " + " | ".join(p.path for p in spec.search_space) + f" | {metric} | 95 % interval | note |",
             "|---|---|" + "---|" * len(spec.search_space) + "---|---|---|"]
    for t in trials:
        iv = intervals.get(t.name)
        lines.append(f"| {t.number} | {_v(t.state)} | " + " | ".join(f"{t.params.get(p.path)!s}" for p in spec.search_space)
                     + f" | {'' if t.value is None else f'{t.value:.4g}'} | {'' if not iv else f'[{iv[0]:.3g}, {iv[1]:.3g}]'}"
                     + f" | {t.message.replace('|', '/')} |")
    lines.append("")
    if winner is not None:
        iv = intervals.get(winner.name)
        lines += [f"## Best trial: {winner.name}", "",
                  f"{metric} {winner.value:.4g}" + (f" (95 % interval [{iv[0]:.3g}, {iv[1]:.3g}])" if iv else "") + " on the validation split.", "",
                  "What the winner changes in the spec:", ""]
        base = spec.job_template.spec.model_dump(by_alias=True, mode="json")
        for p in spec.search_space:
            was, now = get_path(base, p.path), winner.params.get(p.path)
            lines.append(f"- `{p.path}`: " + (f"{now!s} (unchanged)" if was == now else f"{was!s} → {now!s}"))
        lines.append("")
        ev = ((mv or {}).get("spec") or {}).get("evaluation") or {}
        if mv:
            rows = {m.get("name"): m for m in ev.get("metrics") or []}
            row = rows.get(metric) or {}
            tiv = row.get("tunedInterval") or {}
            lines += [f"Final run on the **test split** ({mv['metadata']['name']}): verdict **{ev.get('verdict', 'NotEvaluated')}**"
                      + (f"; {metric} {row['tuned']:.4g}" if isinstance(row.get("tuned"), int | float) else "")
                      + (f" [{tiv['low']:.3g}, {tiv['high']:.3g}]" if "low" in tiv else "") + ".", ""]
        else:
            lines += ["The final run on the test split did not finish (rerun the same command).", ""]
    if imp:
        lines += ["## Parameter importance", "", *[f"- `{k}`: {v:.2f}" for k, v in imp.items()], ""]
    lines += [f"![{f}]({f})" for f in figures]
    path = root / REPORT
    path.write_text("\n".join(lines) + "\n")
    return path
