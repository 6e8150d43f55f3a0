"""Uncertainty of evaluation scores: intervals, paired differences, McNemar. Pure, no I/O, no numpy.

Every quality metric is a ratio over test items, sum(num[i]) / sum(den[i]) (den = 1 for a plain mean,
den = the field count for field accuracy), optionally transformed (perplexity = exp(nll / tokens)).
`ItemScores` holds those per-item pairs, so one percentile bootstrap (fixed seed, items resampled with
replacement) gives an interval on any metric, and resampling the *same* items for two models gives a
paired interval on their difference. Binary per-item outcomes also get a Wilson interval and McNemar's
exact test (two-sided binomial test on the discordant pairs).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
SEED = 20240611  # fixed: the same per-item scores always give the same intervals


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
        return math.exp(min(v, 700.0)) if self.transform == "exp" else v


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


def _percentiles(values: list[float], confidence: float) -> Interval | None:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
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
    """Percentile bootstrap of `stat(indices)` over n items, resampled with a fixed seed."""
    if n <= 0:
        return None
    return _percentiles([v for v in (stat(idx) for idx in _resamples(n, samples, seed)) if v is not None], confidence)


def interval(scores: ItemScores, confidence: float = CONFIDENCE) -> Interval | None:
    """95 % interval of one model's score: Wilson for a plain proportion, else the bootstrap."""
    if not len(scores):
        return None
    if scores.binary:
        return wilson(int(sum(scores.num)), len(scores), confidence)
    return bootstrap(scores.value, len(scores), confidence=confidence)


def difference_interval(tuned: ItemScores, reference: ItemScores, confidence: float = CONFIDENCE) -> Interval | None:
    """Interval on tuned − reference, paired by item (both resampled with the same indices)."""
    if len(tuned) != len(reference) or not len(tuned):
        return None

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
