"""The provider-neutral seam between the Rollout's analysis and a metrics backend (pure: no I/O here).

The core asks for *what* it needs — one analysis metric of one role's pods over a window, or one drift-watch
signal of the serving version's pods over a window — and a provider answers with numbers. *How* (PromQL,
a Datadog query, …) is the provider's business, in its own package beside this module
(`tuneloop.operator.analysis.prometheus`). A provider that cannot answer raises `ProviderError`: the
analysis records an Error measurement (never a success), the drift watch an unknown signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from tuneloop.api.experiment import ExperimentMetric
from tuneloop.api.rollout import AnalysisMetric

from .experiment import Counts


class ProviderError(Exception):
    """The provider could not answer: unreachable, an HTTP or query error, an ambiguous result."""


@dataclass(frozen=True)
class Pods:
    """Which serving pods a question is about: one role's (analysis) or one ModelVersion's, any role (drift watch)."""

    namespace: str
    rollout: str
    role: str | None = None
    model_version: str | None = None
    # serving.mode sharedBase: every pod serves every version (as a LoRA adapter named after its ModelVersion), so a
    # question about one version is about its share of the requests for this served model name, as the traffic layer
    # that splits them by model name counts it (the version is `model_version`); None: per-version pods
    served_model: str | None = None


class WindowSignal(str, Enum):
    """What the drift watch reads over one window of the serving version's pods."""

    PROMPT_TOKENS = "prompt"  # histogram: prompt lengths in tokens
    GENERATION_TOKENS = "generation"  # histogram: generated lengths in tokens
    REQUESTS = "requests"  # count of generation requests
    ERRORS = "errors"  # count of 5xx responses to them
    LATENCY_P95 = "latency"  # p95 end-to-end request latency, seconds


HISTOGRAM_SIGNALS = (WindowSignal.PROMPT_TOKENS, WindowSignal.GENERATION_TOKENS)

# A histogram's increase over a window: upper bound (math.inf for the last bucket) -> increase of the
# cumulative count of that bucket (vLLM's bounds, so that the drift watch can compare with the train split).
Histogram = dict[float, float]


class MetricsProvider(Protocol):
    """A metrics backend, as the Rollout's analysis and drift watch use it.

    Every method returns None for "no data" (no series, nothing served); NaN passes through as no data too.
    Every method raises ProviderError when there is no answer.
    """

    async def measure(self, metric: AnalysisMetric, pods: Pods, window: str) -> float | None:
        """One analysis metric (a built-in, or `metric.query` in this provider's language) of `pods` over `window`."""

    async def value(self, signal: WindowSignal, pods: Pods, window: str) -> float | None:
        """A drift-watch number (REQUESTS, ERRORS, LATENCY_P95) of `pods` over `window`."""

    async def histogram(self, signal: WindowSignal, pods: Pods, window: str) -> Histogram | None:
        """A drift-watch histogram (PROMPT_TOKENS, GENERATION_TOKENS) of `pods` over `window`; None when empty."""

    async def counts(self, metric: ExperimentMetric, pods: Pods, window: str) -> Counts:
        """An A/B experiment metric's counts for one arm (`pods`: one role's pods of one version) over `window` (the
        time since the experiment began): trials and successes (a proportion), or observations, their sum and their
        sum of squares (a mean). A count without data is 0 (nothing happened yet), never an error."""


# address (the Rollout's spec.analysis.prometheusAddress, else the operator's default) -> a provider
ProviderFactory = Callable[[str], MetricsProvider]


class QueryClient(Protocol):
    """A provider's raw instant queries, written in its own language (a FineTuneSchedule's trigger query; the
    Prometheus provider's PrometheusClient, confined to the namespace by the operator's Endpoints)."""

    async def query(self, query: str) -> float | None:
        """The single value of an instant query; None for an empty result; NaN passes through.

        Raises ProviderError when there is no answer.
        """

    async def query_vector(self, query: str) -> list[tuple[dict[str, str], float]]:
        """Every series of an instant vector query: (labels, value). Raises ProviderError when there is no answer."""


# (provider name or address, namespace) -> a QueryClient confined to that namespace
QueryClientFactory = Callable[[str, str], QueryClient]
