"""Uncertainty of evaluation scores: intervals, paired differences and the paired significance test. Pure, no I/O.

Every quality metric is a ratio over test items, sum(num[i]) / sum(den[i]) (den = 1 for a plain mean,
den = the field count for field accuracy), optionally transformed (perplexity = exp(nll / tokens)).
`ItemScores` holds those per-item pairs, so one percentile bootstrap (fixed seed, items resampled with
replacement) gives an interval on any metric, and resampling the *same* items for two models gives a
paired interval on their difference. Binary per-item outcomes get a Wilson interval instead.

Whether tuned and reference differ (the Better/Worse outcome) is decided by a test whose false-positive
rate is known, `paired_test`, at level ALPHA = 1 − CONFIDENCE, two-sided:
- binary per-item outcomes: McNemar's exact test (binomial(b + c, ½) on the discordant pairs), and the
  difference interval is the exact conditional one that excludes 0 exactly when that test rejects;
- any other metric: a paired sign-flip permutation test (which model each item's scores belong to is
  swapped at random; exact enumeration up to EXACT_FLIPS differing items, else PERMUTATIONS random
  swaps with a fixed seed and the (1 + hits) / (1 + PERMUTATIONS) p-value). Under no difference the two
  models' scores on an item are exchangeable, so P(p ≤ α) ≤ α (tests/evaluation/test_significance.py
  checks it by simulation).
A non-finite per-item score (NaN, inf) gives no interval and no test: it is never dropped from a resample.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # the false-positive rate of a Better/Worse outcome (two-sided)
BOOTSTRAP_SAMPLES = 2000
PERMUTATIONS = 4000  # random sign flips of the permutation test (Monte-Carlo error of p near 0.05: ±0.0035)
EXACT_FLIPS = 12  # up to this many items whose scores differ, the permutation test enumerates all 2^k flips
SEED = 20240611  # fixed: the same per-item scores always give the same intervals and p-values
MCNEMAR = "McNemarExact"
SIGN_FLIP = "PairedSignFlip"


@dataclass(frozen=True)
class ItemScores:
    """Per-item numerators and denominators of one metric for one model (same item order for every model)."""

    num: tuple[float, ...]
    den: tuple[float, ...]
    transform: str = ""  # "" or "exp" (perplexity) or "bleu" (corpus BLEU from summed per-item n-gram statistics)
    stats: tuple[tuple[float, ...], ...] | None = None  # per-item sufficient statistics ("bleu")

    @classmethod
    def of(cls, values: Sequence[float | bool], den: Sequence[float] | None = None, transform: str = "") -> ItemScores:
        num = tuple(float(v) for v in values)
        return cls(num, tuple(float(d) for d in den) if den is not None else (1.0,) * len(num), transform)

    def __len__(self) -> int:
        return len(self.num)

    @property
    def finite(self) -> bool:
        """Every per-item number is finite (a NaN or inf makes intervals and tests undefined, never dropped)."""
        rows = self.stats or ()
        return all(math.isfinite(v) for v in (*self.num, *self.den, *itertools.chain.from_iterable(rows)))

    @property
    def binary(self) -> bool:
        return not self.transform and self.stats is None and all(d == 1.0 for d in self.den) and all(v in (0.0, 1.0) for v in self.num)

    @classmethod
    def of_stats(cls, stats: Sequence[Sequence[float]], transform: str) -> ItemScores:
        rows = tuple(tuple(float(v) for v in row) for row in stats)
        return cls((0.0,) * len(rows), (1.0,) * len(rows), transform, rows)

    def value(self, idx: Sequence[int] | None = None) -> float | None:
        idx = range(len(self.num)) if idx is None else idx
        if self.transform == "bleu" and self.stats is not None:
            return _bleu([sum(self.stats[i][k] for i in idx) for k in range(len(self.stats[0]))]) if self.stats else None
        n = sum(self.num[i] for i in idx)
        d = sum(self.den[i] for i in idx)
        if d <= 0:
            return None
        v = n / d
        if self.transform == "exp":  # a non-finite mean nll stays non-finite (never capped into a finite perplexity)
            return math.exp(min(v, 700.0)) if math.isfinite(v) else (math.inf if v == math.inf else math.nan)
        return v


def _bleu(totals: list[float]) -> float:
    """Corpus BLEU (0–1) from summed sacrebleu statistics [sys_len, ref_len, correct1-4, total1-4]."""
    return _bleu_metric()._compute_score_from_stats([int(round(v)) for v in totals]).score / 100.0


@functools.cache
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU()


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def wire(self) -> dict[str, float]:
        return {"low": round(self.low, 6), "high": round(self.high, 6)}


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """Wilson score interval of a proportion (good at 0 %, 100 % and small n, unlike the normal one)."""
    if n <= 0:
        return None
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def _z(confidence: float) -> float:
    # two-sided normal quantile by bisection on erf (no scipy needed)
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _resamples(n: int, samples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(samples)]


def _percentiles(values: Sequence[float | None], confidence: float) -> Interval | None:
    """Percentiles of the resampled values; None when any is undefined (None, NaN, inf): a resample is
    never dropped silently, since dropping the ones that hold a bad item biases the interval."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    vals = sorted(v for v in values if v is not None)  # (none is)
    alpha = (1 - confidence) / 2

    def q(p: float) -> float:
        k = p * (len(vals) - 1)
        f = math.floor(k)
        c = min(f + 1, len(vals) - 1)
        return vals[f] + (vals[c] - vals[f]) * (k - f)

    return Interval(q(alpha), q(1 - alpha))


def bootstrap(
    stat: Callable[[list[int]], float | None], n: int, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval | None:
    """Percentile bootstrap of `stat(indices)` over n items, resampled with a fixed seed. None for fewer than
    2 items (one item has no spread: its 'interval' would be a point) or when a resample is undefined."""
    if n < 2:
        return None
    return _percentiles([stat(idx) for idx in _resamples(n, samples, seed)], confidence)


def interval(scores: ItemScores, confidence: float = CONFIDENCE) -> Interval | None:
    """95 % interval of one model's score: Wilson for a plain proportion, else the bootstrap (None for
    non-finite scores or fewer than 2 items)."""
    if not len(scores) or not scores.finite:
        return None
    if scores.binary:
        return wilson(int(sum(scores.num)), len(scores), confidence)
    return bootstrap(scores.value, len(scores), confidence=confidence)


def difference_interval(tuned: ItemScores, reference: ItemScores, confidence: float = CONFIDENCE) -> Interval | None:
    """Interval on tuned − reference, paired by item: for two binary outcomes the exact conditional interval
    (consistent with McNemar's test), otherwise the bootstrap (both resampled with the same indices)."""
    if len(tuned) != len(reference) or not len(tuned) or not tuned.finite or not reference.finite:
        return None
    if tuned.binary and reference.binary:
        return mcnemar_interval(tuned.num, reference.num, confidence)

    def diff(idx: list[int]) -> float | None:
        a, b = tuned.value(idx), reference.value(idx)
        return None if a is None or b is None else a - b

    return bootstrap(diff, len(tuned), confidence=confidence)


def mcnemar_exact(tuned: Sequence[float], reference: Sequence[float]) -> dict[str, float | int] | None:
    """McNemar's exact test for paired binary outcomes: b = tuned right & reference wrong, c = the reverse;
    p = two-sided binomial(b + c, ½) probability of a split at least as uneven. None unless both are 0/1."""
    if len(tuned) != len(reference) or not tuned:
        return None
    if any(v not in (0, 1, 0.0, 1.0, True, False) for v in (*tuned, *reference)):
        return None
    b = sum(1 for t, r in zip(tuned, reference) if t and not r)
    c = sum(1 for t, r in zip(tuned, reference) if r and not t)
    n = b + c
    if n == 0:
        return {"tunedOnly": 0, "referenceOnly": 0, "pValue": 1.0}
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"tunedOnly": b, "referenceOnly": c, "pValue": min(1.0, 2 * tail)}


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ binomial(n, p), summed in log space (n up to many thousands)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _clopper_pearson(b: int, m: int, confidence: float) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a binomial proportion b/m, by bisection on the binomial tails."""
    tail = (1 - confidence) / 2

    def solve(f: Callable[[float], float], target: float) -> float:  # f increasing in p; the p where f(p) = target
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if b == 0 else solve(lambda p: 1.0 - _binom_cdf(b - 1, m, p), tail)  # P(X ≥ b; p) = tail
    high = 1.0 if b == m else solve(lambda p: 1.0 - _binom_cdf(b, m, p), 1.0 - tail)  # P(X ≤ b; p) = tail
    return low, high


def mcnemar_interval(tuned: Sequence[float], reference: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """Exact conditional interval of tuned − reference for paired 0/1 outcomes: with m = b + c discordant pairs
    (b right only for tuned), b ~ binomial(m, π) and the difference is m(2π − 1)/n; π's Clopper–Pearson
    interval gives the difference's. It excludes 0 exactly when McNemar's exact p ≤ 1 − confidence."""
    m = mcnemar_exact(tuned, reference)
    if m is None:
        return None
    n, b, disc = len(tuned), int(m["tunedOnly"]), int(m["tunedOnly"] + m["referenceOnly"])
    if disc == 0:
        return Interval(0.0, 0.0)
    lo, hi = _clopper_pearson(b, disc, confidence)
    return Interval(disc * (2 * lo - 1) / n, disc * (2 * hi - 1) / n)


@dataclass(frozen=True)
class PairedTest:
    """The two-sided test of 'no difference between tuned and reference on these items'."""

    test: str  # MCNEMAR or SIGN_FLIP
    p_value: float | None  # None: undefined (a non-finite per-item score)
    detail: str  # what it counted, for the report

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value is not None and self.p_value <= alpha


def paired_test(tuned: ItemScores, reference: ItemScores, *, permutations: int = PERMUTATIONS, seed: int = SEED) -> PairedTest | None:
    """McNemar's exact test for two binary outcomes, else the paired sign-flip permutation test of the
    metric's own difference. None when the items are not paired (different lengths, none)."""
    if len(tuned) != len(reference) or not len(tuned):
        return None
    if tuned.binary and reference.binary:
        m = mcnemar_exact(tuned.num, reference.num)
        assert m is not None
        return PairedTest(MCNEMAR, float(m["pValue"]), f"{m['tunedOnly']} items right only for tuned, {m['referenceOnly']} only for the reference")
    if not tuned.finite or not reference.finite:
        return PairedTest(SIGN_FLIP, None, "a per-item score is not a finite number")
    return _sign_flip(tuned, reference, permutations, seed)


def _sign_flip(tuned: ItemScores, reference: ItemScores, permutations: int, seed: int) -> PairedTest:
    bleu = tuned.transform == "bleu" and tuned.stats is not None and reference.stats is not None
    if bleu:
        a, b = np.asarray(tuned.stats, dtype=float), np.asarray(reference.stats, dtype=float)
    else:
        a = np.column_stack([np.asarray(tuned.num, dtype=float), np.asarray(tuned.den, dtype=float)])
        b = np.column_stack([np.asarray(reference.num, dtype=float), np.asarray(reference.den, dtype=float)])

    def statistic(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:  # rows of summed statistics → tuned − reference
        if bleu:
            return np.array([_bleu(list(x)) - _bleu(list(y)) for x, y in zip(ta, tb)], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # untransformed ratio: exp() is monotone, and never overflows here
            return np.where(ta[:, 1] > 0, ta[:, 0] / np.where(ta[:, 1] > 0, ta[:, 1], 1), np.nan) - np.where(
                tb[:, 1] > 0, tb[:, 0] / np.where(tb[:, 1] > 0, tb[:, 1], 1), np.nan)

    d = b - a
    moved = np.flatnonzero(np.any(d != 0, axis=1))
    k = len(moved)
    observed = float(statistic(a.sum(0, keepdims=True), b.sum(0, keepdims=True))[0])
    if k == 0 or observed == 0.0:
        return PairedTest(SIGN_FLIP, 1.0, f"{k} items scored differently, difference 0")
    if not math.isfinite(observed):
        return PairedTest(SIGN_FLIP, None, "the metric is undefined on these items")
    exact = k <= EXACT_FLIPS
    flips = _all_flips(k) if exact else _random_flips(k, permutations, seed)
    at, bt, dk = a.sum(0), b.sum(0), d[moved]
    extreme = 0
    threshold = abs(observed) * (1 - 1e-9)  # float ties (a flip that is the observed split) count as extreme
    for start in range(0, len(flips), 512):
        shift = flips[start:start + 512] @ dk
        stats = statistic(at + shift, bt - shift)
        extreme += int(np.sum(~(np.abs(stats) < threshold)))  # an undefined resample counts as extreme: conservative
    if exact:
        p = extreme / len(flips)
        how = f"all {len(flips)} swaps of the {k} items scored differently (exact)"
    else:
        p = (1 + extreme) / (1 + len(flips))
        how = f"{len(flips)} random swaps of the {k} items scored differently (fixed seed)"
    return PairedTest(SIGN_FLIP, min(1.0, p), how)


@functools.cache
def _all_flips(k: int) -> np.ndarray:
    flips = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(float)
    flips.setflags(write=False)
    return flips


@functools.lru_cache(maxsize=4)
def _random_flips(k: int, permutations: int, seed: int) -> np.ndarray:
    """The same swaps for the same (k, permutations, seed): deterministic p-values, and cached (≤ 4 × 32 MB)."""
    flips = np.random.default_rng(seed).integers(0, 2, size=(permutations, k)).astype(float if permutations * k <= 4_000_000 else np.int8)
    flips.setflags(write=False)
    return flips


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, standard deviation, min and max of repeated timings (batch latencies, tokens/s)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "min": min(vals), "max": max(vals), "n": len(vals)}


def beyond_noise(a: dict[str, float] | None, b: dict[str, float] | None) -> bool:
    """Two timing samples differ beyond noise only when their ranges (min–max) do not overlap and the
    difference of means exceeds two pooled standard deviations. Fewer than 3 measurements each: never."""
    if not a or not b or a.get("n", 0) < 3 or b.get("n", 0) < 3:
        return False
    if a["min"] <= b["max"] and b["min"] <= a["max"]:
        return False
    pooled = math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
    return abs(a["mean"] - b["mean"]) > 2 * pooled
