"""Gates: base-vs-tuned metrics → Passed/Failed with one reason per gate. Pure, no I/O."""

from __future__ import annotations

from typing import Any

from tuneloop.api.evaluation import (
    EvaluationRecord,
    ForgettingCheck,
    Gate,
    GateResult,
    MetricComparison,
    Verdict,
    metric_info,
)

EPS = 1e-9
FORGETTING = "forgettingAccuracy"


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


def check_gate(gate: Gate, row: MetricComparison | None) -> GateResult:
    """One gate against one metric row; every bound set on the gate must hold."""
    metric = gate.metric if isinstance(gate.metric, str) else gate.metric.value
    if row is None or row.tuned is None:
        return GateResult(metric=metric, passed=False, reason=f"{metric} was not measured for the tuned model")
    lower = metric_info(metric).lower_is_better
    direction = "lower" if lower else "higher"
    t, b = row.tuned, row.base
    reasons, passed = [], True
    if gate.min_value is not None:
        ok = t <= gate.min_value + EPS if lower else t >= gate.min_value - EPS
        passed &= ok
        reasons.append(f"tuned {_fmt(t)} {'≤' if lower else '≥'} {_fmt(gate.min_value)}" if ok else f"tuned {_fmt(t)} {'>' if lower else '<'} required {_fmt(gate.min_value)}")
    if gate.min_improvement is not None or gate.max_regression is not None:
        if b is None:
            return GateResult(metric=metric, passed=False, reason=f"{metric}: no base score to compare with (set evaluation.baseline: true)")
        gain = (b - t) if lower else (t - b)  # positive = better, in the metric's direction
        if gate.min_improvement is not None:
            ok = gain >= gate.min_improvement - EPS
            passed &= ok
            reasons.append(
                f"improvement {gain:+.3f} ({direction} is better: base {_fmt(b)} → tuned {_fmt(t)}) "
                f"{'≥' if ok else '<'} required {_fmt(gate.min_improvement)}"
            )
        if gate.max_regression is not None:
            regression = max(0.0, -gain)
            ok = regression <= gate.max_regression + EPS
            passed &= ok
            reasons.append(
                f"regression {regression:.3f} (base {_fmt(b)} → tuned {_fmt(t)}) {'≤' if ok else '>'} allowed {_fmt(gate.max_regression)}"
            )
    return GateResult(metric=metric, passed=passed, reason=f"{metric}: " + "; ".join(reasons))


def check_forgetting(check: ForgettingCheck, row: MetricComparison | None) -> GateResult:
    """The forgetting budget: accuracy on the general set may drop by at most maxRegression."""
    if row is None or row.tuned is None or row.base is None:
        return GateResult(metric=FORGETTING, passed=False, reason="forgetting set was not scored for both base and tuned")
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
) -> EvaluationRecord:
    """The EvaluationRecord: every gate's result and the verdict (Passed only when all gates hold)."""
    by_name = {r.name: r for r in rows}
    results = [check_gate(g, by_name.get(g.metric if isinstance(g.metric, str) else g.metric.value)) for g in gates]
    if forgetting is not None and forgetting.enabled:
        results.append(check_forgetting(forgetting, by_name.get(FORGETTING)))
    verdict = Verdict.PASSED if all(r.passed for r in results) else Verdict.FAILED
    return EvaluationRecord(metrics=rows, verdict=verdict, gates=results, test_examples=test_examples)
