"""A/B experiment statistics as pure functions: two arms' counts -> the effect, its interval, and the decision.

The Rollout's experiment step (api.experiment) holds a fixed split and, at every look, asks the metrics provider for
each arm's counts since the split took effect (`Counts`: trials and successes, or count, sum and sum of squares).

Intervals for the difference candidate − stable (signed so that positive is better):

- **Proportions: Newcombe's hybrid score interval** (Newcombe 1998, method 10), built from the two arms' Wilson
  score intervals. The Wald interval (and the two-proportion z-test it inverts) fails exactly where online quality
  shares live: near 0 (a 3 % thumbs-down rate) and near 1 (a 99 % contract-validity rate), where it collapses to
  zero width at p̂ = 0 or 1 and covers far below its level at small n. Newcombe's interval never degenerates, stays
  inside [−1, 1], and covers close to nominal down to a few dozen trials per arm without the conservatism of a
  continuity correction (tests/rollout/test_experiment_stats.py checks the coverage by simulation).
- **Means: Welch's t-interval** with the Welch–Satterthwaite degrees of freedom, from each arm's count, sum and sum
  of squares (what Prometheus counters can supply: histograms and summaries carry `_count` and `_sum`, not the
  second moment; bucket midpoints would bias the variance). No equal-variance assumption: a fine-tune often changes
  the spread of a score as much as its mean.

Decision (`decide`), d = the effect, [lo, hi] its interval, m = minimumEffect:

- an arm below minSamples -> Collecting: never a decision, whatever the numbers;
- lo > 0 and d ≥ m -> Better (the candidate goes on);
- hi < 0 -> Worse (significantly worse, by any amount: rolled back);
- otherwise Running before the end, Inconclusive at it (a human decides).

Peeking: the step looks at every analysis interval. Before the end of the duration the interval is read at
INTERIM_CONFIDENCE (99.9 %, the Haybittle–Peto boundary), at the end at the step's `confidence`; so repeated looks
barely raise the false-decision rate above 1 − confidence (a simulated A/A experiment in the tests checks it). A step
without a duration has one look: the first at which both arms have minSamples, at `confidence`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from tuneloop.api.experiment import ExperimentDecision, ExperimentStep

INTERIM_CONFIDENCE = 0.999  # Haybittle–Peto: looks before the end decide only on overwhelming evidence
PROPORTION, MEAN = "proportion", "mean"
NEWCOMBE = "Newcombe hybrid score interval (difference of proportions)"
WELCH = "Welch t-interval (Welch–Satterthwaite df)"
_NORMAL_DF = 1e7  # beyond this many degrees of freedom the t quantile is the normal one


@dataclass(frozen=True)
class Counts:
    """One arm since the experiment began: trials and successes (proportion), or observations, their sum and the sum of
    their squares (mean). Provider counts may be fractional (Prometheus' increase() extrapolates to the window's ends)."""

    samples: float
    successes: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def clean(self, kind: str) -> Counts:
        """Counts a provider may answer slightly off (extrapolated increases, NaN) made consistent: samples ≥ 0,
        0 ≤ successes ≤ samples, a sum of squares at least the square of the sum over the count."""
        n = _finite(self.samples)
        if kind == PROPORTION:
            return Counts(n, min(n, _finite(self.successes)))
        s, q = (self.total if math.isfinite(self.total) else 0.0), _finite(self.squares)
        return Counts(n, 0.0, s, max(q, s * s / n) if n > 0 else q)

    def estimate(self, kind: str) -> float | None:
        if self.samples <= 0:
            return None
        return (self.successes if kind == PROPORTION else self.total) / self.samples

    def variance(self) -> float | None:
        """Sample variance (n − 1 denominator) of a mean's observations; None below 2 observations."""
        n = self.samples
        if n < 2:
            return None
        return max(0.0, (self.squares - self.total * self.total / n) / (n - 1))


def _finite(v: float) -> float:
    return max(0.0, v) if math.isfinite(v) else 0.0


@dataclass(frozen=True)
class Sample:
    """One look's answer from the metrics provider: both arms' counts, or why there are none."""

    candidate: Counts | None = None
    stable: Counts | None = None
    error: str | None = None


@dataclass(frozen=True)
class Effect:
    """Candidate − stable (signed: positive is better) and its two-sided interval at `level`."""

    effect: float
    low: float
    high: float
    level: float
    candidate: float
    stable: float
    test: str


def z_of(level: float) -> float:
    """The two-sided normal quantile of a confidence level (0.95 -> 1.96)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (n > 0)."""
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, center - half), min(1.0, center + half)


def newcombe(xc: float, nc: float, xs: float, ns: float, level: float) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval of pc − ps: (difference, low, high). Both n > 0."""
    z = z_of(level)
    pc, ps = xc / nc, xs / ns
    lc, uc = wilson(xc, nc, z)
    ls, us = wilson(xs, ns, z)
    d = pc - ps
    low = d - math.sqrt((pc - lc) ** 2 + (us - ps) ** 2)
    high = d + math.sqrt((uc - pc) ** 2 + (ps - ls) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for t ≥ 0, Student's t with `df` degrees of freedom."""
    return 0.5 * betainc(df / 2, 0.5, df / (df + t * t))


def t_pdf(t: float, df: float) -> float:
    """Student's t density."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))


def t_quantile(level: float, df: float) -> float:
    """The two-sided quantile of Student's t: P(|T| ≤ q) = level. Newton's method on the exact tail (regularized
    incomplete beta) from the Cornish–Fisher start, kept inside a bisection bracket; the normal quantile past
    _NORMAL_DF degrees of freedom."""
    z = z_of(level)
    if df >= _NORMAL_DF or math.isinf(df):
        return z
    tail = (1 - level) / 2
    lo, hi = 0.0, max(2 * z, 1.0)
    while t_sf(hi, df) > tail:
        lo, hi = hi, hi * 2
    z3, z5, z7 = z**3, z**5, z**7
    t = z + (z3 + z) / (4 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96 * df**2) + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * df**3)
    t = t if lo < t < hi else (lo + hi) / 2
    for _ in range(100):
        f = t_sf(t, df) - tail
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / t_pdf(t, df)  # d/dt of the upper tail is −pdf: Newton's t + f / pdf
        nxt = t + step
        if not lo < nxt < hi:
            nxt = (lo + hi) / 2
        if abs(nxt - t) <= 1e-12 * max(1.0, t):
            return nxt
        t = nxt
    return t


def welch(c: Counts, s: Counts, level: float) -> tuple[float, float, float]:
    """Welch's interval of mean_c − mean_s: (difference, low, high). Both arms have at least 2 observations."""
    vc, vs = c.variance(), s.variance()
    assert vc is not None and vs is not None
    d = c.total / c.samples - s.total / s.samples
    ac, as_ = vc / c.samples, vs / s.samples
    se2 = ac + as_
    if se2 <= 0:
        return d, d, d
    den = (ac * ac / (c.samples - 1) if ac else 0.0) + (as_ * as_ / (s.samples - 1) if as_ else 0.0)
    df = se2 * se2 / den if den > 0 else math.inf
    half = t_quantile(level, df) * math.sqrt(se2)
    return d, d - half, d + half


def compare(kind: str, candidate: Counts, stable: Counts, level: float, higher_is_better: bool = True) -> Effect | None:
    """The effect and its interval; None when an arm cannot be estimated (no trials; a mean below 2 observations)."""
    c, s = candidate.clean(kind), stable.clean(kind)
    if kind == PROPORTION:
        if c.samples <= 0 or s.samples <= 0:
            return None
        d, low, high = newcombe(c.successes, c.samples, s.successes, s.samples, level)
        test = NEWCOMBE
    else:
        if c.samples < 2 or s.samples < 2:
            return None
        d, low, high = welch(c, s, level)
        test = WELCH
    ce, se = c.estimate(kind), s.estimate(kind)
    assert ce is not None and se is not None
    if not higher_is_better:
        d, low, high = -d, -high, -low
    return Effect(d, low, high, level, ce, se, test)


@dataclass(frozen=True)
class Plan:
    """What one experiment step asks of the statistics."""

    kind: str
    min_samples: int
    minimum_effect: float = 0.0
    confidence: float = 0.95
    higher_is_better: bool = True
    has_duration: bool = True
    metric: str = "metric"

    @classmethod
    def of(cls, step: ExperimentStep) -> Plan:
        m = step.metric
        need = max(2, step.samples_needed) if m.kind == MEAN else step.samples_needed  # a variance needs two observations
        return cls(m.kind, need, step.minimum_effect, step.confidence, m.higher_is_better, step.duration is not None, m.name)


@dataclass(frozen=True)
class Look:
    """One look: the decision, the effect it read (None while it cannot be estimated), and why."""

    decision: ExperimentDecision
    effect: Effect | None
    message: str


def _num(v: float) -> str:
    return f"{v:.4g}"


def _arm(what: str, c: Counts, kind: str) -> str:
    est = c.estimate(kind)
    return f"{what} {'-' if est is None else _num(est)} (n={c.samples:.0f})"


def describe(plan: Plan, c: Counts, s: Counts, e: Effect | None) -> str:
    """One look in words: each arm's estimate and size, the effect and its interval."""
    k = plan.kind
    text = f"{plan.metric}: {_arm('candidate', c.clean(k), k)} vs {_arm('stable', s.clean(k), k)}"
    if e is not None:
        text += f"; effect {e.effect:+.4g} [{_num(e.low)}, {_num(e.high)}] at {e.level:.4g}"
    return text


def decide(plan: Plan, candidate: Counts, stable: Counts, *, ended: bool) -> Look:
    """The decision at one look; `ended`: the duration is over (always False for a step without one).

    A look is final at the end of the duration, or, without a duration, at the first look where both arms have
    minSamples: its interval is read at `confidence` and no decision means Inconclusive. Before it, the interval is
    read at INTERIM_CONFIDENCE and no decision means Running. Below minSamples in either arm: Collecting (Inconclusive
    at the end), never a decision, whatever the numbers say."""
    c, s = candidate.clean(plan.kind), stable.clean(plan.kind)
    enough = min(c.samples, s.samples) >= plan.min_samples
    final = ended or (enough and not plan.has_duration)
    if not enough:
        e = compare(plan.kind, c, s, plan.confidence, plan.higher_is_better)
        text = describe(plan, c, s, e) + f"; fewer than minSamples {plan.min_samples} in an arm"
        if final:
            return Look(ExperimentDecision.INCONCLUSIVE, e, text + ": no decision")
        return Look(ExperimentDecision.COLLECTING, e, text + ": collecting")
    level = plan.confidence if final else max(INTERIM_CONFIDENCE, plan.confidence)
    e = compare(plan.kind, c, s, level, plan.higher_is_better)
    if e is None:  # unreachable with min_samples ≥ 2 (means) / ≥ 1 (proportions); kept as no decision
        return Look(ExperimentDecision.INCONCLUSIVE if final else ExperimentDecision.RUNNING, None, describe(plan, c, s, None))
    text = describe(plan, c, s, e)
    if e.low > 0 and e.effect >= plan.minimum_effect:
        return Look(ExperimentDecision.BETTER, e, text + f": better by at least minimumEffect {_num(plan.minimum_effect)}")
    if e.high < 0:
        return Look(ExperimentDecision.WORSE, e, text + ": significantly worse")
    why = f"better, but by less than minimumEffect {_num(plan.minimum_effect)}" if e.low > 0 else "no significant difference"
    if final:
        return Look(ExperimentDecision.INCONCLUSIVE, e, text + f": {why}: no decision")
    return Look(ExperimentDecision.RUNNING, e, text + f": {why} yet")
