"""The trainer's Prometheus gauges (rank 0), served on $TUNELOOP_METRICS_PORT (default 9400; TrainerSettings.metrics_port)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tuneloop.contract.progress import GAUGES as _CONTRACT_GAUGES
from tuneloop.contract.progress import LABELS, identity

from ..settings import TrainerSettings

# key -> (metric name, help): the contract's table (tuneloop.contract.progress), which the operator reads too.
GAUGES = {g.key: (g.metric, g.help) for g in _CONTRACT_GAUGES}


class TrainerMetrics:
    """Gauges labelled job/namespace on a private registry; `serve()` starts the HTTP endpoint. The labels are the
    FineTuneJob's identity (tuneloop.contract.progress): the operator reads only the samples that name the job it
    polls, so a trainer answering on another job's port is never taken for it."""

    def __init__(self, job: str | None = None, namespace: str | None = None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        settings = TrainerSettings.from_env()
        self.labels = identity(namespace or settings.namespace, job or settings.job_name)
        self.gauges = {k: Gauge(name, doc, list(LABELS), registry=self.registry).labels(**self.labels)
                       for k, (name, doc) in GAUGES.items()}
        # NaN = not reported (yet: no logged step / no evaluation in this run; or no MFU on CPU), never a false 0
        for k in ("tokens_per_second_per_gpu", "mfu", "loss", "eval_loss"):
            self.gauges[k].set(float("nan"))
        self.server: Any = None

    def serve(self, port: int | None = None, addr: str | None = None) -> int:
        from prometheus_client import start_http_server

        port = TrainerSettings.from_env().metrics_port if port is None else port
        addr = addr or listen_address()
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return self.server.server_port

    def serve_or_warn(self, port: int | None = None, addr: str | None = None, out: TextIO | None = None) -> int | None:
        """`serve()`, or None with a loud warning when the port cannot be bound (another process holds it: pods that
        share the host's ports, hostNetwork). Training goes on without the endpoint: its live progress (the
        FineTuneJob's status.progress, a sweep's pruning) is not reported, the results are."""
        port = TrainerSettings.from_env().metrics_port if port is None else port
        addr = addr or listen_address()
        try:
            return self.serve(port, addr)
        except OSError as exc:
            stream = sys.stderr if out is None else out
            print(f"tuneloop train: WARNING: metrics endpoint NOT started: cannot listen on {addr}:{port} ({exc}).\n"
                  f"tuneloop train: WARNING: training goes on, but {self.labels['namespace']}/{self.labels['job']}'s live "
                  "progress (status.progress, a sweep's pruning) will not be reported. Another process holds the port; "
                  "where training pods share the host's ports, set the operator's trainer_metrics_port_range "
                  "(each FineTuneJob its own port).", file=stream, flush=True)
            return None

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


def listen_address(env: Mapping[str, str] | None = None) -> str:
    """Where the metrics endpoint listens: every interface in a pod (Prometheus scrapes the pod IP), the
    loopback interface elsewhere (a local run must not open a port to the network); $TUNELOOP_METRICS_ADDR wins."""
    environ = os.environ if env is None else env
    forced = TrainerSettings.from_env(environ).metrics_addr
    if forced:
        return forced
    return "0.0.0.0" if environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1"
