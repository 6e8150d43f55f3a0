"""Rollout metrics on the operator's registry (names from the metric-names contract)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tuneloop.api.rollout import RolloutPhase
from tuneloop.operator.telemetry import REGISTRY

PHASES = [p.value for p in RolloutPhase]

CANARY_WEIGHT = Gauge(
    "tuneloop_rollout_canary_weight", "Percent of traffic on the Rollout's candidate.", ["namespace", "rollout"], registry=REGISTRY
)
ROLLOUT_PHASE = Gauge(
    "tuneloop_rollout_phase", "1 for the Rollout's current phase, 0 for the others.", ["namespace", "rollout", "phase"], registry=REGISTRY
)
MEASUREMENT_VALUE = Gauge(
    "tuneloop_analysis_measurement_value", "Latest canary value of an analysis metric.", ["namespace", "rollout", "metric"], registry=REGISTRY
)
MEASUREMENTS = Counter(
    "tuneloop_analysis_measurements_total",
    "Analysis measurements by phase (Successful, Failed, Inconclusive, Error).",
    ["namespace", "rollout", "metric", "phase"],
    registry=REGISTRY,
)
TIME_TO_ROLLBACK = Histogram(
    "tuneloop_rollout_time_to_rollback_seconds",
    "Seconds from the first failing measurement of an analysis step to the canary weight being 0.",
    registry=REGISTRY,
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)

SERVING_DRIFT = Gauge(
    "tuneloop_serving_drift",
    "Drift watch of the serving ModelVersion, per signal: PSI of served vs train token lengths (prompt_tokens, "
    "generation_tokens), 5xx-rate increase since promotion (error_rate), p95 latency / p95 at promotion (e2e_latency_p95). "
    "Absent while a window has too few requests.",
    ["namespace", "rollout", "model_version", "signal"],
    registry=REGISTRY,
)
SERVING_DRIFT_THRESHOLD = Gauge(
    "tuneloop_serving_drift_threshold",
    "The Rollout's driftWatch limit of each tuneloop_serving_drift signal (psiThreshold, maxErrorRateIncrease, maxLatencyRatio).",
    ["namespace", "rollout", "model_version", "signal"],
    registry=REGISTRY,
)


def set_drift(namespace: str, rollout: str, model_version: str, values: dict[str, tuple[float, float] | None]) -> None:
    """One series per signal with a verdict; a signal without one (too few requests, no baseline) has none.
    Series of versions that no longer serve are dropped."""
    for gauge in (SERVING_DRIFT, SERVING_DRIFT_THRESHOLD):
        for labels in list(gauge._metrics):
            if labels[:2] == (namespace, rollout) and labels[2] != model_version:
                gauge.remove(*labels)
    for signal, vt in values.items():
        if vt is None:
            for gauge in (SERVING_DRIFT, SERVING_DRIFT_THRESHOLD):
                try:
                    gauge.remove(namespace, rollout, model_version, signal)
                except KeyError:
                    pass
            continue
        SERVING_DRIFT.labels(namespace, rollout, model_version, signal).set(vt[0])
        SERVING_DRIFT_THRESHOLD.labels(namespace, rollout, model_version, signal).set(vt[1])


def set_state(namespace: str, rollout: str, phase: str, weight: int) -> None:
    CANARY_WEIGHT.labels(namespace, rollout).set(weight)
    for p in PHASES:
        ROLLOUT_PHASE.labels(namespace, rollout, p).set(1 if p == phase else 0)


def measured(namespace: str, rollout: str, metric: str, phase: object, value: float | None) -> None:
    MEASUREMENTS.labels(namespace, rollout, metric, getattr(phase, "value", phase)).inc()
    if value is not None:
        MEASUREMENT_VALUE.labels(namespace, rollout, metric).set(value)


def forget(namespace: str, rollout: str) -> None:
    """Drop the gauges of a deleted Rollout (counters stay, as Prometheus expects)."""
    per_gauge: list[tuple[Gauge, list[tuple[str, ...]]]] = [(CANARY_WEIGHT, [()]), (ROLLOUT_PHASE, [(p,) for p in PHASES])]
    for gauge, labels in per_gauge:
        for extra in labels:
            try:
                gauge.remove(namespace, rollout, *extra)
            except KeyError:
                pass
    for gauge in (MEASUREMENT_VALUE, SERVING_DRIFT, SERVING_DRIFT_THRESHOLD):
        for key in list(gauge._metrics):
            if key[:2] == (namespace, rollout):
                gauge.remove(*key)
