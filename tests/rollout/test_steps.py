"""The step state machine and the desired serving state, as pure code (no I/O, explicit clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.rollout import MeasurementPhase, Rollout, RolloutStatus
from tuneloop.operator.rollout.analysis import Assessment
from tuneloop.operator.rollout.desired import desired
from tuneloop.operator.rollout.steps import MAX_MEASUREMENTS, World, advance, due_metrics, next_wakeup

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

    def tick(self, seconds: float = 0.0, available: int = 10, results=None, error: str | None = None):
        self.t += seconds
        now = at(self.t)
        due = due_metrics(self.spec, self.status, now)
        taken = {m.name: (results or OK)[m.name] for m in due}
        out = advance(self.spec, self.status, World(now=now, canary_available=available, serving_error=error, generation=1), taken)
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
    assert next_wakeup(d.spec, out.status, at(d.t)) == pytest.approx(10.0)
    out = d.tick(31)
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


def test_steady_state_and_stable_switch_without_candidate():
    raw = samples.gateway_rollout()
    del raw["spec"]["candidate"]
    d = Driver(raw)
    out = d.tick()
    assert out.status.phase == "Promoted" and out.status.message == "serving support-bot-v1"
    d.spec = d.spec.model_copy(update={"stable": d.spec.stable.model_copy(update={"name": "support-bot-v3"})})
    out = d.tick()
    assert out.status.stable_model_version == "support-bot-v3"
    assert out.model_versions == {"support-bot-v3": ("Serving", "set as stable in spec"), "support-bot-v1": ("Retired", "replaced by support-bot-v3")}


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
    assert [m.name for m in due_metrics(d.spec, d.status, at(d.t))] == ["ttft"]
    d.tick(1)
    assert due_metrics(d.spec, d.status, at(d.t + 5)) == []
    assert [m.name for m in due_metrics(d.spec, d.status, at(d.t + 10))] == ["ttft"]
