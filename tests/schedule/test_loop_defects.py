"""Regressions of issue 20 in the schedule's pure decisions: each test is named after the behaviour that failed
before the fix (demonstrated at 1e627bf with the project's own functions and a fake clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.schedule import (
    DataObservation,
    FineTuneSchedule,
    FineTuneScheduleStatus,
    PrometheusObservation,
    RunOutcome,
    RunPhase,
    ScheduleRun,
    TriggerKind,
)
from tuneloop.operator.builders import schedule as build
from tuneloop.operator.schedule import decide

from . import samples

pytestmark = pytest.mark.unit
UTC = dt.UTC
CREATED = dt.datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
PROM = {"prometheus": [{"name": "drift", "query": "drift > 0.25", "for": "30m", "interval": "5m"}]}


def spec(**kw):
    return FineTuneSchedule.model_validate(samples.schedule(**kw)).spec


def at(h: int, m: int = 0, s: float = 0, day: int = 23) -> dt.datetime:
    return dt.datetime(2026, 11, day, h, m, tzinfo=UTC) + dt.timedelta(seconds=s)


def run_decide(s, now, **kw):
    args = {"created": CREATED, "last_schedule_time": None, "data": None, "prom": [], "retrain": None,
            "last_retrain": None, "active": []}
    args.update(kw)
    return decide.decide(s, now=now, **args)


# --- 1. a Prometheus outage after the trigger held for `for` --------------------------------------------------------


def test_a_prometheus_outage_after_the_trigger_held_does_not_crash_the_tick_and_fires_nothing():
    """Before: the error kept the holding period with value None and the run reason formatted it (TypeError)."""
    s = spec(schedule=None, triggers=PROM)
    held = PrometheusObservation(name="drift", value=0.5, holding_since=at(5), checked_at=at(5, 25))
    down = decide.observe_prometheus(held, None, "Prometheus unreachable", at(5, 35))
    assert down.holding_since == at(5)  # no answer is not "stopped holding"
    assert run_decide(s, at(5, 35), prom=[down]).start == []
    back = decide.observe_prometheus(down, 0.6, None, at(5, 40))  # answers again, still holding: fires now
    d = run_decide(s, at(5, 40), prom=[back])
    assert [f.prometheus for f in d.start] == ["drift"] and "value 0.6 held since 2026-11-23T05:00:00+00:00" in d.start[0].reason


# --- 2. the hot loop -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocked", ["forbid", "suspend", "for-not-a-multiple"])
def test_a_trigger_that_held_but_cannot_fire_does_not_spin(blocked):
    """Before: the wake-up was `for - held` (negative), clamped to 0.5 s: ~6,600 ticks an hour while a run lasted."""
    trig = {"name": "drift", "query": "q", "for": "7m" if blocked == "for-not-a-multiple" else "30m", "interval": "5m"}
    s = spec(schedule=None, triggers={"prometheus": [trig]}, suspend=blocked == "suspend")
    obs = PrometheusObservation(name="drift", value=1.0, holding_since=at(5), checked_at=at(5, 40))
    runs = [ScheduleRun(name="bot-1", trigger=TriggerKind.MANUAL)] if blocked == "forbid" else []
    st = FineTuneScheduleStatus(prometheus=[obs], runs=runs)
    delay = decide.wake_after(s, st, at(5, 40), poll=5.0, idle=3600.0)
    assert delay >= 300 if blocked != "suspend" else delay == 3600.0  # the next check, or nothing while suspended


def test_a_for_that_is_not_a_multiple_of_interval_fires_at_its_end_not_the_next_interval():
    obs = PrometheusObservation(name="drift", value=1.0, holding_since=at(5), checked_at=at(5, 5))
    assert decide.prometheus_next_check(obs, "5m", "7m") == at(5, 7)
    assert decide.prometheus_check_due(obs, "5m", at(5, 7), "7m") and not decide.prometheus_check_due(obs, "5m", at(5, 6), "7m")


def test_a_suspended_schedule_with_an_overdue_data_check_does_not_spin():
    s = spec(schedule=None, triggers={"newData": {"claimName": "datasets", "checkInterval": "15m"}}, suspend=True)
    st = FineTuneScheduleStatus(data=DataObservation(check_started_at=at(1)))
    assert decide.wake_after(s, st, at(5), poll=5.0, idle=3600.0) == 3600.0


# --- 4. a Pending winner and the history limit ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 1])
def test_a_winner_waiting_for_its_rollout_is_not_deleted_by_the_history_limit(limit):
    """Before: succeeded-but-Pending runs counted toward successfulRunsHistoryLimit and their FineTuneJob was deleted."""
    runs = [ScheduleRun(name="old", trigger=TriggerKind.SCHEDULE, phase=RunPhase.SUCCEEDED, outcome=RunOutcome.LOST_TO_SERVING),
            ScheduleRun(name="winner", trigger=TriggerKind.SCHEDULE, phase=RunPhase.SUCCEEDED, outcome=RunOutcome.PENDING)]
    assert "winner" not in decide.history_to_delete(runs, limit, 1)
    assert decide.history_to_delete(runs, 0, 1) == ["old"]


# --- 5. hand-off only against the version serving now ------------------------------------------------------------------


def test_a_model_version_compared_with_an_older_version_is_not_handed_off_as_beating_the_current_one():
    """Before: judge trusted the run's champion; a ModelVersion whose evaluation compared it with v1 was handed off
    as having beaten v3 (e.g. an old ModelVersion adopted by a rerun of the same name)."""
    run = ScheduleRun(name="bot-d1", trigger=TriggerKind.NEW_DATA, champion="v3")
    mv = samples.model_version("support-bot-dB", serving={"modelVersion": "v1", "outcome": "Better", "reason": "old"})
    j = decide.judge(run, samples.finished_job("bot-d1", mv="support-bot-dB"), mv, samples.rollout("v3"), True)
    assert (j.outcome, j.hand_off) == (RunOutcome.NOT_COMPARED, False)
    assert "compared it with v1, not with the serving version v3" in j.message


def test_a_rollout_declared_with_a_stable_it_has_not_reconciled_yet_is_serving_that_stable():
    run = ScheduleRun(name="bot-1", trigger=TriggerKind.SCHEDULE, champion=None)
    ro = samples.rollout("v1")
    ro["status"] = {}  # spec.stable v1, status not written yet
    j = decide.judge(run, samples.finished_job("bot-1", mv="v2"), samples.model_version("v2"), ro, True)
    assert (j.outcome, j.hand_off) == (RunOutcome.NOT_COMPARED, False)


def test_data_that_returns_to_an_earlier_digest_starts_a_run_under_a_fresh_name():
    """Before: A→B→C→B fired `d<B>` again: 409 ignored, nothing started, lastRunDigest said it ran."""
    fire = decide.Fire(TriggerKind.NEW_DATA, "data", "dbbbbbbbbbbbb", digest="sha256:bbbb")
    old = {"metadata": {"name": "bot-dbbbbbbbbbbbb", "annotations": {"tuneloop.dev/trigger-key": fire.key}},
           "status": {"phase": "Succeeded"}}
    assert decide.name_in_use("bot-dbbbbbbbbbbbb", fire.key, old, set(), False) is not None
    # the old FineTuneJob deleted by the history limit: its ModelVersion still names the key
    assert decide.name_in_use("bot-dbbbbbbbbbbbb", fire.key, None, set(), True) is not None
    assert decide.name_in_use("bot-dbbbbbbbbbbbb-2", fire.key, None, set(), False) is None
    assert decide.run_name("bot", fire.fresh(2)) == "bot-dbbbbbbbbbbbb-2"
    # the same run, made before a status patch was lost, is reused (409), not duplicated
    same = {**old, "status": {"phase": "Training"}}
    assert decide.name_in_use("bot-dbbbbbbbbbbbb", fire.key, same, set(), False) is None


def test_an_adopted_run_for_the_current_digest_is_recorded_not_started_again():
    data = DataObservation(digest="sha256:b", last_run_digest="sha256:a")
    runs = [ScheduleRun(name="bot-db", trigger=TriggerKind.NEW_DATA, data_digest="sha256:b")]
    assert decide.data_run_known(data, runs).last_run_digest == "sha256:b"


# --- 14. cron_due never after now ---------------------------------------------------------------------------------------


def test_cron_due_never_returns_a_time_after_now():
    """Before: from now + 1 s, get_prev returned the next minute when now was less than a second before it."""
    now = at(2, 59, 59.5)
    due, nxt = decide.cron_due("* * * * *", at(2, 58, 30), now)
    assert due == at(2, 59) and nxt == at(3)


# --- suspicions ------------------------------------------------------------------------------------------------------------


def test_two_schedules_sharing_a_model_name_firing_in_one_minute_name_different_model_versions():
    a = spec(schedule="0 3 * * 1")  # the sample's template: registry.modelName support-bot
    names = {build.model_version_name(a, sched, "29623860") for sched in ("bot", "bot-nightly")}
    assert len(names) == 2
    own = spec()
    own.job_template.spec.registry.model_name = None  # the model is the schedule's own: the version is the key
    assert build.model_version_name(own, "bot", "29623860") == "bot-29623860"


def test_two_winners_close_together_under_allow_do_not_overwrite_each_others_hand_off():
    """The first winner's hand-off is in the Rollout's spec but not yet picked up: the second waits."""
    run = ScheduleRun(name="bot-2", trigger=TriggerKind.SCHEDULE, champion="support-bot-v1")
    better = {"modelVersion": "support-bot-v1", "outcome": "Better", "reason": "r"}
    ro = samples.rollout("support-bot-v1")
    ro["spec"]["candidate"] = {"name": "support-bot-v2"}  # handed off a moment ago
    j = decide.judge(run, samples.finished_job("bot-2", mv="support-bot-v3"), samples.model_version("support-bot-v3", serving=better), ro, True)
    assert (j.outcome, j.hand_off) == (RunOutcome.PENDING, False) and "support-bot-v2" in j.message


def test_a_half_hour_fall_back_never_gives_a_next_time_before_now():
    """Found by the property test (Lord Howe falls back 30 minutes, 2025-04-06 02:00 +11 → 01:30 +10:30): croniter's
    get_prev mixed the two passes, the due time was 14:28 UTC and the next one 14:35 UTC, before now (15:00 UTC = 01:30
    on the second pass)."""
    last, now = dt.datetime(2025, 4, 5, 14, 0, tzinfo=UTC), dt.datetime(2025, 4, 5, 15, 0, tzinfo=UTC)
    due, nxt = decide.cron_due("*/7 * * * *", last, now, "Australia/Lord_Howe")
    assert due == dt.datetime(2025, 4, 5, 14, 56, tzinfo=UTC)  # 01:56 (+11), just before the clocks go back
    assert nxt == dt.datetime(2025, 4, 5, 15, 5, tzinfo=UTC) > now  # 01:35 on the second pass (+10:30)
