"""Drift watch of the serving version, as pure code: one window's measurements -> signals -> conditions.

After a promotion the Rollout compares what the serving ModelVersion sees and says with what it was
trained on: the increase of vLLM's `vllm:request_prompt_tokens` / `vllm:request_generation_tokens`
histogram buckets over `driftWatch.window` against the train split's histograms recorded by `prepare`
(`spec.lineage.tokenLengths`), by a population-stability index; and its 5xx rate and p95 end-to-end
latency against the values recorded at promotion.

    PSI = sum over buckets of (served% - train%) * ln(served% / train%)

with each share floored at EPSILON so that an empty bucket on one side gives a large but finite term.
A window with fewer than `minSamples` requests gives no verdict (InsufficientData), never drift.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from tuneloop.api.conditions import DriftReason
from tuneloop.api.durations import parse_duration
from tuneloop.api.modelversion import TokenLengths
from tuneloop.api.rollout import DriftSignal, DriftSignalState, DriftStatus, DriftWatchSpec

EPSILON = 1e-4  # share given to an empty bucket (the usual PSI floor)
PROMPT, GENERATION, ERROR_RATE, LATENCY = "prompt_tokens", "generation_tokens", "error_rate", "e2e_latency_p95"
DISTRIBUTION_SIGNALS = (PROMPT, GENERATION)
SERVING_SIGNALS = (ERROR_RATE, LATENCY)


def psi(expected: list[float], actual: list[float], epsilon: float = EPSILON) -> float:
    """Population-stability index of `actual` against `expected` (counts per bucket, same buckets)."""
    if len(expected) != len(actual):
        raise ValueError(f"PSI needs the same buckets: {len(expected)} vs {len(actual)}")
    te, ta = sum(expected), sum(actual)
    if te <= 0 or ta <= 0:
        raise ValueError("PSI needs counts on both sides")
    total = 0.0
    for e, a in zip(expected, actual):
        pe, pa = max(e / te, epsilon), max(a / ta, epsilon)
        total += (pa - pe) * math.log(pa / pe)
    return total


def align(train: TokenLengths, counts: list[int], served: dict[float, float]) -> tuple[list[float], list[float]]:
    """The train counts (per bucket of `train.le`, last +Inf) and the served cumulative increases (le -> count)
    as two lists of counts over the bounds both have (vLLM's bounds go up to its max_model_len, the train
    split's up to its maxSeqLength: both are prefixes of the same 1-2-5 series), plus +Inf."""
    common = sorted(set(float(b) for b in train.le) & {b for b in served if math.isfinite(b)})
    cum_train: dict[float, float] = {}
    running = 0.0
    for b, c in zip([*(float(x) for x in train.le), math.inf], counts):
        running += c
        cum_train[b] = running
    bounds = [*common, math.inf]
    out_t, out_s = [], []
    prev_t = prev_s = 0.0
    for b in bounds:
        t = cum_train[b]
        s = served.get(b, 0.0)
        out_t.append(max(0.0, t - prev_t))
        out_s.append(max(0.0, s - prev_s))  # increase() extrapolates: clamp tiny non-monotonic steps
        prev_t, prev_s = max(prev_t, t), max(prev_s, s)
    return out_t, out_s


@dataclass(frozen=True)
class Window:
    """What the metrics provider answered for one window (None: empty result; a signal in `failed`: no answer)."""

    prompt: dict[float, float] | None = None  # le -> increase of the cumulative bucket
    generation: dict[float, float] | None = None
    requests: float | None = None
    errors: float | None = None  # 5xx responses
    latency_p95: float | None = None
    failed: dict[str, str] = field(default_factory=dict)  # signal -> error message


def _distribution(name: str, spec: DriftWatchSpec, train: TokenLengths | None, served: dict[float, float] | None,
                  failed: dict[str, str]) -> DriftSignal:
    if name in failed:
        return DriftSignal(signal=name, state=DriftSignalState.ERROR, message=f"query failed: {failed[name]}"[:512])
    if train is None:
        return DriftSignal(signal=name, state=DriftSignalState.NO_BASELINE,
                           message="the ModelVersion has no spec.lineage.tokenLengths (registered before prepare recorded them)")
    counts = train.prompt if name == PROMPT else train.generation
    if sum(counts) == 0:
        return DriftSignal(signal=name, state=DriftSignalState.NO_BASELINE, message="the train split's histogram is empty")
    n = int(round(max(served.values()))) if served else 0
    if n < spec.min_samples:
        return DriftSignal(signal=name, state=DriftSignalState.INSUFFICIENT_DATA, samples=n, threshold=spec.psi_threshold,
                           message=f"{n} requests in the window < minSamples {spec.min_samples}")
    expected, actual = align(train, counts, served or {})
    why = _no_comparison(train, served or {}, expected, actual)
    if why:  # PSI would be 0 (or undefined) whatever the lengths: say so, never "within threshold"
        return DriftSignal(signal=name, state=DriftSignalState.NOT_COMPARABLE, samples=n, threshold=spec.psi_threshold,
                           message=f"no comparison: {why}")
    value = psi(expected, actual)
    drifted = value > spec.psi_threshold
    return DriftSignal(
        signal=name, state=DriftSignalState.DRIFTED if drifted else DriftSignalState.OK, value=round(value, 6),
        threshold=spec.psi_threshold, samples=n,
        message=f"PSI {value:.3g} {'>' if drifted else '<='} {spec.psi_threshold:g} over {len(expected)} buckets, {n} requests",
    )


def _no_comparison(train: TokenLengths, served: dict[float, float], expected: list[float], actual: list[float]) -> str | None:
    """Why PSI over the aligned buckets cannot tell a shift, or None: the histograms share no finite bound (one
    bucket), or every train record and every served request is above the largest bound they share."""
    common = sorted(set(float(b) for b in train.le) & {b for b in served if math.isfinite(b)})
    if len(expected) < 2 or not common:
        return "the train split's and vLLM's token-length histograms share no finite bucket bound (a single bucket)"
    if sum(actual) <= 0:
        return "the served histogram has no counts in the shared buckets"
    if expected[-1] >= sum(expected) and actual[-1] >= sum(actual):
        return f"every train record and every request is longer than {common[-1]:g} tokens, the largest bucket bound both histograms have"
    return None


def _serving(name: str, spec: DriftWatchSpec, w: Window, baseline: float | None) -> DriftSignal:
    if name in w.failed:
        return DriftSignal(signal=name, state=DriftSignalState.ERROR, message=f"query failed: {w.failed[name]}"[:512])
    n = int(round(w.requests or 0))
    threshold = spec.max_error_rate_increase if name == ERROR_RATE else spec.max_latency_ratio
    if n < spec.min_samples:
        return DriftSignal(signal=name, state=DriftSignalState.INSUFFICIENT_DATA, samples=n, threshold=threshold,
                           message=f"{n} requests in the window < minSamples {spec.min_samples}")
    if baseline is None:
        return DriftSignal(signal=name, state=DriftSignalState.NO_BASELINE, samples=n, threshold=threshold,
                           message="no value recorded at promotion yet (retried at every check)")
    if name == ERROR_RATE:
        rate = (w.errors or 0.0) / n
        value = rate - baseline
        bad = value > threshold
        msg = f"5xx rate {rate:.4g} vs {baseline:.4g} at promotion: +{value:.4g} {'>' if bad else '<='} {threshold:g}"
    else:
        if w.latency_p95 is None or math.isnan(w.latency_p95) or baseline <= 0:
            return DriftSignal(signal=name, state=DriftSignalState.INSUFFICIENT_DATA, samples=n, threshold=threshold,
                               message="no latency histogram data in the window" if baseline > 0 else "p95 at promotion was 0")
        value = w.latency_p95 / baseline
        bad = value > threshold
        msg = f"p95 {w.latency_p95:.4g}s vs {baseline:.4g}s at promotion: x{value:.3g} {'>' if bad else '<='} {threshold:g}"
    return DriftSignal(signal=name, state=DriftSignalState.DEGRADED if bad else DriftSignalState.OK, value=round(value, 6),
                       threshold=threshold, samples=n, message=msg)


def baseline(spec: DriftWatchSpec, w: Window) -> tuple[float, float | None] | None:
    """(5xx rate, p95 latency) at promotion, from a window with at least minSamples requests; None otherwise."""
    if w.failed.get(ERROR_RATE) or (w.requests or 0) < spec.min_samples:
        return None
    p95 = w.latency_p95 if w.latency_p95 is not None and not math.isnan(w.latency_p95) and LATENCY not in w.failed else None
    return (w.errors or 0.0) / (w.requests or 1.0), p95


def record_baseline(spec: DriftWatchSpec, d: DriftStatus, w: Window, now: dt.datetime) -> DriftStatus:
    """The values "at promotion", each from the first window that has it: the 5xx rate from the first window
    with minSamples requests and an answer, the p95 from the first such window with a positive p95. A value
    missing at the first check (a failed or empty latency query) is retried at every later check, never
    left unrecorded for good. `baselineRecordedAt`: when the first of them was recorded. Returns a new object."""
    if (w.requests or 0) < spec.min_samples:
        return d
    out = d.model_copy()
    if out.baseline_error_rate is None and ERROR_RATE not in w.failed:
        out.baseline_error_rate = (w.errors or 0.0) / (w.requests or 1.0)
    p95 = w.latency_p95
    if out.baseline_latency_p95 is None and LATENCY not in w.failed and p95 is not None and math.isfinite(p95) and p95 > 0:
        out.baseline_latency_p95 = p95
    if out.baseline_recorded_at is None and (out.baseline_error_rate is not None or out.baseline_latency_p95 is not None):
        out.baseline_recorded_at = now
    return out


def signals(spec: DriftWatchSpec, train: TokenLengths | None, drift: DriftStatus, w: Window) -> list[DriftSignal]:
    """Every signal's state for one window."""
    return [
        _distribution(PROMPT, spec, train, w.prompt, w.failed),
        _distribution(GENERATION, spec, train, w.generation, w.failed),
        _serving(ERROR_RATE, spec, w, drift.baseline_error_rate),
        _serving(LATENCY, spec, w, drift.baseline_latency_p95),
    ]


@dataclass(frozen=True)
class ConditionVerdict:
    status: str  # True, False, Unknown
    reason: str
    message: str


def _condition(sigs: list[DriftSignal], bad_state: DriftSignalState, bad: DriftReason, ok: DriftReason, no_base: DriftReason) -> ConditionVerdict:
    states = {s.signal: DriftSignalState(s.state) for s in sigs}
    hit = [s for s in sigs if states[s.signal] == bad_state]
    if hit:
        return ConditionVerdict("True", bad.value, "; ".join(f"{s.signal}: {s.message}" for s in hit))
    if sigs and all(states[s.signal] == DriftSignalState.OK for s in sigs):
        return ConditionVerdict("False", ok.value, "; ".join(f"{s.signal}: {s.message}" for s in sigs))
    first = next(s for s in sigs if states[s.signal] != DriftSignalState.OK)
    reason = {DriftSignalState.INSUFFICIENT_DATA: DriftReason.INSUFFICIENT_DATA, DriftSignalState.NO_BASELINE: no_base,
              DriftSignalState.NOT_COMPARABLE: DriftReason.NO_COMPARABLE_BUCKETS,
              DriftSignalState.ERROR: DriftReason.PROVIDER_ERROR}[states[first.signal]]
    return ConditionVerdict("Unknown", reason.value, "; ".join(f"{s.signal}: {s.message}" for s in sigs))


def drifted(sigs: list[DriftSignal]) -> ConditionVerdict:
    """Drifted: True when a token-length PSI is above the threshold; False when both are within it; else Unknown."""
    mine = [s for s in sigs if s.signal in DISTRIBUTION_SIGNALS]
    return _condition(mine, DriftSignalState.DRIFTED, DriftReason.DISTRIBUTION_SHIFTED, DriftReason.WITHIN_THRESHOLD,
                      DriftReason.NO_TRAINING_HISTOGRAM)


def degraded(sigs: list[DriftSignal]) -> ConditionVerdict:
    """Degraded: True when the error rate or the latency is worse than at promotion beyond its limit."""
    mine = [s for s in sigs if s.signal in SERVING_SIGNALS]
    return _condition(mine, DriftSignalState.DEGRADED, DriftReason.SERVING_DEGRADED, DriftReason.AS_AT_PROMOTION,
                      DriftReason.NO_PROMOTION_BASELINE)


def next_check_at(spec: DriftWatchSpec, drift: DriftStatus | None, serving: str | None) -> dt.datetime | None:
    """When the next comparison is due; None when there is nothing to watch. A new serving version is due now."""
    if not spec.enabled or serving is None:
        return None
    if drift is None or drift.model_version != serving or drift.checked_at is None:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return drift.checked_at + dt.timedelta(seconds=parse_duration(spec.interval))


def gauge_values(sigs: list[DriftSignal]) -> dict[str, tuple[float, float] | None]:
    """signal -> (value, threshold) for the gauges; None (series removed) when the window gave no verdict."""
    out: dict[str, tuple[float, float] | None] = {}
    for s in sigs:
        ok = DriftSignalState(s.state) in (DriftSignalState.OK, DriftSignalState.DRIFTED, DriftSignalState.DEGRADED)
        out[s.signal] = (s.value, s.threshold) if ok and s.value is not None and s.threshold is not None else None
    return out
