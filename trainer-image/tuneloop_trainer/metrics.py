"""The trainer's Prometheus gauges (rank 0), served on $TUNELOOP_METRICS_PORT (default 9400)."""

from __future__ import annotations

import os
from typing import Any

GAUGES = {
    "step": ("tuneloop_trainer_step", "Optimizer steps completed."),
    "total_steps": ("tuneloop_trainer_total_steps", "Optimizer steps planned."),
    "epoch": ("tuneloop_trainer_epoch", "Fractional epoch."),
    "loss": ("tuneloop_trainer_loss", "Training loss of the last logging interval."),
    "eval_loss": ("tuneloop_trainer_eval_loss", "Validation loss of the last evaluation."),
    "learning_rate": ("tuneloop_trainer_learning_rate", "Current learning rate."),
    "tokens_per_second": ("tuneloop_trainer_tokens_per_second", "Non-padding tokens per second, all ranks."),
    "eta_seconds": ("tuneloop_trainer_eta_seconds", "Estimated seconds until training ends."),
}


class TrainerMetrics:
    """Gauges labelled job/namespace on a private registry; `serve()` starts the HTTP endpoint."""

    def __init__(self, job: str | None = None, namespace: str | None = None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        self.labels = {"job": job or os.environ.get("TUNELOOP_JOB_NAME", "local"),
                       "namespace": namespace or os.environ.get("TUNELOOP_NAMESPACE", "default")}
        self.gauges = {k: Gauge(name, doc, ["job", "namespace"], registry=self.registry).labels(**self.labels)
                       for k, (name, doc) in GAUGES.items()}
        self.server = None

    def serve(self, port: int | None = None, addr: str = "0.0.0.0") -> int:
        from prometheus_client import start_http_server

        port = int(os.environ.get("TUNELOOP_METRICS_PORT", "9400")) if port is None else port
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return self.server.server_port

    def update(self, values: dict[str, Any]) -> None:
        for k, g in self.gauges.items():
            v = values.get(k)
            if v is not None:
                g.set(float(v))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
