"""Prometheus as the Rollout's metrics provider: its HTTP client (`client`), its PromQL (`queries`: vLLM's
built-in analysis metrics, the drift watch, the pod-label matchers) and the MetricsProvider over them
(`provider`). A second provider (Datadog, …) is one package like this one.
"""

from ..provider import QueryClient
from .client import PrometheusClient, PrometheusError, is_nodata, parse_result, parse_vector
from .promql import QueryRefused, confine
from .provider import ConfinedClient, Endpoints, PrometheusProvider, Refusing, confine_or_error, parse_le, provider_for

__all__ = ["ConfinedClient", "Endpoints", "PrometheusClient", "PrometheusError", "PrometheusProvider", "QueryClient", "QueryRefused",
           "Refusing", "confine", "confine_or_error", "is_nodata", "parse_le", "parse_result", "parse_vector", "provider_for"]
