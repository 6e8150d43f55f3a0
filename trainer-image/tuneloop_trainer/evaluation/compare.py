"""Scores and per-item scores of the tuned model and its references → MetricComparison rows with
95 % intervals, paired differences, the paired test that decides each outcome; the serving (champion) comparison. Pure."""

from __future__ import annotations

import math
from typing import Any

from tuneloop.api.evaluation import (
    ComparisonOutcome,
    Interval,
    MetricComparison,
    ReferenceScore,
    ServingComparison,
    SignificanceTest,
    metric_info,
)

from .stats import (
    ALPHA,
    BOOTSTRAP_SAMPLES,
    CONFIDENCE,
    PERMUTATIONS,
    ItemScores,
    PairedTest,
    beyond_noise,
    difference_interval,
    interval,
    mcnemar_exact,
    paired_test,
)

REFERENCES = ("base", "majority", "copyPrompt", "serving")
TIMINGS = ("latencySeconds", "tokensPerSecond")
METHOD = (f"Better/Worse when a two-sided paired test gives p ≤ {ALPHA:.2f}: McNemar's exact test for binary per-item outcomes, "
          f"else a sign-flip permutation test (exact up to 12 differing items, else {PERMUTATIONS} random swaps, fixed seed); "
          "Wilson score interval for proportions and the exact conditional interval for their paired difference; "
          f"percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples of the test items, fixed seed) for other metrics and their "
          "differences, paired by item; timings compared by their per-batch spread")


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def _iv(i: Any) -> Interval | None:
    return None if i is None else Interval(low=round(i.low, 6), high=round(i.high, 6))


def outcome(name: str, difference: float | None, test: PairedTest | None) -> ComparisonOutcome | None:
    """Better/Worse when the paired test rejects 'no difference' at ALPHA (two-sided), in the direction of the
    difference for the metric; else NoSignificantDifference. None without a test or a finite difference."""
    if test is None or test.p_value is None or difference is None or not math.isfinite(difference):
        return None
    if not test.significant() or difference == 0:
        return ComparisonOutcome.NO_SIGNIFICANT_DIFFERENCE
    better = difference < 0 if metric_info(name).lower_is_better else difference > 0
    return ComparisonOutcome.BETTER if better else ComparisonOutcome.WORSE


def _p(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.4g}")


def reference_score(name: str, ref: str, tuned_value: float | None, ref_value: float | None,
                    tuned_items: ItemScores | None, ref_items: ItemScores | None) -> ReferenceScore:
    diff = None
    mcnemar = None
    test = None
    ref_iv = interval(ref_items) if ref_items is not None else None
    if tuned_items is not None and ref_items is not None and len(tuned_items) == len(ref_items):
        diff = difference_interval(tuned_items, ref_items)
        test = paired_test(tuned_items, ref_items)
        if tuned_items.binary and ref_items.binary:
            m = mcnemar_exact(tuned_items.num, ref_items.num)
            mcnemar = m["pValue"] if m else None
    d = tuned_value - ref_value if tuned_value is not None and ref_value is not None else None
    return ReferenceScore(reference=ref, value=_r(ref_value), interval=_iv(ref_iv), difference=_r(d), difference_interval=_iv(diff),
                          mcnemar_p_value=_p(mcnemar), test=SignificanceTest(test.test) if test else None,
                          p_value=_p(test.p_value) if test else None, outcome=outcome(name, d, test))


def timing_score(name: str, tuned: float | None, base: float | None, spreads: dict[str, dict[str, Any] | None]) -> ReferenceScore:
    """A timing against the base: Better/Worse only beyond the noise of the per-batch timings."""
    d = tuned - base if tuned is not None and base is not None else None
    result = None
    if d is not None:
        result = ComparisonOutcome.NO_SIGNIFICANT_DIFFERENCE
        if beyond_noise(spreads.get("tuned"), spreads.get("base")):
            better = (d < 0) if metric_info(name).lower_is_better else (d > 0)
            result = ComparisonOutcome.BETTER if better else ComparisonOutcome.WORSE
    return ReferenceScore(reference="base", value=_r(base), difference=_r(d), outcome=result)


def rows(
    names: list[str],
    scores: dict[str, dict[str, Any]],
    items: dict[str, dict[str, ItemScores]],
    timing_spread: dict[str, dict[str, Any] | None] | None = None,
) -> list[MetricComparison]:
    """One row per metric the tuned (or base) model has, in `names` order. `scores`/`items`: model → metric → value/items,
    models "tuned" plus any of REFERENCES."""
    tuned_s, base_s = scores.get("tuned") or {}, scores.get("base") or {}
    out = []
    for name in names:
        t, b = tuned_s.get(name), base_s.get(name)
        if t is None and b is None:
            continue
        t_items = (items.get("tuned") or {}).get(name)
        refs: list[ReferenceScore] = []
        if name in TIMINGS:
            if b is not None or t is not None:
                refs.append(timing_score(name, t, b, timing_spread or {}))
        else:
            for ref in REFERENCES:
                rv = (scores.get(ref) or {}).get(name)
                if rv is None:
                    continue
                refs.append(reference_score(name, ref, t, rv, t_items, (items.get(ref) or {}).get(name)))
        delta = t - b if isinstance(t, (int, float)) and isinstance(b, (int, float)) else None
        out.append(MetricComparison(name=name, base=_r(b), tuned=_r(t), delta=_r(delta),
                                    tuned_interval=_iv(interval(t_items)) if t_items is not None and name not in TIMINGS else None,
                                    references=refs))
    return out


def serving_comparison(
    metric_rows: list[MetricComparison], model_version: str | None, metric: str | None, not_comparable: str | None = None,
) -> ServingComparison:
    """The champion/challenger outcome on `metric` (the first quality metric with a serving score when None)."""
    if not_comparable:
        return ServingComparison(model_version=model_version, outcome=ComparisonOutcome.NOT_COMPARABLE, metric=metric, reason=not_comparable)
    candidates = [r for r in metric_rows if r.name not in TIMINGS and any(s.reference == "serving" for s in r.references)]
    row = next((r for r in candidates if r.name == metric), None) if metric else None
    if row is None:
        ranked = sorted(candidates, key=lambda r: metric_info(r.name).headline or 99)
        row = ranked[0] if ranked else None
    if row is None:
        return ServingComparison(model_version=model_version, outcome=ComparisonOutcome.NOT_COMPARABLE, metric=metric,
                                 reason="no metric was scored for both the tuned model and the serving version")
    s = next(s for s in row.references if s.reference == "serving")
    res = ComparisonOutcome(s.outcome) if s.outcome else ComparisonOutcome.NOT_COMPARABLE
    di = s.difference_interval
    span = f" (95% CI {di.low:+.3f} to {di.high:+.3f}, paired by item)" if di else ""
    test = f"; {s.test.value if hasattr(s.test, 'value') else s.test} p = {s.p_value:.4g}" if s.test and s.p_value is not None else ""
    if s.difference is not None and row.tuned is not None and s.outcome:
        reason = f"{row.name}: tuned {row.tuned} vs serving {s.value}, difference {s.difference:+.3f}{span}{test} → {res.value}"
    elif s.test and s.p_value is None:
        reason = f"{row.name}: not comparable: a per-item score is not a finite number (NaN or inf)"
    else:
        reason = f"{row.name}: not comparable: no paired per-item scores"
    return ServingComparison(model_version=model_version, outcome=res, metric=row.name, test=s.test if s.outcome else None,
                             p_value=s.p_value if s.outcome else None, reason=reason)


CONFIDENCE_LEVEL = CONFIDENCE
