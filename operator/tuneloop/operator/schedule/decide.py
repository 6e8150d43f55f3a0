"""Pure decisions of a FineTuneSchedule: is a run due, which triggers fired, what the concurrency policy allows,
and what became of a finished run (hand it to the Rollout or record why not). No I/O, explicit clock."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from tuneloop.api.durations import parse_duration
from tuneloop.api.schedule import (
    ConcurrencyPolicy,
    DataObservation,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.contract.names import child_name


@dataclass(frozen=True)
class Fire:
    """One trigger that fired: its kind, why (with the numbers), and the key that names its run deterministically."""

    trigger: TriggerKind
    reason: str
    key: str
    digest: str | None = None
    prometheus: str | None = None
    base_key: str | None = None  # the key before `fresh` suffixed it

    def fresh(self, n: int) -> Fire:
        """The same fire with its n-th fresh key (`<key>-<n>`, n >= 2): for a key already used by an earlier run."""
        base = self.base_key or self.key
        return replace(self, key=base if n <= 1 else f"{base}-{n}", base_key=base)


@dataclass
class Decision:
    """What one tick does: start a run for `fires` (first = the run's trigger), delete runs, advance the cron clock."""

    start: list[Fire] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    last_schedule_time: dt.datetime | None = None
    next_schedule_time: dt.datetime | None = None
    notes: list[str] = field(default_factory=list)  # skipped cron times, waiting triggers (events)
    baseline_digest: str | None = None  # first digest seen: recorded, starts nothing


def _kind(v: object) -> str:
    return str(getattr(v, "value", v))


def _zone(time_zone: str | None) -> ZoneInfo:
    return ZoneInfo(time_zone or "UTC")


def _follows_real_time(schedule: str) -> bool:
    """The hour field is * or */n: the schedule fires every (n-th) hour, so in the repeated hour of a daylight-saving
    change it fires in both passes, as cron does for wildcard jobs."""
    fields = schedule.split()
    hour = fields[1] if len(fields) == 5 else {"@hourly": "*"}.get(fields[0], "0")
    return hour == "*" or hour.startswith("*/")


SLACK = dt.timedelta(hours=3)  # more than any daylight-saving or zone shift: wall-clock order vs real-time order


def _exists(naive: dt.datetime, zone: ZoneInfo, fold: int) -> dt.datetime | None:
    """The instant (UTC) of wall-clock time `naive` in `zone` on pass `fold`, or None when that wall-clock time does not
    exist on that pass."""
    t = naive.replace(tzinfo=zone, fold=fold).astimezone(dt.UTC)
    return t if t.astimezone(zone).replace(tzinfo=None) == naive else None


def _jump(naive: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The instant the clocks jump over the skipped wall-clock time `naive` (the first instant whose wall clock is
    later than it)."""
    lo = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)  # read with the offset after the jump: before it
    hi = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)  # read with the offset before the jump: after it
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).replace(tzinfo=None) > naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _instants(naive: dt.datetime, zone: ZoneInfo, real_time: bool) -> list[dt.datetime]:
    """When the cron wall-clock time `naive` fires, in UTC: once normally; at the jump when the clocks skip it, unless
    the schedule follows real time (hour field * or */n: it simply has no such time that night); in the repeated hour
    at its first pass only, or at both passes when the schedule follows real time."""
    first, second = _exists(naive, zone, 0), _exists(naive, zone, 1)
    if first is None and second is None:
        return [] if real_time else [_jump(naive, zone)]
    if first is not None and second is not None and first != second:
        return [first, second] if real_time else [first]
    return [first or second]  # type: ignore[list-item]


def _steady(zone: ZoneInfo, t: dt.datetime) -> bool:
    """No offset change within SLACK of `t`: around it, wall-clock order is real-time order."""
    return (t - SLACK).astimezone(zone).utcoffset() == t.astimezone(zone).utcoffset() == (t + SLACK).astimezone(zone).utcoffset()


def _wall(t: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    return t.astimezone(zone).replace(tzinfo=None, fold=0)


def _next(schedule: str, after: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The first cron time after `after`, computed on the zone's wall clock, in UTC (`_instants` says when each
    wall-clock time fires). Near an offset change, wall-clock candidates are walked from a little before `after` and
    past the first hit, because there the second pass of an earlier wall-clock time comes later in real time than the
    first pass of a later one; elsewhere the first hit is the answer."""
    real_time = _follows_real_time(schedule)
    it = croniter(schedule, _wall(after, zone) - (dt.timedelta(minutes=1) if _steady(zone, after) else SLACK))
    best: dt.datetime | None = None
    while True:
        naive = it.get_next(dt.datetime)
        if best is not None and (_steady(zone, best) or naive > _wall(best, zone) + SLACK):
            return best
        for t in _instants(naive, zone, real_time):
            if t > after and (best is None or t < best):
                best = t


def _latest(schedule: str, now: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The latest cron time at or before `now`, in UTC (the mirror of `_next`)."""
    real_time = _follows_real_time(schedule)
    start = _wall(now, zone).replace(microsecond=0) + (dt.timedelta(minutes=1) if _steady(zone, now) else SLACK)
    it = croniter(schedule, start)
    best: dt.datetime | None = None
    while True:
        naive = it.get_prev(dt.datetime)
        if best is not None and (_steady(zone, best) or naive < _wall(best, zone) - SLACK):
            return best
        for t in _instants(naive, zone, real_time):
            if t <= now and (best is None or t > best):
                best = t


def cron_due(schedule: str, last: dt.datetime, now: dt.datetime, time_zone: str | None = None) -> tuple[dt.datetime | None, dt.datetime]:
    """(the latest cron time in (last, now], or None; the next cron time after it / after last), in UTC; the cron
    fields are read on `time_zone`'s wall clock (default UTC). Missed times collapse into the latest one, as a CronJob
    with a starting deadline does. Never a due time after `now` (not even by the fraction of a second `now` carries),
    and the next time is always after `now`, across daylight-saving changes in either direction."""
    zone = _zone(time_zone)
    nxt = _next(schedule, last, zone)
    if nxt > now:
        return None, nxt
    due = _latest(schedule, now, zone)
    return due, _next(schedule, due, zone)


def holding(value: float | None) -> bool:
    """A Prometheus trigger holds while its query returns a non-zero number (empty or NaN: not holding)."""
    return value is not None and not math.isnan(value) and value != 0


def observe_prometheus(obs: PrometheusObservation, value: float | None, error: str | None, now: dt.datetime) -> PrometheusObservation:
    """The trigger's state after one evaluation. An error keeps the holding period (no answer is not 'stopped holding')."""
    if error is not None:
        return obs.model_copy(update={"checked_at": now, "message": error, "value": None})
    if holding(value):
        return obs.model_copy(update={"checked_at": now, "message": None, "value": value, "holding_since": obs.holding_since or now})
    return obs.model_copy(update={"checked_at": now, "message": None, "value": value, "holding_since": None, "fired": False})


def prometheus_next_check(obs: PrometheusObservation | None, interval: str, for_: str) -> dt.datetime | None:
    """When the trigger's query is evaluated next (None: now). Every `interval` after the latest check, and once at
    the end of `for` while it holds, so a run starts when the condition has held for `for` (not at the next
    interval after it). A trigger that held for `for` but could not start a run (concurrencyPolicy Forbid, a
    suspended schedule) is checked again only after `interval`: waiting never spins."""
    if obs is None or obs.checked_at is None:
        return None
    nxt = obs.checked_at + dt.timedelta(seconds=parse_duration(interval))
    if obs.holding_since is not None and not obs.fired and obs.value is not None:
        end = obs.holding_since + dt.timedelta(seconds=parse_duration(for_))
        if obs.checked_at < end < nxt:
            nxt = end
    return nxt


def prometheus_check_due(obs: PrometheusObservation | None, interval: str, now: dt.datetime, for_: str = "0s") -> bool:
    nxt = prometheus_next_check(obs, interval, for_)
    return nxt is None or now >= nxt


def data_check_due(data: DataObservation | None, interval: str, now: dt.datetime) -> bool:
    """A new digest Job is due `checkInterval` after the previous one started (none while one runs)."""
    if data is None or data.check_started_at is None:
        return True
    if data.check_job:
        return False
    return (now - data.check_started_at).total_seconds() >= parse_duration(interval)


def _short(digest: str | None) -> str:
    return (digest or "none").removeprefix("sha256:")[:12]


def fired(spec: FineTuneScheduleSpec, status_data: DataObservation | None, prom: list[PrometheusObservation],
          retrain: str | None, last_retrain: str | None, cron_time: dt.datetime | None) -> list[Fire]:
    """Every trigger that wants a run now, manual first."""
    out: list[Fire] = []
    if retrain and retrain != last_retrain:
        out.append(Fire(TriggerKind.MANUAL, f"kubectl tuneloop retrain (annotation tuneloop.dev/retrain={retrain})", f"m{_hash(retrain)}"))
    if cron_time is not None:
        local = f"{cron_time.astimezone(_zone(spec.time_zone)).isoformat()} ({spec.time_zone})" if spec.time_zone else cron_time.isoformat()
        out.append(Fire(TriggerKind.SCHEDULE, f"schedule {spec.schedule!r} at {local}", str(int(cron_time.timestamp()) // 60)))
    d = status_data
    if spec.triggers.new_data and d and d.digest and d.last_run_digest and d.digest != d.last_run_digest:
        out.append(Fire(TriggerKind.NEW_DATA,
                        f"data digest {_short(d.last_run_digest)} → {_short(d.digest)} ({d.files} files, {d.bytes} bytes matching "
                        f"{spec.triggers.new_data.glob!r} on claim {spec.triggers.new_data.claim_name})",
                        f"d{_short(d.digest)}", digest=d.digest))
    by_name = {o.name: o for o in prom}
    for trig in spec.triggers.prometheus:
        o = by_name.get(trig.name)
        # the latest check must have answered, and held: during a Prometheus outage the holding period is kept (no
        # answer is not "stopped holding"), but nothing fires on a check that returned no value.
        if o is None or o.holding_since is None or o.fired or o.message is not None or not holding(o.value):
            continue
        if o.checked_at is None or (o.checked_at - o.holding_since).total_seconds() < parse_duration(trig.for_):
            continue
        out.append(Fire(TriggerKind.PROMETHEUS,
                        f"prometheus trigger {trig.name}: value {o.value:g} held since {o.holding_since.isoformat()} (for {trig.for_})",
                        f"p{_hash(trig.name + o.holding_since.isoformat())}", prometheus=trig.name))
    return out


def data_run_known(data: DataObservation | None, runs: list[ScheduleRun]) -> DataObservation | None:
    """A run for the current digest is already running (made before a status patch was lost, and adopted): record it
    as the latest data run instead of starting another."""
    if data is None or not data.digest or data.digest == data.last_run_digest:
        return data
    if any(r.data_digest == data.digest and _kind(r.phase) == RunPhase.RUNNING.value for r in runs):
        return data.model_copy(update={"last_run_digest": data.digest})
    return data


# Triggers whose key can come back: data returning to an earlier digest (A→B→C→B), a retrain value used again.
REUSABLE_KEYS = (TriggerKind.NEW_DATA, TriggerKind.MANUAL)


def name_in_use(name: str, base_key: str, job: dict[str, Any] | None, known: set[str], model_version_exists: bool) -> str | None:
    """Why a run name cannot be used for a fire of `base_key` (None: it can). A FineTuneJob of that name started for
    the same key and still running is the same run (made before a status patch was lost): it is reused (409). A
    finished or recorded run of that name, or a ModelVersion of the name its version would take, is an earlier run."""
    if job is not None:
        ann = (job.get("metadata") or {}).get("annotations") or {}
        phase = (job.get("status") or {}).get("phase")
        if ann.get("tuneloop.dev/trigger-key") == base_key and phase not in ("Succeeded", "Failed"):
            return None
        return f"the FineTuneJob {name} is an earlier run"
    if name in known:
        return f"{name} is an earlier run (its FineTuneJob was deleted)"
    if model_version_exists:
        return f"the ModelVersion of {name} exists (an earlier run registered it)"
    return None


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(schedule: str, fire: Fire) -> str:
    """Deterministic: a restarted operator re-creating the same run gets 409 instead of a duplicate."""
    return child_name(schedule, fire.key)


def decide(spec: FineTuneScheduleSpec, *, created: dt.datetime, last_schedule_time: dt.datetime | None,
           data: DataObservation | None, prom: list[PrometheusObservation], retrain: str | None,
           last_retrain: str | None, active: list[str], now: dt.datetime) -> Decision:
    """Is a run due, and may it start (suspend, concurrencyPolicy)?"""
    dec = Decision(last_schedule_time=last_schedule_time)
    cron_time = None
    if spec.schedule:
        due, nxt = cron_due(spec.schedule, last_schedule_time or created, now, spec.time_zone)
        dec.next_schedule_time = nxt
        if due is not None:
            dec.last_schedule_time = due  # consumed whatever happens below: a missed time is skipped, not queued
            late = (now - due).total_seconds()
            if spec.suspend:
                dec.notes.append(f"skipped the cron time {due.isoformat()}: suspended")
            elif spec.starting_deadline_seconds is not None and late > spec.starting_deadline_seconds:
                dec.notes.append(f"skipped the cron time {due.isoformat()}: {late:.0f}s late > startingDeadlineSeconds "
                                 f"{spec.starting_deadline_seconds}")
            elif active and _kind(spec.concurrency_policy) == ConcurrencyPolicy.FORBID.value:
                dec.notes.append(f"skipped the cron time {due.isoformat()}: {', '.join(active)} still running (concurrencyPolicy Forbid)")
            else:
                cron_time = due
    if spec.triggers.new_data and data and data.digest and not data.last_run_digest:
        dec.baseline_digest = data.digest  # the data present when the schedule was created is not "new"
    fires = fired(spec, data, prom, retrain, last_retrain, cron_time)
    if not fires or spec.suspend:
        return dec
    policy = _kind(spec.concurrency_policy)
    if active and policy == ConcurrencyPolicy.FORBID.value:
        dec.notes.append(f"{fires[0].trigger.value} trigger waits: {', '.join(active)} still running (concurrencyPolicy Forbid)")
        return dec
    if active and policy == ConcurrencyPolicy.REPLACE.value:
        dec.delete = list(active)
    dec.start = fires
    return dec


# --- what became of a run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    phase: RunPhase
    outcome: RunOutcome
    message: str
    model_version: str | None = None
    verdict: str | None = None
    serving_outcome: str | None = None
    hand_off: bool = False  # set it as the Rollout's candidate now


ROLLOUT_BUSY = ("Progressing", "Paused")


def _against_champion(run: ScheduleRun, mv_name: str, serving: dict[str, Any], serving_now: str | None, require_improvement: bool,
                      base: dict[str, Any]) -> Judgement | None:
    """Why a passing run that was compared with its champion is not handed off (None: it may be)."""
    s_outcome = serving.get("outcome")
    compared_with = serving.get("modelVersion")
    if serving_now and serving_now != run.champion:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name} was compared with {run.champion}, but {serving_now} serves now; not rolled out", **base)
    if not s_outcome:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name} has no comparison with the serving version {run.champion}; not rolled out", **base)
    if compared_with != run.champion:  # e.g. a ModelVersion left by an earlier run of the same name
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name}'s evaluation compared it with {compared_with or 'no version'}, not with the serving "
                         f"version {run.champion}; not rolled out", **base)
    reason = serving.get("reason") or ""
    if s_outcome == "Worse":
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.LOST_TO_SERVING,
                         f"{mv_name} lost to the serving version {run.champion} ({reason}); not rolled out", **base)
    if s_outcome == "NotComparable":
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name} could not be compared with {run.champion} ({reason}); not rolled out", **base)
    if s_outcome != "Better" and require_improvement:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_BETTER,
                         f"{mv_name} is not measurably better than {run.champion} ({s_outcome}: {reason}); not rolled out "
                         "(handOff.requireImprovement)", **base)
    if s_outcome not in ("Better", "NoSignificantDifference"):
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name}: unknown serving outcome {s_outcome!r} against {run.champion}; not rolled out", **base)
    return None


def judge(run: ScheduleRun, ftj: dict[str, Any] | None, mv: dict[str, Any] | None, rollout: dict[str, Any] | None, require_improvement: bool) -> Judgement:
    """A run's outcome from its FineTuneJob, its ModelVersion and the Rollout (pure)."""
    if ftj is None:
        return Judgement(RunPhase.FAILED, RunOutcome.NO_MODEL_VERSION, f"FineTuneJob {run.name} was deleted before it finished")
    st = ftj.get("status") or {}
    phase = st.get("phase")
    if phase == "Failed":
        return Judgement(RunPhase.FAILED, RunOutcome.NO_MODEL_VERSION, st.get("message") or "the FineTuneJob failed")
    if phase != "Succeeded":
        return Judgement(RunPhase.RUNNING, RunOutcome.PENDING, f"FineTuneJob {run.name} is {phase or 'Pending'}")
    mv_name = (st.get("children") or {}).get("modelVersion")
    if not mv_name:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NO_MODEL_VERSION, "the FineTuneJob registered no ModelVersion")
    if mv is None:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.PENDING, f"waiting for ModelVersion {mv_name}", model_version=mv_name)
    ev = (mv.get("spec") or {}).get("evaluation") or {}
    verdict = ev.get("verdict") or "NotEvaluated"
    serving = ev.get("serving") or {}
    s_outcome = serving.get("outcome")
    base = {"model_version": mv_name, "verdict": verdict, "serving_outcome": s_outcome}
    mv_phase = (mv.get("status") or {}).get("phase")
    if verdict != "Passed" or mv_phase == "Rejected":
        failed = [g.get("reason", "") for g in ev.get("gates") or [] if not g.get("passed")]
        why = f"verdict {verdict}" + (f": {failed[0]}" if failed else "")
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.REJECTED, f"{mv_name} was not rolled out: {why}", **base)
    serving_now = serving_version(rollout)
    if run.champion:
        refused = _against_champion(run, mv_name, serving, serving_now, require_improvement, base)
        if refused is not None:
            return refused
    elif serving_now:  # started without a champion (e.g. its Rollout was Waiting), but a version serves by now
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.NOT_COMPARED,
                         f"{mv_name} has no comparison with the serving version {serving_now} (the run started without a champion); "
                         "not rolled out", **base)
    if rollout is None:  # a Rollout that exists but serves nothing (phase Waiting) takes the first winner at once
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.PENDING, f"{mv_name} won; waiting for its Rollout to exist", **base)
    busy = rollout_busy_with(rollout, mv_name)
    if busy:
        return Judgement(RunPhase.SUCCEEDED, RunOutcome.PENDING,
                         f"{mv_name} won; waiting for the Rollout to finish rolling out {busy}", **base)
    won = f"beat {run.champion} ({s_outcome})" if run.champion else "is the first version (nothing serving)"
    return Judgement(RunPhase.SUCCEEDED, RunOutcome.HANDED_OFF,
                     f"{mv_name} {won}; set as the candidate of Rollout {rollout['metadata']['name']}", hand_off=True, **base)


def serving_version(rollout: dict[str, Any] | None) -> str | None:
    """The version the Rollout serves now: its status.stableModelVersion, else the spec.stable it was declared with
    (a Rollout that has not reconciled yet serves that one first)."""
    ro = rollout or {}
    return ((ro.get("status") or {}).get("stableModelVersion")
            or ((ro.get("spec") or {}).get("stable") or {}).get("name"))


def rollout_busy_with(rollout: dict[str, Any], mv_name: str) -> str | None:
    """The other candidate the Rollout is rolling out, or has been handed and not yet picked up (its spec.candidate
    differs from status.candidateModelVersion): a second winner waits instead of overwriting the first's hand-off."""
    st = rollout.get("status") or {}
    stable = serving_version(rollout)
    wanted = ((rollout.get("spec") or {}).get("candidate") or {}).get("name")
    in_flight = st.get("candidateModelVersion")
    if wanted and wanted not in (mv_name, stable) and in_flight != wanted:
        return str(wanted)  # handed off, the Rollout has not started it yet
    if in_flight and in_flight not in (mv_name, stable) and st.get("phase") in ROLLOUT_BUSY:
        return str(in_flight)
    return None


def history_to_delete(runs: list[ScheduleRun], successful_limit: int, failed_limit: int) -> list[str]:
    """Finished runs beyond the history limits, oldest first (runs are kept newest last). Only runs whose outcome is
    final count and go: a run that succeeded but is still Pending (a winner waiting for its Rollout, a ModelVersion
    not yet read) is never deleted, whatever the limit."""
    out: list[str] = []
    for phase, limit in ((RunPhase.SUCCEEDED.value, successful_limit), (RunPhase.FAILED.value, failed_limit)):
        done = [r.name for r in runs if _kind(r.phase) == phase and _kind(r.outcome) != RunOutcome.PENDING.value]
        out += done[: max(0, len(done) - limit)]
    return out


def wake_after(spec: FineTuneScheduleSpec, status: FineTuneScheduleStatus, now: dt.datetime, *, poll: float,
               idle: float) -> float:
    """Seconds until the schedule has something to do: the next cron time, the next data check (a short poll while a
    digest Job runs), the next check of each Prometheus trigger (`prometheus_next_check`), a short poll while a winner
    waits for a busy Rollout; at most `idle`. A suspended schedule checks nothing (a spec change wakes it). Never
    negative: a due time already past (it could not act on it) is not a reason to spin."""
    due = [idle]
    if status.next_schedule_time is not None:
        due.append((status.next_schedule_time - now).total_seconds())
    if status.data is not None and spec.triggers.new_data is not None:
        if status.data.check_job:
            due.append(poll)
        elif status.data.check_started_at and not spec.suspend:
            due.append(parse_duration(spec.triggers.new_data.check_interval) - (now - status.data.check_started_at).total_seconds())
    if not spec.suspend:
        by_name = {p.name: p for p in status.prometheus}
        for trig in spec.triggers.prometheus:
            nxt = prometheus_next_check(by_name.get(trig.name), trig.interval, trig.for_)
            due.append(parse_duration(trig.interval) if nxt is None else (nxt - now).total_seconds())
    if any(_kind(x.outcome) == RunOutcome.PENDING.value and _kind(x.phase) == RunPhase.SUCCEEDED.value for x in status.runs):
        due.append(poll)
    return max(MIN_WAKE, min(due))


MIN_WAKE = 1.0
