"""The pure decisions of a FineTuneSweep (no I/O, no Kopf, no clock but the `now` passed in): what a trial's FineTuneJob
says about it, which trials the pruner stops and why, how many new trials may start, which trial is best.

Only a trial's validation-split value is ever compared (`comparable`): the test split is read once, by the best trial's
final run. The pruning rules read the trials' live validation loss (`status.progress.evalLoss` at their eval steps),
which is lower-is-better whatever the objective's direction:

- median: a running trial whose best validation loss so far is above the median of the complete trials' losses at the
  same step (each complete trial's latest report at or before it) is pruned, once at least `startupTrials` complete
  trials reported there and the step is at least `warmupSteps` (Optuna's MedianPruner, on evalLoss);
- successiveHalving: rung k is at `minResource × reductionFactor^k` steps; a trial past a rung whose loss there is not
  among the best max(1, n // reductionFactor) of the n trials that reached the rung (n ≥ reductionFactor) is pruned
  (Optuna's SuccessiveHalvingPruner, asynchronous, on evalLoss).
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.sweep import (
    Direction,
    FineTuneSweepSpec,
    IntermediateValue,
    PrunerType,
    SamplerType,
    SweepTrial,
    TrialState,
)

from .study import grid_size


def _v(x: object) -> str:
    return str(getattr(x, "value", x))


def comparable(t: SweepTrial) -> bool:
    """A trial whose objective may be compared: complete, a finite value, measured on the validation split."""
    return (_v(t.state) == TrialState.COMPLETE.value and t.value is not None and math.isfinite(t.value)
            and t.split == "validation")


def best(trials: list[SweepTrial], direction: Direction | str) -> SweepTrial | None:
    """The best comparable trial (ties: the lower number)."""
    pool = [t for t in trials if comparable(t)]
    if not pool:
        return None
    s = 1.0 if _v(direction) == Direction.MINIMIZE.value else -1.0
    return min(pool, key=lambda t: (s * (t.value or 0.0), t.number))


def running(trials: list[SweepTrial]) -> list[SweepTrial]:
    return [t for t in trials if _v(t.state) == TrialState.RUNNING.value]


def budget(spec: FineTuneSweepSpec) -> int:
    """Trials the sweep runs in all: maxTrials, or the grid's size when smaller."""
    if _v(spec.sampler.type) == SamplerType.GRID.value:
        return min(spec.max_trials, grid_size(spec))
    return spec.max_trials


def to_start(spec: FineTuneSweepSpec, trials: list[SweepTrial]) -> int:
    """How many new trials to ask for now: free parallelism slots, within the trial budget; none while suspended."""
    if spec.suspend:
        return 0
    return max(0, min(spec.parallelism - len(running(trials)), budget(spec) - len(trials)))


def finished(spec: FineTuneSweepSpec, trials: list[SweepTrial]) -> bool:
    """Every trial of the budget has run and none is running."""
    return len(trials) >= budget(spec) and not running(trials)


# --- what a trial's FineTuneJob says --------------------------------------------------------------------------------
def observe(trial: SweepTrial, job: dict[str, Any] | None, metric: str, now: dt.datetime) -> SweepTrial:
    """The trial after reading its FineTuneJob (None: gone). Ended trials never change again."""
    if _v(trial.state) != TrialState.RUNNING.value:
        return trial
    if job is None:
        return trial.model_copy(update={"state": TrialState.FAILED, "finished_at": now,
                                        "message": f"FineTuneJob {trial.name} was deleted before it finished"})
    st = job.get("status") or {}
    upd: dict[str, Any] = {}
    prog = st.get("progress") or {}
    step, loss = prog.get("step"), prog.get("evalLoss")
    # status.progress keeps the last validation loss while the step moves on: a loss is recorded once, at the step it
    # was first seen with (an evaluation), not again at every later progress poll
    if isinstance(step, int) and isinstance(loss, int | float) and math.isfinite(loss):
        last = trial.intermediate[-1] if trial.intermediate else None
        if last is None or (last.step < step and last.eval_loss != float(loss)):
            upd["intermediate"] = [*trial.intermediate, IntermediateValue(step=step, eval_loss=float(loss))][-200:]
    phase = st.get("phase")
    split = ((job.get("spec") or {}).get("evaluation") or {}).get("split", "test")
    if phase == "Failed":
        upd |= {"state": TrialState.FAILED, "finished_at": now, "message": (st.get("message") or "the FineTuneJob failed")[:1000]}
    elif phase == "Succeeded":
        value = (st.get("metrics") or {}).get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            upd |= {"state": TrialState.COMPLETE, "value": float(value), "split": split, "finished_at": now,
                    "message": f"{metric} {value:.4g} on the {split} split"}
        else:
            upd |= {"state": TrialState.FAILED, "finished_at": now,
                    "message": f"the FineTuneJob succeeded without a {metric} value (status.metrics)"}
    return trial.model_copy(update=upd) if upd else trial


# --- pruning ------------------------------------------------------------------------------------------------------------
def _at(t: SweepTrial, step: int) -> float | None:
    """The trial's latest validation loss at or before `step`."""
    vals = [iv.eval_loss for iv in t.intermediate if iv.step <= step]
    return vals[-1] if vals else None


def _median_reason(t: SweepTrial, others: list[SweepTrial], spec: FineTuneSweepSpec) -> str | None:
    pr = spec.pruner
    step = t.intermediate[-1].step
    if step < pr.warmup_steps:
        return None
    ref = [v for o in others if _v(o.state) == TrialState.COMPLETE.value and (v := _at(o, step)) is not None]
    if len(ref) < pr.startup_trials:
        return None
    mine = min(iv.eval_loss for iv in t.intermediate)
    median = statistics.median(ref)
    if mine > median:
        return (f"pruned (median): best evalLoss {mine:.4g} by step {step} is above the median {median:.4g} of "
                f"{len(ref)} complete trial(s) at that step")
    return None


def rungs(spec: FineTuneSweepSpec, up_to: int) -> list[int]:
    out, r = [], spec.pruner.min_resource
    while r <= up_to:
        out.append(r)
        r *= spec.pruner.reduction_factor
    return out


def _halving_reason(t: SweepTrial, others: list[SweepTrial], spec: FineTuneSweepSpec) -> str | None:
    step = t.intermediate[-1].step
    rs = rungs(spec, step)
    if not rs:
        return None
    rung = rs[-1]
    mine = _at(t, rung)
    if mine is None:
        return None
    pool = [v for o in others if o.intermediate and o.intermediate[-1].step >= rung and (v := _at(o, rung)) is not None]
    n = len(pool) + 1
    factor = spec.pruner.reduction_factor
    if n < factor:
        return None
    keep = max(1, n // factor)
    rank = 1 + sum(v < mine for v in pool)
    if rank > keep:
        return (f"pruned (successive halving): evalLoss {mine:.4g} at rung {rung} ranks {rank} of {n}; "
                f"only the best {keep} go on")
    return None


def prune_reason(t: SweepTrial, trials: list[SweepTrial], spec: FineTuneSweepSpec) -> str | None:
    """Why the pruner stops this running trial now (None: it goes on)."""
    kind = _v(spec.pruner.type)
    if kind == PrunerType.NONE.value or _v(t.state) != TrialState.RUNNING.value or not t.intermediate:
        return None
    others = [o for o in trials if o.number != t.number]
    return _median_reason(t, others, spec) if kind == PrunerType.MEDIAN.value else _halving_reason(t, others, spec)


@dataclass
class Plan:
    """One tick's decisions: the trials after observing their jobs, whom to prune (name → reason), how many to start."""

    trials: list[SweepTrial]
    prune: dict[str, str] = field(default_factory=dict)
    start: int = 0
    done: bool = False
    best: SweepTrial | None = None


def plan(spec: FineTuneSweepSpec, trials: list[SweepTrial], jobs: dict[str, dict[str, Any] | None], now: dt.datetime) -> Plan:
    """Observe every running trial's job, prune, and size the next batch (pure)."""
    metric = _v(spec.objective.metric)
    seen = [observe(t, jobs.get(t.name), metric, now) if t.name in jobs else t for t in trials]
    prune: dict[str, str] = {}
    out: list[SweepTrial] = []
    for t in seen:
        why = prune_reason(t, seen, spec)
        if why is not None:
            prune[t.name] = why
            t = t.model_copy(update={"state": TrialState.PRUNED, "finished_at": now, "message": why})
        out.append(t)
    return Plan(trials=out, prune=prune, start=to_start(spec, out), done=finished(spec, out),
                best=best(out, spec.objective.direction()))


REGISTERED = "Registered"  # the final run's outcome without a hand-off: its ModelVersion exists (Ready)


def final_outcome(name: str, job: dict[str, Any] | None, mv: dict[str, Any] | None) -> tuple[str, str | None, str | None, str]:
    """(outcome, ModelVersion, verdict, message) of the best trial's final run when the sweep hands off to nobody:
    Registered (its ModelVersion passed its gates on the test split), Rejected, NoModelVersion, or Pending."""
    if job is None:
        return "NoModelVersion", None, None, f"the final run {name} was deleted before it finished"
    st = job.get("status") or {}
    if st.get("phase") == "Failed":
        return "NoModelVersion", None, None, (st.get("message") or f"the final run {name} failed")[:1000]
    if st.get("phase") != "Succeeded":
        return "Pending", None, None, f"{name} is {st.get('phase') or 'Pending'}"
    mv_name = (st.get("children") or {}).get("modelVersion")
    if not mv_name:
        return "NoModelVersion", None, None, f"{name} registered no ModelVersion"
    if mv is None:
        return "Pending", mv_name, None, f"waiting for ModelVersion {mv_name}"
    verdict = ((mv.get("spec") or {}).get("evaluation") or {}).get("verdict") or "NotEvaluated"
    if verdict == "Failed" or (mv.get("status") or {}).get("phase") == "Rejected":
        return "Rejected", mv_name, verdict, f"{mv_name} failed its gates on the test split (verdict {verdict})"
    return REGISTERED, mv_name, verdict, f"{mv_name} registered: verdict {verdict} on the test split"
