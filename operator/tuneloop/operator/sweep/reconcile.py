"""One tick of a FineTuneSweep (I/O only: the decisions are `decide`, the study `study`, the manifests `builders.sweep`).

A tick reads the sweep's own FineTuneJobs (by label, controlled by the sweep's uid), adopts a trial whose job exists
but whose status patch was lost (its number and parameters are on the job), observes every running trial, suspends the
trials the pruner stops, asks the study for new trials up to `parallelism` and `maxTrials` (creating each FineTuneJob
under its deterministic name: a 409 is a trial already made), and when every trial has ended, runs the best trial's
configuration once more on the test split and hands its ModelVersion to a Rollout by the FineTuneSchedule's rule
(`schedule.decide.judge`, one implementation). The status is the study: an operator killed at any point continues from
it without repeating or losing a trial.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tuneloop.api.conditions import MAX_MESSAGE, parse_conditions, set_condition
from tuneloop.api.schedule import RunOutcome, ScheduleRun, TriggerKind
from tuneloop.api.sweep import BestRun, FineTuneSweep, FineTuneSweepSpec, FineTuneSweepStatus, SweepPhase, SweepTrial, TrialState
from tuneloop.contract import ownership
from tuneloop.contract.names import LABEL_SWEEP
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r

from ..builders import sweep as build
from ..schedule import decide as handoff
from ..schedule.reconcile import merge_patch
from . import admission, decide, study, telemetry

log = logging.getLogger(__name__)
POLL = 30.0  # while trials run (their FineTuneJobs' events wake the loop earlier)
IDLE = 3600.0
ERROR_DELAY = 30.0
READY = "Ready"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _v(x: Any) -> str:
    return str(getattr(x, "value", x))


@dataclass
class Tick:
    """What one tick of a sweep knows and changes (TICK_STEPS)."""

    obj: dict
    sweep: FineTuneSweep
    old_raw: dict
    now: dt.datetime
    st: FineTuneSweepStatus
    trials: list[SweepTrial] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    plan: decide.Plan | None = None
    best: BestRun | None = None
    last_progress: dt.datetime | None = None

    @property
    def ns(self) -> str:
        return self.obj["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def spec(self) -> FineTuneSweepSpec:
        return self.sweep.spec


class Reconciler:
    def __init__(self, client: KubeClient, settings: Any = None) -> None:
        self.client = client
        self.settings = settings  # OperatorSettings for the trials' FineTuneJob checks (default: get_settings())

    async def tick(self, obj: dict, now: dt.datetime | None = None) -> float:
        """One tick; an invalid spec is Failed (Ready False, InvalidSpec); any other failure is written to status and
        retried after ERROR_DELAY."""
        now = now or utcnow()
        old_raw = obj.get("status") or {}
        where, why = admission.first_problem(obj, self.settings)
        if where:
            await self._set_failed(obj, f"invalid FineTuneSweep at {where}: {why}", "InvalidSpec", now)
            return IDLE
        sweep = FineTuneSweep.model_validate(obj)
        try:
            st = FineTuneSweepStatus.model_validate(old_raw)
        except ValidationError:
            st = FineTuneSweepStatus()
        t = Tick(obj, sweep, dict(old_raw), now, st, trials=list(st.trials), best=st.best, last_progress=st.last_progress_time)
        try:
            for step in TICK_STEPS:
                await step(self, t)
        except Exception as exc:  # written to status, then retried by the daemon loop
            log.exception("sweep %s/%s: tick failed", t.ns, t.name)
            await self._set_failed(obj, f"tick failed: {type(exc).__name__}: {exc}", "TickFailed", now, keep_phase=True)
            return ERROR_DELAY
        return IDLE if _v(t.st.phase) in (SweepPhase.SUCCEEDED.value, SweepPhase.FAILED.value) else POLL

    async def _set_failed(self, obj: dict, msg: str, reason: str, now: dt.datetime, keep_phase: bool = False) -> None:
        meta = obj["metadata"]
        old = obj.get("status") or {}
        conds = parse_conditions(old)
        set_condition(conds, READY, False, reason, msg[:MAX_MESSAGE], now=now, generation=meta.get("generation"))
        new = {**old, "message": msg[:MAX_MESSAGE], "conditions": [c.wire() for c in conds]}
        if not keep_phase:
            new |= {"phase": SweepPhase.FAILED.value, "observedGeneration": meta.get("generation")}
        await self._patch_status(meta["namespace"], meta["name"], old, new)

    # --- the steps of a tick (TICK_STEPS) ----------------------------------------------------------------------------
    async def _observe(self, t: Tick) -> None:
        """The sweep's own FineTuneJobs (controller reference with its uid); a label alone makes nothing a trial."""
        owner = build.owner_ref(t.obj)
        for j in await self.client.list(r.FINETUNEJOBS, t.ns, labels={LABEL_SWEEP: t.name}):
            if ownership.controlled_by(j, owner):
                t.jobs[j["metadata"]["name"]] = j

    async def _adopt(self, t: Tick) -> None:
        """A trial job the status does not record (created, then the status patch was lost): recorded from its
        annotations, so the study neither loses it nor asks its number again."""
        known = {x.name for x in t.trials}
        for name, job in sorted(t.jobs.items()):
            ann = job["metadata"].get("annotations") or {}
            if name in known or (job["metadata"].get("labels") or {}).get(build.LABEL_ROLE) != "trial":
                continue
            try:
                number, params = int(ann[build.ANNOTATION_TRIAL]), json.loads(ann[build.ANNOTATION_PARAMS])
            except (KeyError, ValueError):
                continue
            if name != build.trial_name(t.name, number) or any(x.number == number for x in t.trials):
                continue
            t.trials.append(SweepTrial(number=number, name=name, uid=job["metadata"].get("uid"), params=params, started_at=t.now,
                                       message="adopted: its FineTuneJob existed before the status recorded it"))
            t.events.append(("Normal", "TrialAdopted", f"recorded trial {name} from its FineTuneJob"))
        t.trials.sort(key=lambda x: x.number)

    async def _plan(self, t: Tick) -> None:
        """Observe the running trials' jobs (a job of another uid is not the trial), prune, size the next batch."""
        jobs: dict[str, dict | None] = {}
        for x in decide.running(t.trials):
            job = t.jobs.get(x.name)
            jobs[x.name] = job if job is not None and (not x.uid or job["metadata"].get("uid") == x.uid) else None
        t.plan = decide.plan(t.spec, t.trials, jobs, t.now)
        before = {x.name: x for x in t.trials}
        for x in t.plan.trials:
            if x != before.get(x.name):
                t.last_progress = t.now
                if _v(x.state) != TrialState.RUNNING.value:
                    t.events.append(("Normal", f"Trial{_v(x.state)}", f"{x.name}: {x.message}"))
        t.trials = t.plan.trials

    async def _prune(self, t: Tick) -> None:
        """Stop each pruned trial's training: suspend its FineTuneJob (its Jobs are suspended, its pods go)."""
        assert t.plan is not None
        for name in t.plan.prune:
            if name in t.jobs:
                await self.client.patch(r.FINETUNEJOBS, t.ns, name, {"spec": {"suspend": True}})

    async def _start(self, t: Tick) -> None:
        """Ask the study for each free slot and create the trial's FineTuneJob (409: made already, adopted as it is)."""
        assert t.plan is not None
        for _ in range(t.plan.start):
            number = len(t.trials)
            params = study.ask(t.spec, t.trials, number)
            job = build.trial_job(t.obj, t.spec, number, params)
            # A job of ours under this name was adopted above; a 409 here is someone else's object: the trial's number
            # is spent (recorded Failed), never judged on that object.
            made, created = await self.client.create(r.FINETUNEJOBS, t.ns, job, read_existing=False)
            name = job["metadata"]["name"]
            if not created:
                t.trials.append(SweepTrial(number=number, name=name, params=params, state=TrialState.FAILED, started_at=t.now,
                                           finished_at=t.now, message=f"a FineTuneJob {name} exists that this sweep did not create"))
                t.events.append(("Warning", "TrialNameTaken", t.trials[-1].message))
                continue
            t.trials.append(SweepTrial(number=number, name=name, uid=((made or {}).get("metadata") or {}).get("uid"),
                                       params=params, started_at=t.now))
            t.last_progress = t.now
            t.events.append(("Normal", "TrialStarted", f"{job['metadata']['name']}: {json.dumps(params, sort_keys=True)}"))

    async def _finish(self, t: Tick) -> None:
        """Every trial ended: the best one's final run on the test split, then its hand-off (the schedule's rule)."""
        assert t.plan is not None
        if not decide.finished(t.spec, t.trials):
            return
        winner = decide.best(t.trials, t.spec.objective.direction())
        if winner is None:
            return
        name = build.best_name(t.name)
        if (t.best is None or t.best.name != name) and name in t.jobs:  # made before a lost status patch: adopted
            ann = t.jobs[name]["metadata"].get("annotations") or {}
            number = int(ann.get(build.ANNOTATION_TRIAL, winner.number))
            t.best = BestRun(name=name, uid=t.jobs[name]["metadata"].get("uid"), trial=build.trial_name(t.name, number))
        if t.best is None or t.best.name != name:
            t.best, made = await self._start_best(t, winner)
            if made is not None:
                t.jobs[name] = made
        job = t.jobs.get(name)
        if job is not None and t.best.uid and job["metadata"].get("uid") != t.best.uid:
            job = None
        await self._judge_best(t, job)

    async def _start_best(self, t: Tick, winner: SweepTrial) -> tuple[BestRun, dict | None]:
        ho = t.spec.hand_off
        rollout = await self.client.get(r.ROLLOUTS, t.ns, ho.rollout.name) if ho else None
        serving = handoff.serving_version(rollout)
        champion = await self.client.get(r.MODELVERSIONS, t.ns, serving) if serving else None
        job, why_not = build.best_job(t.obj, t.spec, winner, champion)
        made, _ = await self.client.create(r.FINETUNEJOBS, t.ns, job, read_existing=False)
        if why_not:
            t.events.append(("Warning", "NoChampionComparison", why_not))
        t.events.append(("Normal", "BestRunStarted", f"{job['metadata']['name']}: trial {winner.name} ({winner.value}) on the test split"))
        t.last_progress = t.now
        return BestRun(name=job["metadata"]["name"], uid=((made or {}).get("metadata") or {}).get("uid"), trial=winner.name,
                       message=f"champion {champion['metadata']['name']}" if champion else ""), made

    async def _judge_best(self, t: Tick, job: dict | None) -> None:
        """The final run's outcome; with handOff, the FineTuneSchedule's judgement and hand-off (one rule)."""
        assert t.best is not None
        if t.best.outcome in FINAL:
            return
        ho = t.spec.hand_off
        mv_name = ((job or {}).get("status") or {}).get("children", {}).get("modelVersion")
        mv = await self.client.get(r.MODELVERSIONS, t.ns, mv_name) if mv_name else None
        if ho is None:
            outcome, model_version, verdict, message = decide.final_outcome(t.best.name, job, mv)
            t.best = t.best.model_copy(update={"model_version": model_version, "verdict": verdict, "outcome": outcome,
                                               "message": message})
            return
        rollout = await self.client.get(r.ROLLOUTS, t.ns, ho.rollout.name)
        champion = ((job or {}).get("metadata", {}).get("annotations") or {}).get(build.ANNOTATION_CHAMPION)
        j = handoff.judge(ScheduleRun(name=t.best.name, trigger=TriggerKind.MANUAL, champion=champion), job, mv, rollout,
                          ho.require_improvement)
        if j.hand_off and rollout is not None:
            await self.client.patch(r.ROLLOUTS, t.ns, rollout["metadata"]["name"], {"spec": {"candidate": {"name": j.model_version}}})
            t.events.append(("Normal", "HandedOff", j.message))
        t.best = t.best.model_copy(update={"model_version": j.model_version, "verdict": j.verdict, "outcome": j.outcome.value,
                                           "message": j.message})

    async def _write_status(self, t: Tick) -> None:
        """The new status (the study), patched once; then the tick's Events."""
        spec, gen = t.spec, t.obj["metadata"].get("generation")
        b = decide.best(t.trials, spec.objective.direction())
        count = {s.value: sum(_v(x.state) == s.value for x in t.trials) for s in TrialState}
        phase, message = _phase(t, count)
        conds = parse_conditions(t.old_raw)
        set_condition(conds, READY, True, "Reconciled", "the latest tick completed", now=t.now, generation=gen)
        t.st = FineTuneSweepStatus(
            phase=phase, direction=spec.objective.direction(), trials=t.trials, trials_complete=count["Complete"],
            trials_running=count["Running"], trials_pruned=count["Pruned"], trials_failed=count["Failed"],
            best_trial=b.name if b else None, best_value=b.value if b else None, best=t.best,
            last_progress_time=t.last_progress, conditions=conds, observed_generation=gen, message=message[:MAX_MESSAGE])
        await self._patch_status(t.ns, t.name, t.old_raw, t.st.wire())
        was = {x.name: _v(x.state) for x in FineTuneSweepStatus.model_validate(t.old_raw).trials} if t.old_raw.get("trials") else {}
        ended = [x for x in t.trials if _v(x.state) != TrialState.RUNNING.value and was.get(x.name) in (None, TrialState.RUNNING.value)]
        telemetry.record(t.ns, t.name, _v(spec.objective.metric), t.st, ended)
        for type_, reason, msg in t.events:
            (log.warning if type_ == "Warning" else log.info)("sweep %s/%s: %s: %s", t.ns, t.name, reason, msg)
            try:
                await self.client.event(t.obj, type=type_, reason=reason, message=msg[:MAX_MESSAGE])
            except ApiError:
                log.debug("event not recorded", exc_info=True)

    async def _patch_status(self, ns: str, name: str, old: dict, new: dict) -> None:
        if new == old:
            return
        await self.client.patch(r.FINETUNESWEEPS, ns, name, {"status": merge_patch(old, new)}, subresource="status")


FINAL = {RunOutcome.HANDED_OFF.value, RunOutcome.LOST_TO_SERVING.value, RunOutcome.NOT_BETTER.value, RunOutcome.REJECTED.value,
         RunOutcome.NOT_COMPARED.value, RunOutcome.NO_MODEL_VERSION.value, decide.REGISTERED}


def _phase(t: Tick, count: dict[str, int]) -> tuple[SweepPhase, str]:
    spec = t.spec
    done = len(t.trials) - count["Running"]
    head = (f"{done}/{decide.budget(spec)} trial(s) ended ({count['Complete']} complete, {count['Pruned']} pruned, "
            f"{count['Failed']} failed), {count['Running']} running")
    if decide.finished(spec, t.trials):
        if t.best is None:
            return SweepPhase.FAILED, f"{head}; no trial completed with a {_v(spec.objective.metric)} value on the validation split"
        if t.best.outcome not in FINAL:
            return SweepPhase.EVALUATING, f"{head}; {t.best.name} runs trial {t.best.trial}'s configuration on the test split"
        failed = t.best.outcome == RunOutcome.NO_MODEL_VERSION.value
        return (SweepPhase.FAILED if failed else SweepPhase.SUCCEEDED), f"{head}; {t.best.name}: {t.best.message}"
    if spec.suspend:
        return SweepPhase.SUSPENDED, f"{head}; suspended: no new trials start"
    return SweepPhase.RUNNING, head


# The tick, in order (each a Reconciler step over one Tick).
TickStep = Callable[[Reconciler, Tick], Awaitable[None]]
TICK_STEPS: tuple[TickStep, ...] = (Reconciler._observe, Reconciler._adopt, Reconciler._plan, Reconciler._prune,
                                    Reconciler._start, Reconciler._finish, Reconciler._write_status)
