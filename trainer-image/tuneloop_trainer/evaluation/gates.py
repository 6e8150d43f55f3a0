"""Gates: tuned-vs-reference metrics (base, majority, serving; point or 95 % bound) → Passed/Failed with one reason per gate. Pure, no I/O.

A gate never passes on a number that is not finite (NaN, inf: a diverged model's perplexity, a metric of
nothing) nor on fewer than MIN_TEST_EXAMPLES test items: it fails with a reason that says so.
"""

from __future__ import annotations

import math
from typing import Any

from tuneloop.api.evaluation import (
    EvaluationRecord,
    ForgettingCheck,
    Gate,
    GateResult,
    MetricComparison,
    ReferenceScore,
    ServingComparison,
    Verdict,
    metric_info,
)

EPS = 1e-9
FORGETTING = "forgettingAccuracy"
MIN_TEST_EXAMPLES = 2  # one test item is an anecdote: no gate passes on it


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def comparisons(base: dict[str, Any], tuned: dict[str, Any], names: list[str]) -> list[MetricComparison]:
    """MetricComparison rows for `names` (in that order) from two flat {metric: value} dicts."""
    rows = []
    for name in names:
        b, t = base.get(name), tuned.get(name)
        if b is None and t is None:
            continue
        delta = t - b if isinstance(b, (int, float)) and isinstance(t, (int, float)) else None
        rows.append(MetricComparison(name=name, base=_num(b), tuned=_num(t), delta=_num(delta)))
    return rows


def _num(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1000 else f"{v:.3f}"


def _ref_name(gate: Gate) -> str:
    ref = getattr(gate, "reference", "base")
    return ref if isinstance(ref, str) else ref.value


def _reference(row: MetricComparison, ref: str) -> ReferenceScore | None:
    found = next((s for s in row.references if s.reference == ref), None)
    if found is None and ref == "base" and row.base is not None:
        delta = row.tuned - row.base if row.tuned is not None else None
        found = ReferenceScore(reference="base", value=row.base, difference=delta)
    return found


# long: one gate's bounds checked top to bottom (minValue, then minImprovement/maxRegression against the reference);
# each early return is a gate that cannot be checked, with the message that says why
def check_gate(gate: Gate, row: MetricComparison | None) -> GateResult:
    """One gate against one metric row; every bound set on the gate must hold.

    minImprovement/maxRegression compare with the gate's reference (base, majority, serving); with
    confidenceBound they use the 95 % bound of the paired difference that is worst for the tuned model,
    and minValue uses the worst bound of the tuned score's interval.
    """
    metric = gate.metric if isinstance(gate.metric, str) else gate.metric.value
    ref_name = _ref_name(gate)
    bound = bool(getattr(gate, "confidence_bound", False))

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(metric=metric, passed=passed, reason=reason, reference=ref_name, confidence_bound=bound)

    if row is None or row.tuned is None:
        return result(False, f"{metric} was not measured for the tuned model")
    if not _finite(row.tuned):
        return result(False, f"{metric}: the tuned score is {row.tuned} (not a finite number), so no gate on it can pass")
    lower = metric_info(metric).lower_is_better
    direction = "lower" if lower else "higher"
    t = row.tuned
    reasons, passed = [], True
    if gate.min_value is not None:
        value, what = t, "tuned"
        if bound:
            if row.tuned_interval is None:
                return result(False, f"{metric}: no confidence interval for the tuned score, so its 95% bound cannot be checked")
            value = row.tuned_interval.high if lower else row.tuned_interval.low
            what = f"tuned {_fmt(t)}, its 95% {'upper' if lower else 'lower'} bound"
            if not _finite(value):
                return result(False, f"{metric}: the 95% bound of the tuned score is {value} (not a finite number)")
        ok = value <= gate.min_value + EPS if lower else value >= gate.min_value - EPS
        passed &= ok
        reasons.append(f"{what} {_fmt(value)} {('≤' if ok else '>') if lower else ('≥' if ok else '<')} required {_fmt(gate.min_value)}")
    if gate.min_improvement is not None or gate.max_regression is not None:
        ref = _reference(row, ref_name)
        if ref is None or ref.value is None or ref.difference is None:
            hint = {"base": "set evaluation.baseline: true", "majority": "keep evaluation.baselines: true and a train split with answers",
                    "serving": "set evaluation.serving to the serving ModelVersion's eval.json"}.get(ref_name, "")
            return result(False, f"{metric}: no {ref_name} score to compare with" + (f" ({hint})" if hint else ""))
        r = ref.value
        diff = ref.difference  # tuned - reference
        if not _finite(r, diff):
            return result(False, f"{metric}: {ref_name} {r}, difference {diff}: not a finite number, so the gate cannot pass")
        gain = -diff if lower else diff  # positive = better, in the metric's direction
        what = "improvement"
        if bound:
            di = ref.difference_interval
            if di is None:
                return result(False, f"{metric}: no paired confidence interval against {ref_name}, so its 95% bound cannot be checked")
            gain = -di.high if lower else di.low
            what = f"improvement {(-diff if lower else diff):+.3f}, its 95% lower bound"
            if not _finite(gain):
                return result(False, f"{metric}: the 95% bound of the difference against {ref_name} is {gain} (not a finite number)")
        vs = f"{ref_name} {_fmt(r)} → tuned {_fmt(t)}; {direction} is better"
        if gate.min_improvement is not None:
            ok = gain >= gate.min_improvement - EPS
            passed &= ok
            reasons.append(f"{what} {gain:+.3f} over {ref_name} ({vs}) {'≥' if ok else '<'} required {_fmt(gate.min_improvement)}")
        if gate.max_regression is not None:
            regression = max(0.0, -gain)
            ok = regression <= gate.max_regression + EPS
            passed &= ok
            reasons.append(f"{'worst-case ' if bound else ''}regression {regression:.3f} against {ref_name} ({vs}) "
                           f"{'≤' if ok else '>'} allowed {_fmt(gate.max_regression)}")
    return result(passed, f"{metric}: " + "; ".join(reasons))


def check_forgetting(check: ForgettingCheck, row: MetricComparison | None) -> GateResult:
    """The forgetting budget: accuracy on the general set may drop by at most maxRegression."""
    if row is None or row.tuned is None or row.base is None:
        return GateResult(metric=FORGETTING, passed=False, reason="forgetting set was not scored for both base and tuned")
    if not _finite(row.base, row.tuned):
        return GateResult(metric=FORGETTING, passed=False,
                          reason=f"forgetting: accuracy {row.base} → {row.tuned} is not a finite number, so the budget cannot be checked")
    drop = row.base - row.tuned
    ok = drop <= check.max_regression + EPS
    return GateResult(
        metric=FORGETTING,
        passed=ok,
        reason=f"forgetting: accuracy {_fmt(row.base)} → {_fmt(row.tuned)}, drop {max(drop, 0.0):.3f} "
        f"{'≤' if ok else '>'} budget {_fmt(check.max_regression)}",
    )


def decide(
    rows: list[MetricComparison],
    gates: list[Gate],
    forgetting: ForgettingCheck | None,
    test_examples: int | None = None,
    *,
    serving: ServingComparison | None = None,
    interval_method: str | None = None,
    confidence_level: float | None = None,
) -> EvaluationRecord:
    """The EvaluationRecord: every gate's result and the verdict (Passed only when all gates hold). With fewer than
    MIN_TEST_EXAMPLES test items (when known) every gate on the test set fails, whatever its numbers."""
    by_name = {r.name: r for r in rows}
    results = [check_gate(g, by_name.get(g.metric if isinstance(g.metric, str) else g.metric.value)) for g in gates]
    if test_examples is not None and test_examples < MIN_TEST_EXAMPLES:
        results = [r.model_copy(update={"passed": False, "reason": f"only {test_examples} test item(s): a gate needs at least "
                                        f"{MIN_TEST_EXAMPLES} ({r.reason})"}) for r in results]
    if forgetting is not None and forgetting.enabled:
        results.append(check_forgetting(forgetting, by_name.get(FORGETTING)))
    verdict = Verdict.PASSED if all(r.passed for r in results) else Verdict.FAILED
    return EvaluationRecord(metrics=rows, verdict=verdict, gates=results, test_examples=test_examples, serving=serving,
                            interval_method=interval_method, confidence_level=confidence_level)
