"""Prometheus as a MetricsProvider: the core's questions as PromQL (`queries`), asked through a QueryClient."""

from __future__ import annotations

import math

from tuneloop.api.rollout import AnalysisMetric

from ..provider import HISTOGRAM_SIGNALS, Histogram, Pods, WindowSignal
from . import queries
from .client import PrometheusClient, PrometheusError, QueryClient, is_nodata


def parse_le(text: str) -> float:
    """A bucket's `le` label as a number ("+Inf" -> math.inf)."""
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)


class PrometheusProvider:
    """Analysis metrics and drift-watch signals from Prometheus (vLLM's own metrics, pod labels as in `queries`)."""

    def __init__(self, client: QueryClient):
        self.client = client

    async def measure(self, metric: AnalysisMetric, pods: Pods, window: str) -> float | None:
        assert pods.role is not None, "an analysis metric is measured for one role's pods"
        return await self.client.query(queries.render_metric(metric, namespace=pods.namespace, rollout=pods.rollout,
                                                             role=pods.role, window=window))

    async def value(self, signal: WindowSignal, pods: Pods, window: str) -> float | None:
        return await self.client.query(self._drift(signal, pods, window))

    async def histogram(self, signal: WindowSignal, pods: Pods, window: str) -> Histogram | None:
        if signal not in HISTOGRAM_SIGNALS:
            raise ValueError(f"{signal} is not a histogram")
        series = await self.client.query_vector(self._drift(signal, pods, window))
        try:
            buckets = {parse_le(labels.get("le", "+Inf")): v for labels, v in series if not is_nodata(v)}
        except ValueError as exc:
            raise PrometheusError(str(exc)) from exc
        return buckets or None

    @staticmethod
    def _drift(signal: WindowSignal, pods: Pods, window: str) -> str:
        assert pods.model_version is not None, "the drift watch reads one ModelVersion's pods"
        return queries.render_drift(signal, namespace=pods.namespace, rollout=pods.rollout, model_version=pods.model_version,
                                    window=window)


def provider_for(address: str) -> PrometheusProvider:
    """The ProviderFactory of the operator: Prometheus at `address` (the Rollout's or the operator's default)."""
    return PrometheusProvider(PrometheusClient(address))
