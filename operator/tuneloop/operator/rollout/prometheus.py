"""Moved: the Prometheus client lives in `tuneloop.operator.analysis.prometheus` (with its queries and the
MetricsProvider over them). These names stay for `operator/schedule/reconcile.py`'s Prometheus triggers,
which run the user's PromQL through the client directly (`MetricsProvider` here is that client's Protocol,
`analysis.prometheus.QueryClient`, not the provider-neutral `analysis.provider.MetricsProvider`).
"""

from tuneloop.operator.analysis.prometheus.client import PrometheusClient, PrometheusError
from tuneloop.operator.analysis.prometheus.client import QueryClient as MetricsProvider

__all__ = ["MetricsProvider", "PrometheusClient", "PrometheusError"]
