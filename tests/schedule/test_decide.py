"""The pure decisions of a FineTuneSchedule: cron due times, triggers, concurrency, the hand-off verdict."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.schedule import (
    DataObservation,
    FineTuneSchedule,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.operator.schedule import decide

from . import samples

pytestmark = pytest.mark.unit
UTC = dt.UTC
CREATED = dt.datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday


def spec(**kw):
    return FineTuneSchedule.model_validate(samples.schedule(**kw)).spec


def at(h: int, m: int = 0, day: int = 23) -> dt.datetime:
    return dt.datetime(2026, 11, day, h, m, tzinfo=UTC)


def run_decide(s, now, **kw):
    args = {"created": CREATED, "last_schedule_time": None, "data": None, "prom": [], "retrain": None,
            "last_retrain": None, "active": []}
    args.update(kw)
    return decide.decide(s, now=now, **args)


def test_cron_not_due_before_its_time_and_says_when():
    d = run_decide(spec(), at(2, 59))
    assert d.start == [] and d.next_schedule_time == at(3)


def test_cron_fires_at_its_time_and_names_the_run_by_the_minute():
    d = run_decide(spec(), at(3, 0))
    assert [f.trigger for f in d.start] == [TriggerKind.SCHEDULE]
    assert d.last_schedule_time == at(3) and d.next_schedule_time == at(3, day=30)
    assert decide.run_name("bot", d.start[0]) == f"bot-{int(at(3).timestamp()) // 60}"
    assert "schedule '0 3 * * 1' at 2026-11-23T03:00:00+00:00" in d.start[0].reason


def test_cron_already_acted_on_does_not_fire_again():
    assert run_decide(spec(), at(3, 30), last_schedule_time=at(3)).start == []


def test_missed_cron_times_collapse_into_the_latest_one():
    s = spec(schedule="*/10 * * * *")
    d = run_decide(s, at(4, 5), last_schedule_time=at(3))
    assert len(d.start) == 1 and d.last_schedule_time == at(4) and d.next_schedule_time == at(4, 10)


def test_starting_deadline_skips_a_late_cron_time():
    d = run_decide(spec(startingDeadlineSeconds=600), at(3, 11))
    assert d.start == [] and d.last_schedule_time == at(3)
    assert "660s late > startingDeadlineSeconds 600" in d.notes[0]


def test_forbid_skips_the_cron_time_while_a_run_is_active():
    d = run_decide(spec(concurrencyPolicy="Forbid"), at(3), active=["bot-1"])
    assert d.start == [] and d.last_schedule_time == at(3)
    assert "bot-1 still running (concurrencyPolicy Forbid)" in d.notes[0]


def test_forbid_keeps_a_data_trigger_pending_until_the_run_ends():
    s = spec(schedule=None, triggers={"newData": {"claimName": "datasets"}})
    data = DataObservation(digest="sha256:bbbb", last_run_digest="sha256:aaaa", files=3, bytes=10)
    assert run_decide(s, at(5), data=data, active=["bot-1"]).start == []
    fired = run_decide(s, at(6), data=data, active=[]).start
    assert [f.trigger for f in fired] == [TriggerKind.NEW_DATA] and fired[0].digest == "sha256:bbbb"
    assert "data digest aaaa → bbbb (3 files, 10 bytes" in fired[0].reason


def test_replace_deletes_the_active_run_and_allow_overlaps():
    assert run_decide(spec(concurrencyPolicy="Replace"), at(3), active=["bot-1"]).delete == ["bot-1"]
    allow = run_decide(spec(concurrencyPolicy="Allow"), at(3), active=["bot-1"])
    assert allow.delete == [] and len(allow.start) == 1


def test_suspend_starts_nothing_and_consumes_the_cron_time():
    d = run_decide(spec(suspend=True), at(3), retrain="2026-11-23T03:00:00Z")
    assert d.start == [] and d.last_schedule_time == at(3) and "suspended" in d.notes[0]


def test_the_first_digest_is_a_baseline_not_new_data():
    s = spec(schedule=None, triggers={"newData": {"claimName": "datasets"}})
    d = run_decide(s, at(5), data=DataObservation(digest="sha256:aaaa"))
    assert d.start == [] and d.baseline_digest == "sha256:aaaa"
    same = run_decide(s, at(6), data=DataObservation(digest="sha256:aaaa", last_run_digest="sha256:aaaa"))
    assert same.start == [] and same.baseline_digest is None


def test_manual_retrain_fires_once_per_annotation_value():
    s = spec(schedule=None, triggers={"newData": {"claimName": "datasets"}})
    d = run_decide(s, at(5), retrain="t1")
    assert [f.trigger for f in d.start] == [TriggerKind.MANUAL]
    assert run_decide(s, at(5), retrain="t1", last_retrain="t1").start == []
    assert decide.run_name("bot", d.start[0]) != decide.run_name("bot", run_decide(s, at(5), retrain="t2").start[0])


def test_several_triggers_make_one_run_with_every_reason():
    s = spec(triggers={"newData": {"claimName": "datasets"}})
    d = run_decide(s, at(3), retrain="t1", data=DataObservation(digest="sha256:b", last_run_digest="sha256:a"))
    assert [f.trigger for f in d.start] == [TriggerKind.MANUAL, TriggerKind.SCHEDULE, TriggerKind.NEW_DATA]


PROM = {"prometheus": [{"name": "drift", "query": "max(x) > 0.25", "for": "30m", "interval": "5m"}]}


def test_prometheus_trigger_must_hold_for_its_duration_then_fires_once_per_holding_period():
    s = spec(schedule=None, triggers=PROM)
    o = decide.observe_prometheus(decide.PrometheusObservation(name="drift"), 0.4, None, at(5))
    assert o.holding_since == at(5)
    o = decide.observe_prometheus(o, 0.5, None, at(5, 25))
    assert run_decide(s, at(5, 25), prom=[o]).start == []  # held 25 of 30 minutes
    o = decide.observe_prometheus(o, 0.5, None, at(5, 30))
    d = run_decide(s, at(5, 30), prom=[o])
    assert [f.prometheus for f in d.start] == ["drift"] and "value 0.5 held since 2026-11-23T05:00:00+00:00 (for 30m)" in d.start[0].reason
    o = o.model_copy(update={"fired": True})  # the reconciler marks it when the run starts
    assert run_decide(s, at(5, 40), prom=[decide.observe_prometheus(o, 0.5, None, at(5, 40))]).start == []


def test_prometheus_trigger_rearms_when_it_stops_holding_and_errors_keep_the_period():
    o = PrometheusObservation(name="drift", holding_since=at(5), fired=True, checked_at=at(5, 30), value=0.5)
    err = decide.observe_prometheus(o, None, "Prometheus unreachable", at(5, 35))
    assert err.holding_since == at(5) and err.message == "Prometheus unreachable"
    for quiet in (0.0, None, float("nan")):
        back = decide.observe_prometheus(o, quiet, None, at(5, 35))
        assert back.holding_since is None and back.fired is False


def test_check_due_times():
    data = DataObservation(check_started_at=at(5))
    assert not decide.data_check_due(data, "15m", at(5, 14))
    assert decide.data_check_due(data, "15m", at(5, 15))
    assert not decide.data_check_due(data.model_copy(update={"check_job": "bot-digest-1"}), "15m", at(6))
    assert decide.data_check_due(None, "15m", at(6))


# --- the hand-off verdict ----------------------------------------------------------------------------------------

RUN = ScheduleRun(name="bot-1", trigger=TriggerKind.SCHEDULE, champion="support-bot-v1")


def judge(run=RUN, job=None, mv=None, ro=None, require=True):
    return decide.judge(run, job, mv, ro if ro is not None else samples.rollout("support-bot-v1"), require)


def better(reason="exactMatch +0.08 [0.03, 0.12]"):
    return {"modelVersion": "support-bot-v1", "outcome": "Better", "metric": "exactMatch", "reason": reason}


def test_running_failed_and_deleted_runs():
    assert judge(job={"status": {"phase": "Training"}}).phase == RunPhase.RUNNING
    failed = judge(job=samples.finished_job("bot-1", "Failed"))
    assert (failed.phase, failed.outcome, failed.message) == (RunPhase.FAILED, RunOutcome.NO_MODEL_VERSION, "training pod OOMKilled")
    assert judge(job=None).outcome == RunOutcome.NO_MODEL_VERSION


def test_a_run_that_beats_the_champion_is_handed_off():
    j = judge(job=samples.finished_job("bot-1", mv="support-bot-v2"), mv=samples.model_version("support-bot-v2", serving=better()))
    assert j.hand_off and j.outcome == RunOutcome.HANDED_OFF and j.serving_outcome == "Better"
    assert j.message == "support-bot-v2 beat support-bot-v1 (Better); set as the candidate of Rollout bot"


def test_a_run_that_lost_to_the_champion_is_recorded_not_handed_off():
    worse = {"modelVersion": "support-bot-v1", "outcome": "Worse", "reason": "exactMatch −0.05 [−0.09, −0.01]"}
    j = judge(job=samples.finished_job("bot-1", mv="support-bot-v2"), mv=samples.model_version("support-bot-v2", serving=worse))
    assert not j.hand_off and j.outcome == RunOutcome.LOST_TO_SERVING
    assert "lost to the serving version support-bot-v1 (exactMatch −0.05 [−0.09, −0.01])" in j.message


def test_no_significant_difference_is_not_better_unless_allowed():
    nsd = {"modelVersion": "support-bot-v1", "outcome": "NoSignificantDifference", "reason": "within noise"}
    job, mv = samples.finished_job("bot-1", mv="v2"), samples.model_version("v2", serving=nsd)
    assert judge(job=job, mv=mv).outcome == RunOutcome.NOT_BETTER
    assert judge(job=job, mv=mv, require=False).hand_off


def test_failed_gates_reject_and_a_missing_comparison_is_not_compared():
    job = samples.finished_job("bot-1", mv="v2")
    rej = judge(job=job, mv=samples.model_version("v2", verdict="Failed", phase="Rejected"))
    assert rej.outcome == RunOutcome.REJECTED and "exactMatch: improvement 0.01 < required 0.02" in rej.message
    assert judge(job=job, mv=samples.model_version("v2")).outcome == RunOutcome.NOT_COMPARED


def test_first_version_needs_only_a_passed_verdict():
    first = RUN.model_copy(update={"champion": None})
    j = judge(run=first, job=samples.finished_job("bot-1", mv="v1"), mv=samples.model_version("v1"), ro=samples.rollout(None, candidate="x", phase="Degraded"))
    assert j.hand_off and "is the first version" in j.message


def test_a_rollout_that_waits_for_its_first_version_takes_the_first_winner_at_once():
    first = RUN.model_copy(update={"champion": None})
    job, mv = samples.finished_job("bot-1", mv="v1"), samples.model_version("v1")
    for ro in (samples.rollout(None, phase="Waiting"), {**samples.rollout(None), "status": {}}):  # Waiting, or not reconciled yet
        j = judge(run=first, job=job, mv=mv, ro=ro)
        assert (j.outcome, j.hand_off, j.phase) == (RunOutcome.HANDED_OFF, True, RunPhase.SUCCEEDED)
        assert j.message == "v1 is the first version (nothing serving); set as the candidate of Rollout bot"
    # only a Rollout that does not exist at all makes the winner wait
    missing = decide.judge(first, job, mv, None, True)
    assert (missing.outcome, missing.hand_off, missing.message) == (RunOutcome.PENDING, False, "v1 won; waiting for its Rollout to exist")


def test_a_run_without_a_champion_is_not_handed_off_once_another_version_serves():
    """It started while the Rollout was Waiting; a version was rolled out meanwhile (by hand, or an earlier run): the
    run was never compared with it, so it must not replace it."""
    first = RUN.model_copy(update={"champion": None})
    j = judge(run=first, job=samples.finished_job("bot-2", mv="v2"), mv=samples.model_version("v2"), ro=samples.rollout("v1"))
    assert (j.outcome, j.hand_off) == (RunOutcome.NOT_COMPARED, False)
    assert j.message == "v2 has no comparison with the serving version v1 (the run started without a champion); not rolled out"


def test_a_busy_rollout_makes_a_winner_wait_and_a_changed_champion_voids_the_comparison():
    job, mv = samples.finished_job("bot-1", mv="v2"), samples.model_version("v2", serving=better())
    busy = samples.rollout("support-bot-v1", candidate="v9", phase="Progressing")
    j = judge(job=job, mv=mv, ro=busy)
    assert j.outcome == RunOutcome.PENDING and not j.hand_off and "finish rolling out v9" in j.message
    moved = judge(job=job, mv=mv, ro=samples.rollout("v9"))
    assert moved.outcome == RunOutcome.NOT_COMPARED and "but v9 serves now" in moved.message


def test_history_limits_delete_the_oldest_finished_runs():
    final = {"Succeeded": "LostToServing", "Failed": "NoModelVersion", "Running": "Pending"}  # finished runs have a final outcome
    runs = [ScheduleRun(name=f"r{i}", trigger=TriggerKind.SCHEDULE, phase=p, outcome=final[p])
            for i, p in enumerate(["Succeeded", "Failed", "Succeeded", "Failed", "Succeeded", "Running"])]
    assert decide.history_to_delete(runs, 2, 1) == ["r0", "r1"]
    assert decide.history_to_delete(runs, 0, 0) == ["r0", "r2", "r4", "r1", "r3"]
