"""Prometheus as a MetricsProvider: the core's questions as PromQL (`queries`), asked through a QueryClient.

Tenancy (issue 25, docs/security.md): which Prometheus is asked is the admin's choice (`Endpoints`, from the
operator settings: a named allowlist); what a tenant's own PromQL reads is confined to its namespace
(`promql.confine`) unless the admin allows unconfined queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuneloop.api.experiment import ExperimentMetric
from tuneloop.api.rollout import AnalysisMetric
from tuneloop.contract.text import clean

from ..experiment import Counts
from ..provider import HISTOGRAM_SIGNALS, Histogram, Pods, QueryClient, WindowSignal
from . import queries
from .client import DEFAULT_MAX_BYTES, PrometheusClient, PrometheusError, is_nodata
from .promql import QueryRefused, confine

if TYPE_CHECKING:
    from tuneloop.operator.settings import OperatorSettings


def parse_le(text: str) -> float:
    """A bucket's `le` label as a number ("+Inf" -> math.inf)."""
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)


class PrometheusProvider:
    """Analysis metrics and drift-watch signals from Prometheus (vLLM's own metrics, pod labels as in `queries`)."""

    def __init__(self, client: QueryClient, *, confined: bool = True):
        self.client = client
        self.confined = confined  # custom queries get namespace="<ns>" in every selector (promql.confine)

    async def measure(self, metric: AnalysisMetric, pods: Pods, window: str) -> float | None:
        assert pods.role is not None, "an analysis metric is measured for one role's pods"
        try:
            promql = queries.render_metric(metric, namespace=pods.namespace, rollout=pods.rollout, role=pods.role, window=window,
                                           model_version=pods.model_version, served_model=pods.served_model)
        except KeyError as exc:  # a built-in without a per-adapter query (validation refuses it; a stale spec is an Error)
            raise PrometheusError(str(exc).strip("'\"")) from exc
        if metric.builtin is None and self.confined:  # the built-ins carry {{selector}}, namespace included, by construction
            promql = confine_or_error(promql, pods.namespace)
        return await self.client.query(promql)

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

    async def counts(self, metric: ExperimentMetric, pods: Pods, window: str) -> Counts:
        assert pods.role is not None, "an experiment arm is one role's pods"
        got: dict[str, float] = {}
        for key, template in queries.experiment_templates(metric).items():
            promql = queries.render(template, namespace=pods.namespace, rollout=pods.rollout, role=pods.role, window=window,
                                    model_version=pods.model_version)
            if metric.builtin is None and self.confined:
                promql = confine_or_error(promql, pods.namespace)
            value = await self.client.query(promql)
            got[key] = 0.0 if value is None or is_nodata(value) else float(value)  # no series yet: nothing counted yet
        if "trials" in got:
            return Counts(samples=got["trials"], successes=got["successes"])
        return Counts(samples=got["count"], total=got["sum"], squares=got["sumOfSquares"])

    @staticmethod
    def _drift(signal: WindowSignal, pods: Pods, window: str) -> str:
        return queries.render_drift(signal, namespace=pods.namespace, rollout=pods.rollout, model_version=pods.model_version,
                                    window=window)


def confine_or_error(promql: str, namespace: str) -> str:
    """`promql` confined to `namespace`; a query that cannot be is a PrometheusError (the measurement's Error message)."""
    try:
        return confine(promql, namespace)
    except QueryRefused as exc:
        raise PrometheusError(f"query refused: {exc}") from exc


def provider_for(address: str) -> PrometheusProvider:
    """Prometheus at `address`, no allowlist (tests and tools; the operator's wiring uses `Endpoints.factory`)."""
    return PrometheusProvider(PrometheusClient(address))


@dataclass(frozen=True)
class Endpoints:
    """The metrics providers the platform admin configured: name -> base URL (`default` is the operator's
    prometheus_url). A Rollout or schedule refers to one by name (`provider`), or by its exact address
    (the deprecated `prometheusAddress`); any other address is refused before a request is made."""

    providers: dict[str, str]
    allow_any_address: bool = False  # single-tenant installs only: any http(s) prometheusAddress is queried
    allow_unconfined_queries: bool = False
    timeout: float = 5.0
    max_bytes: int = DEFAULT_MAX_BYTES
    _urls: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_urls", frozenset(u.rstrip("/") for u in self.providers.values()))

    @classmethod
    def from_settings(cls, s: OperatorSettings) -> Endpoints:
        return cls(s.metrics_endpoints(), allow_any_address=s.allow_any_metrics_address,
                   allow_unconfined_queries=s.allow_unconfined_queries, timeout=s.metrics_timeout, max_bytes=s.metrics_max_bytes)

    def resolve(self, ref: str) -> str:
        """The base URL for a provider name or an address; PrometheusError when the admin did not configure it."""
        if ref in self.providers:
            return self.providers[ref]
        if ref.rstrip("/") in self._urls or (self.allow_any_address and ref.startswith(("http://", "https://"))):
            return ref
        raise PrometheusError(
            f"metrics provider {clean(ref, 100)!r} is not configured by the operator's administrator; use analysis.provider "
            f"with one of: {', '.join(sorted(self.providers))}"
        )

    def client(self, ref: str, namespace: str) -> QueryClient:
        """A QueryClient for one tenant: the resolved provider, and every query confined to `namespace` (for the
        schedule's triggers, which send the tenant's PromQL as written)."""
        try:
            inner: QueryClient = PrometheusClient(self.resolve(ref), timeout=self.timeout, max_bytes=self.max_bytes)
        except PrometheusError as exc:
            inner = Refusing(str(exc))
        return inner if self.allow_unconfined_queries else ConfinedClient(inner, namespace)

    def provider(self, ref: str) -> PrometheusProvider:
        """The ProviderFactory of the operator's wiring (rollout/handlers.py): `ref` is analysis.provider, else
        analysis.prometheusAddress, else `default`. Refused providers answer every question with that refusal."""
        try:
            client: QueryClient = PrometheusClient(self.resolve(ref), timeout=self.timeout, max_bytes=self.max_bytes)
        except PrometheusError as exc:
            client = Refusing(str(exc))
        return PrometheusProvider(client, confined=not self.allow_unconfined_queries)


class Refusing:
    """A QueryClient for a provider that is not allowed: every query fails with the reason, nothing is sent."""

    def __init__(self, reason: str):
        self.reason = reason

    async def query(self, promql: str) -> float | None:
        raise PrometheusError(self.reason)

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        raise PrometheusError(self.reason)


class ConfinedClient:
    """A QueryClient that confines every query to one namespace before the inner client sends it."""

    def __init__(self, inner: QueryClient, namespace: str):
        self.inner, self.namespace = inner, namespace

    async def query(self, promql: str) -> float | None:
        return await self.inner.query(confine_or_error(promql, self.namespace))

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return await self.inner.query_vector(confine_or_error(promql, self.namespace))
