"""`kubectl tuneloop local run SCHEDULE.yaml`: one iteration of a FineTuneSchedule's loop on this machine.

Each invocation runs ONE iteration: the schedule's `jobTemplate` as a FineTuneJob, in its own directory
`ROOT/<NNN>/` (ROOT: --workdir, else ./runs/<schedule name>), evaluated against the **champion** — the latest
iteration that won (or --champion DIR, any earlier local run's work directory) — exactly as the operator evaluates a
run against the Rollout's serving version: `evaluation.serving` points at the champion's eval.json, so gates with
`reference: serving` compare the two on the same test items with paired 95 % intervals. The first iteration has no
champion: its `reference: serving` gates are dropped and it is gated against the base model and the majority baseline
as a FineTuneJob would be. Whether the iteration wins is decided by the operator's own rule
(`tuneloop.operator.schedule.decide.judge`, with `handOff.requireImprovement`); a winner is the next iteration's
champion (in a cluster it would become the Rollout's candidate), a loser is recorded and the champion stays.

ROOT/schedule.json is the ledger: every iteration's champion, data digest, verdict, serving outcome, outcome and why.
An iteration whose spec, command-line overrides and data are those of the latest completed one is not run again
(--force starts a new one); an unfinished latest iteration with the same inputs is resumed. The data digest
(tuneloop.contract.datadigest: the new-data trigger's glob under --data-dir, else the template's dataset files) is
recorded, so an iteration on unchanged data says so.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tuneloop.api.schedule import FineTuneSchedule, RunOutcome, ScheduleRun, TriggerKind
from tuneloop.contract import layout
from tuneloop.contract.datadigest import DigestError
from tuneloop.contract.datadigest import digest as data_digest
from tuneloop.contract.exits import EXIT_CONFIG_ERROR

LEDGER = "schedule.json"
JOB_FILE = "finetunejob.yaml"
OBJECTIVE_ANNOTATION = "tuneloop.dev/objective"  # fills the report's Objective (tuneloop_trainer.report.sections)
ITERATION_ANNOTATION = "tuneloop.dev/schedule-iteration"
# Local paths of a FineTuneJob spec, made absolute (relative to the schedule file) in each iteration's FineTuneJob.
LOCAL_PATH_KEYS = (("baseModel", "path"), ("baseModel", "gguf", "path"), ("dataset", "train", "path"),
                   ("dataset", "validation", "path"), ("dataset", "test", "path"), ("evaluation", "forgetting", "path"))
DATA_SOURCES = ("train", "validation", "test")


@dataclass(frozen=True)
class Champion:
    dir: Path
    model_version: str
    iteration: str | None = None  # None: --champion DIR outside this schedule's iterations
    how: str = ""

    def label(self) -> str:
        return (f"iteration {self.iteration}" if self.iteration else str(self.dir)) + f" ({self.model_version})"

    def wire(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "modelVersion": self.model_version, "iteration": self.iteration}


class LocalScheduleError(Exception):
    """Bad input: exit 42 with every problem."""


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--champion", type=Path, metavar="DIR",
                   help="FineTuneSchedule: the champion to beat, an earlier local run's work directory (DIR/eval.json, "
                        "DIR/report/modelversion.yaml); default: the latest iteration that won")
    r.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where the claims' files are on this machine: dataset *.pvc paths and triggers.newData.glob are read "
                        f"under it (default: ${layout.ENV_DATA_DIR}, else {layout.DATA_MOUNT} as in the pods)")


# --- inputs -----------------------------------------------------------------------------------------------------


def _get(node: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def data_root(args: argparse.Namespace) -> Path:
    given = getattr(args, "data_dir", None) or os.environ.get(layout.ENV_DATA_DIR) or layout.DATA_MOUNT
    return Path(given).expanduser().resolve()


def _local(value: str, spec_dir: Path) -> Path:
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else (spec_dir / p).resolve()


def template_problems(template: dict[str, Any], spec_dir: Path, data_dir: Path) -> list[str]:
    """Every local path of the template that does not exist here (spec.jobTemplate.spec.… field paths), including
    PVC sources, which a local run reads under the data directory."""
    from .validate_cmd import local_path_problems

    out = [f"{where.replace('spec.', 'spec.jobTemplate.spec.', 1)}: {why}" for where, why in local_path_problems(template, spec_dir)
           if where != "spec.evaluation.serving.evalJson"]  # replaced by the champion's (or dropped)
    for split in DATA_SOURCES:
        pvc = _get(template, ("dataset", split, "pvc"))
        if isinstance(pvc, dict) and pvc.get("path") is not None:
            local = data_dir / str(pvc["path"]).lstrip("/")
            if not local.exists():
                out.append(f"spec.jobTemplate.spec.dataset.{split}.pvc: claim {pvc.get('claimName')} path {pvc['path']} is read from "
                           f"{local} on this machine, which does not exist (pass --data-dir DIR: the directory holding the claim's files)")
    return out


def digest_of_data(sched: FineTuneSchedule, template: dict[str, Any], spec_dir: Path, data_dir: Path) -> dict[str, Any]:
    """{"digest", "files", "bytes", "source"}: the new-data trigger's glob under the data directory (what the operator's
    digest Job reads on the claim), else every dataset source the template trains and tests on."""
    trig = sched.spec.triggers.new_data
    if trig is not None and data_dir.is_dir():
        return {**data_digest(data_dir, trig.glob), "source": f"triggers.newData.glob {trig.glob!r} under {data_dir}"}
    parts, files, size = [], 0, 0
    for split in DATA_SOURCES:
        src = _get(template, ("dataset", split)) or {}
        if src.get("path"):
            p = _local(src["path"], spec_dir)
        elif src.get("pvc"):
            p = data_dir / str(src["pvc"].get("path", "")).lstrip("/")
        else:
            continue
        d = data_digest(p, "**/*") if p.is_dir() else data_digest(p.parent, p.name)
        parts.append(f"{split}={d['digest']}")
        files, size = files + d["files"], size + d["bytes"]
    combined = "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return {"digest": combined, "files": files, "bytes": size, "source": "the template's dataset files"}


def short(digest: str | None) -> str:
    return (digest or "none").removeprefix("sha256:")[:12]


def inputs_key(template: dict[str, Any], overrides: dict[str, Any], data: dict[str, Any]) -> str:
    """What decides an iteration's result besides the champion: the template, the command-line overrides, the data."""
    wire = json.dumps({"template": template, "overrides": overrides, "data": data["digest"]}, sort_keys=True, default=str)
    return hashlib.sha256(wire.encode()).hexdigest()


# --- the ledger and the champion ----------------------------------------------------------------------------------


def read_ledger(root: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((root / LEDGER).read_text()).get("iterations") or [])
    except (OSError, ValueError):
        return []


def write_ledger(root: Path, schedule: str, entries: list[dict[str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / LEDGER).write_text(json.dumps({"schedule": schedule, "iterations": entries}, indent=2, default=str) + "\n")


def champion_at(directory: Path, iteration: str | None, how: str) -> Champion:
    d = directory.expanduser().resolve()
    ev, mv = d / layout.EVAL_FILE, d / layout.MODELVERSION_FILE
    missing = [str(p) for p in (ev, mv) if not p.is_file()]
    if missing:
        raise LocalScheduleError(f"champion {d}: {' and '.join(missing)} missing — a champion is the work directory of an earlier "
                                 "local run that reached the report stage")
    try:
        name = (yaml.safe_load(mv.read_text()) or {})["metadata"]["name"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise LocalScheduleError(f"champion {d}: {mv} is not a ModelVersion manifest ({exc})") from None
    return Champion(d, name, iteration, how)


def choose_champion(explicit: Path | None, entries: list[dict[str, Any]], notes: list[str]) -> Champion | None:
    """--champion DIR, else the latest iteration that won (outcome HandedOff) whose files are still there."""
    if explicit is not None:
        return champion_at(explicit, None, "--champion")
    for e in reversed(entries):
        if e.get("outcome") == RunOutcome.HANDED_OFF.value:
            try:
                return champion_at(Path(e["dir"]), e["iteration"], "the latest iteration that won")
            except LocalScheduleError as exc:
                notes.append(f"skipped the winner iteration {e['iteration']} as champion: {exc}")
    return None


# --- the iteration's FineTuneJob ----------------------------------------------------------------------------------


def finetunejob(sched: FineTuneSchedule, template: dict[str, Any], iteration: str, champion: Champion | None,
                spec_dir: Path, objective: str) -> dict[str, Any]:
    """The template as this iteration's FineTuneJob: local paths absolute, the schedule's model name, and
    evaluation.serving = the champion's eval.json (none: the serving gates dropped, as the operator does)."""
    from tuneloop.operator.builders.schedule import ANNOTATION_CHAMPION, LABEL_SCHEDULE, model_name, run_version

    body = json.loads(json.dumps(template))
    for keys in LOCAL_PATH_KEYS:
        parent = _get(body, keys[:-1])
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if isinstance(value, str) and value and "://" not in value:
            parent[keys[-1]] = str(_local(value, spec_dir))
    name = sched.metadata.name
    registry = body.setdefault("registry", {})
    registry["modelName"] = model_name(sched.spec, name)
    registry["version"] = run_version(f"i{iteration}")
    ev = body["evaluation"]
    if champion is not None:
        ev["serving"] = {"modelVersion": champion.model_version, "evalJson": str(champion.dir / layout.EVAL_FILE)}
    else:
        ev.pop("serving", None)
        ev["gates"] = [g for g in ev.get("gates", []) if g.get("reference") != "serving"]
    tmpl_meta = sched.spec.job_template.metadata
    annotations = {OBJECTIVE_ANNOTATION: objective, **tmpl_meta.annotations, ITERATION_ANNOTATION: iteration}
    if champion is not None:
        annotations[ANNOTATION_CHAMPION] = champion.model_version
    return {
        "apiVersion": sched.api_version,
        "kind": "FineTuneJob",
        "metadata": {"name": f"{name}-{iteration}", "namespace": sched.metadata.namespace or "default",
                     "labels": {**tmpl_meta.labels, LABEL_SCHEDULE: name}, "annotations": annotations},
        "spec": body,
    }


def objective_text(sched: FineTuneSchedule, iteration: str, champion: Champion | None, data_note: str) -> str:
    who = f"Iteration {iteration} of FineTuneSchedule `{sched.metadata.name}`, run locally. "
    if champion is None:
        return (who + "There is no champion yet, so it is gated against the base model and the majority baseline only (gates with "
                "`reference: serving` are dropped); if its gates pass it becomes the champion. " + data_note)
    need = "measurably better than" if sched.spec.hand_off.require_improvement else "not worse than"
    return (who + f"It challenges the champion, {champion.label()}: it replaces it only if its own gates pass and it is {need} "
            f"the champion on the same test items (handOff.requireImprovement: {str(sched.spec.hand_off.require_improvement).lower()}). "
            + data_note)


# --- the verdict ----------------------------------------------------------------------------------------------------


def judge(sched: FineTuneSchedule, it_dir: Path, job_name: str, champion: Champion | None) -> dict[str, Any]:
    """The operator's hand-off rule applied to the iteration's ModelVersion: outcome, message, verdict, serving outcome."""
    from tuneloop.operator.schedule.decide import judge as operator_judge

    mv = yaml.safe_load((it_dir / layout.MODELVERSION_FILE).read_text())
    mv_name = mv["metadata"]["name"]
    run = ScheduleRun(name=job_name, trigger=TriggerKind.MANUAL, champion=champion.model_version if champion else None)
    ftj = {"status": {"phase": "Succeeded", "children": {"modelVersion": mv_name}}}
    rollout = {"metadata": {"name": sched.spec.hand_off.rollout.name},
               "status": {"stableModelVersion": champion.model_version} if champion else {}}
    j = operator_judge(run, ftj, mv, rollout, sched.spec.hand_off.require_improvement)
    serving = ((mv.get("spec") or {}).get("evaluation") or {}).get("serving") or {}
    outcome = j.outcome.value if hasattr(j.outcome, "value") else str(j.outcome)
    if outcome == RunOutcome.HANDED_OFF.value:
        won = (f"beat the champion {champion.label()} ({j.serving_outcome}: {serving.get('reason')})" if champion
               else "passed its gates and is the first version (there was no champion)")
        message = (f"{mv_name} {won}: it is the champion from now on (in a cluster it would become Rollout "
                   f"{sched.spec.hand_off.rollout.name}'s candidate)")
    else:
        lost = " does not replace the champion:" if champion else " does not become the champion:"
        message = j.message.replace("; not rolled out", "").replace(" was not rolled out:", lost)
        message += f"; the champion stays {champion.label()}" if champion else "; there is still no champion"
    return {"modelVersion": mv_name, "verdict": j.verdict, "servingOutcome": j.serving_outcome, "servingReason": serving.get("reason"),
            "servingMetric": serving.get("metric"), "outcome": outcome, "message": message, "finishedAt": datetime.now(UTC).isoformat()}


# --- the command ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, doc: dict[str, Any], run_job: Callable[[argparse.Namespace], int]) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        return _run(args, doc, run_job, console)
    except LocalScheduleError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_CONFIG_ERROR


def _warn_deprecated(doc: dict[str, Any], console: Any) -> None:
    """A deprecated field is still accepted; say so, as `kubectl tuneloop validate` does (api.deprecations)."""
    from rich.markup import escape

    from tuneloop.api.deprecations import deprecated_fields

    for use in deprecated_fields("FineTuneSchedule", doc.get("spec")):
        console.print(f"[yellow]warning:[/] {escape(use.message())}", soft_wrap=True)


# long: the local schedule loop: one linear sequence of iterations, printed as it goes
def _run(args: argparse.Namespace, doc: dict[str, Any], run_job: Callable[[argparse.Namespace], int], console: Any) -> int:
    from tuneloop.api.schema_check import check_document

    problems = check_document(doc, str(args.file))
    if problems:  # every problem at once, in the spec's words, as `kubectl tuneloop validate` prints them
        raise LocalScheduleError(f"{len(problems)} problem(s) in {args.file}:\n" + "\n".join(f"  {p.path or '<root>'}: {p.message}" for p in problems))
    _warn_deprecated(doc, console)
    sched = FineTuneSchedule.model_validate(doc)
    name = sched.metadata.name
    spec_dir = args.file.resolve().parent
    data_dir = data_root(args)
    template = sched.spec.job_template.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    missing = template_problems(template, spec_dir, data_dir)
    if missing:
        raise LocalScheduleError(f"{len(missing)} local path problem(s) in {args.file}:\n" + "\n".join(f"  {m}" for m in missing))

    root = (args.workdir or Path("runs") / name).resolve()
    entries = read_ledger(root)
    overrides = {k: getattr(args, k) for k in ("max_steps", "max_samples", "no_baseline", "no_forgetting") if getattr(args, k, None)}
    try:
        data = digest_of_data(sched, template, spec_dir, data_dir)
    except DigestError as exc:  # a link out of the data directory, a file that keeps changing: said, not a traceback
        raise LocalScheduleError(f"cannot read the data's digest: {exc}") from None
    key = inputs_key(template, overrides, data)
    latest = entries[-1] if entries else None
    notes: list[str] = []

    if latest is not None and latest.get("inputs") == key and not args.force:
        if latest.get("outcome"):
            console.print(f"iteration {latest['iteration']} of {name} already ran on this spec and data ({short(data['digest'])}): "
                          f"{latest['outcome']} — {latest.get('message', '')}\nnot run again; --force starts a new iteration", soft_wrap=True)
            return 0
        entry = latest  # unfinished (stopped, interrupted or --to-stage): resume it with its champion
        champion = champion_at(Path(entry["champion"]["dir"]), entry["champion"].get("iteration"), "recorded") if entry.get("champion") else None
        resumed = True
    else:
        champion = choose_champion(getattr(args, "champion", None), entries, notes)
        number = max((int(e["iteration"]) for e in entries if str(e.get("iteration", "")).isdigit()), default=0) + 1
        iteration = f"{number:03d}"
        prev = next((e for e in reversed(entries) if (e.get("data") or {}).get("digest")), None)
        if prev is None:
            data_note = f"Data: {data['files']} file(s), {data['bytes']} bytes, digest {short(data['digest'])} ({data['source']}); the first iteration."
        elif prev["data"]["digest"] == data["digest"]:
            data_note = f"Data unchanged since iteration {prev['iteration']} (digest {short(data['digest'])}, {data['files']} file(s))."
        else:
            data_note = (f"New data since iteration {prev['iteration']}: digest {short(prev['data']['digest'])} → {short(data['digest'])} "
                         f"({prev['data'].get('files')} → {data['files']} file(s), {prev['data'].get('bytes')} → {data['bytes']} bytes).")
        entry = {"iteration": iteration, "dir": str(root / iteration), "finetunejob": f"{name}-{iteration}",
                 "startedAt": datetime.now(UTC).isoformat(), "inputs": key, "overrides": overrides,
                 "data": {**data, "note": data_note}, "champion": champion.wire() if champion else None,
                 "forced": bool(args.force and latest is not None and latest.get("inputs") == key)}
        entries.append(entry)
        resumed = False
    iteration, it_dir = entry["iteration"], Path(entry["dir"])
    it_dir.mkdir(parents=True, exist_ok=True)
    job = finetunejob(sched, template, iteration, champion, spec_dir,
                      objective_text(sched, iteration, champion, entry["data"]["note"]))
    job_file = it_dir / JOB_FILE
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    write_ledger(root, name, entries)

    say = functools.partial(console.print, soft_wrap=True)
    say(f"[bold]FineTuneSchedule {sched.metadata.namespace or 'default'}/{name}[/] — {'resuming' if resumed else 'iteration'} {iteration} in {it_dir}")
    for note in notes:
        say(f"  note: {note}")
    say("  champion: " + (f"{champion.label()} ({champion.how}); gates with reference: serving compare with it"
                          if champion else "none (first iteration): gated against the base model and the majority baseline"))
    say(f"  {entry['data']['note']}")
    if entry.get("forced"):
        say("  --force: a new iteration on the same spec and data")

    inner = argparse.Namespace(**{**vars(args), "file": job_file, "workdir": it_dir, "force": False})
    rc = run_job(inner)
    if rc != 0 or not (it_dir / layout.MODELVERSION_FILE).is_file() or not _reported_now(it_dir, entry):
        entry["lastExit"] = rc
        write_ledger(root, name, entries)
        if rc == 0:
            console.print(f"iteration {iteration} stopped before its report: rerun the same command to finish it", soft_wrap=True)
        return rc
    entry.update(judge(sched, it_dir, job["metadata"]["name"], champion))
    entry.pop("lastExit", None)
    write_ledger(root, name, entries)
    _say(console, entry, champion)
    return 0


def _reported_now(it_dir: Path, entry: dict[str, Any]) -> bool:
    """The report stage succeeded for this iteration (not a stale report of an unfinished one)."""
    try:
        return json.loads((it_dir / layout.result_file("report")).read_text()).get("outcome") == "Succeeded"
    except (OSError, ValueError):
        return False


def _say(console: Any, entry: dict[str, Any], champion: Champion | None) -> None:
    from rich.markup import escape

    console.print()
    won = entry["outcome"] == RunOutcome.HANDED_OFF.value
    head = "[green]wins[/]" if won else f"[yellow]does not {'replace' if champion else 'become'} the champion[/]"
    console.print(f"[bold]iteration {entry['iteration']}[/] ({entry['modelVersion']}) {head}: outcome {entry['outcome']}, "
                  f"verdict {entry['verdict']}" + (f", serving outcome {entry['servingOutcome']}" if entry.get("servingOutcome") else ""),
                  soft_wrap=True)
    if champion is not None and entry.get("servingReason"):
        console.print(f"  champion/challenger vs {escape(champion.label())}: {escape(entry['servingReason'])}", soft_wrap=True)
    console.print(f"  {escape(entry['message'])}", soft_wrap=True)
