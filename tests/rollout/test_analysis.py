"""Table tests of the analysis engine, the query templates and the Prometheus answer parser."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.api.durations import parse_duration
from tuneloop.api.rollout import AnalysisMetric, AnalysisSpec, MetricResult
from tuneloop.operator.analysis.prometheus import PrometheusError, parse_result, queries
from tuneloop.operator.rollout import verdicts as a
from tuneloop.operator.rollout.verdicts import QueryOutcome as Q
from tuneloop.operator.rollout.verdicts import Verdict as V

pytestmark = pytest.mark.unit

NAN = float("nan")


def metric(**kw) -> AnalysisMetric:
    return AnalysisMetric.model_validate({"name": "m", "query": "x", **kw})


def spec(**kw) -> AnalysisSpec:
    return AnalysisSpec.model_validate(kw)


@pytest.mark.parametrize(
    ("thresholds", "canary", "stable", "phase", "needle"),
    [
        # absolute
        ({"max": 0.05}, Q(0.01), None, "Successful", "within"),
        ({"max": 0.05}, Q(0.05), None, "Successful", "within"),
        ({"max": 0.05}, Q(0.06), None, "Failed", "0.06 > max 0.05"),
        ({"min": 10}, Q(9.5), None, "Failed", "< min 10"),
        ({"min": 10, "max": 20}, Q(15), None, "Successful", ""),
        ({"max": 1.0}, Q(math.inf), None, "Failed", "inf > max"),
        # relative to stable
        ({"maxRelativeToStable": 1.2}, Q(1.1), Q(1.0), "Successful", ""),
        ({"maxRelativeToStable": 1.2}, Q(1.3), Q(1.0), "Failed", "1.3 > 1.2 x stable 1"),
        ({"maxRelativeToStable": 1.2}, Q(0.0), Q(0.0), "Successful", ""),
        ({"maxRelativeToStable": 1.2}, Q(0.001), Q(0.0), "Failed", "x stable 0"),
        ({"max": 2.0, "maxRelativeToStable": 1.2}, Q(2.5), Q(3.0), "Failed", "> max 2"),
        # provider errors
        ({"max": 1}, Q(error="connection refused"), None, "Error", "canary query failed: connection refused"),
        ({"maxRelativeToStable": 1.2}, Q(1.0), Q(error="timeout"), "Error", "stable query failed: timeout"),
        ({"maxRelativeToStable": 1.2}, Q(1.0), None, "Error", "not queried"),
    ],
)
def test_assess_thresholds(thresholds, canary, stable, phase, needle):
    out = a.assess(metric(**thresholds), spec(), canary, stable)
    assert out.phase == phase
    assert needle in out.message
    if phase != "Error":
        assert out.value == canary.value


@pytest.mark.parametrize(
    ("policy", "phase"),
    [("inconclusive", "Inconclusive"), ("fail", "Failed"), ("ignore", "Inconclusive")],
)
@pytest.mark.parametrize(
    ("canary", "stable", "relative", "what"),
    [
        (Q(None), None, False, "canary query returned no data"),
        (Q(NAN), None, False, "canary query returned NaN"),
        (Q(1.0), Q(None), True, "stable query returned no data"),
        (Q(1.0), Q(NAN), True, "stable query returned NaN"),
    ],
)
def test_no_data_policy(policy, phase, canary, stable, relative, what):
    thresholds = {"maxRelativeToStable": 1.2} if relative else {"max": 1.0}
    # the analysis-wide policy applies ...
    out = a.assess(metric(**thresholds), spec(noDataPolicy=policy), canary, stable)
    assert (out.phase, what in out.message, f"noDataPolicy={policy}" in out.message) == (phase, True, True)
    assert out.ignored == (policy == "ignore")
    assert out.stable_value is None and (out.value is None or not math.isnan(out.value))
    # ... unless the metric overrides it
    other = "fail" if policy != "fail" else "inconclusive"
    out2 = a.assess(metric(noDataPolicy=policy, **thresholds), spec(noDataPolicy=other), canary, stable)
    assert out2.phase == phase


def run(phases: list[str], count: int = 3, **limits) -> tuple[MetricResult, V]:
    s = spec(count=count, **limits)
    r = MetricResult(metric="m")
    for p in phases:
        r = a.record(r, p)
    return r, a.metric_verdict(r, s, count)


S, F, I, E = "Successful", "Failed", "Inconclusive", "Error"  # noqa: E741


@pytest.mark.parametrize(
    ("phases", "limits", "verdict"),
    [
        ([], {}, V.RUNNING),
        ([S, S], {}, V.RUNNING),
        ([S, S, S], {}, V.SUCCESSFUL),
        # failureLimit (default 0: first failure fails)
        ([S, F], {}, V.FAILED),
        ([S, F], {"failureLimit": 1}, V.RUNNING),
        ([S, F, S], {"failureLimit": 1}, V.SUCCESSFUL),
        ([F, S, F], {"failureLimit": 1}, V.FAILED),
        # inconclusiveLimit (default 2)
        ([I, I, S], {}, V.SUCCESSFUL),
        ([I, I, I], {}, V.INCONCLUSIVE),
        ([I], {"inconclusiveLimit": 0}, V.INCONCLUSIVE),
        # count reached with no successful measurement at all: never Successful (no evidence to promote on)
        ([I, I, I], {"inconclusiveLimit": 5}, V.INCONCLUSIVE),
        ([I, I, S], {"inconclusiveLimit": 5}, V.SUCCESSFUL),
        # consecutiveErrorLimit (default 4); errors do not count toward count
        ([E, E, E, E], {}, V.RUNNING),
        ([E, E, E, E, E], {}, V.ERROR),
        ([E, E, S, E, E, S, E, E, S], {}, V.SUCCESSFUL),
        ([E, E], {"consecutiveErrorLimit": 1}, V.ERROR),
        ([E, S, E, S], {"consecutiveErrorLimit": 1}, V.RUNNING),
        # precedence: failed before inconclusive before error
        ([I, I, I, F], {}, V.FAILED),
        ([E, E, E, E, E, I, I, I], {"consecutiveErrorLimit": 0}, V.INCONCLUSIVE),
    ],
)
def test_limits(phases, limits, verdict):
    _, got = run(phases, **limits)
    assert got == verdict


@pytest.mark.parametrize(
    ("phases", "metric_limits", "verdict"),
    [
        ([S, F, F], {"failureLimit": 2}, V.SUCCESSFUL),
        ([F], {"failureLimit": 0}, V.FAILED),
        ([I, I], {"inconclusiveLimit": 1}, V.INCONCLUSIVE),
        ([E, E], {"consecutiveErrorLimit": 1}, V.ERROR),
    ],
)
def test_per_metric_limits_override_the_analysis_wide_ones(phases, metric_limits, verdict):
    s = spec(count=3, failureLimit=1, inconclusiveLimit=5, consecutiveErrorLimit=5)
    r = MetricResult(metric="m")
    for p in phases:
        r = a.record(r, p)
    assert a.metric_verdict(r, s, 3, metric(max=1, **metric_limits)) == verdict


def test_ignored_no_data_never_promotes():
    """issue 20 item 8: under noDataPolicy: ignore, every measurement 'no data … ignored' used to count as
    Successful, so a canary that never returned one data point passed its analysis and was promoted."""
    s = spec(count=3, noDataPolicy="ignore")
    nodata = a.assess(metric(max=0.05), s, Q(None), None)
    r = MetricResult(metric="m")
    for _ in range(3):
        r = a.record(r, nodata.phase, ignored=nodata.ignored)
    assert (r.count, r.successful, r.inconclusive) == (3, 0, 0)
    assert a.metric_verdict(r, s, 3) == V.INCONCLUSIVE
    ok = a.assess(metric(max=0.05), s, Q(0.01), None)
    r = a.record(r, ok.phase, ignored=ok.ignored)  # one real value among the ignored ones is evidence
    assert a.metric_verdict(r, s, 3) == V.SUCCESSFUL


def test_canary_above_max_fails_even_when_the_stable_has_no_data():
    # the stable's silence used to end the assessment before the canary's own thresholds were checked
    for policy in ("ignore", "inconclusive"):
        out = a.assess(metric(max=0.05, maxRelativeToStable=1.5), spec(noDataPolicy=policy), Q(0.4), Q(None))
        assert out.phase == "Failed" and "> max 0.05" in out.message
    inf = a.assess(metric(maxRelativeToStable=1.5), spec(), Q(3.0), Q(math.inf))
    assert inf.phase == "Inconclusive" and "stable query returned inf" in inf.message


_answers = st.one_of(
    st.builds(Q, st.floats(0, 1)),  # a value
    st.just(Q(None)), st.just(Q(NAN)), st.just(Q(math.inf)),  # no data, NaN, +Inf
    st.builds(lambda e: Q(error=e), st.just("connection refused")),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.sampled_from(["inconclusive", "fail", "ignore"]), st.booleans()), min_size=1, max_size=3),
    st.sampled_from(["inconclusive", "fail", "ignore"]), st.integers(1, 4), st.integers(0, 6), st.integers(0, 3), st.data(),
)
def test_no_promotion_without_a_successful_measurement_of_every_metric(metrics_, wide, count, inconclusive_limit, failure_limit, data):
    """Any sequence of provider answers (values, empty, NaN, inf, errors; canary and stable), any noDataPolicy
    and limits: the analysis is Successful only if every metric had at least one measurement that returned
    a value and held every threshold."""
    s = spec(count=count, noDataPolicy=wide, inconclusiveLimit=inconclusive_limit, failureLimit=failure_limit, consecutiveErrorLimit=10)
    ms = [metric(name=f"m{i}", max=0.5, noDataPolicy=pol, **({"maxRelativeToStable": 1.5} if rel else {}))
          for i, (pol, rel) in enumerate(metrics_)]
    results = {m.name: MetricResult(metric=m.name) for m in ms}
    evidence = {m.name: 0 for m in ms}
    for _ in range(data.draw(st.integers(0, 8), label="ticks")):
        for m in ms:
            canary = data.draw(_answers, label="canary")
            stable = data.draw(_answers, label="stable") if m.max_relative_to_stable else None
            out = a.assess(m, s, canary, stable)
            results[m.name] = a.record(results[m.name], out.phase, ignored=out.ignored)
            value_ok = canary.error is None and canary.value is not None and not math.isnan(canary.value) and canary.value <= 0.5
            stable_ok = stable is None or (stable.error is None and stable.value is not None and math.isfinite(stable.value))
            evidence[m.name] += out.phase == "Successful" and not out.ignored
            assert out.phase != "Successful" or (value_ok and stable_ok)
        verdict = a.run_verdict([a.metric_verdict(results[m.name], s, count, m) for m in ms])
        if verdict == V.SUCCESSFUL:
            assert all(evidence.values()), (evidence, results)
            break
        if verdict != V.RUNNING:
            break


def test_record_counts():
    r, _ = run([S, E, E, F, I])
    assert (r.count, r.successful, r.failed, r.inconclusive, r.error, r.consecutive_error) == (3, 1, 1, 1, 2, 0)
    r, _ = run([S, E, E])
    assert r.consecutive_error == 2 and r.count == 1


@pytest.mark.parametrize(
    ("verdicts", "overall"),
    [
        ([], V.SUCCESSFUL),
        ([V.SUCCESSFUL, V.SUCCESSFUL], V.SUCCESSFUL),
        ([V.SUCCESSFUL, V.RUNNING], V.RUNNING),
        ([V.RUNNING, V.INCONCLUSIVE], V.INCONCLUSIVE),
        ([V.INCONCLUSIVE, V.ERROR], V.ERROR),
        ([V.ERROR, V.FAILED, V.SUCCESSFUL], V.FAILED),
    ],
)
def test_run_verdict(verdicts, overall):
    assert a.run_verdict(verdicts) == overall


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "1x", "s"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_builtin_queries_use_exact_vllm_names_and_role_selector():
    q = {
        b: queries.render_metric(AnalysisMetric(name=b, builtin=b, max=1), namespace="llm", rollout="bot", role="canary", window="1m")
        for b in ["error-rate", "ttft-p95", "e2e-latency-p95", "abort-rate"]
    }
    sel = 'namespace="llm", tuneloop_dev_rollout="bot", tuneloop_dev_role="canary"'
    assert all(sel in v and "[1m]" in v and "{{" not in v for v in q.values())
    assert 'http_requests_total{ ' + sel + ', handler=~"/v1/completions|/v1/chat/completions", status="5xx" }' in q["error-rate"]
    assert "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{" in q["ttft-p95"]
    assert "vllm:e2e_request_latency_seconds_bucket" in q["e2e-latency-p95"]
    assert 'vllm:request_success_total{ ' + sel + ', finished_reason="abort" }' in q["abort-rate"]


def test_builtin_queries_select_the_measured_version_when_given():
    """The canary is measured on the candidate's pods, the stable on the stable version's: a role's old pods (still
    serving while its Deployment rolls to the next version) are not in the measurement."""
    for b in ["error-rate", "ttft-p95", "e2e-latency-p95", "abort-rate"]:
        q = queries.render_metric(AnalysisMetric(name=b, builtin=b, max=1), namespace="llm", rollout="bot", role="canary", window="1m",
                                  model_version="bot-v2")
        sel = 'namespace="llm", tuneloop_dev_rollout="bot", tuneloop_dev_role="canary", tuneloop_dev_model_version="bot-v2"'
        # every selector of the query carries it (the ratios have two)
        assert q.count("tuneloop_dev_role=") == q.count(sel) >= 1, q
    assert queries.render("{{modelVersion}}/{{role}}", namespace="n", rollout="r", role="stable", window="1m", model_version="v1") == "v1/stable"


def test_custom_query_placeholders():
    out = queries.render("up{namespace='{{namespace}}', role='{{ role }}'} # {{rollout}} {{window}} {{unknown}}",
                         namespace="n", rollout="r", role="stable", window="2m")  # fmt: skip
    assert out == "up{namespace='n', role='stable'} # r 2m {{unknown}}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.25"]}]}}, 0.25),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}, 3.0),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "+Inf"]}]}}, math.inf),
    ],
)
def test_parse_result(body, expected):
    assert parse_result(body) == expected


def test_parse_result_nan_and_errors():
    nan = parse_result({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}})
    assert math.isnan(nan)
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        parse_result({"status": "error", "errorType": "bad_data", "error": "parse error"})
    two = [{"metric": {"pod": "a"}, "value": [1, "1"]}, {"metric": {"pod": "b"}, "value": [1, "2"]}]
    with pytest.raises(PrometheusError, match="2 series"):
        parse_result({"status": "success", "data": {"resultType": "vector", "result": two}})
    with pytest.raises(PrometheusError, match="matrix"):
        parse_result({"status": "success", "data": {"resultType": "matrix", "result": []}})
