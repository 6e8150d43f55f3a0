"""A second metrics provider plugs in without touching the core (issue 13): a fake "Datadog" that answers
the provider-neutral questions (`tuneloop.operator.analysis.provider`) from its own tables, with no PromQL,
drives the same Reconciler through a canary analysis to promotion, its errors become Error measurements,
and it feeds the drift watch. The only code such a provider needs is its own package and the factory the
wiring (`rollout/handlers.py`) passes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tuneloop.api.experiment import ExperimentMetric
from tuneloop.api.rollout import AnalysisMetric
from tuneloop.operator.analysis.experiment import Counts
from tuneloop.operator.analysis.provider import Histogram, MetricsProvider, Pods, ProviderError, WindowSignal
from tuneloop.operator.builders.serving import ServingConfig
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout import drift
from tuneloop.operator.rollout.reconcile import Reconciler, measure_drift_window

from ..operator.harness import cluster
from .test_reconcile import NS, make_available, objs, setup, tick


class FakeDatadog:
    """A MetricsProvider over tables: metric name and role -> value; drift signal -> number or histogram."""

    def __init__(self) -> None:
        self.values = {"canary": 0.01, "stable": 0.02}
        self.signals: dict[WindowSignal, float | Histogram | None] = {
            WindowSignal.PROMPT_TOKENS: {16.0: 10.0, 32.0: 40.0, math.inf: 50.0},
            WindowSignal.GENERATION_TOKENS: None,
            WindowSignal.REQUESTS: 50.0,
            WindowSignal.ERRORS: 1.0,
            WindowSignal.LATENCY_P95: 0.8,
        }
        self.down: set[str] = set()  # methods that raise ProviderError
        self.asked: list[tuple] = []
        self.addresses: list[str] = []

    def _check(self, what: str) -> None:
        if what in self.down:
            raise ProviderError("datadog api.datadoghq.eu: 403 Forbidden")

    async def measure(self, metric: AnalysisMetric, pods: Pods, window: str) -> float | None:
        self.asked.append(("measure", metric.name, pods.namespace, pods.rollout, pods.role, window))
        self._check("measure")
        return self.values[pods.role]

    async def value(self, signal: WindowSignal, pods: Pods, window: str) -> float | None:
        self.asked.append(("value", signal, pods.model_version, window))
        self._check("value")
        return self.signals[signal]  # type: ignore[return-value]

    async def histogram(self, signal: WindowSignal, pods: Pods, window: str) -> Histogram | None:
        self.asked.append(("histogram", signal, pods.model_version, window))
        self._check("histogram")
        return self.signals[signal]  # type: ignore[return-value]

    async def counts(self, metric: ExperimentMetric, pods: Pods, window: str) -> Counts:
        self.asked.append(("counts", metric.name, pods.role, pods.model_version, window))
        self._check("counts")
        return Counts(1000.0, 400.0 if pods.role == "canary" else 300.0)


def _factory(dd: FakeDatadog):
    def make(address: str) -> MetricsProvider:
        dd.addresses.append(address)
        return dd

    return make


async def _canary_running(kc, dd: FakeDatadog, **spec) -> Reconciler:
    """The Rollout (with `spec` overrides) set up with the fake Datadog provider, first tick done, its canary pods available."""
    ro, mvs = objs(**spec)
    await setup(kc, ro, mvs)
    rec = Reconciler(kc.client, ServingConfig(), "https://api.datadoghq.eu", provider_factory=_factory(dd))
    await tick(kc, rec, 0)
    await make_available(kc, "bot-canary")
    return rec


async def test_a_second_provider_drives_a_canary_to_promotion(tmp_path: Path):
    dd = FakeDatadog()
    async with cluster(tmp_path) as kc:
        rec = await _canary_running(kc, dd)
        for t in (1, 2, 12, 22):
            await tick(kc, rec, t)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Promoted" and st["stableModelVersion"] == "v2"
        assert [(m["metric"], m["phase"], m["value"]) for m in st["measurements"]] == [("error-rate", "Successful", 0.01)] * 2
        assert set(dd.addresses) == {"https://api.datadoghq.eu"}
        measured = [a for a in dd.asked if a[0] == "measure"]
        assert measured and all(a[1:5] == ("error-rate", NS, "bot", "canary") for a in measured)
        assert measured[0][5] == "1s"  # the window since the weight change, as with Prometheus


async def test_a_second_providers_errors_are_error_measurements_never_success(tmp_path: Path):
    dd = FakeDatadog()
    dd.down.add("measure")
    async with cluster(tmp_path) as kc:
        rec = await _canary_running(kc, dd)
        for t in range(1, 6):
            await tick(kc, rec, t * 10)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert [m["phase"] for m in st["measurements"]] == ["Error"] * 4
        assert st["measurements"][0]["message"] == "canary query failed: datadog api.datadoghq.eu: 403 Forbidden"
        await tick(kc, rec, 60)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "RolledBack" and "AnalysisError" in [c["reason"] for c in st["conditions"]]


async def test_a_second_provider_decides_an_ab_experiment(tmp_path: Path):
    dd = FakeDatadog()
    ro, mvs = objs()
    ro["spec"]["steps"] = [{"experiment": {"split": 50, "minSamples": 500, "metric": {"name": "valid", "builtin": "contract-validity"}}}]
    async with cluster(tmp_path) as kc:
        await setup(kc, ro, mvs)
        rec = Reconciler(kc.client, ServingConfig(), "https://api.datadoghq.eu", provider_factory=_factory(dd))
        await tick(kc, rec, 0)
        await make_available(kc, "bot-canary")
        await tick(kc, rec, 1)  # the split
        await tick(kc, rec, 2)  # the look, initialDelay later: 40 % vs 30 % of 1000 each, one look at 95 %
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Promoted" and st["experiment"]["decision"] == "Better"
        assert [a for a in dd.asked if a[0] == "counts"] == [("counts", "valid", "canary", "v2", "1s"), ("counts", "valid", "stable", "v1", "1s")]


@pytest.mark.unit
async def test_a_second_provider_feeds_the_drift_watch():
    dd = FakeDatadog()
    w = await measure_drift_window(dd, NS, "bot", "v2", "1h")
    assert w.prompt == {16.0: 10.0, 32.0: 40.0, math.inf: 50.0} and w.generation is None
    assert (w.requests, w.errors, w.latency_p95, w.failed) == (50.0, 1.0, 0.8, {})
    assert {(a[0], a[2], a[3]) for a in dd.asked} == {("histogram", "v2", "1h"), ("value", "v2", "1h")}
    dd.down.add("histogram")
    dd.signals[WindowSignal.LATENCY_P95] = math.nan  # no data, as Prometheus' NaN
    w = await measure_drift_window(dd, NS, "bot", "v2", "1h")
    assert w.prompt is None and w.latency_p95 is None and w.requests == 50.0
    assert w.failed == {drift.PROMPT: "datadog api.datadoghq.eu: 403 Forbidden", drift.GENERATION: "datadog api.datadoghq.eu: 403 Forbidden"}
