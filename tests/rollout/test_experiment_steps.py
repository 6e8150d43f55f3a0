"""The A/B experiment step in the pure state machine (rollout/steps.py): the split held, the looks' schedule, no
decision below minSamples, Better -> next step, Worse -> rollback, Inconclusive at the end -> a human, provider errors,
and the result for the candidate's ModelVersion. The status goes through its wire form between ticks, as it does
through the API server, so every decision is recomputed from status and fresh counts (an operator restart)."""

from __future__ import annotations

import datetime as dt

import pytest
from tuneloop.api.experiment import ExperimentDecision as D
from tuneloop.api.rollout import MeasurementPhase, Rollout, RolloutStatus
from tuneloop.operator.analysis.experiment import Counts, Sample
from tuneloop.operator.rollout.desired import desired
from tuneloop.operator.rollout.steps import World, advance, canary_shortfall, due_metrics, experiment_due, next_look_at, next_wakeup
from tuneloop.operator.rollout.verdicts import Assessment

from . import samples

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
OK = {"error-rate": Assessment(MeasurementPhase.SUCCESSFUL, 0.01, None, "ok"), "ttft": Assessment(MeasurementPhase.SUCCESSFUL, 0.2, 0.2, "ok")}
FEEDBACK = {"successes": 'sum(increase(app_feedback_total{ {{selector}}, vote="up" }[{{window}}]))',
            "trials": "sum(increase(app_feedback_total{ {{selector}} }[{{window}}]))"}


def experiment(**over) -> dict:
    return {"split": 50, "duration": "10m", "minSamples": 100, "minimumEffect": 0.02,
            "metric": {"name": "thumbs-up", "proportion": FEEDBACK}} | over


def rollout(steps=None, **ex) -> dict:
    raw = samples.gateway_rollout()
    raw["spec"]["steps"] = steps or [{"setWeight": 10}, {"experiment": experiment(**ex)}]
    return raw


class Driver:
    """Ticks like the daemon: background metrics and the experiment's look when due, then advance; the status is
    written and read back in its wire form between ticks."""

    def __init__(self, raw):
        self.spec = Rollout.model_validate(raw).spec
        self.status: RolloutStatus | None = None
        self.t = 0.0
        self.outcomes = []
        self.windows: list[tuple[float, str]] = []  # (time of the look, its query window)

    def tick(self, seconds: float = 0.0, look: tuple[Counts, Counts] | str | None = None, results=None, available: int = 10):
        self.t += seconds
        now = T0 + dt.timedelta(seconds=self.t)
        world = World(now=now, canary_available=available, generation=1, stable_available=4)
        due = due_metrics(self.spec, self.status, now) if canary_shortfall(self.spec, self.status, world) is None else []
        sample = None
        ask = experiment_due(self.spec, self.status, now) if canary_shortfall(self.spec, self.status, world) is None else None
        if ask is not None:
            self.windows.append((self.t, ask[1]))
            if isinstance(look, str):
                sample = Sample(error=look)
            else:
                c, s = look or (Counts(0), Counts(0))
                sample = Sample(candidate=c, stable=s)
        out = advance(self.spec, self.status, world, {m.name: (results or OK)[m.name] for m in due}, sample)
        self.status = RolloutStatus.model_validate(out.status.model_dump(by_alias=True, mode="json"))  # through the API server
        self.outcomes.append(out)
        return out

    def reasons(self):
        return [e[1] for o in self.outcomes for e in o.events]


def started(d: Driver) -> None:
    """Into the experiment: canary pods come up for 10 %, then weight 10 and the split (50 %) in one tick."""
    d.tick(available=0)
    out = d.tick(1)
    assert out.status.current_step_index == 1 and out.status.canary_weight == 50
    assert out.status.experiment is not None and out.status.experiment.started_at == T0 + dt.timedelta(seconds=1)


def test_the_split_holds_and_nothing_is_decided_below_min_samples():
    d = Driver(rollout())
    started(d)
    ex = d.status.experiment
    assert ex.ends_at == ex.started_at + dt.timedelta(minutes=10) and ex.decision == D.COLLECTING
    assert "ExperimentStarted" in d.reasons()
    assert desired(d.spec, d.status).canary_replicas == 2 and desired(d.spec, d.status).canary_weight == 50
    assert next_look_at(d.spec, d.status) == ex.started_at + dt.timedelta(seconds=1)  # initialDelay 1s
    for k in range(1, 30):  # overwhelming evidence, but 99 trials in the candidate arm: never a decision
        out = d.tick(10 if k > 1 else 1, look=(Counts(99, 99), Counts(5000, 100)))
        assert out.status.phase == "Progressing" and out.status.canary_weight == 50
        assert out.status.experiment.decision == D.COLLECTING
    assert "fewer than minSamples 100 in an arm: collecting" in out.status.experiment.message
    assert out.status.waiting_for.startswith("experiment thumbs-up until 2026-12-07T09:10:01Z (thumbs-up: candidate 1 (n=99)")
    assert [w for _, w in d.windows[:3]] == ["1s", "11s", "21s"]  # every count since the split took effect
    m = out.status.experiment.measurements[-1]
    assert m.candidate.samples == 99 and m.stable.successes == 100 and m.decision == D.COLLECTING and m.low is not None
    assert len(out.status.experiment.measurements) == 20  # bounded
    assert not out.experiments and not out.model_versions


def test_a_better_candidate_goes_on_and_is_promoted_with_its_result_on_the_model_version():
    d = Driver(rollout())
    started(d)
    d.tick(1, look=(Counts(60, 30), Counts(60, 20)))
    out = d.tick(10, look=(Counts(2000, 1100), Counts(2000, 800)))  # 55 % vs 40 %: clear even at 99.9 %
    assert out.status.phase == "Promoted" and out.status.stable_model_version == "support-bot-v2"
    assert out.status.experiment.decision == D.BETTER and out.status.experiment.decided_at == T0 + dt.timedelta(seconds=12)
    res = out.experiments["support-bot-v2"]
    assert (res.step, res.metric, res.kind, res.split, res.decision) == (2, "thumbs-up", "proportion", 50, "Better")
    assert (res.candidate.model_version, res.candidate.samples, res.candidate.estimate) == ("support-bot-v2", 2000, 0.55)
    assert (res.stable.model_version, res.stable.samples, res.stable.estimate) == ("support-bot-v1", 2000, 0.4)
    assert res.effect == pytest.approx(0.15) and 0 < res.low < 0.15 < res.high and res.level == 0.999
    assert res.test.startswith("Newcombe") and res.minimum_effect == 0.02
    assert d.reasons()[-2:] == ["ExperimentPassed", "Promoted"]
    assert out.model_versions["support-bot-v2"][0] == "Serving"


def test_a_worse_candidate_is_rolled_back_with_the_numbers():
    d = Driver(rollout())
    started(d)
    out = d.tick(1, look=(Counts(3000, 900), Counts(3000, 1200)))  # 30 % vs 40 %
    st = out.status
    assert st.phase == "RolledBack" and st.canary_weight == 0 and out.rolled_back
    cond = next(c for c in st.conditions if c.type == "RolledBack")
    assert cond.reason == "ExperimentWorse" and "experiment thumbs-up at step 2" in cond.message and "significantly worse" in cond.message
    assert out.model_versions["support-bot-v2"][0] == "RolledBack" and "effect -0.1 [" in out.model_versions["support-bot-v2"][1]
    assert out.experiments["support-bot-v2"].decision == "Worse"
    assert experiment_due(d.spec, st, T0 + dt.timedelta(hours=1)) is None  # terminal: no more looks


def test_no_decision_by_the_end_pauses_for_a_human_who_promotes():
    d = Driver(rollout())
    started(d)
    d.tick(1, look=(Counts(50, 20), Counts(50, 20)))
    for _ in range(59):
        out = d.tick(10, look=(Counts(1000, 400), Counts(1000, 395)))
        assert out.status.phase == "Progressing" and out.status.experiment.decision == D.RUNNING
    assert d.t == 592  # the last interval look was at 9:59 +1s +1s; the next one is the end at 10:01
    assert next_look_at(d.spec, d.status) == d.status.experiment.ends_at
    assert next_wakeup(d.spec, d.status, T0 + dt.timedelta(seconds=d.t)) == pytest.approx(9.0)
    out = d.tick(9, look=(Counts(1010, 404), Counts(1010, 399)))
    assert d.windows[-1] == (601, "10m")
    st = out.status
    assert st.phase == "Paused" and st.canary_weight == 50 and st.experiment.decision == D.INCONCLUSIVE
    cond = next(c for c in st.conditions if c.type == "Progressing")
    assert cond.reason == "ExperimentInconclusive" and "experiment thumbs-up at step 2 inconclusive" in st.waiting_for
    res = out.experiments["support-bot-v2"]
    assert res.decision == "Inconclusive" and res.level == 0.95 and "no significant difference: no decision" in res.message
    assert experiment_due(d.spec, st, T0 + dt.timedelta(seconds=d.t + 60)) is None  # a human decides now
    d.spec = d.spec.model_copy(update={"promote": True})
    out = d.tick(30)
    assert out.status.phase == "Promoted"


def test_the_end_of_the_duration_with_too_few_samples_is_inconclusive_not_a_decision():
    d = Driver(rollout(duration="1m"))
    started(d)
    for _ in range(6):  # looks at 11 s … 51 s, then the final one at the end (61 s)
        out = d.tick(10, look=(Counts(40, 40), Counts(400, 0)))
    st = out.status
    assert st.phase == "Paused" and st.experiment.decision == D.INCONCLUSIVE
    assert "fewer than minSamples 100 in an arm: no decision" in out.experiments["support-bot-v2"].message


def test_without_a_duration_the_first_look_with_min_samples_decides_at_the_stated_confidence():
    d = Driver(rollout(duration=None, minSamples=200))
    started(d)
    assert d.status.experiment.ends_at is None
    d.tick(1, look=(Counts(150, 90), Counts(150, 60)))
    assert d.status.experiment.decision == D.COLLECTING and d.status.phase == "Progressing"
    out = d.tick(10, look=(Counts(300, 140), Counts(300, 105)))  # +11.7 points: clear at 95 %, not at 99.9 %
    assert out.status.phase == "Promoted" and out.experiments["support-bot-v2"].level == 0.95


def test_provider_errors_never_decide_and_roll_back_past_the_consecutive_error_limit():
    d = Driver(rollout())
    started(d)
    for k in range(4):  # consecutiveErrorLimit 4
        out = d.tick(1 if k == 0 else 10, look="Prometheus at http://prom unreachable")
        assert out.status.phase == "Progressing" and out.status.experiment.consecutive_errors == k + 1
    assert out.status.experiment.measurements[-1].decision == D.ERROR
    out = d.tick(10, look=(Counts(500, 250), Counts(500, 250)))  # an answer resets the count
    assert out.status.experiment.consecutive_errors == 0
    for _ in range(5):
        out = d.tick(10, look="Prometheus at http://prom unreachable")
    assert out.status.phase == "RolledBack"
    cond = next(c for c in out.status.conditions if c.type == "RolledBack")
    assert cond.reason == "AnalysisError" and "Error experiment thumbs-up at step 2: Prometheus at http://prom unreachable" in cond.message
    assert not out.experiments  # no decision on the metric: nothing for the ModelVersion's experiment record


def test_background_analysis_still_guards_the_candidate_during_the_experiment():
    d = Driver(rollout())
    started(d)
    d.tick(1, look=(Counts(10, 5), Counts(10, 5)))
    bad = dict(OK, **{"error-rate": Assessment(MeasurementPhase.FAILED, 0.3, None, "error-rate 0.3 > max 0.05")})
    out = d.tick(10, look=(Counts(20, 10), Counts(20, 10)), results=bad)
    assert out.status.phase == "RolledBack" and "Failed background analysis at step 2" in out.status.message


def test_the_split_waits_for_canary_pods_like_set_weight():
    d = Driver(rollout())
    d.tick(available=0)
    out = d.tick(1, available=1)  # 50 % of 4 replicas needs 2 canary pods
    assert out.status.canary_weight == 10 and out.status.experiment is None
    assert out.status.waiting_for == "canary pods ready for 50%: 1/2 available"
    assert desired(d.spec, out.status).canary_replicas == 2  # scaled up for the split before the weight moves
    out = d.tick(2, available=2)
    assert out.status.canary_weight == 50 and out.status.experiment.started_at == T0 + dt.timedelta(seconds=3)


def test_a_new_candidate_starts_a_new_experiment():
    d = Driver(rollout())
    started(d)
    d.tick(1, look=(Counts(3000, 900), Counts(3000, 1200)))
    assert d.status.phase == "RolledBack"
    raw = rollout()
    raw["spec"]["candidate"] = {"name": "support-bot-v3"}
    d.spec = Rollout.model_validate(raw).spec
    out = d.tick(5, available=0)
    assert out.status.candidate_model_version == "support-bot-v3" and out.status.experiment is None
    out = d.tick(1)
    assert out.status.experiment.candidate_model_version == "support-bot-v3" and out.status.experiment.measurements == []
