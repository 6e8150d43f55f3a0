"""The values "at promotion" of the drift watch are retried until they come (issue 20, item 9): one failed or
empty latency query at the first check used to switch latency degradation off for that version for good."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.api.rollout import DriftStatus, DriftWatchSpec
from tuneloop.operator.analysis.provider import WindowSignal
from tuneloop.operator.kube import resources as r
from tuneloop.operator.rollout import drift

from ..operator.harness import cluster
from .test_reconcile import NS, tick
from .test_second_provider import FakeDatadog, _canary_running

T0 = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)
SPEC = DriftWatchSpec(min_samples=10)


async def test_a_failed_first_latency_query_does_not_switch_latency_degradation_off(tmp_path: Path):
    dd = FakeDatadog()
    dd.signals[WindowSignal.LATENCY_P95] = math.nan  # the first drift check: no latency answer (Prometheus' NaN)
    async with cluster(tmp_path) as kc:
        rec = await _canary_running(kc, dd, driftWatch={"minSamples": 10, "interval": "5m"})
        for t in (1, 2, 12, 22):
            await tick(kc, rec, t)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["phase"] == "Promoted"
        await tick(kc, rec, 23)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["drift"]["baselineErrorRate"] == pytest.approx(0.02) and st["drift"].get("baselineLatencyP95") is None
        dd.signals[WindowSignal.LATENCY_P95] = 0.9  # the next check has a p95: it becomes the baseline
        await tick(kc, rec, 23 + 301)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        assert st["drift"]["baselineLatencyP95"] == 0.9
        latency = next(s for s in st["drift"]["signals"] if s["signal"] == drift.LATENCY)
        assert latency["state"] == "OK"
        dd.signals[WindowSignal.LATENCY_P95] = 9.0  # ten times slower: degraded, which it could never say before
        await tick(kc, rec, 23 + 602)
        st = (await kc.get(r.ROLLOUTS, NS, "bot"))["status"]
        latency = next(s for s in st["drift"]["signals"] if s["signal"] == drift.LATENCY)
        assert latency["state"] == "Degraded"
        degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "ServingDegraded")


_p95 = st.one_of(st.none(), st.just(math.nan), st.just(0.0), st.floats(0.01, 50))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 30), _p95, st.booleans(), st.booleans()), min_size=1, max_size=8))
def test_each_baseline_is_the_first_window_that_has_it_and_is_never_overwritten(windows):
    """(requests, p95, 5xx query failed, latency query failed) per check: the 5xx baseline is the first window
    with minSamples requests and an answer, the p95 baseline the first such window with a positive p95."""
    d = DriftStatus(model_version="v1")
    want_rate = want_p95 = None
    for i, (n, p95, rate_failed, lat_failed) in enumerate(windows):
        failed = {**({drift.ERROR_RATE: "x"} if rate_failed else {}), **({drift.LATENCY: "x"} if lat_failed else {})}
        w = drift.Window(requests=n, errors=1, latency_p95=p95, failed=failed)
        d = drift.record_baseline(SPEC, d, w, T0 + dt.timedelta(minutes=5 * i))
        if n >= 10 and want_rate is None and not rate_failed:
            want_rate = 1 / n
        if n >= 10 and want_p95 is None and not lat_failed and p95 is not None and p95 > 0:
            want_p95 = p95
        assert (d.baseline_error_rate, d.baseline_latency_p95) == (want_rate, want_p95)
        assert (d.baseline_recorded_at is None) == (want_rate is None and want_p95 is None)
