"""The mirror (shadow) step in the pure state machine (rollout/steps.py) and the pure guard plan (rollout/mirror.py): the
candidate's pods first, then the mirror asked of every stable guard, measurements of the step's shadow metrics only once
every guard holds it (after initialDelay, the window cut to the time since), the canary weight untouched; a Failed
measurement rolls back, an Inconclusive one pauses; at the end the mirror is ended, then cleared from the guards. The
status goes through its wire form between ticks (an operator restart between any two ticks changes nothing)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.api.durations import parse_duration
from tuneloop.api.rollout import MeasurementPhase, Rollout, RolloutStatus
from tuneloop.operator.rollout import mirror
from tuneloop.operator.rollout.desired import desired
from tuneloop.operator.rollout.steps import World, advance, due_metrics, next_wakeup, query_window
from tuneloop.operator.rollout.verdicts import Assessment

from . import samples

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
TARGET = "http://support-bot-canary.llm.svc:8000"


def ok(value: float) -> Assessment:
    return Assessment(MeasurementPhase.SUCCESSFUL, value, None, "ok")


GOOD = {"agreement": ok(0.97), "shadow-errors": ok(0.0), "error-rate": ok(0.01), "ttft": Assessment(MeasurementPhase.SUCCESSFUL, 0.2, 0.2, "ok")}


def rollout(**mirror_over) -> dict:
    raw = samples.gateway_rollout()
    spec = raw["spec"]
    spec["serving"]["guard"] = {}
    spec["steps"] = [{"mirror": {"percent": 25, "duration": "60s", **mirror_over}}, {"setWeight": 10}, {"analysis": {"count": 1}}]
    spec["analysis"]["metrics"] += [{"name": "agreement", "builtin": "shadow-agreement-rate", "min": 0.9},
                                    {"name": "shadow-errors", "builtin": "shadow-error-rate", "max": 0.1}]
    return raw


class Driver:
    """Ticks like the daemon: the due metrics measured (answers from `results`), the guards as the reconciler left
    them (`guards`), then advance; the status is written and read back in its wire form between ticks."""

    def __init__(self, raw: dict):
        self.spec = Rollout.model_validate(raw).spec
        self.status: RolloutStatus | None = None
        self.t = 0.0
        self.outcomes: list = []
        self.measured: list[tuple[float, list[str], str]] = []  # (time, metrics, window)

    @property
    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.t)

    def tick(self, seconds: float = 0.0, guards: tuple[int, int, int] | None = None, results=None, available: int = 1, **flags):
        self.t += seconds
        world = World(now=self.now, canary_available=available, generation=1, stable_available=4, mirror_guards=guards)
        due = due_metrics(self.spec, self.status, self.now)
        if due:
            self.measured.append((self.t, [m.name for m in due], query_window(self.spec, self.status, self.now)))
        spec = self.spec.model_copy(update=flags) if flags else self.spec
        out = advance(spec, self.status, world, {m.name: (results or GOOD)[m.name] for m in due})
        self.status = RolloutStatus.model_validate(out.status.model_dump(by_alias=True, mode="json"))  # through the API server
        self.outcomes.append(out)
        return out

    def reasons(self) -> list[str]:
        return [e[1] for o in self.outcomes for e in o.events]

    def want(self) -> dict | None:
        return mirror.config(self.status, TARGET)


def running(d: Driver) -> None:
    """Into the running mirror: the candidate's pod, the mirror asked for, then held by both stable guards."""
    out = d.tick(available=0)
    assert out.status.mirror is None and out.status.waiting_for == "candidate pods to answer mirrored requests: 0/1 available"
    assert desired(d.spec, out.status).canary_replicas == 1  # pods for the mirror's 25 %, no traffic
    out = d.tick(1)
    assert out.status.mirror is not None and out.status.mirror.started_at is None and "MirrorRequested" in d.reasons()
    step = d.spec.steps[0].mirror
    until = T0 + dt.timedelta(seconds=1 + parse_duration(step.duration) + mirror.GRACE)  # duration and grace from the request
    assert d.want() == {"target": TARGET, "percent": 25, "until": mirror.format_time(until), "candidate": "support-bot-v2"}
    out = d.tick(1, guards=(1, 2, 0))
    assert out.status.waiting_for == "the mirror on every stable pod's guard: 1/2 hold it" and out.status.mirror.started_at is None
    assert d.measured == []  # nothing is measured before every guard mirrors
    out = d.tick(1, guards=(2, 2, 0))
    assert out.status.mirror.started_at == d.now and out.status.mirror.ends_at == d.now + dt.timedelta(seconds=parse_duration(step.duration))
    assert "MirrorStarted" in d.reasons()


def test_a_mirror_runs_for_its_duration_on_its_shadow_metrics_then_ends_and_is_cleared():
    d = Driver(rollout())
    running(d)
    start = d.t
    for _ in range(5):
        out = d.tick(10, guards=(2, 2, 0))
        assert out.status.canary_weight == 0 and out.status.current_step_index == 0
    assert [m for _, m, _ in d.measured] == [["agreement", "shadow-errors"]] * 5  # not the live metrics; at +10 … +50 s
    assert [w for _, _, w in d.measured][:2] == ["10s", "20s"]  # the window: only the time since the mirror started
    assert "MirrorPassed" not in d.reasons()
    out = d.tick(10, guards=(2, 2, 0))  # +60 s: the end (with its last measurement)
    assert d.t - start == 60 and "MirrorPassed" in d.reasons() and len(d.measured) == 6
    assert out.status.current_step_index == 2 and out.status.canary_weight == 10  # then setWeight 10 at once (its pod is up)
    assert out.status.mirror.ended_at == d.now and not out.status.mirror.cleared and d.want() is None
    out = d.tick(1, guards=(0, 2, 0))  # the reconciler cleared both guards
    assert out.status.mirror.cleared


def test_a_failing_shadow_metric_rolls_back_and_ends_the_mirror():
    d = Driver(rollout())
    running(d)
    bad = GOOD | {"agreement": Assessment(MeasurementPhase.FAILED, 0.41, None, "0.41 < min 0.9")}
    out = d.tick(2, guards=(2, 2, 0), results=bad)
    assert out.status.phase == "RolledBack" and out.status.canary_weight == 0
    assert "Failed shadow analysis at step 1: 0.41 < min 0.9" in out.status.message
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"
    assert out.status.mirror.ended_at == d.now and d.want() is None
    assert next_wakeup(d.spec, d.status, d.now) <= mirror.POLL  # the guards are cleared soon
    out = d.tick(2, guards=(0, 2, 1))  # one guard did not take the DELETE yet
    assert not out.status.mirror.cleared
    out = d.tick(2, guards=(0, 2, 0))
    assert out.status.mirror.cleared
    assert next_wakeup(d.spec, d.status, d.now) > mirror.POLL


def test_no_evidence_pauses_for_a_human_and_ends_the_mirror():
    d = Driver(rollout())
    running(d)
    nodata = GOOD | {"agreement": Assessment(MeasurementPhase.INCONCLUSIVE, None, None, "no data")}
    for _ in range(3):
        out = d.tick(10, guards=(2, 2, 0), results=nodata)
    assert out.status.phase == "Paused" and "shadow analysis at step 1 inconclusive" in out.status.waiting_for
    assert out.status.mirror.ended_at is not None and d.want() is None


def test_the_end_without_a_successful_measurement_pauses():
    d = Driver(rollout(duration="15s"))
    running(d)
    nodata = GOOD | {"agreement": Assessment(MeasurementPhase.INCONCLUSIVE, None, None, "no data")}
    d.tick(10, guards=(2, 2, 0), results=nodata)
    out = d.tick(10, guards=(2, 2, 0), results=nodata)
    assert out.status.phase == "Paused" and "without a successful measurement of agreement" in out.status.waiting_for


def test_slow_guards_move_the_until_on_and_it_is_written_again():
    d = Driver(rollout())
    d.tick()
    d.tick(1)
    first = d.want()
    assert first is not None
    d.tick(290, guards=(0, 2, 0))
    assert d.want() == first  # within the grace: unchanged (nothing is written again)
    out = d.tick(20, guards=(2, 2, 0))  # 311 s after the request: less than the duration left before `until`
    assert out.status.mirror.started_at is None and d.want()["until"] == "2026-12-07T09:11:11Z"
    out = d.tick(1, guards=(2, 2, 0))
    assert out.status.mirror.started_at == d.now
    assert out.status.mirror.until >= out.status.mirror.ends_at  # the guards mirror at least to the step's end


def test_abort_and_promote_end_a_running_mirror():
    for flag, phase in (("abort", "Aborted"), ("promote", "Promoted")):
        d = Driver(rollout())
        running(d)
        out = d.tick(1, guards=(2, 2, 0), **{flag: True})
        assert out.status.phase == phase and out.status.mirror.ended_at == d.now and d.want() is None


def test_wakeups_poll_the_guards_then_wait_for_the_end():
    d = Driver(rollout())
    d.tick()
    d.tick(1)
    assert next_wakeup(d.spec, d.status, d.now) <= mirror.POLL  # waiting for the guards
    d.tick(1, guards=(2, 2, 0))
    d.tick(1, guards=(2, 2, 0))
    assert next_wakeup(d.spec, d.status, d.now) <= 10.0  # the next measurement (interval 10 s)
    d.tick(55, guards=(2, 2, 0))
    assert next_wakeup(d.spec, d.status, d.now) <= 4.0 + 0.05  # the end, 60 s after the start


def test_background_analysis_and_empty_analysis_steps_leave_the_shadow_metrics_out():
    raw = rollout()
    raw["spec"]["steps"] = [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"analysis": {"count": 1}}]
    d = Driver(raw)
    d.tick(available=1)
    d.tick(2)
    d.tick(10)
    assert d.measured and all(names == ["error-rate", "ttft"] for _, names, _ in d.measured)


# --- the guards' plan (pure) ----------------------------------------------------------------------------------------
WANT = {"target": TARGET, "percent": 25, "until": "2026-12-07T09:06:01Z", "candidate": "v2"}
OTHER = {**WANT, "candidate": "v1"}
holds = st.sampled_from([None, {}, WANT, OTHER, {**WANT, "until": "2026-12-07T09:07:00Z"}])


@settings(max_examples=100, deadline=None)
@given(view=st.lists(holds, max_size=6), want=st.sampled_from([None, WANT]))
def test_after_the_plan_every_answering_guard_holds_exactly_what_is_wanted(view, want):
    guards = [mirror.GuardMirror(f"p{i}", h) for i, h in enumerate(view)]
    todo = mirror.plan(guards, want)
    assert not set(todo.set) & set(todo.clear)
    assert all(g.holds is not None for g in guards if g.pod in todo.set + todo.clear)  # a silent guard is left alone
    after = [mirror.GuardMirror(g.pod, want if g.pod in todo.set else {} if g.pod in todo.clear else g.holds) for g in guards]
    assert mirror.plan(after, want).empty  # idempotent: nothing left to write, nothing written twice
    held, live, stale = mirror.coverage(after, want)
    answered = [g for g in guards if g.holds is not None]
    assert live == len(guards) and stale == len(guards) - len(answered)  # only a silent guard may still hold something
    assert held == (len(answered) if want is not None else 0)
    assert todo.empty == all(g.holds == want if want is not None else not g.holds for g in answered)
