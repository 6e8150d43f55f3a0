"""One tick of a FineTuneSchedule (I/O only: the decisions are `decide`, the manifests `build`).

A tick reads the schedule's FineTuneJobs (by label), the Rollout, the ModelVersions of unfinished runs, the digest
Job when one runs, and the Prometheus triggers that are due; then starts, deletes and hands off; then patches the
status once. It returns the seconds until something is due (the next cron time, check, or a short poll while a
digest Job runs or a winner waits for a busy Rollout), so an idle schedule costs nothing between its times.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tuneloop.api import deprecations
from tuneloop.api.common import Condition
from tuneloop.api.conditions import MAX_MESSAGE, FineTuneScheduleCondition, FineTuneScheduleReason, parse_conditions, set_condition
from tuneloop.api.schedule import (
    RETRAIN_ANNOTATION,
    DataObservation,
    FineTuneSchedule,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    SchedulePhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.contract import ownership
from tuneloop.operator.analysis.provider import ProviderError, QueryClient, QueryClientFactory
from tuneloop.operator.finetunejob.state import termination
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r

from ..builders import schedule as build
from . import admission, decide

log = logging.getLogger(__name__)
POLL = 5.0  # while a digest Job runs or a winner waits for a busy Rollout
IDLE = 3600.0  # longest sleep (a FineTuneJob event wakes the loop earlier)
ERROR_DELAY = 30.0  # after a failed tick (its error is in status)
ERROR_TEXT = 500  # a Prometheus error kept in status is cut to this length
FINAL = {RunOutcome.HANDED_OFF.value, RunOutcome.LOST_TO_SERVING.value, RunOutcome.NOT_BETTER.value,
         RunOutcome.REJECTED.value, RunOutcome.NOT_COMPARED.value, RunOutcome.NO_MODEL_VERSION.value}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _v(x: Any) -> str:
    return str(getattr(x, "value", x))


def _ts(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch turning `old` into `new`: keys that went away (at any depth of nested objects) become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = {k: merge_patch(old.get(k), v) for k, v in new.items()}
    out.update({k: None for k in old if k not in new})
    return out


@dataclass
class Tick:
    """What one tick of a schedule knows and changes, step by step (TICK_STEPS): the observations, the decision,
    the runs as they are now, and the status it writes."""

    obj: dict
    sched: FineTuneSchedule
    old_raw: dict  # the status as recorded (a digest Job is recorded in it as soon as it exists)
    now: dt.datetime
    st: FineTuneScheduleStatus
    last_retrain: str | None
    last_run_time: dt.datetime | None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)  # the schedule's own FineTuneJobs by name
    foreign: dict[str, str] = field(default_factory=dict)  # labelled jobs it did not create: name -> why not a run
    rollout: dict | None = None
    serving: str | None = None
    data: DataObservation | None = None
    prom: list[PrometheusObservation] = field(default_factory=list)
    runs: list[ScheduleRun] = field(default_factory=list)
    dec: decide.Decision | None = None
    new: FineTuneScheduleStatus | None = None

    @classmethod
    def begin(cls, obj: dict, sched: FineTuneSchedule, old_raw: dict, now: dt.datetime) -> Tick:
        try:
            st = FineTuneScheduleStatus.model_validate(old_raw)
        except ValidationError:
            st = FineTuneScheduleStatus()
        return cls(obj, sched, old_raw, now, st, last_retrain=st.last_retrain_request, last_run_time=st.last_run_time)

    @property
    def meta(self) -> dict:
        return self.obj["metadata"]

    @property
    def ns(self) -> str:
        return self.meta["namespace"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def spec(self) -> FineTuneScheduleSpec:
        return self.sched.spec

    @property
    def retrain(self) -> str | None:
        return (self.meta.get("annotations") or {}).get(RETRAIN_ANNOTATION)


class _NoProvider:
    async def query(self, query: str) -> float | None:
        raise ProviderError("no metrics provider is wired into this reconciler")

    async def query_vector(self, query: str) -> list[tuple[dict[str, str], float]]:
        raise ProviderError("no metrics provider is wired into this reconciler")


def _no_provider(ref: str, namespace: str) -> QueryClient:
    return _NoProvider()


class Reconciler:
    def __init__(self, client: KubeClient, *, prometheus_url: str, trainer_image: str, run_as_user: int = 1000,
                 pull_policy: str = "IfNotPresent", provider_factory: QueryClientFactory | None = None, settings: Any = None):
        self.client = client
        self.settings = settings  # OperatorSettings for the template's FineTuneJob checks (default: get_settings())
        self.prometheus_url = prometheus_url
        self.trainer_image = trainer_image
        self.run_as_user = run_as_user
        self.pull_policy = pull_policy
        # provider_factory(ref, namespace) -> QueryClient: the wiring (schedule/handlers.py) passes the operator's
        # Endpoints.client (the admin's providers, confined); this core names no provider (provider-neutral)
        self.provider_factory: QueryClientFactory = provider_factory or _no_provider

    async def tick(self, obj: dict, now: dt.datetime | None = None) -> float:
        """One tick. A spec that cannot run is Failed (condition Ready False, InvalidSpec) and starts nothing; any other
        failure is written to status (Ready False, TickFailed, with the error) and retried after ERROR_DELAY, so a
        tick that fails never repeats its side effects unrecorded."""
        now = now or utcnow()
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        old_raw = obj.get("status") or {}
        where, why = admission.first_problem(obj, self.settings)
        if where:
            await self._refuse(obj, f"invalid FineTuneSchedule at {where}: {why}", now)
            return IDLE
        sched = FineTuneSchedule.model_validate(obj)
        recorded = dict(old_raw)  # what the status holds now (a digest Job is recorded as soon as it exists)
        try:
            return await self._tick(obj, sched, recorded, now)
        except Exception as exc:  # written to status, then retried by the daemon loop
            log.exception("schedule %s/%s: tick failed", ns, name)
            msg = f"tick failed: {type(exc).__name__}: {exc}"[:MAX_MESSAGE]
            conds = parse_conditions(recorded)
            set_condition(conds, FineTuneScheduleCondition.READY, False, FineTuneScheduleReason.TICK_FAILED, msg, now=now,
                          generation=meta.get("generation"))
            try:
                await self._patch_status(ns, name, recorded, {**recorded, "message": msg, "conditions": [c.wire() for c in conds]})
            except Exception:  # noqa: BLE001 - the API server is unreachable: the daemon loop logs and retries
                raise exc from None
            return ERROR_DELAY

    async def _refuse(self, obj: dict, msg: str, now: dt.datetime) -> None:
        """A spec that cannot run: Failed, Ready False (InvalidSpec); nothing starts."""
        meta = obj["metadata"]
        old_raw = obj.get("status") or {}
        conds = parse_conditions(old_raw)
        set_condition(conds, FineTuneScheduleCondition.READY, False, FineTuneScheduleReason.INVALID_SPEC, msg, now=now,
                      generation=meta.get("generation"))
        await self._patch_status(meta["namespace"], meta["name"], old_raw, {
            **old_raw, "phase": SchedulePhase.FAILED.value, "message": msg, "observedGeneration": meta.get("generation"),
            "conditions": [c.wire() for c in conds]})

    async def _tick(self, obj: dict, sched: FineTuneSchedule, old_raw: dict, now: dt.datetime) -> float:
        """The steps of TICK_STEPS in order over one `Tick`; the seconds until the next thing is due."""
        t = Tick.begin(obj, sched, old_raw, now)
        for step in TICK_STEPS:
            await step(self, t)
        assert t.new is not None
        return decide.wake_after(t.spec, t.new, now, poll=POLL, idle=IDLE)

    # --- the steps of a tick (TICK_STEPS) ----------------------------------------------------------------------------
    async def _observe(self, t: Tick) -> None:
        """Runs, the Rollout, the data digest, the Prometheus triggers; then what became of each run.

        Only FineTuneJobs this schedule created are its runs (controller ownerReference with its uid); anyone can put
        the label on a self-made job (issue 25, finding 7), which is ignored and named in RunsOwned."""
        owner = build.owner_ref(t.obj)
        for j in await self.client.list(r.FINETUNEJOBS, t.ns, labels={build.LABEL_SCHEDULE: t.name}):
            if ownership.controlled_by(j, owner):
                t.jobs[j["metadata"]["name"]] = j
            else:
                t.foreign[j["metadata"]["name"]] = "not created by this schedule"
        t.rollout = await self.client.get(r.ROLLOUTS, t.ns, t.spec.hand_off.rollout.name)
        t.serving = decide.serving_version(t.rollout)
        t.data = await self._observe_data(t.obj, t.sched, t.st.data, t.now, t.events, t.old_raw)
        t.prom = await self._observe_prometheus(t.ns, t.sched, t.st.prometheus, t.now)
        t.runs = await self._judge_runs(t.ns, t.st.runs, t.jobs, t.rollout, t.spec.hand_off.require_improvement, t.events,
                                        obj=t.obj, foreign=t.foreign, now=t.now)
        t.data = decide.data_run_known(t.data, t.runs)

    async def _decide(self, t: Tick) -> None:
        """What starts and what is replaced (`decide.decide`); its notes become Events."""
        active = [r_.name for r_ in t.runs if _v(r_.phase) == RunPhase.RUNNING.value]
        t.dec = decide.decide(t.spec, created=_ts(t.meta.get("creationTimestamp")) or t.now,
                              last_schedule_time=t.st.last_schedule_time, data=t.data, prom=t.prom, retrain=t.retrain,
                              last_retrain=t.st.last_retrain_request, active=active, now=t.now)
        if t.dec.baseline_digest and t.data is not None:
            t.data = t.data.model_copy(update={"last_run_digest": t.dec.baseline_digest})
        for note in t.dec.notes:
            t.events.append(("Normal", "RunSkipped" if note.startswith("skipped") else "RunWaiting", note))

    async def _replace(self, t: Tick) -> None:
        """concurrencyPolicy Replace: delete the runs `decide` replaces (only the schedule's own jobs)."""
        assert t.dec is not None
        for victim in t.dec.delete:
            if victim in t.jobs:  # never delete an object of that name the schedule does not control
                await self.client.delete(r.FINETUNEJOBS, t.ns, victim)
            t.runs = [x.model_copy(update={"phase": RunPhase.FAILED.value, "outcome": RunOutcome.NO_MODEL_VERSION.value,
                                           "finished_at": t.now, "message": "replaced by a newer run (concurrencyPolicy Replace)"})
                      if x.name == victim else x for x in t.runs]
            t.events.append(("Normal", "RunReplaced", f"deleted {victim} (concurrencyPolicy Replace)"))

    async def _start(self, t: Tick) -> None:
        """Start one run for the fires of this tick (under a fresh name) and mark every fire as consumed."""
        assert t.dec is not None
        if not t.dec.start:
            return
        # a foreign job occupies its name like a finished earlier run (a fresh name is taken, it is never reused)
        occupied = {**{n: {"status": {"phase": "Failed"}} for n in t.foreign}, **t.jobs}
        first = await self._fresh(t.ns, t.name, t.spec, t.dec.start[0], t.runs, occupied)
        champion = await self.client.get(r.MODELVERSIONS, t.ns, t.serving) if t.serving else None
        run = decide.run_name(t.name, first)
        job, why_not = build.finetunejob(t.obj, t.spec, first, run, champion, t.now)
        made_obj, made = await self.client.create(r.FINETUNEJOBS, t.ns, job, read_existing=False)
        reason = "; ".join(f.reason for f in t.dec.start)
        if made:
            t.runs.append(ScheduleRun(name=run, uid=((made_obj or {}).get("metadata") or {}).get("uid"), trigger=first.trigger,
                                      reason=reason, started_at=t.now, champion=t.serving if champion else None,
                                      data_digest=next((f.digest for f in t.dec.start if f.digest), None),
                                      message=f"no champion comparison: {why_not}" if why_not else ""))
            t.events.append(("Normal", "RunStarted", f"started {run}: {reason}"))
            if why_not:
                t.events.append(("Warning", "NoChampionComparison", why_not))
            t.last_run_time = t.now
        for f in t.dec.start:
            if f.trigger == TriggerKind.MANUAL:
                t.last_retrain = t.retrain
            if f.digest and t.data is not None:
                t.data = t.data.model_copy(update={"last_run_digest": f.digest})
            if f.prometheus:
                t.prom = [p.model_copy(update={"fired": True}) if p.name == f.prometheus else p for p in t.prom]

    async def _prune_history(self, t: Tick) -> None:
        """History limits: delete the oldest finished runs beyond them (a Pending winner is never deleted)."""
        spec = t.spec
        for old in decide.history_to_delete(t.runs, spec.successful_runs_history_limit, spec.failed_runs_history_limit):
            if old in t.jobs:  # never delete an object of that name the schedule does not control
                await self.client.delete(r.FINETUNEJOBS, t.ns, old)
            gone = next(x for x in t.runs if x.name == old)
            t.runs = [x for x in t.runs if x.name != old]
            t.events.append(("Normal", "RunDeleted", f"deleted the FineTuneJob {old} ({_v(gone.outcome)}) beyond the history limit "
                             f"(successfulRunsHistoryLimit {spec.successful_runs_history_limit}, failedRunsHistoryLimit "
                             f"{spec.failed_runs_history_limit}); its ModelVersion stays"))

    async def _write_status(self, t: Tick) -> None:
        """The new status, patched once; then the tick's Events."""
        assert t.dec is not None
        st, spec, gen = t.st, t.spec, t.meta.get("generation")
        active = [x.name for x in t.runs if _v(x.phase) == RunPhase.RUNNING.value]
        last_ok = max([x.finished_at for x in t.runs if _v(x.phase) == RunPhase.SUCCEEDED.value and x.finished_at]
                      + ([st.last_successful_time] if st.last_successful_time else []), default=None)
        phase = SchedulePhase.SUSPENDED if spec.suspend else SchedulePhase.RUNNING if active else SchedulePhase.IDLE
        message = self._message(spec, phase, active, t.runs, t.dec, t.data)
        conds = self._conditions(st.conditions, t.runs, t.now, gen)
        self._owned_condition(conds, t.foreign, t.events, t.now, gen)
        deprecated = deprecations.note(conds, deprecations.deprecated_fields("FineTuneSchedule", t.obj.get("spec")), now=t.now, generation=gen)
        if deprecated:
            t.events.append(("Warning", deprecations.EVENT_REASON, deprecated))
        set_condition(conds, FineTuneScheduleCondition.READY, True, FineTuneScheduleReason.RECONCILED, "the latest tick completed",
                      now=t.now, generation=gen)
        t.new = FineTuneScheduleStatus(
            phase=phase, active=active, last_schedule_time=t.dec.last_schedule_time, next_schedule_time=t.dec.next_schedule_time,
            last_run_time=t.last_run_time, last_successful_time=last_ok, serving_model_version=t.serving, runs=t.runs[-100:],
            data=t.data, prometheus=t.prom, last_retrain_request=t.last_retrain, observed_generation=gen,
            message=message, conditions=conds,
        )
        await self._patch_status(t.ns, t.name, t.old_raw, t.new.wire())
        for type_, reason, msg in t.events:
            (log.warning if type_ == "Warning" else log.info)("schedule %s/%s: %s: %s", t.ns, t.name, reason, msg)
            try:
                await self.client.event(t.obj, type=type_, reason=reason, message=msg)
            except ApiError:
                log.debug("event not recorded", exc_info=True)

    async def _fresh(self, ns: str, schedule: str, spec: Any, fire: decide.Fire, runs: list[ScheduleRun],
                     jobs: dict[str, dict]) -> decide.Fire:
        """The fire under a run name no earlier run used: data that returns to an earlier digest, or a retrain value
        used again, starts a new run (`<key>-2`, …) instead of a 409 on the old one — or the old ModelVersion."""
        if fire.trigger not in decide.REUSABLE_KEYS:
            return fire
        known = {x.name for x in runs}
        for n in range(1, 100):
            cand = fire.fresh(n)
            run = decide.run_name(schedule, cand)
            mv = await self.client.get(r.MODELVERSIONS, ns, build.model_version_name(spec, schedule, cand.key)) \
                if run not in jobs and run not in known else None
            if decide.name_in_use(run, fire.key, jobs.get(run), known, mv is not None) is None:
                return cand
        raise RuntimeError(f"no free run name for {fire.key} after 99 tries")

    # --- observation helpers ----------------------------------------------------------------------------------------

    async def _observe_data(self, obj: dict, sched: FineTuneSchedule, data: DataObservation | None, now: dt.datetime,
                            events: list, recorded: dict) -> DataObservation | None:
        trig = sched.spec.triggers.new_data
        if trig is None:
            return None
        data = data or DataObservation()
        ns = obj["metadata"]["namespace"]
        if data.check_job:
            check_job = data.check_job
            job = await self.client.get(r.JOBS, ns, check_job)
            conds = {c.get("type"): c.get("status") for c in ((job or {}).get("status") or {}).get("conditions") or []}
            if job is None or conds.get("Complete") == "True" or conds.get("Failed") == "True":
                pods = await self.client.list(r.PODS, ns, labels={"job-name": data.check_job}) if job else []
                msg, _ = termination(pods, want_success=True)
                if msg and msg.get("digest"):
                    empty = (f"glob {trig.glob!r} matched no files on claim {trig.claim_name}: nothing to watch yet"
                             if msg.get("files") == 0 else None)
                    if empty and data.files != 0:
                        events.append(("Warning", "NoDataFiles", empty))
                    data = data.model_copy(update={"digest": msg["digest"], "files": msg.get("files"), "bytes": msg.get("bytes"),
                                                   "observed_at": now, "message": empty})
                else:
                    failed, _ = termination(pods, want_success=False)
                    why = (failed or {}).get("error") or (failed or {}).get("message") or "the digest Job failed or was deleted"
                    data = data.model_copy(update={"message": f"digest check {data.check_job}: {why}"})
                    events.append(("Warning", "DataCheckFailed", data.message))
                if job is not None:
                    await self.client.delete(r.JOBS, ns, check_job)
                data = data.model_copy(update={"check_job": None})
        if decide.data_check_due(data, trig.check_interval, now) and not sched.spec.suspend:
            job = build.digest_job(obj, sched.spec, sched.spec.job_template.spec.image or self.trainer_image, now,
                                   self.run_as_user, self.pull_policy)
            await self.client.create(r.JOBS, ns, job, read_existing=False)
            data = data.model_copy(update={"check_job": job["metadata"]["name"], "check_started_at": now})
            # recorded at once: whatever fails later in this tick, the next tick finds this Job instead of making another
            wire = {**recorded, "data": data.wire()}
            await self._patch_status(ns, obj["metadata"]["name"], recorded, wire)
            recorded.clear()
            recorded.update(wire)
        return data

    async def _observe_prometheus(self, ns: str, sched: FineTuneSchedule, prom: list[PrometheusObservation], now: dt.datetime) -> list[PrometheusObservation]:
        by_name = {p.name: p for p in prom}
        out = []
        for trig in sched.spec.triggers.prometheus:
            obs = by_name.get(trig.name) or PrometheusObservation(name=trig.name)
            if decide.prometheus_check_due(by_name.get(trig.name), trig.interval, now, trig.for_) and not sched.spec.suspend:
                provider: QueryClient = self.provider_factory(trig.provider_ref or self.prometheus_url, ns)
                try:
                    value = await provider.query(trig.query)
                    if value is not None and not isinstance(value, (int, float)):
                        raise ProviderError(f"the query returned {type(value).__name__}, not a number")
                    obs = decide.observe_prometheus(obs, None if value is None else float(value), None, now)
                except Exception as exc:  # noqa: BLE001 - any failure to get a number is "no answer", never a crashed tick
                    text = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
                    obs = decide.observe_prometheus(obs, None, text[:ERROR_TEXT], now)
            out.append(obs)
        return out

    async def _judge_runs(self, ns: str, runs: list[ScheduleRun], jobs: dict[str, dict], rollout: dict | None,
                          require_improvement: bool, events: list, *, obj: dict | None = None,
                          foreign: dict[str, str] | None = None, now: dt.datetime | None = None) -> list[ScheduleRun]:
        """Judge every run on the FineTuneJob the schedule created for it. `jobs`: the schedule's own (controlled)
        FineTuneJobs; a run recorded with a uid is judged only on the object of that uid (a job deleted and made
        again under its name by someone else is not that run); one of `jobs` no run records (made before a status
        patch was lost) is adopted only when its spec is what the schedule's template builds for it — anyone can
        copy the ownerReference, nobody can change a FineTuneJob's spec — with its champion annotation checked
        the same way. What is not adopted moves from `jobs` to `foreign` (named in RunsOwned, never judged, handed
        off or deleted)."""
        foreign = foreign if foreign is not None else {}
        out = []
        known = {x.name for x in runs}
        for name, job in sorted(jobs.items(), key=lambda kv: kv[1]["metadata"].get("creationTimestamp") or ""):
            if name not in known:  # made before a status patch was lost: adopt it, when it is what we would have made
                why = await self._not_ours(ns, obj, job, now) if obj is not None else None
                if why:
                    foreign[name] = why
                    del jobs[name]  # not a run: never judged, reused, replaced or deleted
                    continue
                labels = job["metadata"].get("labels") or {}
                ann = job["metadata"].get("annotations") or {}
                runs = [*runs, ScheduleRun(name=name, uid=job["metadata"].get("uid"),
                                           trigger=labels.get(build.LABEL_TRIGGER, TriggerKind.MANUAL.value),
                                           reason=ann.get(build.ANNOTATION_REASON, ""),
                                           started_at=_ts(job["metadata"].get("creationTimestamp")),
                                           champion=ann.get(build.ANNOTATION_CHAMPION),
                                           data_digest=ann.get(build.ANNOTATION_DATA_DIGEST))]
        for run in runs:
            ftj = jobs.get(run.name)
            if ftj is not None and run.uid and ftj["metadata"].get("uid") != run.uid:
                foreign[run.name] = f"not the FineTuneJob the schedule created for run {run.name} (uid {run.uid})"
                del jobs[run.name]
        for run in runs:
            if _v(run.outcome) in FINAL:
                if run.name in jobs or _v(run.phase) != RunPhase.RUNNING.value:
                    out.append(run)
                continue
            ftj = jobs.get(run.name)
            mv_name = ((ftj or {}).get("status") or {}).get("children", {}).get("modelVersion")
            mv = await self.client.get(r.MODELVERSIONS, ns, mv_name) if mv_name else None
            j = decide.judge(run, ftj, mv, rollout, require_improvement)
            update: dict[str, Any] = {"phase": j.phase.value, "outcome": j.outcome.value, "message": j.message,
                                      "model_version": j.model_version, "verdict": j.verdict, "serving_outcome": j.serving_outcome}
            if j.phase != RunPhase.RUNNING and run.finished_at is None:
                update["finished_at"] = _ts(((ftj or {}).get("status") or {}).get("completionTime")) or utcnow()
            if j.hand_off and rollout is not None:
                await self.client.patch(r.ROLLOUTS, ns, rollout["metadata"]["name"], {"spec": {"candidate": {"name": j.model_version}}})
                # the next run judged in this tick sees the hand-off (it waits instead of overwriting it)
                rollout = {**rollout, "spec": {**(rollout.get("spec") or {}), "candidate": {"name": j.model_version}}}
                events.append(("Normal", "HandedOff", j.message))
            elif j.outcome.value in FINAL and _v(run.outcome) != j.outcome.value:
                events.append(("Warning" if j.phase == RunPhase.FAILED else "Normal", j.outcome.value, j.message))
            out.append(run.model_copy(update=update))
        return out

    async def _not_ours(self, ns: str, obj: dict, job: dict, now: dt.datetime | None) -> str | None:
        """Why a controlled FineTuneJob no run records is not adopted (None: adopt it): its spec must be the one the
        schedule's template builds under its name, with the champion its annotation names (that ModelVersion's
        eval.json as the serving reference, or no serving gates without one)."""
        try:
            sched = FineTuneSchedule.model_validate(obj)
            ann = job["metadata"].get("annotations") or {}
            champ_name = ann.get(build.ANNOTATION_CHAMPION)
            champion = await self.client.get(r.MODELVERSIONS, ns, champ_name) if champ_name else None
            if champ_name and champion is None:
                return f"its champion annotation names ModelVersion {champ_name}, which does not exist"
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            return f"its spec cannot be compared with the schedule's template ({type(exc).__name__})"
        return build.template_mismatch(obj, sched.spec, job, champion, now or utcnow())

    @staticmethod
    def _owned_condition(conds: list[Condition], foreign: dict[str, str], events: list, now: dt.datetime,
                         generation: int | None) -> None:
        """RunsOwned: False (JobNotOwned) naming the labelled FineTuneJobs the schedule ignores, with one Warning each
        time that list changes; True (Owned) once none is left. Absent while no such job was ever seen."""
        old = next((c for c in conds if c.type == FineTuneScheduleCondition.RUNS_OWNED.value), None)
        if foreign:
            names = sorted(foreign)
            msg = (f"ignored FineTuneJob(s) labelled {build.LABEL_SCHEDULE} that this schedule did not create: "
                   + "; ".join(f"{n} ({foreign[n]})" for n in names[:10]) + (f"; and {len(names) - 10} more" if len(names) > 10 else "")
                   + " — they are never judged or handed off")[:MAX_MESSAGE]
            if old is None or old.status != "False" or old.message != msg:
                events.append(("Warning", FineTuneScheduleReason.JOB_NOT_OWNED.value, msg))
            set_condition(conds, FineTuneScheduleCondition.RUNS_OWNED, False, FineTuneScheduleReason.JOB_NOT_OWNED, msg, now=now,
                          generation=generation)
        elif old is not None:
            set_condition(conds, FineTuneScheduleCondition.RUNS_OWNED, True, FineTuneScheduleReason.OWNED,
                          "every FineTuneJob labelled for this schedule is one of its runs", now=now, generation=generation)

    # --- status helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _message(spec: Any, phase: SchedulePhase, active: list[str], runs: list[ScheduleRun], dec: decide.Decision,
                 data: DataObservation | None) -> str:
        if phase == SchedulePhase.SUSPENDED:
            return "suspended: no new runs start"
        parts = [f"running {', '.join(active)}"] if active else []
        done = [x for x in runs if _v(x.outcome) in FINAL]
        if done:
            parts.append(f"last run {done[-1].name}: {done[-1].outcome if isinstance(done[-1].outcome, str) else done[-1].outcome.value}")
        if dec.next_schedule_time:
            parts.append(f"next {dec.next_schedule_time.isoformat()}")
        if data and data.message:
            parts.append(data.message)
        return "; ".join(parts) or "waiting for a trigger"

    @staticmethod
    def _conditions(old: list[Condition], runs: list[ScheduleRun], now: dt.datetime, generation: int | None) -> list[Condition]:
        conds = [c.model_copy() for c in old]
        done = [x for x in runs if _v(x.phase) != RunPhase.RUNNING.value]
        if not done:
            return conds
        last = done[-1]
        set_condition(conds, FineTuneScheduleCondition.LAST_RUN_SUCCEEDED, _v(last.phase) == RunPhase.SUCCEEDED.value,
                      _v(last.outcome), f"{last.name}: {last.message}", now=now, generation=generation)
        return conds

    async def _patch_status(self, ns: str, name: str, old: dict, new: dict) -> None:
        if new == old:
            return
        body = merge_patch(old, new)
        await self.client.patch(r.FINETUNESCHEDULES, ns, name, {"status": body}, subresource="status")


# The tick, in order: observe, decide, replace, start, prune the history, write the status (each a Reconciler step).
TickStep = Callable[[Reconciler, Tick], Awaitable[None]]
TICK_STEPS: tuple[TickStep, ...] = (Reconciler._observe, Reconciler._decide, Reconciler._replace, Reconciler._start,
                                    Reconciler._prune_history, Reconciler._write_status)
