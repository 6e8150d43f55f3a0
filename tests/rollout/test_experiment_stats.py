"""The A/B experiment's statistics (tuneloop.operator.analysis.experiment): known values, properties over the input
space (Hypothesis), and the intervals' coverage and the decision rule's false-decision rate by seeded simulation."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tuneloop.api.experiment import ExperimentDecision as D
from tuneloop.operator.analysis.experiment import MEAN, PROPORTION, Counts, Plan, compare, decide, newcombe, t_quantile, welch

pytestmark = pytest.mark.unit

RANK = {D.WORSE: 0, D.COLLECTING: 1, D.RUNNING: 1, D.INCONCLUSIVE: 1, D.BETTER: 2}


# --- known values ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("xc", "nc", "xs", "ns", "low", "high"), [
    (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe (1998), Stat Med 17:873, Table II, method 10
    (9, 10, 3, 10, 0.1705, 0.8090),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (6, 7, 2, 7, 0.0582, 0.8062),
])
def test_newcombe_matches_the_published_intervals(xc, nc, xs, ns, low, high):
    d, lo, hi = newcombe(xc, nc, xs, ns, 0.95)
    assert d == pytest.approx(xc / nc - xs / ns)
    assert (lo, hi) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


@pytest.mark.parametrize("df", [1, 1.5, 2, 3, 4.7, 10, 29, 100, 1e4, 1e6])
@pytest.mark.parametrize("level", [0.5, 0.8, 0.95, 0.99, 0.999])
def test_t_quantile_matches_scipy(df, level):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_quantile(level, df) == pytest.approx(scipy_stats.t.ppf(0.5 + level / 2, df), rel=1e-8)


def sums(values) -> Counts:
    v = np.asarray(values, dtype=float)
    return Counts(len(v), total=float(v.sum()), squares=float((v * v).sum()))


def test_welch_matches_scipy_from_sums_and_sums_of_squares():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a, b = rng.normal(4.1, 0.6, 40), rng.normal(3.8, 1.4, 250)
    d, lo, hi = welch(sums(a), sums(b), 0.95)
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (d, lo, hi) == (pytest.approx(a.mean() - b.mean()), pytest.approx(ci.low, rel=1e-6), pytest.approx(ci.high, rel=1e-6))


def test_lower_is_better_mirrors_the_effect():
    c, s = Counts(200, 30), Counts(200, 50)
    up, down = compare(PROPORTION, c, s, 0.95), compare(PROPORTION, c, s, 0.95, higher_is_better=False)
    assert up is not None and down is not None
    assert (down.effect, down.low, down.high) == pytest.approx((-up.effect, -up.high, -up.low))
    assert down.low > 0  # 15 % complaints vs 25 %: fewer is better
    assert decide(Plan(PROPORTION, 100, 0.05, higher_is_better=False), c, s, ended=True).decision == D.BETTER


def test_provider_counts_a_little_off_are_made_consistent():
    """increase() extrapolates each series on its own: successes may exceed trials by a little; NaN is nothing yet."""
    assert Counts(100.0, 100.4).clean(PROPORTION) == Counts(100.0, 100.0)
    assert Counts(math.nan, 3.0).clean(PROPORTION) == Counts(0.0, 0.0)
    c = Counts(10.0, total=40.0, squares=150.0).clean(MEAN)  # squares below total²/n: variance 0, not negative
    assert c.squares == pytest.approx(160.0) and c.variance() == 0.0


def test_decisions_read_as_documented():
    plan = Plan(PROPORTION, min_samples=100, minimum_effect=0.02, confidence=0.95)
    better = decide(plan, Counts(1000, 450), Counts(1000, 380), ended=True)
    assert better.decision == D.BETTER and "better by at least minimumEffect 0.02" in better.message
    assert "candidate 0.45 (n=1000) vs stable 0.38 (n=1000); effect +0.07 [" in better.message
    assert decide(plan, Counts(1000, 300), Counts(1000, 380), ended=True).decision == D.WORSE
    small = decide(plan, Counts(20000, 8300), Counts(20000, 8000), ended=True)  # +1.5 points: significant, below the minimum
    assert small.decision == D.INCONCLUSIVE and "by less than minimumEffect" in small.message
    assert decide(plan, Counts(20000, 8300), Counts(20000, 8000), ended=False).decision == D.RUNNING
    # before the end a look needs 99.9 %: +7 points on 1000 each is clear at 95 %, not at 99.9 % on 300 each
    assert decide(plan, Counts(300, 135), Counts(300, 114), ended=False).decision == D.RUNNING
    assert decide(plan, Counts(300, 135), Counts(300, 114), ended=False).effect.level == 0.999
    assert decide(plan, Counts(99, 99), Counts(5000, 0), ended=False).decision == D.COLLECTING
    assert decide(plan, Counts(99, 99), Counts(5000, 0), ended=True).decision == D.INCONCLUSIVE
    one_look = Plan(PROPORTION, min_samples=100, minimum_effect=0.02, has_duration=False)  # minSamples only: one look at 95 %
    assert decide(one_look, Counts(1000, 450), Counts(1000, 380), ended=False).decision == D.BETTER
    assert decide(one_look, Counts(1000, 390), Counts(1000, 380), ended=False).decision == D.INCONCLUSIVE


def test_the_builtin_experiment_metric_reads_the_guard_counter_of_each_arm_in_its_namespace():
    from tuneloop.api.experiment import ExperimentMetric
    from tuneloop.operator.analysis.prometheus import confine, queries

    metric = ExperimentMetric(name="valid", builtin="contract-validity")
    got = {k: queries.render(t, namespace="llm", rollout="bot", role="canary", window="1h", model_version="v2")
           for k, t in queries.experiment_templates(metric).items()}
    assert set(got) == {"successes", "trials"}
    for q in got.values():
        assert "tuneloop_guard_answers_total{" in q and 'tuneloop_dev_model_version="v2"' in q and "[1h]" in q
        assert confine(q, "llm")  # nothing in them names another namespace
    assert 'verdict="ok"' in got["successes"] and "verdict" not in got["trials"]


# --- properties -----------------------------------------------------------------------------------------------------
@st.composite
def arm(draw, max_n: int = 3000) -> Counts:
    n = draw(st.integers(0, max_n))
    return Counts(n, draw(st.integers(0, n)))


@st.composite
def mean_arm(draw) -> Counts:
    n = draw(st.integers(0, 2000))
    mu = draw(st.floats(-10, 10, allow_nan=False))
    sd = draw(st.floats(0, 5, allow_nan=False))
    return Counts(n, total=n * mu, squares=n * (sd * sd + mu * mu))  # the sums of n values with that mean and spread


plans = st.builds(Plan, kind=st.just(PROPORTION), min_samples=st.integers(1, 500), minimum_effect=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
                  confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]), higher_is_better=st.booleans(), has_duration=st.booleans())


@settings(max_examples=300, deadline=None)
@given(plan=plans, c=arm(), s=arm(), ended=st.booleans(), kind=st.sampled_from([PROPORTION, MEAN]), m=mean_arm(), n=mean_arm())
def test_no_decision_below_min_samples(plan, c, s, ended, kind, m, n):
    plan = Plan(kind, plan.min_samples, plan.minimum_effect, plan.confidence, plan.higher_is_better, plan.has_duration)
    c, s = (c, s) if kind == PROPORTION else (m, n)
    look = decide(plan, c, s, ended=ended)
    if min(c.samples, s.samples) < plan.min_samples:
        assert look.decision in (D.COLLECTING, D.INCONCLUSIVE)
        assert look.decision == (D.INCONCLUSIVE if ended else D.COLLECTING)
    else:
        assert look.decision != D.COLLECTING


@settings(max_examples=300, deadline=None)
@given(plan=plans, c=arm(), s=arm(), ended=st.booleans())
def test_swapping_the_arms_mirrors_the_interval_and_the_decision(plan, c, s, ended):
    a, b = compare(PROPORTION, c, s, plan.confidence, plan.higher_is_better), compare(PROPORTION, s, c, plan.confidence, plan.higher_is_better)
    if a is None:
        assert b is None
        return
    assert (b.effect, b.low, b.high) == pytest.approx((-a.effect, -a.high, -a.low), abs=1e-12)
    assert a.low <= a.effect <= a.high and -1 <= a.low and a.high <= 1
    fwd, back = decide(plan, c, s, ended=ended).decision, decide(plan, s, c, ended=ended).decision
    if fwd == D.BETTER:
        assert back == D.WORSE  # better by the minimum effect, significantly: the other way round it is significantly worse
    if back == D.WORSE and plan.minimum_effect == 0:
        assert fwd == D.BETTER


@settings(max_examples=200, deadline=None)
@given(plan=plans, n=st.integers(1, 3000), s=arm(), ended=st.booleans(), data=st.data())
def test_more_candidate_successes_never_make_the_decision_worse(plan, n, s, ended, data):
    x = data.draw(st.integers(0, n))
    more = data.draw(st.integers(x, n))
    sign = 1 if plan.higher_is_better else -1  # "more successes" is better only where higher is better
    lo, hi = (x, more) if sign > 0 else (more, x)
    r0 = RANK[decide(plan, Counts(n, lo), s, ended=ended).decision]
    r1 = RANK[decide(plan, Counts(n, hi), s, ended=ended).decision]
    assert r0 <= r1


@settings(max_examples=200, deadline=None)
@given(c=mean_arm(), s=mean_arm(), shift=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 3.0]), ended=st.booleans(),
       min_effect=st.sampled_from([0.0, 0.1, 1.0]), min_samples=st.integers(2, 300))
def test_a_higher_candidate_mean_never_makes_the_decision_worse(c, s, shift, ended, min_effect, min_samples):
    """Adding `shift` to every candidate value (same spread) moves the decision only toward Better."""
    plan = Plan(MEAN, min_samples, min_effect)
    moved = Counts(c.samples, total=c.total + c.samples * shift,
                   squares=c.squares + 2 * shift * c.total + c.samples * shift * shift)
    assert RANK[decide(plan, c, s, ended=ended).decision] <= RANK[decide(plan, moved, s, ended=ended).decision]


@settings(max_examples=200, deadline=None)
@given(c=arm(), s=arm())
def test_a_higher_confidence_gives_a_wider_interval(c, s):
    narrow, wide = compare(PROPORTION, c, s, 0.9), compare(PROPORTION, c, s, 0.99)
    assume(narrow is not None)
    assert wide.low <= narrow.low + 1e-12 and narrow.high <= wide.high + 1e-12


# --- simulation: coverage and the false-decision rate -------------------------------------------------------------
SIMULATIONS = 2000


@pytest.mark.parametrize(("pc", "ps", "nc", "ns"), [
    (0.5, 0.5, 50, 50), (0.1, 0.05, 100, 100), (0.03, 0.03, 200, 1800), (0.95, 0.99, 100, 900),
    (0.7, 0.6, 500, 500), (0.2, 0.25, 30, 30), (0.99, 0.995, 1000, 1000),
])
def test_the_proportion_interval_covers_the_true_difference(pc, ps, nc, ns):
    rng = np.random.default_rng(zlib.crc32(repr((pc, ps, nc, ns)).encode()))
    xc, xs = rng.binomial(nc, pc, SIMULATIONS), rng.binomial(ns, ps, SIMULATIONS)
    covered = 0
    for a, b in zip(xc, xs, strict=True):
        _, lo, hi = newcombe(float(a), nc, float(b), ns, 0.95)
        covered += lo <= pc - ps <= hi
    assert covered / SIMULATIONS >= 0.93, covered / SIMULATIONS


RATINGS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def draw(kind: str, rng, n: int) -> tuple[np.ndarray, float]:
    """n values and the true mean: a skewed 1–5 rating, an exponential latency-like score, a wide normal."""
    if kind == "rating":
        p = np.array([0.05, 0.1, 0.2, 0.35, 0.3])
        return rng.choice(RATINGS, n, p=p), float(RATINGS @ p)
    if kind == "exponential":
        return rng.exponential(2.0, n), 2.0
    return rng.normal(10.0, 4.0, n), 10.0


@pytest.mark.parametrize(("kc", "ks", "nc", "ns"), [
    ("rating", "rating", 30, 30), ("rating", "normal", 50, 450), ("exponential", "exponential", 40, 360),
    ("normal", "rating", 200, 200), ("exponential", "rating", 100, 100),
])
def test_the_mean_interval_covers_the_true_difference(kc, ks, nc, ns):
    rng = np.random.default_rng(zlib.crc32(repr((kc, ks, nc, ns)).encode()))
    covered = 0
    for _ in range(SIMULATIONS):
        a, ma = draw(kc, rng, nc)
        b, mb = draw(ks, rng, ns)
        _, lo, hi = welch(sums(a), sums(b), 0.95)
        covered += lo <= ma - mb <= hi
    assert covered / SIMULATIONS >= 0.93, covered / SIMULATIONS


def test_repeated_looks_keep_the_false_decision_rate_near_its_level():
    """A/A experiments (both arms the same, 10 % positive): looked at 20 times, the last one at the end. Interim looks
    at 99.9 % (Haybittle–Peto) and the final one at 95 % decide Better or Worse in about 6 % of them (5.9 % seen), not the ~25 %
    that 20 looks at 95 % would."""
    rng = np.random.default_rng(20261207)
    plan = Plan(PROPORTION, min_samples=50, minimum_effect=0.0, confidence=0.95)
    decided = 0
    runs, looks, per_look = 1000, 20, 60
    for _ in range(runs):
        c = rng.binomial(1, 0.1, looks * per_look).cumsum()
        s = rng.binomial(1, 0.1, looks * per_look * 9).cumsum()  # a 10 % split: nine stable requests per candidate one
        for k in range(1, looks + 1):
            nc, ns = k * per_look, k * per_look * 9
            look = decide(plan, Counts(nc, float(c[nc - 1])), Counts(ns, float(s[ns - 1])), ended=k == looks)
            if look.decision in (D.BETTER, D.WORSE):
                decided += 1
                break
    assert decided / runs <= 0.075, decided / runs
