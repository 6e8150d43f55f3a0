"""The drift watch's pure parts: PSI on known distributions, bucket alignment, signal and condition verdicts."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from tuneloop.api.modelversion import TokenLengths
from tuneloop.api.rollout import DriftStatus, DriftWatchSpec
from tuneloop.contract.tokenlengths import histogram, token_lengths, vllm_buckets
from tuneloop.operator.rollout import drift
from tuneloop.operator.rollout import telemetry as metrics

pytestmark = pytest.mark.unit
T0 = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


def test_vllm_buckets_are_build_1_2_5_buckets():
    assert vllm_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert vllm_buckets(2048) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert histogram([1, 2, 3, 5, 6, 100, 101], [1, 2, 5, 10, 100]) == [1, 1, 2, 1, 1, 1]  # le: v <= bound; last +Inf


def test_psi_of_identical_distributions_is_zero():
    assert drift.psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0)


def test_psi_matches_the_formula_on_a_known_shift():
    # (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-9)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(0.8789, abs=1e-4)


def test_psi_of_normal_distributions_grows_with_the_shift():
    """Shares of N(mu, 1) in unit-wide bins: the textbook PSI for a 0.1-sigma shift is ~0.01, for 1 sigma ~1."""
    edges = [-math.inf, *[x / 2 for x in range(-8, 9)], math.inf]

    def shares(mu: float) -> list[float]:
        cdf = [0.5 * (1 + math.erf((e - mu) / math.sqrt(2))) if math.isfinite(e) else (0.0 if e < 0 else 1.0) for e in edges]
        return [1e6 * (b - a) for a, b in zip(cdf, cdf[1:])]

    base = shares(0.0)
    small, large = drift.psi(base, shares(0.1)), drift.psi(base, shares(1.0))
    assert 0.005 < small < 0.02
    assert 0.8 < large < 1.2
    assert small < drift.psi(base, shares(0.5)) < large


def test_an_empty_bucket_costs_epsilon_not_infinity():
    value = drift.psi([100, 0], [50, 50])
    assert math.isfinite(value)
    assert value == pytest.approx((0.5 - 1) * math.log(0.5) + (0.5 - drift.EPSILON) * math.log(0.5 / drift.EPSILON), rel=1e-9)
    with pytest.raises(ValueError):
        drift.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        drift.psi([0, 0], [1, 2])


def test_align_compares_on_the_bounds_both_sides_have():
    """The train split's buckets end at maxSeqLength (2000), vLLM's at max_model_len (here 5000)."""
    train = TokenLengths.model_validate(token_lengths([3, 30, 30, 300], [1, 1, 2, 2], 2048))
    served = {float(b): 0.0 for b in vllm_buckets(8192)} | {math.inf: 0.0}
    for b in served:  # cumulative: 10 requests of 30 tokens, 10 of 3000
        served[b] = (10.0 if b >= 50 else 0.0) + (10.0 if b >= 5000 else 0.0)
    expected, actual = drift.align(train, train.prompt, served)
    assert len(expected) == len(train.le) + 1 and sum(expected) == 4 and sum(actual) == 20
    assert actual[-1] == 10  # everything above 2000 tokens lands in the shared +Inf bucket
    assert actual[train.le.index(50)] == 10


def _served(lengths: list[int]) -> dict[float, float]:
    counts = histogram(lengths, vllm_buckets(2048))
    out, running = {}, 0.0
    for b, c in zip([*vllm_buckets(2048), math.inf], counts):
        running += c
        out[float(b)] = running
    return out


TRAIN = TokenLengths.model_validate(token_lengths([30 + i % 40 for i in range(500)], [8 + i % 8 for i in range(500)], 2048))
SPEC = DriftWatchSpec(minSamples=100)


def test_same_traffic_is_within_threshold_and_a_prompt_shift_is_drift():
    d = DriftStatus(model_version="v1", baseline_error_rate=0.0, baseline_latency_p95=1.0)
    same = drift.Window(prompt=_served([30 + i % 40 for i in range(300)]), generation=_served([8 + i % 8 for i in range(300)]),
                        requests=300, errors=0, latency_p95=1.1)
    sigs = drift.signals(SPEC, TRAIN, d, same)
    assert [s.state for s in sigs] == ["OK", "OK", "OK", "OK"]
    assert drift.drifted(sigs).status == "False" and drift.drifted(sigs).reason == "WithinThreshold"
    assert drift.degraded(sigs).status == "False" and drift.degraded(sigs).reason == "AsAtPromotion"

    shifted = drift.Window(prompt=_served([300 + i % 400 for i in range(300)]), generation=same.generation, requests=300, errors=0,
                           latency_p95=1.1)
    sigs = drift.signals(SPEC, TRAIN, d, shifted)
    by = {s.signal: s for s in sigs}
    assert by["prompt_tokens"].state == "Drifted" and by["prompt_tokens"].value > 1.0
    assert by["generation_tokens"].state == "OK"
    v = drift.drifted(sigs)
    assert v.status == "True" and v.reason == "DistributionShifted" and "prompt_tokens: PSI" in v.message


def test_too_few_requests_is_insufficient_data_not_drift():
    d = DriftStatus(model_version="v1", baseline_error_rate=0.0, baseline_latency_p95=1.0)
    few = drift.Window(prompt=_served([900] * 20), generation=_served([900] * 20), requests=20, errors=20, latency_p95=50.0)
    sigs = drift.signals(SPEC, TRAIN, d, few)
    assert {s.state for s in sigs} == {"InsufficientData"}
    assert drift.drifted(sigs).status == "Unknown" and drift.drifted(sigs).reason == "InsufficientData"
    assert drift.degraded(sigs).status == "Unknown"
    assert drift.gauge_values(sigs) == dict.fromkeys(["prompt_tokens", "generation_tokens", "error_rate", "e2e_latency_p95"])


def test_error_rate_and_latency_against_the_values_at_promotion():
    d = DriftStatus(model_version="v1", baseline_error_rate=0.01, baseline_latency_p95=2.0)
    w = drift.Window(prompt=_served([40] * 300), generation=_served([10] * 300), requests=1000, errors=50, latency_p95=3.5)
    by = {s.signal: s for s in drift.signals(SPEC, TRAIN, d, w)}
    assert by["error_rate"].state == "Degraded" and by["error_rate"].value == pytest.approx(0.04)
    assert by["e2e_latency_p95"].state == "Degraded" and by["e2e_latency_p95"].value == pytest.approx(1.75)
    v = drift.degraded(list(by.values()))
    assert v.status == "True" and v.reason == "ServingDegraded"
    ok = drift.Window(prompt=w.prompt, generation=w.generation, requests=1000, errors=20, latency_p95=2.5)
    assert drift.degraded(drift.signals(SPEC, TRAIN, d, ok)).status == "False"


def test_no_training_histogram_or_no_promotion_baseline_is_unknown():
    w = drift.Window(prompt=_served([40] * 300), generation=_served([10] * 300), requests=300, errors=0, latency_p95=1.0)
    sigs = drift.signals(SPEC, None, DriftStatus(model_version="v1"), w)
    assert drift.drifted(sigs).reason == "NoTrainingHistogram" and drift.drifted(sigs).status == "Unknown"
    assert drift.degraded(sigs).reason == "NoPromotionBaseline"
    assert drift.baseline(SPEC, w) == (0.0, 1.0)
    assert drift.baseline(SPEC, drift.Window(requests=10)) is None  # too few requests to record "at promotion"


def test_a_failed_query_is_an_error_not_a_verdict():
    d = DriftStatus(model_version="v1", baseline_error_rate=0.0, baseline_latency_p95=1.0)
    w = drift.Window(failed={"prompt_tokens": "unreachable", "generation_tokens": "unreachable"}, requests=300, errors=0, latency_p95=1.0)
    v = drift.drifted(drift.signals(SPEC, TRAIN, d, w))
    assert v.status == "Unknown" and v.reason == "ProviderError"


def test_next_check_and_gauges():
    spec = DriftWatchSpec(interval="5m")
    assert drift.next_check_at(spec, None, None) is None
    assert drift.next_check_at(DriftWatchSpec(enabled=False), None, "v1") is None
    assert drift.next_check_at(spec, None, "v1") < T0  # a new serving version: now
    d = DriftStatus(model_version="v1", checked_at=T0)
    assert drift.next_check_at(spec, d, "v1") == T0 + dt.timedelta(minutes=5)
    assert drift.next_check_at(spec, d, "v2") < T0
    metrics.set_drift("ns", "bot", "v1", {"prompt_tokens": (0.4, 0.25), "error_rate": None})
    assert metrics.SERVING_DRIFT.labels("ns", "bot", "v1", "prompt_tokens")._value.get() == 0.4
    assert ("ns", "bot", "v1", "error_rate") not in metrics.SERVING_DRIFT._metrics
    metrics.set_drift("ns", "bot", "v2", {"prompt_tokens": (0.1, 0.25)})  # the old version's series go
    assert ("ns", "bot", "v1", "prompt_tokens") not in metrics.SERVING_DRIFT._metrics
    metrics.forget("ns", "bot")
    assert not [k for k in metrics.SERVING_DRIFT._metrics if k[:2] == ("ns", "bot")]


def test_psi_over_a_single_shared_bucket_is_no_comparison_not_within_threshold():
    """issue 20 item 12: with no finite bucket bound in common (or everything above the largest shared one) the
    aligned histograms have one bucket, PSI is 0 whatever the lengths, and it used to read WithinThreshold."""
    d = DriftStatus(model_version="v1", baseline_error_rate=0.0, baseline_latency_p95=1.0)
    odd = {3.0: 10.0, 7.0: 100.0, 300.0: 250.0, math.inf: 300.0}  # a histogram with none of the 1-2-5 bounds
    w = drift.Window(prompt=odd, generation=odd, requests=300, errors=0, latency_p95=1.0)
    sigs = drift.signals(SPEC, TRAIN, d, w)
    by = {s.signal: s for s in sigs}
    assert by["prompt_tokens"].state == "NotComparable" and by["prompt_tokens"].value is None
    assert "no comparison" in by["prompt_tokens"].message and "no finite bucket bound" in by["prompt_tokens"].message
    v = drift.drifted(sigs)
    assert (v.status, v.reason) == ("Unknown", "NoComparableBuckets")
    assert drift.gauge_values(sigs)["prompt_tokens"] is None  # no gauge, no alert
    # everything above the largest shared bound: one informative bucket, also no comparison
    small = TokenLengths.model_validate(token_lengths([4000] * 50, [3000] * 50, 2048))
    long_ = drift.Window(prompt=_served([3000] * 300), generation=_served([3000] * 300), requests=300, errors=0, latency_p95=1.0)
    by = {s.signal: s for s in drift.signals(SPEC, small, d, long_)}
    assert by["prompt_tokens"].state == "NotComparable" and "longer than 2000 tokens" in by["prompt_tokens"].message
    # but one side above it and the other not is a real shift
    by = {s.signal: s for s in drift.signals(SPEC, TRAIN, d, long_)}
    assert by["prompt_tokens"].state == "Drifted"
