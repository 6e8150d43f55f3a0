"""The step state machine and the desired serving state, as pure code (no I/O, explicit clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.rollout import MeasurementPhase, Rollout, RolloutStatus
from tuneloop.operator.rollout import verdicts as analysis
from tuneloop.operator.rollout.desired import desired
from tuneloop.operator.rollout.steps import MAX_MEASUREMENTS, WAITING_RECHECK, World, advance, canary_shortfall, due_metrics, next_wakeup
from tuneloop.operator.rollout.verdicts import Assessment

from . import samples

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC)
OK = {"error-rate": Assessment(MeasurementPhase.SUCCESSFUL, 0.01, None, "ok"), "ttft": Assessment(MeasurementPhase.SUCCESSFUL, 0.2, 0.2, "ok")}


def spec_of(raw):
    return Rollout.model_validate(raw).spec


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class Driver:
    """Feeds ticks to the machine like the daemon would: measure when due, then advance."""

    def __init__(self, raw=None):
        self.spec = spec_of(raw or samples.gateway_rollout())
        self.status: RolloutStatus | None = None
        self.t = 0.0
        self.outcomes = []

    def tick(self, seconds: float = 0.0, available: int = 10, results=None, error: str | None = None,
             stable: int | None = None, failures: tuple = ()):
        self.t += seconds
        now = at(self.t)
        world = World(now=now, canary_available=available, serving_error=error, generation=1, stable_available=stable,
                      pod_failures=tuple(failures))
        # as rollout/reconcile.py: nothing is measured while the weighted canary's pods do not suffice
        due = due_metrics(self.spec, self.status, now) if canary_shortfall(self.spec, self.status, world) is None else []
        taken = {m.name: (results or OK)[m.name] for m in due}
        out = advance(self.spec, self.status, world, taken)
        self.status = out.status
        self.outcomes.append(out)
        return out

    def events(self):
        return [e for o in self.outcomes for e in o.events]


def test_healthy_canary_walks_every_step_and_is_promoted():
    d = Driver()
    out = d.tick(available=0)
    assert out.status.phase == "Progressing" and out.status.current_step_index == 0 and out.status.canary_weight == 0
    assert out.status.waiting_for == "canary pods ready for 10%: 0/1 available"
    assert out.model_versions == {"support-bot-v2": (None, "candidate of Rollout")}
    out = d.tick(1)  # canary ready -> weight 10, analysis step: first measurement next tick
    assert out.status.canary_weight == 10 and out.status.current_step_index == 1
    for k in range(3):
        out = d.tick(10)
    assert [r.count for r in out.status.metric_results] == [] and out.status.current_step_index == 3  # analysis passed, 50%, pause
    assert out.status.canary_weight == 50 and out.status.waiting_for.startswith("pause until")
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(1.0)  # background analysis, initialDelay after 50%
    out = d.tick(1)
    assert [(r.metric, r.count, r.phase) for r in out.status.metric_results] == [("error-rate", 1, "Running"), ("ttft", 1, "Running")]
    assert out.status.measurements[-1].step_index == 3 and out.status.current_step_index == 3
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(10.0)
    out = d.tick(30)
    assert out.status.current_step_index == 4 and "analysis (error-rate 0/3, ttft 0/3)" in out.status.waiting_for
    for _ in range(3):
        out = d.tick(10)
    assert out.status.phase == "Promoted" and out.status.canary_weight == 0
    assert out.status.stable_model_version == "support-bot-v2"
    assert out.model_versions == {"support-bot-v2": ("Serving", "serving as stable of Rollout (all 5 steps passed)"),
                                  "support-bot-v1": ("Retired", "replaced by support-bot-v2")}  # fmt: skip
    reasons = [e[1] for e in d.events()]
    assert reasons == ["RolloutStarted", "WeightChanged", "AnalysisPassed", "WeightChanged", "AnalysisPassed", "Promoted"]
    # afterwards: steady, nothing more happens
    again = d.tick(60)
    assert again.status.phase == "Promoted" and not again.model_versions
    assert [e[1] for e in again.events] == ["SpecStableNotServing"]  # spec.stable (v1) is stale now: said once, changes nothing
    again = d.tick(60)
    assert again.status.phase == "Promoted" and not again.events and not again.model_versions


def test_failed_measurement_rolls_back_with_metric_and_value():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    d.tick(10)
    bad = dict(OK, **{"error-rate": Assessment(MeasurementPhase.FAILED, 0.31, None, "error-rate 0.31 > max 0.05")})
    out = d.tick(10, results=bad)
    st = out.status
    assert st.phase == "RolledBack" and st.canary_weight == 0
    cond = next(c for c in st.conditions if c.type == "RolledBack")
    assert cond.status == "True" and cond.reason == "AnalysisFailed"
    assert "error-rate 0.31 > max 0.05" in cond.message and "step 2" in cond.message
    assert out.events[-1][0] == "Warning" and "0.31" in out.events[-1][2]
    assert out.model_versions["support-bot-v2"][0] == "RolledBack" and "0.31" in out.model_versions["support-bot-v2"][1]
    assert out.rolled_back and out.first_failure_at == at(d.t)
    assert desired(d.spec, st).canary_replicas == 0 and desired(d.spec, st).canary_weight == 0
    # terminal: no more measurements or changes
    assert due_metrics(d.spec, st, at(d.t + 60)) == []
    assert d.tick(60).status.phase == "RolledBack"


def test_unreachable_prometheus_never_promotes_and_errors_out_past_the_limit():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    err = {m: Assessment(MeasurementPhase.ERROR, None, None, "canary query failed: Prometheus at http://x unreachable") for m in OK}
    for _ in range(4):  # consecutiveErrorLimit 4: four errors are tolerated
        out = d.tick(10, results=err)
        assert out.status.phase == "Progressing" and out.status.canary_weight == 10
    out = d.tick(10, results=err)
    assert out.status.phase == "RolledBack"
    assert next(c for c in out.status.conditions if c.type == "RolledBack").reason == "AnalysisError"
    assert "unreachable" in out.status.message


def test_errors_do_not_count_toward_count():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    err = {m: Assessment(MeasurementPhase.ERROR, None, None, "down") for m in OK}
    for results in [OK, err, OK, err, err]:
        out = d.tick(10, results=results)
    assert out.status.current_step_index == 1 and [r.count for r in out.status.metric_results] == [2, 2]
    out = d.tick(10)
    assert out.status.current_step_index == 3


def test_inconclusive_past_limit_pauses_for_a_human_then_promote():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    nod = dict(OK, ttft=Assessment(MeasurementPhase.INCONCLUSIVE, None, None, "canary query returned no data"))
    for _ in range(3):
        out = d.tick(10, results=nod)
    assert out.status.phase == "Paused" and "inconclusive" in out.status.waiting_for
    assert due_metrics(d.spec, out.status, at(d.t + 100)) == []
    assert d.tick(100).status.phase == "Paused"
    d.spec = d.spec.model_copy(update={"promote": True})
    out = d.tick(1)
    assert out.status.phase == "Promoted" and out.clear_flags and out.status.stable_model_version == "support-bot-v2"
    assert out.events[-1][1] == "PromotedByUser"


def test_abort_sends_traffic_back_and_marks_candidate():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    d.spec = d.spec.model_copy(update={"abort": True})
    out = d.tick(1)
    assert (out.status.phase, out.status.canary_weight, out.clear_flags) == ("Aborted", 0, True)
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"
    assert out.status.stable_model_version == "support-bot-v1"


def test_indefinite_pause_waits_for_promote():
    raw = samples.gateway_rollout(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}])
    d = Driver(raw)
    out = d.tick()
    assert out.status.phase == "Paused" and "kubectl tuneloop promote" in out.status.waiting_for and out.status.canary_weight == 20
    assert d.tick(3600).status.phase == "Paused"
    d.spec = d.spec.model_copy(update={"promote": True})
    assert d.tick().status.phase == "Promoted"


def test_first_version_is_served_without_canary():
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"]
    out = Driver(raw).tick()
    assert out.status.phase == "Promoted" and out.status.stable_model_version == "support-bot-v2"
    assert out.model_versions == {"support-bot-v2": ("Serving", "serving as stable of Rollout (first version, nothing to compare with: served as stable without a canary)")}


def test_steady_state_and_a_changed_spec_stable_never_replaces_what_serves():
    raw = samples.gateway_rollout()
    del raw["spec"]["candidate"]
    d = Driver(raw)
    out = d.tick()
    assert out.status.phase == "Promoted" and out.status.message == "serving support-bot-v1"
    d.spec = d.spec.model_copy(update={"stable": d.spec.stable.model_copy(update={"name": "support-bot-v3"})})
    out = d.tick()
    assert out.status.stable_model_version == "support-bot-v1" and out.status.canary_weight == 0
    assert out.model_versions == {}  # nothing becomes Serving or Retired
    cond = next(c for c in out.status.conditions if c.type == "StableInSync")
    assert (cond.status, cond.reason) == ("False", "SpecStableNotServing") and "roll it out as spec.candidate" in cond.message
    assert [e[1] for e in out.events] == ["SpecStableNotServing"]
    assert d.tick(10).events == []  # said once


def promoted_driver() -> Driver:
    """v1 -> v2 promoted through every step; spec.stable left at v1 (stale), as the docs allow."""
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    for _ in range(3):
        d.tick(10)
    d.tick(1)
    d.tick(30)
    for _ in range(3):
        out = d.tick(10)
    assert out.status.phase == "Promoted" and out.status.stable_model_version == "support-bot-v2"
    return d


def test_retry_after_a_promotion_with_stale_spec_stable_keeps_the_promoted_version():
    """Defect 2: removing spec.candidate after a promotion used to put spec.stable (v1) back in production."""
    d = promoted_driver()
    d.spec = d.spec.model_copy(update={"candidate": None})
    out = d.tick(5)
    assert out.status.stable_model_version == "support-bot-v2" and out.status.phase == "Promoted"
    assert "support-bot-v1" not in out.model_versions and out.model_versions.get("support-bot-v2", ("Serving",))[0] == "Serving"
    assert desired(d.spec, out.status).stable_mv == "support-bot-v2"
    assert next(c for c in out.status.conditions if c.type == "StableInSync").status == "False"
    assert out.status.message == "serving support-bot-v2" and out.status.candidate_model_version is None
    # going back to v1 is a rollout like any other: through the canary steps
    d.spec = d.spec.model_copy(update={"candidate": d.spec.stable.model_copy()})
    out = d.tick(1)
    assert out.status.phase == "Progressing" and out.status.candidate_model_version == "support-bot-v1"
    assert out.status.stable_model_version == "support-bot-v2" and out.status.canary_weight == 10
    assert desired(d.spec, out.status).stable_mv == "support-bot-v2"


def test_removing_and_setting_the_same_candidate_again_restarts_the_rollout():
    """Defect 3: the documented retry (remove spec.candidate, set it again) left the Rollout Aborted."""
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    d.spec = d.spec.model_copy(update={"abort": True})
    assert d.tick(1).status.phase == "Aborted"
    cand = d.spec.candidate
    d.spec = d.spec.model_copy(update={"abort": False, "candidate": None})
    out = d.tick(1)
    assert out.status.candidate_model_version is None and out.status.phase == "Aborted" and "set spec.candidate to roll out again" in out.status.message
    d.spec = d.spec.model_copy(update={"candidate": cand})
    out = d.tick(1)
    assert out.status.phase == "Progressing" and out.status.candidate_model_version == "support-bot-v2"
    assert out.status.current_step_index == 1 and out.status.canary_weight == 10 and out.status.measurements == []
    assert [e[1] for e in out.events] == ["RolloutStarted", "WeightChanged"]
    # the CLI's promote is no longer refused
    from tuneloop.operator.rollout.desired import canary_active

    assert canary_active(out.status)


def test_candidate_removed_in_the_middle_is_aborted_then_forgotten():
    d = Driver()
    d.tick(available=0)
    d.tick(1)
    d.spec = d.spec.model_copy(update={"candidate": None})
    out = d.tick(1)
    assert out.status.phase == "Aborted" and out.status.candidate_model_version is None
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"


def test_candidate_removed_mid_rollout_aborts():
    d = Driver()
    d.tick()
    d.spec = d.spec.model_copy(update={"candidate": None})
    out = d.tick(1)
    assert out.status.phase == "Aborted" and out.status.canary_weight == 0


def test_new_candidate_after_rollback_starts_again():
    d = Driver()
    d.tick()
    d.spec = d.spec.model_copy(update={"abort": True})
    d.tick(1)
    d.spec = d.spec.model_copy(update={"abort": False, "candidate": d.spec.candidate.model_copy(update={"name": "support-bot-v3"})})
    out = d.tick(1)
    assert out.status.phase == "Progressing" and out.status.candidate_model_version == "support-bot-v3" and out.status.measurements == []


def test_serving_error_degrades_then_recovers():
    d = Driver()
    out = d.tick(error="ModelVersion support-bot-v2 not found in namespace llm")
    assert out.status.phase == "Degraded" and "not found" in out.status.message
    d.spec = d.spec.model_copy(update={"promote": True})
    out = d.tick(1, error="ModelVersion support-bot-v2 not found in namespace llm")
    assert out.status.phase == "Degraded" and out.status.stable_model_version == "support-bot-v1" and out.clear_flags
    assert out.events == [("Warning", "PromoteRefused", "not promoting an unservable candidate: ModelVersion support-bot-v2 not found in namespace llm")]
    d.spec = d.spec.model_copy(update={"promote": False})
    out = d.tick(1)
    assert out.status.phase == "Progressing" and out.status.canary_weight == 10


def test_replica_weighted_does_not_wait_for_pods_and_desired_replicas():
    d = Driver(samples.replica_rollout())
    out = d.tick(available=0)
    assert out.status.canary_weight == 10
    want = desired(d.spec, out.status, canary_available=0)
    assert (want.stable_replicas, want.canary_replicas) == (4, 1)  # stable shrinks only once the canary pod is up
    want = desired(d.spec, out.status, canary_available=1)
    assert (want.stable_replicas, want.canary_replicas) == (3, 1)


def test_gateway_desired_replicas_follow_pending_weight():
    d = Driver()
    out = d.tick(available=0)
    want = desired(d.spec, out.status)
    assert (want.stable_mv, want.canary_mv, want.stable_replicas, want.canary_replicas, want.canary_weight) == (
        "support-bot-v1", "support-bot-v2", 4, 1, 0)  # fmt: skip


def test_measurements_are_bounded():
    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"analysis": {"count": 40}}])
    raw["spec"]["analysis"]["inconclusiveLimit"] = 100
    d = Driver(raw)
    d.tick()
    for _ in range(30):
        out = d.tick(10)
    assert len(out.status.measurements) == MAX_MEASUREMENTS
    assert out.status.measurements[-1].at == at(d.t)
    RolloutStatus.model_validate(out.status.wire())  # still valid against the schema bounds


def test_due_metrics_respects_interval_and_step_metric_subset():
    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"analysis": {"metrics": ["ttft"], "count": 2}}])
    d = Driver(raw)
    d.tick()
    assert due_metrics(d.spec, d.status, at(d.t)) == []  # initialDelay (1s) after the weight change
    assert [m.name for m in due_metrics(d.spec, d.status, at(d.t + 1))] == ["ttft"]
    d.tick(1)
    assert due_metrics(d.spec, d.status, at(d.t + 5)) == []
    assert [m.name for m in due_metrics(d.spec, d.status, at(d.t + 10))] == ["ttft"]


FAIL = dict(OK, **{"error-rate": Assessment(MeasurementPhase.FAILED, 0.3, None, "error-rate 0.3 > max 0.05")})
NODATA = {m: Assessment(MeasurementPhase.INCONCLUSIVE, None, None, "canary query returned no data (noDataPolicy=inconclusive)") for m in OK}


def test_background_analysis_rolls_back_a_failing_canary_during_a_timed_pause():
    """Defect 5: nothing was measured during pause steps."""
    d = Driver(samples.gateway_rollout(steps=[{"setWeight": 10}, {"pause": {"duration": "2m"}}, {"analysis": {}}]))
    out = d.tick()
    assert out.status.current_step_index == 1 and out.status.canary_weight == 10
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(1.0)  # initialDelay, not the end of the pause
    assert [m.name for m in due_metrics(d.spec, out.status, at(1))] == ["error-rate", "ttft"]
    out = d.tick(1)
    assert out.status.phase == "Progressing" and len(out.status.measurements) == 2
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(10.0)  # one interval, not 119 s
    out = d.tick(10, results=FAIL)
    assert out.status.phase == "RolledBack" and out.status.canary_weight == 0 and out.rolled_back
    cond = next(c for c in out.status.conditions if c.type == "RolledBack")
    assert cond.reason == "AnalysisFailed" and cond.message.startswith("Failed background analysis at step 2: error-rate 0.3")
    assert out.first_failure_at == at(d.t)


def test_background_analysis_during_an_indefinite_pause_and_its_limits():
    raw = samples.gateway_rollout(steps=[{"setWeight": 20}, {"pause": {}}])
    raw["spec"]["analysis"]["failureLimit"] = 1
    d = Driver(raw)
    assert d.tick().status.phase == "Paused"
    out = d.tick(1, results=NODATA)  # no data in the background neither pauses nor fails
    assert out.status.phase == "Paused" and [r.inconclusive for r in out.status.metric_results] == [1, 1]
    for _ in range(4):
        out = d.tick(10, results=NODATA)
    assert out.status.phase == "Paused"
    out = d.tick(10, results=FAIL)  # failureLimit 1: one Failed is tolerated
    assert out.status.phase == "Paused"
    out = d.tick(10, results=FAIL)
    assert out.status.phase == "RolledBack" and "background analysis at step 2" in out.status.message


def test_background_analysis_can_be_turned_off():
    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"pause": {"duration": "2m"}}])
    raw["spec"]["analysis"]["backgroundInterval"] = "0s"
    d = Driver(raw)
    d.tick()
    assert due_metrics(d.spec, d.status, at(5)) == []
    assert next_wakeup(d.spec, d.status, at(5)) == pytest.approx(10.0)


def test_progress_deadline_rolls_back_a_canary_that_produces_no_data():
    """Defect 4: no data -> Inconclusive -> Paused forever."""
    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"analysis": {"count": 5}}], progressDeadlineSeconds=60)
    d = Driver(raw)
    d.tick()
    for _ in range(3):
        out = d.tick(10, results=NODATA)
    assert out.status.phase == "Paused" and "inconclusive" in out.status.waiting_for
    out = d.tick(29)
    assert out.status.phase == "Paused"
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(1.0)  # the deadline: weight change at 0 + 60 s
    out = d.tick(1)
    assert out.status.phase == "RolledBack" and out.status.canary_weight == 0
    cond = next(c for c in out.status.conditions if c.type == "RolledBack")
    assert cond.reason == "ProgressDeadlineExceeded" and "no data from the canary at 10% for 60s" in cond.message
    assert out.model_versions["support-bot-v2"][0] == "RolledBack"


def test_progress_deadline_counts_from_the_last_canary_value_and_ignores_prometheus_errors():
    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"analysis": {"count": 50}}], progressDeadlineSeconds=60)
    raw["spec"]["analysis"].update(inconclusiveLimit=100, consecutiveErrorLimit=100)
    d = Driver(raw)
    d.tick()
    for _ in range(5):
        d.tick(10)  # data until t=50
    for _ in range(5):
        out = d.tick(10, results=NODATA)  # t=60..100: no data, but less than 60 s since the last value
    assert out.status.phase == "Progressing"
    out = d.tick(10, results=NODATA)  # t=110: 60 s since the last value at t=50
    assert out.status.phase == "RolledBack" and "ProgressDeadlineExceeded" in [c.reason for c in out.status.conditions]
    err = {m: Assessment(MeasurementPhase.ERROR, None, None, "down") for m in OK}
    d2 = Driver(raw)
    d2.tick()
    for _ in range(12):
        out = d2.tick(10, results=err)  # Prometheus errors are consecutiveErrorLimit's business, not "no data"
    assert out.status.phase == "Progressing"


def test_initial_delay_and_window_alignment_after_a_weight_change():
    """Defect 6: the first measurement came 33 ms after setWeight, over a window of the previous weight's traffic."""
    from tuneloop.operator.rollout.steps import query_window

    raw = samples.gateway_rollout(steps=[{"setWeight": 10}, {"analysis": {}}])
    del raw["spec"]["analysis"]["initialDelay"]  # the default: 30s
    d = Driver(raw)
    out = d.tick()
    assert out.status.weight_changed_at == at(0) and out.status.current_step_index == 1
    assert due_metrics(d.spec, out.status, at(0.033)) == [] and due_metrics(d.spec, out.status, at(29.9)) == []
    assert next_wakeup(d.spec, out.status, at(25)) == pytest.approx(5.0)
    assert "initialDelay" in out.status.waiting_for
    assert [m.name for m in due_metrics(d.spec, out.status, at(30))] == ["error-rate", "ttft"]
    assert query_window(d.spec, out.status, at(30)) == "30s"  # only traffic since the switch
    assert query_window(d.spec, out.status, at(45.7)) == "45s"
    assert query_window(d.spec, out.status, at(75)) == "1m"


def test_scale_down_delay_keeps_the_canary_deployment_after_its_traffic_left():
    d = Driver()
    d.tick()
    d.tick(1)
    out = d.tick(10, results=FAIL)
    assert out.status.phase == "RolledBack" and out.status.canary_scale_down_at == at(d.t + 30)
    held = desired(d.spec, out.status, now=at(d.t + 29))
    assert held.canary_weight == 0 and held.canary_hold and held.canary_mv is None
    assert not desired(d.spec, out.status, now=at(d.t + 30)).canary_hold
    assert next_wakeup(d.spec, out.status, at(d.t + 25)) == pytest.approx(5.0)
    raw = samples.gateway_rollout(scaleDownDelaySeconds=0)
    d = Driver(raw)
    d.tick()
    d.spec = d.spec.model_copy(update={"abort": True})
    out = d.tick(1)
    assert not desired(d.spec, out.status, now=at(d.t)).canary_hold


def test_a_rollout_without_a_version_waits_then_serves_its_first_candidate_at_once():
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"], raw["spec"]["candidate"]
    d = Driver(raw)
    out = d.tick()
    st = out.status
    assert (st.phase, st.stable_model_version, st.candidate_model_version, st.canary_weight, st.step) == ("Waiting", None, None, 0, None)
    assert st.message == "no ModelVersion to serve yet: set spec.candidate (a FineTuneSchedule hands off its first winning run here)"
    assert st.waiting_for == "a first ModelVersion in spec.candidate"
    cond = next(c for c in st.conditions if c.type == "Progressing")
    assert (cond.status, cond.reason, cond.message) == ("False", "WaitingForFirstVersion", st.message)
    assert not out.events and not out.model_versions and not out.rolled_back
    want = desired(d.spec, st, now=at(d.t))
    assert want.serves_nothing and (want.stable_mv, want.canary_mv, want.canary_weight) == (None, None, 0)
    assert next_wakeup(d.spec, st, at(d.t)) == WAITING_RECHECK  # no polling: a spec change wakes the daemon
    assert due_metrics(d.spec, st, at(d.t + 3600)) == []
    assert d.tick(3600).status == st  # nothing changes while waiting
    # a FineTuneSchedule hands off its first winning run: the first version, served as stable without a canary
    d.spec = d.spec.model_copy(update={"candidate": spec_of(samples.gateway_rollout()).candidate})
    out = d.tick(5)
    st = out.status
    assert (st.phase, st.stable_model_version, st.canary_weight) == ("Promoted", "support-bot-v2", 0)
    assert out.model_versions == {"support-bot-v2": ("Serving", "serving as stable of Rollout (first version, nothing to compare with: served as stable without a canary)")}
    assert [c.reason for c in st.conditions if c.type == "Progressing"] == ["FirstVersion"]
    assert [e[1] for e in out.events] == ["FirstVersion"] and not out.rolled_back
    want = desired(d.spec, st, now=at(d.t))
    assert not want.serves_nothing and (want.stable_mv, want.canary_mv, want.stable_replicas) == ("support-bot-v2", None, 4)


def test_a_first_candidate_removed_before_it_served_goes_back_to_waiting():
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"]
    d = Driver(raw)
    assert d.tick(error="ModelVersion support-bot-v2 was never evaluated").status.phase == "Degraded"
    d.spec = d.spec.model_copy(update={"candidate": None})
    out = d.tick(1)
    st = out.status
    assert (st.phase, st.candidate_model_version, st.stable_model_version) == ("Waiting", None, None)
    assert st.message.endswith("; candidate support-bot-v2 was removed before it served")
    assert [(e[1], e[2]) for e in out.events] == [("CandidateCleared", st.message)]
    assert not out.model_versions and not out.rolled_back  # it never served: nothing to roll back, nothing to mark
    assert [c.type for c in st.conditions if c.type == "Servable"] == []  # no version: nothing to judge
    assert desired(d.spec, st, now=at(d.t)).serves_nothing


def test_a_waiting_rollout_given_a_spec_stable_serves_it_without_a_stale_condition():
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"], raw["spec"]["candidate"]
    d = Driver(raw)
    assert d.tick().status.phase == "Waiting"
    d.spec = d.spec.model_copy(update={"stable": spec_of(samples.gateway_rollout()).stable})
    st = d.tick(1).status
    assert (st.phase, st.stable_model_version, st.message) == ("Promoted", "support-bot-v1", "serving support-bot-v1")
    assert all(c.reason != "WaitingForFirstVersion" for c in st.conditions)


def test_first_version_that_cannot_be_served_is_not_promoted():
    raw = samples.gateway_rollout()
    del raw["spec"]["stable"]
    d = Driver(raw)
    out = d.tick(error="ModelVersion support-bot-v2 was never evaluated")
    assert out.status.phase == "Degraded" and out.status.stable_model_version is None and not out.model_versions
    out = d.tick(1)
    assert out.status.phase == "Promoted" and out.status.stable_model_version == "support-bot-v2"


def test_step_column_is_one_based():
    d = Driver()
    assert d.tick(available=0).status.step == "1/5"
    assert d.tick(1).status.step == "2/5"


def test_a_canary_that_only_returns_no_data_under_ignore_is_never_promoted():
    """issue 20 item 8: noDataPolicy: ignore used to make every "no data … ignored" measurement Successful, so
    a canary that never answered passed every analysis step and was promoted. Now the step ends Inconclusive:
    Paused for a human, with no AnalysisPassed."""
    raw = samples.gateway_rollout()
    raw["spec"]["analysis"]["noDataPolicy"] = "ignore"
    d = Driver(raw)
    m = {x.name: x for x in d.spec.analysis.metrics}
    nodata = {name: analysis.assess(m[name], d.spec.analysis, analysis.QueryOutcome(None), analysis.QueryOutcome(0.2))
              for name in ("error-rate", "ttft")}
    d.tick(available=0)
    d.tick(1)
    for _ in range(3):
        out = d.tick(10, results=nodata)
    assert out.status.phase == "Paused" and out.status.current_step_index == 1, out.status.waiting_for
    assert "AnalysisPassed" not in [e[1] for e in d.events()]
    assert [(r.metric, r.count, r.successful, r.phase) for r in out.status.metric_results] == [
        ("error-rate", 3, 0, "Inconclusive"), ("ttft", 3, 0, "Inconclusive")]
    assert all("ignored" in x.message for x in out.status.measurements)
