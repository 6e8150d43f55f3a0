"""The operator's Prometheus metrics, on one registry served at /metrics.

Other modules (e.g. ``tuneloop.operator.rollout``) register their metrics on ``REGISTRY`` too.
Names follow the metric-names contract in the developers' guide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tuneloop.api.status import FineTuneJobPhase

REGISTRY = CollectorRegistry(auto_describe=True)
PHASES = [p.value for p in FineTuneJobPhase]

FINETUNEJOB_PHASE = Gauge(
    "tuneloop_finetunejob_phase", "1 for the FineTuneJob's current phase, 0 for the others.",
    ["namespace", "name", "phase"], registry=REGISTRY,
)
FINETUNEJOBS = Gauge("tuneloop_finetunejobs", "FineTuneJobs by phase.", ["phase"], registry=REGISTRY)
for _p in PHASES:  # every phase has a series from the start (0)
    FINETUNEJOBS.labels(_p)
RECONCILE_DURATION = Histogram(
    "tuneloop_reconcile_duration_seconds", "Time spent in one reconcile handler.", ["resource"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "tuneloop_reconcile_errors_total", "Reconcile handler failures (retried or permanent).", ["resource"], registry=REGISTRY,
)
_JOB = ["namespace", "name"]
STEP = Gauge("tuneloop_finetunejob_step", "Optimizer steps done (rank 0).", _JOB, registry=REGISTRY)
TOTAL_STEPS = Gauge("tuneloop_finetunejob_total_steps", "Optimizer steps planned.", _JOB, registry=REGISTRY)
LOSS = Gauge("tuneloop_finetunejob_loss", "Latest training loss.", _JOB, registry=REGISTRY)
TOKENS_PER_SECOND = Gauge("tuneloop_finetunejob_tokens_per_second", "Training throughput.", _JOB, registry=REGISTRY)
ETA_SECONDS = Gauge("tuneloop_finetunejob_eta_seconds", "Estimated seconds to the end of training.", _JOB, registry=REGISTRY)
PROGRESS_UPDATED = Gauge(
    "tuneloop_finetunejob_progress_updated_timestamp_seconds", "Unix time progress was last read from rank 0.", _JOB, registry=REGISTRY,
)
CREATE_TO_TRAINING_JOB = Histogram(
    "tuneloop_create_to_training_job_seconds", "From FineTuneJob creation to its training Job being created.",
    registry=REGISTRY, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
_PROGRESS_GAUGES = {"step": STEP, "total_steps": TOTAL_STEPS, "loss": LOSS, "tokens_per_second": TOKENS_PER_SECOND, "eta_seconds": ETA_SECONDS}

# namespace/name -> phase, to keep the per-phase counts exact without listing.
_phases: dict[tuple[str, str], str] = {}


def set_phase(namespace: str, name: str, phase: str) -> None:
    """Record a FineTuneJob's phase (kube-state-metrics style: 1 for current, 0 for others). Every pass
    calls it: a phase already recorded costs nothing, the per-phase counts change by one."""
    key = (namespace, name)
    was = _phases.get(key)
    if was == phase:
        return
    for p in PHASES:
        FINETUNEJOB_PHASE.labels(namespace, name, p).set(1 if p == phase else 0)
    _phases[key] = phase
    if was is not None:
        FINETUNEJOBS.labels(was).dec()
    FINETUNEJOBS.labels(phase).inc()


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted FineTuneJob."""
    was = _phases.pop((namespace, name), None)
    if was is not None:
        FINETUNEJOBS.labels(was).dec()
    for p in PHASES:
        _remove(FINETUNEJOB_PHASE, namespace, name, p)
    for g in [*_PROGRESS_GAUGES.values(), PROGRESS_UPDATED]:
        _remove(g, namespace, name)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass




def set_progress(namespace: str, name: str, progress: dict) -> None:
    """Mirror rank 0's progress (snake_case keys as in Progress) into the per-job gauges."""
    for key, gauge in _PROGRESS_GAUGES.items():
        value = progress.get(key)
        if value is not None:
            gauge.labels(namespace, name).set(float(value))
    PROGRESS_UPDATED.labels(namespace, name).set(time.time())


@contextmanager
def reconcile_timer(resource: str) -> Iterator[None]:
    """Time a handler; count it as an error when it raises (Kopf then retries or gives up)."""
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        RECONCILE_ERRORS.labels(resource).inc()
        raise
    finally:
        RECONCILE_DURATION.labels(resource).observe(time.perf_counter() - start)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread (port 0: disabled)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
