"""The trainer's Prometheus gauges (rank 0), served on $TUNELOOP_METRICS_PORT (default 9400; TrainerSettings.metrics_port)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tuneloop.contract.progress import GAUGES as _CONTRACT_GAUGES

from ..settings import TrainerSettings

# key -> (metric name, help): the contract's table (tuneloop.contract.progress), which the operator reads too.
GAUGES = {g.key: (g.metric, g.help) for g in _CONTRACT_GAUGES}


class TrainerMetrics:
    """Gauges labelled job/namespace on a private registry; `serve()` starts the HTTP endpoint."""

    def __init__(self, job: str | None = None, namespace: str | None = None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        settings = TrainerSettings.from_env()
        self.labels = {"job": job or settings.job_name, "namespace": namespace or settings.namespace}
        self.gauges = {k: Gauge(name, doc, ["job", "namespace"], registry=self.registry).labels(**self.labels)
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
