"""The study and the sweep's pure decisions, as properties over their inputs (Hypothesis).

- the next trial's parameters are a function of the recorded trials: a status written and read back (an operator
  restart, a resumed local run) asks the same sequence as a process that never stopped, for every sampler;
- no decision exceeds parallelism or the trial budget; a suspended sweep starts nothing;
- only complete trials measured on the validation split are ever best (a test-split value never is);
- the pruners stop nothing before their warm-up and never stop the leader at its step; ended trials never change.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuneloop.api.sweep import FineTuneSweep, FineTuneSweepSpec, FineTuneSweepStatus, IntermediateValue, SweepTrial, TrialState
from tuneloop.operator.sweep import decide, study

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "sweep-quickstart.yaml"
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def spec(**changes) -> FineTuneSweepSpec:
    doc = yaml.safe_load(SAMPLE.read_text())
    for k, v in changes.items():
        doc["spec"][k] = v
    return FineTuneSweep.model_validate(doc).spec


def objective(params: dict) -> float:
    """A made-up score with a peak inside the space (what a trial's evaluation would say)."""
    lr = params["hyperparameters.learningRate"]
    return 1.0 - abs(math.log10(lr) + 3.0) / 3.0 + params.get("method.lora.r", 8) / 100.0 - params.get("hyperparameters.maxSteps", 60) / 1000.0


def run(s: FineTuneSweepSpec, n: int, restart_at: set[int]) -> list[dict]:
    """Ask and tell n trials; at each number in restart_at the status goes through its wire form (a restart)."""
    trials: list[SweepTrial] = []
    asked = []
    for i in range(n):
        if i in restart_at:
            status = FineTuneSweepStatus(trials=trials).wire()
            trials = FineTuneSweepStatus.model_validate(status).trials
        params = study.ask(s, trials)
        asked.append(params)
        trials.append(SweepTrial(number=i, name=f"t{i}", params=params, state=TrialState.COMPLETE, value=objective(params),
                                 split="validation"))
    return asked


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sampler=st.sampled_from(["tpe", "random"]), seed=st.integers(0, 2**16), restarts=st.sets(st.integers(1, 6), max_size=3))
def test_a_restart_asks_what_an_uninterrupted_study_asks(sampler: str, seed: int, restarts: set[int]) -> None:
    s = spec(sampler={"type": sampler, "seed": seed, "startupTrials": 3})
    assert run(s, 7, restarts) == run(s, 7, set())


def test_grid_enumerates_every_point_once_in_a_seeded_order() -> None:
    s = spec(sampler={"type": "grid", "seed": 3}, maxTrials=100,
             searchSpace=[{"path": "hyperparameters.learningRate", "categorical": {"choices": [1e-4, 1e-3]}},
                          {"path": "method.lora.r", "int": {"low": 4, "high": 12, "step": 4}}])
    assert decide.budget(s) == 6
    asked = run(s, 6, {2, 4})
    assert len({tuple(sorted(a.items())) for a in asked}) == 6
    assert study.next_grid_point(s, [SweepTrial(number=i, name=f"t{i}", params=a) for i, a in enumerate(asked)]) is None
    assert asked == run(s, 6, set())


def test_list_choices_round_trip_through_the_study() -> None:
    s = spec(searchSpace=[{"path": "method.lora.targetModules", "categorical": {"choices": [["q_proj"], ["q_proj", "v_proj"]]}},
                          {"path": "hyperparameters.learningRate", "float": {"low": 1e-4, "high": 1e-3, "log": True}}])
    p = study.ask(s, [])
    assert p["method.lora.targetModules"] in (["q_proj"], ["q_proj", "v_proj"])


# --- decisions ------------------------------------------------------------------------------------------------------
states = st.sampled_from([s.value for s in TrialState])
losses = st.lists(st.tuples(st.integers(1, 100), st.floats(0.01, 5.0)), max_size=6).map(
    lambda xs: [IntermediateValue(step=s, eval_loss=v) for s, v in sorted({s: v for s, v in xs}.items())])


@st.composite
def trial_lists(draw, max_size: int = 12) -> list[SweepTrial]:
    n = draw(st.integers(0, max_size))
    out = []
    for i in range(n):
        out.append(SweepTrial(number=i, name=f"t{i}", params={}, state=draw(states),
                              value=draw(st.one_of(st.none(), st.floats(-10, 10), st.just(math.nan))),
                              split=draw(st.sampled_from([None, "validation", "test"])), intermediate=draw(losses)))
    return out


@settings(max_examples=200, deadline=None)
@given(trials=trial_lists(), parallelism=st.integers(1, 4), max_trials=st.integers(4, 12), suspend=st.booleans())
def test_never_more_than_parallelism_or_the_budget(trials, parallelism, max_trials, suspend) -> None:
    s = spec(parallelism=parallelism, maxTrials=max_trials, suspend=suspend)
    n = decide.to_start(s, trials)
    assert n >= 0
    assert len(decide.running(trials)) + n <= parallelism or n == 0
    assert len(trials) + n <= max_trials or n == 0
    if suspend:
        assert n == 0


@settings(max_examples=200, deadline=None)
@given(trials=trial_lists(), direction=st.sampled_from(["maximize", "minimize"]))
def test_only_complete_validation_trials_are_ever_best(trials, direction) -> None:
    b = decide.best(trials, direction)
    pool = [t for t in trials if t.state == "Complete" and t.split == "validation" and t.value is not None and math.isfinite(t.value)]
    if not pool:
        assert b is None
        return
    assert b is not None and b.split == "validation" and b.state == "Complete"
    values = [t.value for t in pool]
    assert b.value == (max(values) if direction == "maximize" else min(values))


def test_a_trial_evaluated_on_test_is_never_best_even_when_it_scores_higher() -> None:
    job = {"spec": {"evaluation": {"split": "test"}}, "status": {"phase": "Succeeded", "metrics": {"fieldAccuracy": 0.99}}}
    t = decide.observe(SweepTrial(number=0, name="t0"), job, "fieldAccuracy", NOW)
    v = SweepTrial(number=1, name="t1", state="Complete", value=0.5, split="validation")
    assert t.state == "Complete" and t.split == "test"
    assert decide.best([t, v], "maximize") == v


@settings(max_examples=200, deadline=None)
@given(trials=trial_lists(), kind=st.sampled_from(["median", "successiveHalving"]), warmup=st.integers(0, 60),
       startup=st.integers(1, 3), factor=st.integers(2, 4), min_resource=st.integers(1, 20))
def test_pruning_rules(trials, kind, warmup, startup, factor, min_resource) -> None:
    s = spec(pruner={"type": kind, "warmupSteps": warmup, "startupTrials": startup, "reductionFactor": factor,
                     "minResource": min_resource})
    p = decide.plan(s, trials, {}, NOW)
    for before, after in zip(trials, p.trials, strict=True):
        if before.state != "Running":
            assert after == before  # ended trials never change
        if after.name in p.prune:
            assert before.state == "Running" and after.state == "Pruned" and after.message == p.prune[after.name]
            step = before.intermediate[-1].step
            mine = min(iv.eval_loss for iv in before.intermediate)
            if kind == "median":
                assert step >= warmup
                ref = [v for o in trials if o.number != before.number and o.state == "Complete" and (v := decide._at(o, step)) is not None]
                assert len(ref) >= startup and mine > min(ref)  # the leader at its step is never pruned
            else:
                rung = decide.rungs(s, step)[-1]
                at = decide._at(before, rung)
                pool = [decide._at(o, rung) for o in trials if o.number != before.number and o.intermediate
                        and o.intermediate[-1].step >= rung and decide._at(o, rung) is not None]
                assert pool and at is not None and at > min(pool)  # the best at a rung always goes on
    assert decide.to_start(s, p.trials) == p.start


def test_observe_reads_progress_and_the_outcome() -> None:
    t = SweepTrial(number=0, name="t0")
    job = {"spec": {"evaluation": {"split": "validation"}}, "status": {"phase": "Training", "progress": {"step": 10, "evalLoss": 1.5}}}
    t = decide.observe(t, job, "rougeL", NOW)
    assert t.state == "Running" and [(i.step, i.eval_loss) for i in t.intermediate] == [(10, 1.5)]
    assert decide.observe(t, job, "rougeL", NOW) == t  # the same report twice is recorded once
    later = {**job, "status": {"phase": "Training", "progress": {"step": 14, "evalLoss": 1.5}}}
    assert decide.observe(t, later, "rougeL", NOW) == t  # the step moved on, the loss is the last evaluation's: not new
    done = {**job, "status": {"phase": "Succeeded", "metrics": {"rougeL": 0.4}}}
    t = decide.observe(t, done, "rougeL", NOW)
    assert (t.state, t.value, t.split) == ("Complete", 0.4, "validation")
    gone = decide.observe(SweepTrial(number=1, name="t1"), None, "rougeL", NOW)
    assert gone.state == "Failed" and "deleted" in gone.message
    no_metric = decide.observe(SweepTrial(number=2, name="t2"), {"status": {"phase": "Succeeded", "metrics": {}}}, "rougeL", NOW)
    assert no_metric.state == "Failed" and "without a rougeL value" in no_metric.message


def test_median_pruner_example() -> None:
    s = spec(pruner={"type": "median", "warmupSteps": 10, "startupTrials": 2})

    def t(i, state, pts):
        return SweepTrial(number=i, name=f"t{i}", state=state, intermediate=[IntermediateValue(step=a, eval_loss=b) for a, b in pts])

    done = [t(0, "Complete", [(10, 1.0), (20, 0.8)]), t(1, "Complete", [(10, 1.2), (20, 1.0)])]
    bad, good, early = t(2, "Running", [(10, 1.5), (20, 1.4)]), t(3, "Running", [(10, 1.0), (20, 0.85)]), t(4, "Running", [(5, 9.0)])
    p = decide.plan(s, [*done, bad, good, early], {}, NOW)
    assert set(p.prune) == {"t2"} and "above the median 0.9 of 2 complete trial(s)" in p.prune["t2"]
