"""Issue 25, finding 3: one Rollout cannot flood the shared Prometheus. Durations have floors (the API server's
CEL and the models agree), metrics per analysis are capped, and so the queries of one measurement round are bounded."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tuneloop.api import crdgen
from tuneloop.api.cel_rules import apply_defaults, violations
from tuneloop.api.rollout import (
    MAX_ANALYSIS_METRICS,
    MIN_ANALYSIS_INTERVAL,
    AnalysisSpec,
    DriftWatchSpec,
    Rollout,
    parse_duration,
)

pytestmark = pytest.mark.unit


def schema() -> dict:
    return crdgen.crd("Rollout")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rollout(analysis: dict | None = None, drift: dict | None = None) -> dict:
    obj = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "bot", "namespace": "team-a"},
           "spec": {"servedModelName": "bot", "trafficRouting": {"replicaWeighted": {"service": "bot"}},
                    "analysis": analysis or {}, "driftWatch": drift or {}}}
    return obj


def cel(obj: dict) -> list[str]:
    s = schema()
    return [msg for _, msg in violations(s, apply_defaults(s, copy.deepcopy(obj)))]


@pytest.mark.parametrize("analysis,drift,message", [
    ({"interval": "1ms"}, None, "interval must be at least 1s"),
    ({"interval": "999ms"}, None, "interval must be at least 1s"),
    ({"window": "10ms"}, None, "window must be at least 1s"),
    ({"backgroundInterval": "1ms"}, None, "backgroundInterval must be at least 1s (or 0s: off)"),
    (None, {"interval": "50ms"}, "interval must be at least 1s"),
    (None, {"window": "1s"}, "window must be at least 5s"),
    ({"provider": "team-a", "prometheusAddress": "http://p"}, None, "set provider or prometheusAddress, not both"),
])
def test_durations_below_the_floor_are_refused_by_the_api_server_and_the_models(analysis, drift, message):
    obj = rollout(analysis, drift)
    assert message in cel(obj)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Rollout.model_validate(obj)


@pytest.mark.parametrize("analysis", [{"interval": "1s", "window": "1s"}, {"backgroundInterval": "0s"}, {"backgroundInterval": "1m"},
                                      {"interval": "1h30m"}, {"provider": "team-a"}])
def test_durations_at_or_above_the_floor_are_accepted(analysis):
    obj = rollout(analysis)
    assert cel(obj) == []
    Rollout.model_validate(obj)


def test_metrics_per_analysis_are_capped():
    metrics = [{"name": f"m{i}", "builtin": "error-rate", "max": 1} for i in range(MAX_ANALYSIS_METRICS + 1)]
    with pytest.raises(ValidationError, match=f"at most {MAX_ANALYSIS_METRICS} items"):
        AnalysisSpec.model_validate({"metrics": metrics})
    assert schema()["properties"]["spec"]["properties"]["analysis"]["properties"]["metrics"]["maxItems"] == MAX_ANALYSIS_METRICS


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), interval_ms=st.integers(1, 120_000), relative=st.booleans())
def test_queries_per_second_of_one_rollout_are_bounded(n, interval_ms, relative):
    """Whatever a tenant writes that the models accept, one Rollout's analysis asks at most
    2 × MAX_ANALYSIS_METRICS queries per round and rounds are at least MIN_ANALYSIS_INTERVAL apart."""
    metric = {"builtin": "error-rate", "max": 1} | ({"maxRelativeToStable": 2.0} if relative else {})
    raw = {"interval": f"{interval_ms}ms", "metrics": [{"name": f"m{i}", **metric} for i in range(n)]}
    try:
        spec = AnalysisSpec.model_validate(raw)
    except ValidationError:
        assert n > MAX_ANALYSIS_METRICS or interval_ms < 1000
        return
    per_round = sum(2 if m.max_relative_to_stable is not None else 1 for m in spec.metrics)
    rate = per_round / parse_duration(spec.interval)
    assert per_round <= 2 * MAX_ANALYSIS_METRICS
    assert rate <= 2 * MAX_ANALYSIS_METRICS / parse_duration(MIN_ANALYSIS_INTERVAL)


def test_drift_watch_defaults_pass_the_floors():
    DriftWatchSpec()
    AnalysisSpec()
