"""FineTuneSweep metrics on the operator's registry: trials by state, the best objective, trial durations, and the
time of the last progress (a trial started, reported a validation loss or ended) for TuneloopSweepStalled."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from tuneloop.api.sweep import FineTuneSweepStatus, SweepPhase, SweepTrial, TrialState
from tuneloop.operator.telemetry import REGISTRY

_SWEEP = ["namespace", "name"]
TRIALS = Gauge("tuneloop_sweep_trials", "A FineTuneSweep's trials by state (Running, Complete, Pruned, Failed).",
               [*_SWEEP, "state"], registry=REGISTRY)
BEST = Gauge("tuneloop_sweep_best_objective", "The best trial's objective on the validation split.", [*_SWEEP, "metric"], registry=REGISTRY)
ACTIVE = Gauge("tuneloop_sweep_active", "1 while the sweep runs trials or its final run (phase Running or Evaluating), else 0.",
               _SWEEP, registry=REGISTRY)
LAST_PROGRESS = Gauge("tuneloop_sweep_last_progress_timestamp_seconds",
                      "Unix time a trial of the sweep last started, reported a validation loss or ended.", _SWEEP, registry=REGISTRY)
TRIAL_DURATION = Histogram("tuneloop_sweep_trial_duration_seconds", "Seconds from a trial's start to its end, by how it ended.",
                           ["state"], registry=REGISTRY,
                           buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400))


def _v(x: object) -> str:
    return str(getattr(x, "value", x))


def record(namespace: str, name: str, metric: str, status: FineTuneSweepStatus, ended: list[SweepTrial]) -> None:
    """The sweep's gauges after a tick; `ended`: trials that ended in this tick (their durations are observed once)."""
    for s in TrialState:
        TRIALS.labels(namespace, name, s.value).set(sum(_v(t.state) == s.value for t in status.trials))
    if status.best_value is not None:
        BEST.labels(namespace, name, metric).set(status.best_value)
    ACTIVE.labels(namespace, name).set(1 if _v(status.phase) in (SweepPhase.RUNNING.value, SweepPhase.EVALUATING.value) else 0)
    if status.last_progress_time is not None:
        LAST_PROGRESS.labels(namespace, name).set(status.last_progress_time.timestamp())
    for t in ended:
        if t.started_at is not None and t.finished_at is not None:
            TRIAL_DURATION.labels(_v(t.state)).observe(max(0.0, (t.finished_at - t.started_at).total_seconds()))
