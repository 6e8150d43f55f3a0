"""Prometheus as the Rollout's metrics provider: its HTTP client (`client`), its PromQL (`queries`: vLLM's
built-in analysis metrics, the drift watch, the pod-label matchers) and the MetricsProvider over them
(`provider`). A second provider (Datadog, …) is one package like this one.
"""

from .client import PrometheusClient, PrometheusError, QueryClient, is_nodata, parse_result, parse_vector
from .provider import PrometheusProvider, parse_le, provider_for

__all__ = ["PrometheusClient", "PrometheusError", "PrometheusProvider", "QueryClient", "is_nodata", "parse_le",
           "parse_result", "parse_vector", "provider_for"]
