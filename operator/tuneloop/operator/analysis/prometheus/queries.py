"""Prometheus' built-in vLLM analysis queries, the drift watch's queries, and PromQL templating (pure).

Placeholders: {{namespace}}, {{rollout}}, {{role}}, {{window}} and {{selector}} (the label matchers
of one role's pods of one ModelVersion as scraped by Prometheus: namespace, tuneloop_dev_rollout, tuneloop_dev_role,
tuneloop_dev_model_version), {{modelVersion}}, and {{stableSelector}} (the stable role's pods, any version: where a mirror
step's comparisons are counted, by the stable guards, labelled with the candidate they were mirrored to).
sharedBase Rollouts (`render(..., served_model=...)`): one vLLM serves every version as a LoRA adapter and counts an
adapter's requests under its base, so each version is measured from the traffic layer instead — the Gateway API
Inference Extension's endpoint picker, whose `inference_objective_*` families carry `model_name` (what the client asked
for) and `target_model_name` (the adapter it was rewritten to): `TRAFFIC_QUERIES`, with {{selector}} =
`traffic_selector` (namespace, model_name, target_model_name).
Counters that only appear after their first increment (5xx responses, aborts) are `or vector(0)`
so a healthy version reads 0, not "no data"; a version that served no requests at all still reads
no data (0/0), which the metric's noDataPolicy decides.
"""

from __future__ import annotations

from tuneloop.api.experiment import ExperimentBuiltin, ExperimentMetric
from tuneloop.api.mirror import SHADOW_METRICS
from tuneloop.api.rollout import AnalysisMetric, BuiltinMetric
from tuneloop.contract import names

from ..provider import WindowSignal

# How the pod labels (tuneloop.contract.names) appear on scraped series when Prometheus maps pod labels
# with `labelmap: __meta_kubernetes_pod_label_(.+)` (or a PodMonitor's podTargetLabels):
# every character outside [a-zA-Z0-9_] becomes "_".
PROM_LABEL_ROLLOUT = "tuneloop_dev_rollout"
PROM_LABEL_ROLE = "tuneloop_dev_role"
PROM_LABEL_MODEL_VERSION = "tuneloop_dev_model_version"


def prom_version_selector(namespace: str, rollout: str, model_version: str | None) -> str:
    """PromQL label matchers of one ModelVersion's pods of a Rollout (any role), for the drift watch; None: every
    serving pod of the Rollout (sharedBase: one engine serves the versions, and after a promotion only the serving one)."""
    out = f'namespace="{namespace}", {PROM_LABEL_ROLLOUT}="{rollout}"'
    return out + (f', {PROM_LABEL_MODEL_VERSION}="{model_version}"' if model_version else "")


def prom_selector(namespace: str, rollout: str, role: str, model_version: str | None = None) -> str:
    """PromQL label matchers of one role's pods, for `{{selector}}` in analysis queries; with `model_version`, only
    the pods of that ModelVersion in that role (the canary's candidate, the stable's version): while a role's
    Deployment moves to another version, its old pods still serve, and are scraped, until they are gone."""
    out = f'namespace="{namespace}", {PROM_LABEL_ROLLOUT}="{rollout}", {PROM_LABEL_ROLE}="{role}"'
    return out + (f', {PROM_LABEL_MODEL_VERSION}="{model_version}"' if model_version else "")


# The stable guards' shadow series of one candidate (a mirror step).
_SHADOW = '{{stableSelector}}, candidate="{{modelVersion}}"'

# The OpenAI-compatible generation endpoints (prometheus-fastapi-instrumentator `handler` label).
COMPLETION_HANDLERS = "/v1/completions|/v1/chat/completions"

BUILTIN_QUERIES: dict[str, str] = {
    BuiltinMetric.ERROR_RATE.value: (
        '(sum(rate(http_requests_total{ {{selector}}, handler=~"' + COMPLETION_HANDLERS + '", status="5xx" }[{{window}}])) or vector(0))'
        ' / sum(rate(http_requests_total{ {{selector}}, handler=~"' + COMPLETION_HANDLERS + '" }[{{window}}]))'
    ),
    BuiltinMetric.TTFT_P95.value: (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{ {{selector}} }[{{window}}])))"
    ),
    BuiltinMetric.E2E_LATENCY_P95.value: (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{ {{selector}} }[{{window}}])))"
    ),
    BuiltinMetric.ABORT_RATE.value: (
        '(sum(rate(vllm:request_success_total{ {{selector}}, finished_reason="abort" }[{{window}}])) or vector(0))'
        " / sum(rate(vllm:request_success_total{ {{selector}} }[{{window}}]))"
    ),
    # the output guard's counter (tuneloop.guard): answers that are not valid JSON following the outputContract
    BuiltinMetric.CONTRACT_VIOLATION_RATE.value: (
        '(sum(rate(tuneloop_guard_answers_total{ {{selector}}, verdict="violation" }[{{window}}])) or vector(0))'
        " / sum(rate(tuneloop_guard_answers_total{ {{selector}} }[{{window}}]))"
    ),
    # the guard's checks (serving.guard.harmful / .topic): the share its check caught, flagged or refused. harmful-rate reads
    # the answers (direction="output": what the model says, which is what differs between canary and stable); the requests'
    # side is the same counter with direction="input", for a custom query. topic-violation-rate reads the requests.
    BuiltinMetric.HARMFUL_RATE.value: (
        '(sum(rate(tuneloop_guard_checks_total{ {{selector}}, check="harmful", direction="output", outcome!="pass" }[{{window}}])) or vector(0))'
        ' / sum(rate(tuneloop_guard_checks_total{ {{selector}}, check="harmful", direction="output" }[{{window}}]))'
    ),
    BuiltinMetric.TOPIC_VIOLATION_RATE.value: (
        '(sum(rate(tuneloop_guard_checks_total{ {{selector}}, check="topic", direction="input", outcome!="pass" }[{{window}}])) or vector(0))'
        ' / sum(rate(tuneloop_guard_checks_total{ {{selector}}, check="topic", direction="input" }[{{window}}]))'
    ),
    # a mirror step's comparisons (api.mirror), counted by the stable pods' guards per candidate they mirrored to: so
    # these read {{stableSelector}} with candidate="{{modelVersion}}" (measured for the canary: the candidate's name)
    BuiltinMetric.SHADOW_AGREEMENT_RATE.value: (
        'sum(rate(tuneloop_shadow_comparisons_total{ ' + _SHADOW + ', result="agree" }[{{window}}]))'
        ' / sum(rate(tuneloop_shadow_comparisons_total{ ' + _SHADOW + ', result=~"agree|disagree" }[{{window}}]))'
    ),
    BuiltinMetric.SHADOW_ERROR_RATE.value: (
        'sum(rate(tuneloop_shadow_comparisons_total{ ' + _SHADOW + ', result="error" }[{{window}}]))'
        ' / sum(rate(tuneloop_shadow_comparisons_total{ ' + _SHADOW + ' }[{{window}}]))'
    ),
    BuiltinMetric.SHADOW_CONTRACT_VIOLATION_RATE.value: (
        'sum(rate(tuneloop_shadow_answers_total{ ' + _SHADOW + ', verdict="violation" }[{{window}}]))'
        ' / sum(rate(tuneloop_shadow_answers_total{ ' + _SHADOW + ' }[{{window}}]))'
    ),
    BuiltinMetric.SHADOW_LATENCY_RATIO.value: (
        'histogram_quantile(0.95, sum by (le) (rate(tuneloop_shadow_latency_seconds_bucket{ ' + _SHADOW + ', side="candidate" }[{{window}}])))'
        ' / histogram_quantile(0.95, sum by (le) (rate(tuneloop_shadow_latency_seconds_bucket{ ' + _SHADOW + ', side="stable" }[{{window}}])))'
    ),
}

# The built-ins that read the output guard sidecar's counters (serving.guard), not the engine's.
GUARD_BUILTINS = frozenset({BuiltinMetric.CONTRACT_VIOLATION_RATE.value, BuiltinMetric.HARMFUL_RATE.value,
                            BuiltinMetric.TOPIC_VIOLATION_RATE.value, *SHADOW_METRICS})


# The endpoint picker's (EPP) request families, by the model a request asked for and the one it was rewritten to:
# inference_objective_request_total, inference_objective_request_error_total (by error_code) and the histogram
# inference_objective_request_duration_seconds (sigs.k8s.io/gateway-api-inference-extension pkg/epp/metrics).
EPP_MODEL = "model_name"
EPP_TARGET = "target_model_name"


def traffic_selector(namespace: str, served_model: str, target: str | None) -> str:
    """PromQL label matchers of one adapter's share of a served model's requests, as the endpoint picker counts them."""
    out = f'namespace="{namespace}", {EPP_MODEL}="{served_model}"'
    return out + (f', {EPP_TARGET}="{target}"' if target else "")


TRAFFIC_QUERIES: dict[str, str] = {
    BuiltinMetric.ERROR_RATE.value: (
        "(sum(rate(inference_objective_request_error_total{ {{selector}} }[{{window}}])) or vector(0))"
        " / sum(rate(inference_objective_request_total{ {{selector}} }[{{window}}]))"
    ),
    BuiltinMetric.E2E_LATENCY_P95.value: (
        "histogram_quantile(0.95, sum by (le) (rate(inference_objective_request_duration_seconds_bucket{ {{selector}} }[{{window}}])))"
    ),
}  # the other built-ins have no per-model source there (api.rollout.SHARED_BASE_METRICS: refused by validation)


def template_of(metric: AnalysisMetric, *, shared: bool = False) -> str:
    if metric.builtin is not None:
        name = BuiltinMetric(metric.builtin).value
        if shared:
            if name not in TRAFFIC_QUERIES:
                raise KeyError(f"built-in {name} has no per-adapter query (sharedBase measures from the traffic layer)")
            return TRAFFIC_QUERIES[name]
        return BUILTIN_QUERIES[name]
    assert metric.query is not None
    return metric.query


def render(template: str, *, namespace: str, rollout: str, role: str, window: str, model_version: str | None = None,
           served_model: str | None = None) -> str:
    """Substitute the placeholders; unknown `{{...}}` placeholders are left for PromQL to reject. With `served_model`
    (sharedBase), {{selector}} selects the version's requests at the traffic layer (`traffic_selector`)."""
    selector = (traffic_selector(namespace, served_model, model_version) if served_model is not None
                else prom_selector(namespace, rollout, role, model_version))
    values = {
        "namespace": namespace,
        "rollout": rollout,
        "role": role,
        "window": window,
        "selector": selector,
        "stableSelector": prom_selector(namespace, rollout, names.STABLE),
        "modelVersion": model_version or "",
    }
    out = template
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return out


def render_metric(metric: AnalysisMetric, *, namespace: str, rollout: str, role: str, window: str, model_version: str | None = None,
                  served_model: str | None = None) -> str:
    return render(template_of(metric, shared=served_model is not None), namespace=namespace, rollout=rollout, role=role, window=window,
                  model_version=model_version, served_model=served_model)


# The drift watch (rollout/drift.py): one window of the serving ModelVersion's pods, whatever their role (after a
# promotion its traffic moves from the canary pods to the stable ones). {{selector}} is
# prom_version_selector. The histograms are vLLM's, with build_1_2_5_buckets(max_model_len) bounds.
DRIFT_QUERIES: dict[WindowSignal, str] = {
    WindowSignal.PROMPT_TOKENS: "sum by (le) (increase(vllm:request_prompt_tokens_bucket{ {{selector}} }[{{window}}]))",
    WindowSignal.GENERATION_TOKENS: "sum by (le) (increase(vllm:request_generation_tokens_bucket{ {{selector}} }[{{window}}]))",
    WindowSignal.REQUESTS: 'sum(increase(http_requests_total{ {{selector}}, handler=~"' + COMPLETION_HANDLERS + '" }[{{window}}]))',
    WindowSignal.ERRORS: (
        '(sum(increase(http_requests_total{ {{selector}}, handler=~"' + COMPLETION_HANDLERS + '", status="5xx" }[{{window}}])) or vector(0))'
    ),
    WindowSignal.LATENCY_P95: "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{ {{selector}} }[{{window}}])))",
}  # the histograms (HISTOGRAM_SIGNALS) are answered as a vector by `le`


def render_drift(signal: WindowSignal, *, namespace: str, rollout: str, model_version: str | None, window: str) -> str:
    selector = prom_version_selector(namespace, rollout, model_version)
    return DRIFT_QUERIES[WindowSignal(signal)].replace("{{selector}}", selector).replace("{{window}}", window)


# The A/B experiment step (analysis/experiment.py): one arm's counts since the experiment began ({{window}}), each a
# PromQL template rendered like an analysis query. Keys: successes/trials (a proportion), count/sum/sumOfSquares (a mean).
EXPERIMENT_BUILTINS: dict[str, dict[str, str]] = {
    # the output guard's answers that follow the output contract, out of every answer it checked
    ExperimentBuiltin.CONTRACT_VALIDITY.value: {
        "successes": 'sum(increase(tuneloop_guard_answers_total{ {{selector}}, verdict="ok" }[{{window}}]))',
        "trials": "sum(increase(tuneloop_guard_answers_total{ {{selector}} }[{{window}}]))",
    },
}


def experiment_templates(metric: ExperimentMetric) -> dict[str, str]:
    """The PromQL templates of an experiment metric, by count (successes, trials | count, sum, sumOfSquares)."""
    if metric.builtin is not None:
        return dict(EXPERIMENT_BUILTINS[ExperimentBuiltin(metric.builtin).value])
    if metric.proportion is not None:
        return {"successes": metric.proportion.successes, "trials": metric.proportion.trials}
    assert metric.mean is not None
    return {"count": metric.mean.count, "sum": metric.mean.sum, "sumOfSquares": metric.mean.sum_of_squares}
