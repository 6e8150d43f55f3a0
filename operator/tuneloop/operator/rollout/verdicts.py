"""Canary analysis as pure functions: one measurement -> phase; measurements -> verdict (whatever the provider).

Like Argo Rollouts' analysis: Successful/Failed/Inconclusive measurements count toward `count`;
Error measurements (no answer from the provider) do not, and only `consecutiveErrorLimit`
consecutive errors end the analysis. Verdict order per metric (assessMetricStatus): failed >
failureLimit -> Failed; inconclusive > inconclusiveLimit -> Inconclusive; consecutive errors >
consecutiveErrorLimit -> Error; `count` measurements taken -> Successful if at least one of them was
Successful, else Inconclusive; else Running. A no-data measurement under `noDataPolicy: ignore` is
"ignored": it counts toward `count` but is neither Successful nor against any limit, so a metric that
never returned a value is never promoted. Across metrics the worst verdict wins: Failed, Error,
Inconclusive, Running, Successful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from tuneloop.api.rollout import AnalysisMetric, AnalysisSpec, MeasurementPhase, MetricResult, NoDataPolicy


class Verdict(str, Enum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


_SEVERITY = [Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE, Verdict.RUNNING, Verdict.SUCCESSFUL]


@dataclass(frozen=True)
class QueryOutcome:
    """What the provider answered for one role: a value (None = empty result) or an error."""

    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Assessment:
    """One measurement's phase, the values it compared and why."""

    phase: MeasurementPhase
    value: float | None
    stable_value: float | None
    message: str
    ignored: bool = False  # no data under noDataPolicy: ignore (recorded as Inconclusive; counted by `record` as neither)


def _nodata(metric: AnalysisMetric, spec: AnalysisSpec, what: str, value: float | None, stable: float | None) -> Assessment:
    policy = NoDataPolicy(metric.no_data_policy or spec.no_data_policy)
    reason = f"{what} (noDataPolicy={policy.value})"
    if policy == NoDataPolicy.FAIL:
        return Assessment(MeasurementPhase.FAILED, value, stable, reason)
    if policy == NoDataPolicy.IGNORE:
        return Assessment(MeasurementPhase.INCONCLUSIVE, value, stable,
                          f"{reason}: ignored (counts toward count, not as a success nor against inconclusiveLimit)", ignored=True)
    return Assessment(MeasurementPhase.INCONCLUSIVE, value, stable, reason)


def _clean(value: float | None) -> float | None:
    """NaN is not storable in status; it is reported as no data."""
    return None if value is None or math.isnan(value) else value


def assess(metric: AnalysisMetric, spec: AnalysisSpec, canary: QueryOutcome, stable: QueryOutcome | None) -> Assessment:
    """Phase of one measurement from the canary's (and, for relative thresholds, the stable's) answer."""
    if canary.error:
        return Assessment(MeasurementPhase.ERROR, None, None, f"canary query failed: {canary.error}")
    value = _clean(canary.value)
    if value is None:
        what = "canary query returned NaN" if canary.value is not None else "canary query returned no data"
        return _nodata(metric, spec, what, None, None)
    name = metric.name
    # absolute thresholds first: a canary above `max` fails whatever the stable answered
    if metric.max is not None and value > metric.max:
        return Assessment(MeasurementPhase.FAILED, value, None, f"{name} {value:.6g} > max {metric.max:g}")
    if metric.min is not None and value < metric.min:
        return Assessment(MeasurementPhase.FAILED, value, None, f"{name} {value:.6g} < min {metric.min:g}")
    stable_value: float | None = None
    if metric.max_relative_to_stable is not None:
        if stable is None or stable.error:
            err = stable.error if stable else "not queried"
            return Assessment(MeasurementPhase.ERROR, value, None, f"stable query failed: {err}")
        stable_value = _clean(stable.value)
        if stable_value is None or math.isinf(stable_value):  # an infinite stable value is no yardstick either
            what = ("stable query returned no data" if stable.value is None else
                    f"stable query returned {'NaN' if stable_value is None else stable_value}")
            return _nodata(metric, spec, what, value, None)
    if metric.max_relative_to_stable is not None and stable_value is not None:
        limit = metric.max_relative_to_stable * stable_value
        if value > limit:
            return Assessment(
                MeasurementPhase.FAILED,
                value,
                stable_value,
                f"{name} {value:.6g} > {metric.max_relative_to_stable:g} x stable {stable_value:.6g}",
            )
    return Assessment(MeasurementPhase.SUCCESSFUL, value, stable_value, f"{name} {value:.6g} within thresholds")


def record(result: MetricResult, phase: MeasurementPhase | str, *, ignored: bool = False) -> MetricResult:
    """Totals after one more measurement (a new object). An ignored one (no data under noDataPolicy: ignore)
    counts toward `count` only: not Successful, not Inconclusive."""
    r = result.model_copy()
    phase = MeasurementPhase(phase)
    if phase == MeasurementPhase.ERROR:
        r.error += 1
        r.consecutive_error += 1
        return r
    r.count += 1
    r.consecutive_error = 0
    if ignored:
        return r
    if phase == MeasurementPhase.SUCCESSFUL:
        r.successful += 1
    elif phase == MeasurementPhase.FAILED:
        r.failed += 1
    else:
        r.inconclusive += 1
    return r


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def metric_verdict(
    result: MetricResult, spec: AnalysisSpec, count: int | None, metric: AnalysisMetric | None = None, *, background: bool = False
) -> Verdict:
    """assessMetricStatus: limits first (the metric's own, else the analysis-wide ones), then the count.

    `background` (measurements outside analysis steps, Argo Rollouts' background analysis) has no
    count, so it never succeeds, and inconclusive measurements do not stop it: only Failed or Error
    end it. A canary that only ever returns no data is the progress deadline's business.
    """
    if result.failed > _pick(metric.failure_limit if metric else None, spec.failure_limit):
        return Verdict.FAILED
    if not background and result.inconclusive > _pick(metric.inconclusive_limit if metric else None, spec.inconclusive_limit):
        return Verdict.INCONCLUSIVE
    if result.consecutive_error > _pick(metric.consecutive_error_limit if metric else None, spec.consecutive_error_limit):
        return Verdict.ERROR
    if not background and count is not None and result.count >= count:
        # Never promote on no evidence: a step whose every measurement was no-data (ignored, or
        # inconclusiveLimit at or above count) is Inconclusive, not Successful.
        return Verdict.SUCCESSFUL if result.successful > 0 else Verdict.INCONCLUSIVE
    return Verdict.RUNNING


def run_verdict(verdicts: list[Verdict]) -> Verdict:
    """The worst verdict across metrics (an empty run is Successful)."""
    for v in _SEVERITY:
        if v in verdicts:
            return v
    return Verdict.SUCCESSFUL
