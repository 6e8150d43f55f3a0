"""The trainer's live progress: Prometheus gauges served by rank 0, scraped by the operator into
FineTuneJob `status.progress`. One table, so a new gauge is one row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Gauge(NamedTuple):
    key: str  # the trainer's key (its progress dicts use it)
    metric: str  # the Prometheus metric name
    status_key: str  # the key in FineTuneJob status.progress
    help: str
    integer: bool = False


GAUGES: tuple[Gauge, ...] = (
    Gauge("step", "tuneloop_trainer_step", "step", "Optimizer steps completed.", integer=True),
    Gauge("total_steps", "tuneloop_trainer_total_steps", "totalSteps", "Optimizer steps planned.", integer=True),
    Gauge("epoch", "tuneloop_trainer_epoch", "epoch", "Fractional epoch."),
    Gauge("loss", "tuneloop_trainer_loss", "loss", "Training loss of the last logging interval."),
    Gauge("eval_loss", "tuneloop_trainer_eval_loss", "evalLoss", "Validation loss of the last evaluation."),
    Gauge("learning_rate", "tuneloop_trainer_learning_rate", "learningRate", "Current learning rate."),
    Gauge("tokens_per_second", "tuneloop_trainer_tokens_per_second", "tokensPerSecond", "Non-padding tokens per second, all ranks."),
    Gauge("tokens_per_second_per_gpu", "tuneloop_trainer_tokens_per_second_per_gpu", "tokensPerSecondPerGpu",
          "Non-padding tokens per second per GPU (all ranks / world size)."),
    Gauge("mfu", "tuneloop_trainer_mfu", "mfu",
          "Model-FLOPs utilisation 0-1: model FLOPs/s over world size x the GPU's dense 16-bit peak (flops.py)."),
    Gauge("eta_seconds", "tuneloop_trainer_eta_seconds", "etaSeconds", "Estimated seconds until training ends."),
)
# Every gauge's labels: the FineTuneJob it belongs to (name, namespace). They are rank 0's identity: the operator
# reads only samples labelled with the job it polls and ignores an answer that names another job (two trainers on
# one host port, tuneloop.operator.finetunejob.progress); the trainer PodMonitor keeps them (honorLabels).
LABELS = ("job", "namespace")
DEFAULT_PORT = 9400  # $TUNELOOP_METRICS_PORT

BY_METRIC = {g.metric: g for g in GAUGES}
STATUS_KEYS = {g.metric: g.status_key for g in GAUGES}
INTEGER_STATUS_KEYS = frozenset(g.status_key for g in GAUGES if g.integer)


def identity(namespace: str, job: str) -> dict[str, str]:
    """The labels rank 0 puts on every gauge of FineTuneJob namespace/job."""
    return {"job": job, "namespace": namespace}


def identity_of(labels: Mapping[str, str]) -> tuple[str, str]:
    """(namespace, job) of a sample's labels ("" where a label is missing)."""
    return labels.get("namespace", ""), labels.get("job", "")
