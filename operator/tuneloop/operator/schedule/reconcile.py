"""One tick of a FineTuneSchedule (I/O only: the decisions are `decide`, the manifests `build`).

A tick reads the schedule's FineTuneJobs (by label), the Rollout, the ModelVersions of unfinished runs, the digest
Job when one runs, and the Prometheus triggers that are due; then starts, deletes and hands off; then patches the
status once. It returns the seconds until something is due (the next cron time, check, or a short poll while a
digest Job runs or a winner waits for a busy Rollout), so an idle schedule costs nothing between its times.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import ValidationError

from tuneloop.api.common import Condition
from tuneloop.api.conditions import FineTuneScheduleCondition, set_condition
from tuneloop.api.schedule import (
    RETRAIN_ANNOTATION,
    DataObservation,
    FineTuneSchedule,
    FineTuneScheduleStatus,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    SchedulePhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.operator.analysis.prometheus import PrometheusClient, PrometheusError, QueryClient
from tuneloop.operator.finetunejob.state import termination
from tuneloop.operator.kube import ApiError, KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout.analysis import parse_duration

from . import build, decide

log = logging.getLogger(__name__)
POLL = 5.0  # while a digest Job runs or a winner waits for a busy Rollout
IDLE = 3600.0  # longest sleep (a FineTuneJob event wakes the loop earlier)
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


class Reconciler:
    def __init__(self, client: KubeClient, *, prometheus_url: str, trainer_image: str, run_as_user: int = 1000,
                 pull_policy: str = "IfNotPresent", provider_factory: Any = None):
        self.client = client
        self.prometheus_url = prometheus_url
        self.trainer_image = trainer_image
        self.run_as_user = run_as_user
        self.pull_policy = pull_policy
        self.provider_factory = provider_factory or (lambda url: PrometheusClient(url))

    async def tick(self, obj: dict, now: dt.datetime | None = None) -> float:
        now = now or utcnow()
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        old_raw = obj.get("status") or {}
        try:
            sched = FineTuneSchedule.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = f"invalid FineTuneSchedule at {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            await self._patch_status(ns, name, old_raw, {"phase": SchedulePhase.FAILED.value, "message": msg,
                                                         "observedGeneration": meta.get("generation")})
            return IDLE
        spec = sched.spec
        try:
            st = FineTuneScheduleStatus.model_validate(old_raw)
        except ValidationError:
            st = FineTuneScheduleStatus()
        events: list[tuple[str, str, str]] = []
        created = _ts(meta.get("creationTimestamp")) or now

        # --- observe: runs, the Rollout, the data digest, Prometheus ---------------------------------------------
        jobs = {j["metadata"]["name"]: j for j in await self.client.list(r.FINETUNEJOBS, ns, labels={build.LABEL_SCHEDULE: name})}
        rollout = await self.client.get(r.ROLLOUTS, ns, spec.hand_off.rollout.name)
        ro_st = (rollout or {}).get("status") or {}
        serving = ro_st.get("stableModelVersion") or (((rollout or {}).get("spec") or {}).get("stable") or {}).get("name")
        data = await self._observe_data(obj, sched, st.data, now, events)
        prom = await self._observe_prometheus(sched, st.prometheus, now)
        runs = await self._judge_runs(ns, st.runs, jobs, rollout, spec.hand_off.require_improvement, events)
        active = [r_.name for r_ in runs if _v(r_.phase) == RunPhase.RUNNING.value]

        # --- decide and start ------------------------------------------------------------------------------------
        retrain = (meta.get("annotations") or {}).get(RETRAIN_ANNOTATION)
        dec = decide.decide(spec, created=created, last_schedule_time=st.last_schedule_time, data=data, prom=prom,
                            retrain=retrain, last_retrain=st.last_retrain_request, active=active, now=now)
        if dec.baseline_digest and data is not None:
            data = data.model_copy(update={"last_run_digest": dec.baseline_digest})
        for note in dec.notes:
            events.append(("Normal", "RunSkipped" if note.startswith("skipped") else "RunWaiting", note))
        for victim in dec.delete:
            await self.client.delete(r.FINETUNEJOBS, ns, victim)
            runs = [x.model_copy(update={"phase": RunPhase.FAILED.value, "outcome": RunOutcome.NO_MODEL_VERSION.value,
                                         "finished_at": now, "message": "replaced by a newer run (concurrencyPolicy Replace)"})
                    if x.name == victim else x for x in runs]
            events.append(("Normal", "RunReplaced", f"deleted {victim} (concurrencyPolicy Replace)"))
        last_retrain = st.last_retrain_request
        last_run_time = st.last_run_time
        if dec.start:
            first = dec.start[0]
            champion = await self.client.get(r.MODELVERSIONS, ns, serving) if serving else None
            run = decide.run_name(name, first)
            job, why_not = build.finetunejob(obj, spec, first, run, champion, now)
            _, made = await self.client.create(r.FINETUNEJOBS, ns, job, read_existing=False)
            reason = "; ".join(f.reason for f in dec.start)
            if made:
                runs.append(ScheduleRun(name=run, trigger=first.trigger, reason=reason, started_at=now, champion=serving if champion else None,
                                        data_digest=next((f.digest for f in dec.start if f.digest), None),
                                        message=f"no champion comparison: {why_not}" if why_not else ""))
                events.append(("Normal", "RunStarted", f"started {run}: {reason}"))
                if why_not:
                    events.append(("Warning", "NoChampionComparison", why_not))
                last_run_time = now
            for f in dec.start:
                if f.trigger == TriggerKind.MANUAL:
                    last_retrain = retrain
                if f.digest and data is not None:
                    data = data.model_copy(update={"last_run_digest": f.digest})
                if f.prometheus:
                    prom = [p.model_copy(update={"fired": True}) if p.name == f.prometheus else p for p in prom]

        # --- history limits ---------------------------------------------------------------------------------------
        for old in decide.history_to_delete(runs, spec.successful_runs_history_limit, spec.failed_runs_history_limit):
            await self.client.delete(r.FINETUNEJOBS, ns, old)
            runs = [x for x in runs if x.name != old]

        # --- status -------------------------------------------------------------------------------------------------
        active = [x.name for x in runs if _v(x.phase) == RunPhase.RUNNING.value]
        last_ok = max([x.finished_at for x in runs if _v(x.phase) == RunPhase.SUCCEEDED.value and x.finished_at]
                      + ([st.last_successful_time] if st.last_successful_time else []), default=None)
        phase = SchedulePhase.SUSPENDED if spec.suspend else SchedulePhase.RUNNING if active else SchedulePhase.IDLE
        message = self._message(spec, phase, active, runs, dec, data)
        new = FineTuneScheduleStatus(
            phase=phase, active=active, last_schedule_time=dec.last_schedule_time, next_schedule_time=dec.next_schedule_time,
            last_run_time=last_run_time, last_successful_time=last_ok, serving_model_version=serving, runs=runs[-100:],
            data=data, prometheus=prom, last_retrain_request=last_retrain, observed_generation=meta.get("generation"),
            message=message, conditions=self._conditions(st.conditions, runs, now, meta.get("generation")),
        )
        await self._patch_status(ns, name, old_raw, new.wire())
        for type_, reason, msg in events:
            (log.warning if type_ == "Warning" else log.info)("schedule %s/%s: %s: %s", ns, name, reason, msg)
            try:
                await self.client.event(obj, type=type_, reason=reason, message=msg)
            except ApiError:
                log.debug("event not recorded", exc_info=True)
        return self._delay(sched, new, runs, now)

    # --- observation helpers ----------------------------------------------------------------------------------------

    async def _observe_data(self, obj: dict, sched: FineTuneSchedule, data: DataObservation | None, now: dt.datetime,
                            events: list) -> DataObservation | None:
        trig = sched.spec.triggers.new_data
        if trig is None:
            return None
        data = data or DataObservation()
        ns = obj["metadata"]["namespace"]
        if data.check_job:
            job = await self.client.get(r.JOBS, ns, data.check_job)
            conds = {c.get("type"): c.get("status") for c in ((job or {}).get("status") or {}).get("conditions") or []}
            if job is None or conds.get("Complete") == "True" or conds.get("Failed") == "True":
                pods = await self.client.list(r.PODS, ns, labels={"job-name": data.check_job}) if job else []
                msg, _ = termination(pods, want_success=True)
                if msg and msg.get("digest"):
                    data = data.model_copy(update={"digest": msg["digest"], "files": msg.get("files"), "bytes": msg.get("bytes"),
                                                   "observed_at": now, "message": None})
                else:
                    failed, _ = termination(pods, want_success=False)
                    why = (failed or {}).get("error") or (failed or {}).get("message") or "the digest Job failed or was deleted"
                    data = data.model_copy(update={"message": f"digest check {data.check_job}: {why}"})
                    events.append(("Warning", "DataCheckFailed", data.message))
                if job is not None:
                    await self.client.delete(r.JOBS, ns, data.check_job)
                data = data.model_copy(update={"check_job": None})
        if decide.data_check_due(data, trig.check_interval, now) and not sched.spec.suspend:
            job = build.digest_job(obj, sched.spec, sched.spec.job_template.spec.image or self.trainer_image, now,
                                   self.run_as_user, self.pull_policy)
            await self.client.create(r.JOBS, ns, job, read_existing=False)
            data = data.model_copy(update={"check_job": job["metadata"]["name"], "check_started_at": now})
        return data

    async def _observe_prometheus(self, sched: FineTuneSchedule, prom: list[PrometheusObservation], now: dt.datetime) -> list[PrometheusObservation]:
        by_name = {p.name: p for p in prom}
        out = []
        for trig in sched.spec.triggers.prometheus:
            obs = by_name.get(trig.name) or PrometheusObservation(name=trig.name)
            if decide.prometheus_check_due(by_name.get(trig.name), trig.interval, now) and not sched.spec.suspend:
                provider: QueryClient = self.provider_factory(trig.prometheus_address or self.prometheus_url)
                try:
                    obs = decide.observe_prometheus(obs, await provider.query(trig.query), None, now)
                except PrometheusError as exc:
                    obs = decide.observe_prometheus(obs, None, str(exc), now)
            out.append(obs)
        return out

    async def _judge_runs(self, ns: str, runs: list[ScheduleRun], jobs: dict[str, dict], rollout: dict | None,
                          require_improvement: bool, events: list) -> list[ScheduleRun]:
        out = []
        known = {x.name for x in runs}
        for name, job in sorted(jobs.items(), key=lambda kv: kv[1]["metadata"].get("creationTimestamp") or ""):
            if name not in known:  # made before a status patch was lost: adopt it
                labels = job["metadata"].get("labels") or {}
                runs = [*runs, ScheduleRun(name=name, trigger=labels.get(build.LABEL_TRIGGER, TriggerKind.MANUAL.value),
                                           reason=(job["metadata"].get("annotations") or {}).get(build.ANNOTATION_REASON, ""),
                                           started_at=_ts(job["metadata"].get("creationTimestamp")),
                                           champion=(job["metadata"].get("annotations") or {}).get(build.ANNOTATION_CHAMPION))]
        for run in runs:
            if _v(run.outcome) in FINAL:
                if run.name in jobs or _v(run.phase) != RunPhase.RUNNING.value:
                    out.append(run)
                continue
            job = jobs.get(run.name)
            mv_name = ((job or {}).get("status") or {}).get("children", {}).get("modelVersion")
            mv = await self.client.get(r.MODELVERSIONS, ns, mv_name) if mv_name else None
            j = decide.judge(run, job, mv, rollout, require_improvement)
            update: dict[str, Any] = {"phase": j.phase.value, "outcome": j.outcome.value, "message": j.message,
                                      "model_version": j.model_version, "verdict": j.verdict, "serving_outcome": j.serving_outcome}
            if j.phase != RunPhase.RUNNING and run.finished_at is None:
                update["finished_at"] = _ts(((job or {}).get("status") or {}).get("completionTime")) or utcnow()
            if j.hand_off and rollout is not None:
                await self.client.patch(r.ROLLOUTS, ns, rollout["metadata"]["name"], {"spec": {"candidate": {"name": j.model_version}}})
                events.append(("Normal", "HandedOff", j.message))
            elif j.outcome.value in FINAL and _v(run.outcome) != j.outcome.value:
                events.append(("Warning" if j.phase == RunPhase.FAILED else "Normal", j.outcome.value, j.message))
            out.append(run.model_copy(update=update))
        return out

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
    def _conditions(old: list[Condition], runs: list[ScheduleRun], now: dt.datetime, generation: int | None) -> list[dict]:
        done = [x for x in runs if _v(x.phase) != RunPhase.RUNNING.value]
        if not done:
            return [c.wire() for c in old]
        last = done[-1]
        conds = [c.model_copy() for c in old]
        set_condition(conds, FineTuneScheduleCondition.LAST_RUN_SUCCEEDED, _v(last.phase) == RunPhase.SUCCEEDED.value,
                      _v(last.outcome), f"{last.name}: {last.message}", now=now, generation=generation)
        return [c.wire() for c in conds]

    def _delay(self, sched: FineTuneSchedule, st: FineTuneScheduleStatus, runs: list[ScheduleRun], now: dt.datetime) -> float:
        spec = sched.spec
        due = [IDLE]
        if st.next_schedule_time is not None:
            due.append((st.next_schedule_time - now).total_seconds())
        if st.data is not None:
            if st.data.check_job:
                due.append(POLL)
            elif st.data.check_started_at and spec.triggers.new_data:
                due.append(parse_duration(spec.triggers.new_data.check_interval) - (now - st.data.check_started_at).total_seconds())
        for trig in spec.triggers.prometheus:
            due.append(parse_duration(trig.interval))
            obs = next((p for p in st.prometheus if p.name == trig.name), None)
            if obs and obs.holding_since and not obs.fired:
                due.append(parse_duration(trig.for_) - (now - obs.holding_since).total_seconds())
        if any(_v(x.outcome) == RunOutcome.PENDING.value and _v(x.phase) == RunPhase.SUCCEEDED.value for x in runs):
            due.append(POLL)
        return max(0.5, min(due))

    async def _patch_status(self, ns: str, name: str, old: dict, new: dict) -> None:
        if new == old:
            return
        body = merge_patch(old, new)
        await self.client.patch(r.FINETUNESCHEDULES, ns, name, {"status": body}, subresource="status")
