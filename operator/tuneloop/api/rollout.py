"""Rollout: serve ModelVersions with vLLM and move traffic to a candidate step by step."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from .common import API_VERSION, ApiModel, Condition, ObjectMeta, ObjectRef, OneOf, Toleration, cel, one_of_rule
from .deprecations import provider_ref
from .durations import DURATION, parse_duration
from .experiment import ExperimentStatus, ExperimentStep
from .mirror import (
    MIRROR_GUARD_MESSAGE,
    MIRROR_ROUTING_MESSAGE,
    SHADOW_METRICS,
    SHADOW_RELATIVE_MESSAGE,
    MirrorStatus,
    MirrorStep,
)

# Rate floors and caps (issue 25, finding 3): one Rollout must not be able to flood the shared Prometheus. A
# measurement round asks at most 2 queries per metric (canary, and stable for a relative threshold), so a Rollout
# sends at most 2 × MAX_ANALYSIS_METRICS queries per MIN_ANALYSIS_INTERVAL (32 per second at worst, 8 per 30 s with
# the defaults and four metrics), and the drift watch 5 per MIN_DRIFT_INTERVAL. The floors are the API server's
# (CEL) and the models'; they stop a `1ms` interval, not a tenant with many Rollouts (a ResourceQuota on
# count/rollouts.tuneloop.dev does: docs/security.md).
MIN_ANALYSIS_INTERVAL = "1s"
MIN_ANALYSIS_WINDOW = "1s"
MIN_DRIFT_INTERVAL = "1s"
MIN_DRIFT_WINDOW = "5s"
MAX_ANALYSIS_METRICS = 16
PROVIDER_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def floor_rule(field: str, floor: str, *, zero_ok: bool = False) -> JsonDict:
    """CEL: `field` (a DURATION) is at least `floor` (or exactly 0 when zero_ok)."""
    zero = f" || duration(self.{field}) == duration('0s')" if zero_ok else ""
    what = f"{field} must be at least {floor}" + (" (or 0s: off)" if zero_ok else "")
    return cel(f"!has(self.{field}) || duration(self.{field}) >= duration('{floor}'){zero}", what)


def check_floor(value: str | None, field: str, floor: str, *, zero_ok: bool = False) -> None:
    """The pydantic twin of `floor_rule`."""
    if value is None:
        return
    secs = parse_duration(value)
    if secs < parse_duration(floor) and not (zero_ok and secs == 0):
        raise ValueError(f"{field} must be at least {floor}" + (" (or 0s: off)" if zero_ok else "") + f"; got {value}")


class ServingResources(ApiModel):
    """Per-replica resources of the vLLM pods."""

    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per replica (tensor parallel size).")
    gpu_resource_name: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str = Field(default="4", description="CPU request.")
    memory: str = Field(default="32Gi", description="Memory request and limit.")


class GuardAction(str, Enum):
    OFF = "off"
    FLAG = "flag"  # counted (tuneloop_guard_checks_total{outcome="flag"}) and passed on
    REFUSE = "refuse"  # answered with an OpenAI-style HTTP 400 error (code content_filter) instead


HARMFUL_DIRECTION_MESSAGE = "harmful checks neither input nor output: set input or output to flag or refuse, or remove harmful"


class HarmfulContentCheck(ApiModel):
    """Harmful content: alt-profanity-check's offensive-language classifier (a maintained linear SVM shipped in the guard's
    image) scores the request's user turns (input) and each answer (output); a text at or above the threshold is harmful."""

    input: GuardAction = Field(default=GuardAction.FLAG, description="What happens to a request whose user turns are harmful: "
                               "off, flag (counted, passed on) or refuse (HTTP 400, the engine never sees it).")
    output: GuardAction = Field(default=GuardAction.FLAG, description="What happens to a harmful answer: off, flag (counted, passed on) "
                                "or refuse (the response is replaced by an HTTP 400 error).")
    threshold: float = Field(default=0.9, gt=0, le=1, description="Classifier probability at or above which a text is harmful.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {"x-kubernetes-validations": [cel("self.input != 'off' || self.output != 'off'", HARMFUL_DIRECTION_MESSAGE)]}
    }

    @model_validator(mode="after")
    def _a_direction(self) -> HarmfulContentCheck:
        """The pydantic twin of the CEL rule above."""
        if self.input == GuardAction.OFF and self.output == GuardAction.OFF:
            raise ValueError(HARMFUL_DIRECTION_MESSAGE)
        return self


class TopicCheck(ApiModel):
    """The topic rule: the request's user turns against the served ModelVersion's topic profile (spec.topicProfile: the
    fine-tune's training prompts, TF-IDF character n-grams, nearest-neighbour cosine similarity), whose threshold is
    calibrated on the held-out in-topic prompts of the validation split."""

    action: Literal["flag", "refuse"] = Field(default="flag", description="What happens to an off-topic request: flag (counted, passed on) "
                                             "or refuse (HTTP 400, the engine never sees it).")
    pass_rate: float = Field(default=0.99, gt=0, le=1, description="Share of the held-out in-topic prompts that pass: picks the "
                             "similarity threshold from the profile's calibration scores (lower refuses more off-topic requests "
                             "and more in-topic ones).")


class OutputGuard(ApiModel):
    """The output guard: a pass-through sidecar (`python -m tuneloop.guard`) in front of vLLM that checks every answer
    against the served ModelVersion's outputContract and counts the verdicts for Prometheus (the built-in analysis metric
    contract-violation-rate); the Services send traffic through it. Optionally it checks requests and answers for harmful
    content (harmful-rate) and requests for the model's topic (topic-violation-rate), flagging or refusing them."""

    enforce: bool = Field(default=False, description="Also add the contract as vLLM structured outputs to requests that ask for no format themselves.")
    port: int = Field(default=8001, ge=1, le=65535, description="Port of the guard (its /metrics too); must differ from serving.port.")
    harmful: HarmfulContentCheck | None = Field(default=None, description="Check requests and answers for harmful (offensive, "
                                                "toxic) content with a maintained classifier.")
    topic: TopicCheck | None = Field(default=None, description="Check that requests are on the fine-tune's topic (needs the "
                                     "ModelVersion's spec.topicProfile, which the evaluation writes).")


class ServingMode(str, Enum):
    """How the Rollout's ModelVersions are served: a vLLM Deployment per version, or one Deployment of the shared base
    serving every version (a LoRA adapter) by name."""

    PER_VERSION = "perVersion"
    SHARED_BASE = "sharedBase"


# The built-in metrics a sharedBase Rollout can measure per adapter: only the traffic layer tells adapters apart (vLLM
# counts an adapter's requests under its base; the output guard counts per pod), and the endpoint picker exports request,
# error and latency series by target model, no time to first token and no aborts.
SHARED_BASE_METRICS = ("error-rate", "e2e-latency-p95")


class ServingSpec(ApiModel):
    """How each ModelVersion is served."""

    mode: ServingMode = Field(default=ServingMode.PER_VERSION, description=(
        "perVersion: a vLLM Deployment per ModelVersion (stable, canary), traffic split between them. sharedBase: one vLLM "
        "Deployment of the base model serves every version as a LoRA adapter loaded at runtime (no second Deployment, no "
        "restart), traffic split by model name with an InferenceModelRewrite (needs trafficRouting.inferenceModelRewrite, "
        "and LoRA-adapter ModelVersions of one base on one claim). Cannot change once set."),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "serving.mode cannot change; create a new Rollout")]})
    image: str | None = Field(default=None, description="vLLM image; defaults to the operator's configured image.")
    replicas: int = Field(default=2, ge=1, le=1000, description="Replicas of the stable version (the canary scales with its weight in replica mode).")
    resources: ServingResources = Field(default_factory=ServingResources, description="Per-replica resources.")
    extra_args: list[str] = Field(default_factory=list, max_length=64, description=(
        "Extra `vllm serve` arguments. Flags that run foreign code, read files, serve other weights or reach other hosts "
        "(`--trust-remote-code`, `--allowed-local-media-path`, `--config`, `--model`, …) only where the platform admin allows them."))
    max_loras: int = Field(default=1, ge=1, le=64, description=(
        "vLLM --max-loras for LoRA artifacts (sharedBase: at least 2, the stable and the candidate adapter in one batch)."))
    max_lora_rank: int | None = Field(default=None, ge=1, description=(
        "vLLM --max-lora-rank; defaults to the artifact's rank (sharedBase: to 16, vLLM's default, for every adapter the "
        "Deployment will load)."))
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the OpenAI-compatible server and /metrics.")
    guard: OutputGuard | None = Field(
        default=None, description="Put the output guard in front of every pod (answers checked against the ModelVersion's outputContract).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Tolerations.")


class ParentRef(ApiModel):
    """A Gateway the HTTPRoute attaches to."""

    name: str = Field(min_length=1, description="Gateway name.")
    namespace: str | None = Field(default=None, description="Gateway namespace; defaults to the Rollout's.")
    section_name: str | None = Field(default=None, description="Listener name.")


class GatewayApiRouting(ApiModel):
    """Weighted backendRefs on a Gateway API HTTPRoute."""

    http_route: str = Field(min_length=1, description="HTTPRoute name (created or updated by the operator).")
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=16, description="Gateways to attach to.")
    hostnames: list[str] = Field(default_factory=list, max_length=16, description="Hostnames the route matches.")
    path_prefix: str = Field(default="/v1", description="Path prefix routed to the model.")


class ReplicaWeightedRouting(ApiModel):
    """No gateway: one Service selects both versions; weight is approximated by replica counts (coarse)."""

    service: str = Field(min_length=1, description="Name of the Service that selects stable and canary pods.")


class PoolRef(ApiModel):
    """The InferencePool (Gateway API Inference Extension) whose endpoint picker applies the rewrite; in the Rollout's
    namespace, selecting the Rollout's pods (label tuneloop.dev/rollout)."""

    name: str = Field(min_length=1, max_length=253, description="InferencePool name.")
    group: str = Field(default="inference.networking.k8s.io", max_length=253, description="InferencePool API group.")
    kind: str = Field(default="InferencePool", min_length=1, max_length=63, description="InferencePool kind.")


class InferenceModelRewriteRouting(ApiModel):
    """Weighted model names on a Gateway API Inference Extension InferenceModelRewrite (v1alpha2): requests for
    servedModelName are rewritten to the stable adapter's name and the candidate's, by weight (sharedBase mode)."""

    name: str | None = Field(default=None, max_length=253, description="InferenceModelRewrite name (created or updated by the operator); "
                                                                        "defaults to the Rollout's name.")
    pool_ref: PoolRef = Field(description="The InferencePool the rewrite applies to.")


class TrafficRouting(OneOf):
    """How traffic is split: exactly one of gatewayAPI, replicaWeighted, inferenceModelRewrite."""

    one_of = ("gatewayAPI", "replicaWeighted", "inferenceModelRewrite")
    one_of_what = "trafficRouting"

    gateway_api: GatewayApiRouting | None = Field(default=None, alias="gatewayAPI", description="Gateway API HTTPRoute weights (exact).")
    replica_weighted: ReplicaWeightedRouting | None = Field(default=None, description="Replica-count weights (coarse).")
    inference_model_rewrite: InferenceModelRewriteRouting | None = Field(
        default=None, description="Weights between adapter names of one base on an InferenceModelRewrite (exact; serving.mode sharedBase).")


class PauseStep(ApiModel):
    """Wait; without duration, until promoted by hand."""

    duration: str | None = Field(default=None, pattern=DURATION, description="e.g. 30s, 5m, 1h; empty waits for `kubectl tuneloop promote`.")


class AnalysisStep(ApiModel):
    """Run the Rollout's analysis for a number of measurements."""

    metrics: list[str] = Field(default_factory=list, max_length=MAX_ANALYSIS_METRICS, description="Names of analysis metrics to run; empty runs all.")
    count: int | None = Field(default=None, ge=1, description="Measurements per metric; defaults to analysis.count.")


class Step(OneOf):
    """One canary step: exactly one of setWeight, pause, analysis, experiment, mirror."""

    one_of = ("setWeight", "pause", "analysis", "experiment", "mirror")
    one_of_what = "a step"

    set_weight: int | None = Field(default=None, ge=0, le=100, description="Percent of traffic for the candidate.")
    pause: PauseStep | None = Field(default=None, description="Wait for a duration or for a human.")
    analysis: AnalysisStep | None = Field(default=None, description="Run Prometheus analysis.")
    experiment: ExperimentStep | None = Field(default=None, description="A/B experiment: hold a split and compare an online quality metric.")
    mirror: MirrorStep | None = Field(default=None, description="Shadow: copy a share of the live requests to the candidate (answers "
                                      "not returned) and compare its answers with the stable's (needs serving.guard).")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("!has(self.setWeight) || (self.setWeight >= 0 && self.setWeight <= 100)", "setWeight must be within 0..100"),
            ]
        }
    }


class NoDataPolicy(str, Enum):
    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"
    IGNORE = "ignore"


class BuiltinMetric(str, Enum):
    ERROR_RATE = "error-rate"
    TTFT_P95 = "ttft-p95"
    E2E_LATENCY_P95 = "e2e-latency-p95"
    ABORT_RATE = "abort-rate"
    CONTRACT_VIOLATION_RATE = "contract-violation-rate"  # the output guard's share of answers breaking the output contract
    HARMFUL_RATE = "harmful-rate"  # the output guard's share of answers its harmful-content check caught (flagged or refused)
    TOPIC_VIOLATION_RATE = "topic-violation-rate"  # the output guard's share of requests its topic rule caught (flagged or refused)
    # a mirror step's comparisons, counted by the stable pods' guards on the same requests (api.mirror.SHADOW_METRICS)
    SHADOW_AGREEMENT_RATE = "shadow-agreement-rate"  # the candidate's answer was the stable's (whitespace, JSON equality)
    SHADOW_CONTRACT_VIOLATION_RATE = "shadow-contract-violation-rate"  # the candidate's answers breaking the output contract
    SHADOW_LATENCY_RATIO = "shadow-latency-ratio"  # candidate p95 / stable p95 on the mirrored requests
    SHADOW_ERROR_RATE = "shadow-error-rate"  # mirrored requests the candidate did not answer (HTTP error, timeout)


class AnalysisMetric(ApiModel):
    """One Prometheus measurement and its thresholds."""

    name: str = Field(min_length=1, max_length=63, description="Metric name in status and events.")
    builtin: BuiltinMetric | None = Field(default=None, description="A built-in query: error-rate, ttft-p95, e2e-latency-p95, abort-rate (vLLM's metrics), "
                                                  "contract-violation-rate, harmful-rate, topic-violation-rate (the output guard's; need serving.guard and its check), "
                                                  "shadow-agreement-rate, shadow-contract-violation-rate, shadow-latency-ratio, "
                                                  "shadow-error-rate (a mirror step's comparisons, counted by the stable pods' guards).")
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="PromQL template; {{namespace}}, {{rollout}}, {{selector}} (label matchers of the pods of this role and of the "
                    "version it is measured for: the candidate for the canary, the serving version for the stable), {{stableSelector}} (the stable "
                    "role's pods, any version: a mirror step's comparisons), {{role}}, {{modelVersion}} and {{window}} are substituted.",
    )
    max: float | None = Field(default=None, description="Failed when the canary value is above this.")
    min: float | None = Field(default=None, description="Failed when the canary value is below this.")
    max_relative_to_stable: float | None = Field(
        default=None, gt=0, description="Failed when canary > this × stable (the query also runs for stable)."
    )
    no_data_policy: NoDataPolicy | None = Field(default=None, description="Overrides analysis.noDataPolicy for this metric.")
    failure_limit: int | None = Field(default=None, ge=0, description="Overrides analysis.failureLimit for this metric.")
    inconclusive_limit: int | None = Field(default=None, ge=0, description="Overrides analysis.inconclusiveLimit for this metric.")
    consecutive_error_limit: int | None = Field(default=None, ge=0, description="Overrides analysis.consecutiveErrorLimit for this metric.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                one_of_rule(["builtin", "query"], "an analysis metric"),
                cel(
                    "has(self.max) || has(self.min) || has(self.maxRelativeToStable)",
                    "an analysis metric needs max, min or maxRelativeToStable",
                ),
                cel("!has(self.builtin) || !self.builtin.startsWith('shadow-') || !has(self.maxRelativeToStable)", SHADOW_RELATIVE_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _shape(self) -> AnalysisMetric:
        if (self.builtin is None) == (self.query is None):
            raise ValueError("exactly one of builtin, query must be set for an analysis metric")
        if self.max is None and self.min is None and self.max_relative_to_stable is None:
            raise ValueError("an analysis metric needs max, min or maxRelativeToStable")
        if self.shadow and self.max_relative_to_stable is not None:
            raise ValueError(SHADOW_RELATIVE_MESSAGE)
        return self

    @property
    def shadow(self) -> bool:
        """A shadow-* built-in (a mirror step's comparisons)."""
        return self.builtin is not None and str(getattr(self.builtin, "value", self.builtin)) in SHADOW_METRICS


class AnalysisSpec(ApiModel):
    """Prometheus analysis: measurements, limits, and what missing data means."""

    provider: str | None = Field(
        default=None, max_length=63, pattern=PROVIDER_NAME,
        description=(
            "Name of a metrics provider the platform admin configured (chart value metricsProviders, operator setting "
            "TUNELOOP_METRICS_PROVIDERS); empty: the operator's default provider. See docs/security.md."
        ),
    )
    prometheus_address: str | None = Field(
        default=None, max_length=2048,
        description=(
            "Deprecated, use provider (removed in tuneloop.dev/v1beta1; a Rollout that sets it gets condition "
            "DeprecatedFields and a Warning event). A Prometheus base URL; the operator queries it only when it is the "
            "address of a provider the admin configured (otherwise every measurement is an Error naming the allowed providers)."
        ),
    )
    interval: str = Field(default="30s", pattern=DURATION, description=f"Time between measurements (at least {MIN_ANALYSIS_INTERVAL}).")
    window: str = Field(default="1m", pattern=DURATION, description=f"Range of rate()/histogram windows in the queries (at least {MIN_ANALYSIS_WINDOW}).")
    count: int = Field(default=5, ge=1, le=1000, description="Measurements per analysis step.")
    failure_limit: int = Field(default=0, ge=0, description="Failed measurements tolerated; one more fails the analysis.")
    inconclusive_limit: int = Field(default=2, ge=0, description="Inconclusive measurements tolerated before pausing for a human.")
    consecutive_error_limit: int = Field(default=4, ge=0, description="Consecutive query errors tolerated before the analysis errors out.")
    no_data_policy: NoDataPolicy = Field(
        default=NoDataPolicy.INCONCLUSIVE,
        description="An empty result or NaN counts as inconclusive, failed, or is ignored (ignored: it counts toward count but never "
        "as a success, so a metric that only ever had no data ends its step Inconclusive, never promoted).",
    )
    metrics: list[AnalysisMetric] = Field(
        default_factory=list, max_length=MAX_ANALYSIS_METRICS, description=f"What is measured (at most {MAX_ANALYSIS_METRICS} metrics)."
    )
    initial_delay: str = Field(
        default="30s",
        pattern=DURATION,
        description=(
            "Time after each canary weight change before the first measurement; queries then cover only the traffic "
            "since the change (the window is shortened to the time since the change). Make it at least two scrape intervals."
        ),
    )
    background_interval: str | None = Field(
        default=None,
        pattern=DURATION,
        description=(
            "Time between background measurements of every metric while the canary has traffic outside analysis steps "
            "(pauses, waiting for canary pods); a Failed or Error verdict rolls back. Empty: analysis.interval; 0s: off; "
            f"otherwise at least {MIN_ANALYSIS_INTERVAL}."
        ),
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                floor_rule("interval", MIN_ANALYSIS_INTERVAL),
                floor_rule("window", MIN_ANALYSIS_WINDOW),
                floor_rule("backgroundInterval", MIN_ANALYSIS_INTERVAL, zero_ok=True),
                cel("!(has(self.provider) && has(self.prometheusAddress))", "set provider or prometheusAddress, not both"),
            ]
        }
    }

    @model_validator(mode="after")
    def _floors(self) -> AnalysisSpec:
        check_floor(self.interval, "interval", MIN_ANALYSIS_INTERVAL)
        check_floor(self.window, "window", MIN_ANALYSIS_WINDOW)
        check_floor(self.background_interval, "backgroundInterval", MIN_ANALYSIS_INTERVAL, zero_ok=True)
        if self.provider is not None and self.prometheus_address is not None:
            raise ValueError("set provider or prometheusAddress, not both")
        return self

    @property
    def provider_ref(self) -> str | None:
        """The provider to query, provider-neutral (the deprecated prometheusAddress converted: api.deprecations)."""
        return provider_ref(self.provider, self.prometheus_address)


class DriftWatchSpec(ApiModel):
    """After a promotion: compare the traffic the serving version sees with what it was trained on, and its error
    rate and latency with the values at promotion (conditions Drifted and Degraded, gauge tuneloop_serving_drift)."""

    enabled: bool = Field(default=True, description="Watch the serving version once it is promoted.")
    window: str = Field(
        default="1h", pattern=DURATION,
        description=(
            "Range of each comparison: the increase of vLLM's token-length histogram buckets, requests and errors over this "
            f"window (at least {MIN_DRIFT_WINDOW})."
        ),
    )
    interval: str = Field(default="5m", pattern=DURATION, description=f"Time between comparisons (at least {MIN_DRIFT_INTERVAL}).")
    psi_threshold: float = Field(
        default=0.25, gt=0, le=10,
        description="Drifted when the population-stability index of served prompt or generation lengths vs the train split is above this (0.1: moderate shift, 0.25: large).",
    )
    min_samples: int = Field(
        default=200, ge=1,
        description="Requests a window must hold; with fewer, the verdict is insufficient data (condition Unknown), never drift or degradation.",
    )
    max_error_rate_increase: float = Field(
        default=0.02, ge=0, le=1, description="Degraded when the window's 5xx rate exceeds the rate at promotion by more than this (absolute)."
    )
    max_latency_ratio: float = Field(
        default=1.5, ge=1, description="Degraded when the window's p95 end-to-end latency is more than this times the p95 at promotion."
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [floor_rule("interval", MIN_DRIFT_INTERVAL), floor_rule("window", MIN_DRIFT_WINDOW)]
        }
    }

    @model_validator(mode="after")
    def _floors(self) -> DriftWatchSpec:
        check_floor(self.interval, "interval", MIN_DRIFT_INTERVAL)
        check_floor(self.window, "window", MIN_DRIFT_WINDOW)
        return self


_SHARED = "has(self.serving) && has(self.serving.mode) && self.serving.mode == 'sharedBase'"
_MIRRORS = "has(self.steps) && self.steps.exists(s, has(s.mirror))"
SHARED_ROUTING_MESSAGE = (
    "serving.mode sharedBase needs trafficRouting.inferenceModelRewrite (the split is between adapter names inside one "
    "Deployment, which only an InferenceModelRewrite can express), and inferenceModelRewrite needs serving.mode sharedBase")
SHARED_MAX_LORAS_MESSAGE = "serving.mode sharedBase needs serving.maxLoras of at least 2 (the stable and the candidate adapter are served together)"
SHARED_GUARD_MESSAGE = "serving.guard is not supported with serving.mode sharedBase (the guard checks one ModelVersion's contract per pod)"
SHARED_METRICS_MESSAGE = (
    f"serving.mode sharedBase measures each adapter from the traffic layer's per-model metrics, which have only the built-ins "
    f"{', '.join(SHARED_BASE_METRICS)} (no time to first token, aborts or guard verdicts by adapter); use a custom query for others")


class RolloutSpec(ApiModel):
    """Desired serving state."""

    served_model_name: str = Field(min_length=1, description="Model name clients send (vLLM --served-model-name); never changes between versions.")
    stable: ObjectRef | None = Field(default=None, description="ModelVersion serving now; empty for the first rollout.")
    candidate: ObjectRef | None = Field(
        default=None,
        description=(
            "ModelVersion to roll out (a FineTuneSchedule's handOff sets it). With neither stable nor candidate the Rollout "
            "serves nothing and waits (phase Waiting) for its first version here."
        ),
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="vLLM settings.")
    traffic_routing: TrafficRouting = Field(description="How traffic is split.")
    steps: list[Step] = Field(default_factory=list, max_length=64, description="Canary steps, in order.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Prometheus analysis settings.")
    promote: bool = Field(default=False, description="Set true to promote the candidate now, skipping the remaining steps.")
    abort: bool = Field(default=False, description="Set true to send all traffic back to stable and mark the candidate RolledBack.")
    progress_deadline_seconds: int = Field(
        default=600,
        ge=1,
        le=86400,
        description=(
            "A canary with traffic whose measurements have returned no data for this long (since its last weight change or "
            "its last measured value) is rolled back with reason ProgressDeadlineExceeded, also while paused."
        ),
    )
    scale_down_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description=(
            "Seconds the canary Deployment keeps its pods after its traffic was removed (rollback, abort, promotion) before it "
            "is scaled to 0, so that gateways can catch up (Gateway API routing only)."
        ),
    )
    allow_unevaluated_candidate: bool = Field(
        default=False,
        description="Roll out a candidate ModelVersion that was never evaluated (spec.evaluation.verdict NotEvaluated or absent).",
    )
    drift_watch: DriftWatchSpec = Field(
        default_factory=DriftWatchSpec, description="Drift and degradation watch of the serving version after a promotion."
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("!(self.promote && self.abort)", "promote and abort cannot both be set"),
                cel(f"({_SHARED}) == has(self.trafficRouting.inferenceModelRewrite)", SHARED_ROUTING_MESSAGE),
                cel(f"!({_SHARED}) || !has(self.serving.maxLoras) || self.serving.maxLoras >= 2", SHARED_MAX_LORAS_MESSAGE),
                cel(f"!({_SHARED}) || !has(self.serving.guard)", SHARED_GUARD_MESSAGE),
                cel(f"!({_SHARED}) || !has(self.analysis.metrics) || self.analysis.metrics.all(m, !has(m.builtin) || m.builtin in "
                    f"{list(SHARED_BASE_METRICS)})", SHARED_METRICS_MESSAGE),
                cel(f"!({_MIRRORS}) || (has(self.serving) && has(self.serving.guard))", MIRROR_GUARD_MESSAGE),
                cel(f"!({_MIRRORS}) || has(self.trafficRouting.gatewayAPI)", MIRROR_ROUTING_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _refs(self) -> RolloutSpec:
        if self.promote and self.abort:
            raise ValueError("promote and abort cannot both be set")
        for problem in shared_base_problems(self) + mirror_problems(self):
            raise ValueError(problem)
        names = {m.name for m in self.analysis.metrics}
        for i, step in enumerate(self.steps):
            unknown = set(step.analysis.metrics) - names if step.analysis else set()
            if unknown:
                raise ValueError(f"steps[{i}].analysis.metrics names unknown metrics: {sorted(unknown)}")
            if step.analysis and not self.analysis.metrics:
                raise ValueError(f"steps[{i}] is an analysis step but analysis.metrics is empty")
            if step.analysis and not step.analysis.metrics and all(m.shadow for m in self.analysis.metrics):
                raise ValueError(f"steps[{i}] is an analysis step but analysis.metrics has only shadow-* built-ins, which only a "
                                 "mirror step measures: add a metric of the live traffic or name the step's metrics")
        return self


def mirror_problems(spec: RolloutSpec) -> list[str]:
    """What a RolloutSpec with mirror steps cannot do (the CEL rules' pydantic twins, and the metric names); [] otherwise."""
    mirrors = [(i, s.mirror) for i, s in enumerate(spec.steps) if s.mirror is not None]
    if not mirrors:
        return []
    out = []
    if spec.serving.guard is None:
        out.append(MIRROR_GUARD_MESSAGE)
    if spec.traffic_routing.gateway_api is None:
        out.append(MIRROR_ROUTING_MESSAGE)
    names = {m.name for m in spec.analysis.metrics}
    for i, mirror in mirrors:
        unknown = set(mirror.metrics) - names
        if unknown:
            out.append(f"steps[{i}].mirror.metrics names unknown metrics: {sorted(unknown)}")
        elif not mirror.metrics and not any(m.shadow for m in spec.analysis.metrics):
            out.append(f"steps[{i}] is a mirror step with nothing to judge: name its metrics (mirror.metrics) or add a "
                       f"shadow-* built-in to analysis.metrics ({', '.join(SHADOW_METRICS)})")
    return out


def shared_base_problems(spec: RolloutSpec) -> list[str]:
    """What a sharedBase RolloutSpec cannot do (the pydantic twin of the CEL rules above); [] otherwise."""
    shared = spec.serving.mode == ServingMode.SHARED_BASE.value
    out = []
    if shared != (spec.traffic_routing.inference_model_rewrite is not None):
        out.append(SHARED_ROUTING_MESSAGE)
    if not shared:
        return out
    if spec.serving.max_loras < 2:
        out.append(SHARED_MAX_LORAS_MESSAGE)
    if spec.serving.guard is not None:
        out.append(SHARED_GUARD_MESSAGE)
    bad = sorted({str(getattr(m.builtin, "value", m.builtin)) for m in spec.analysis.metrics
                  if m.builtin is not None and str(getattr(m.builtin, "value", m.builtin)) not in SHARED_BASE_METRICS})
    if bad:
        out.append(f"{SHARED_METRICS_MESSAGE}; not available: {', '.join(bad)}")
    return out


class RolloutPhase(str, Enum):
    WAITING = "Waiting"  # no stable and no candidate: nothing to serve yet, nothing created
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"
    ABORTED = "Aborted"


class MeasurementPhase(str, Enum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class Measurement(ApiModel):
    """One analysis measurement."""

    metric: str = Field(description="Analysis metric name.")
    phase: MeasurementPhase = Field(description="Successful, Failed, Inconclusive or Error.")
    value: float | None = Field(default=None, description="Canary value (absent when no data or error).")
    stable_value: float | None = Field(default=None, description="Stable value, for relative thresholds.")
    message: str = Field(default="", description="Why this phase.")
    step_index: int | None = Field(default=None, description="Step the measurement belongs to.")
    at: datetime | None = Field(default=None, description="When it was taken.")


class MetricResult(ApiModel):
    """Running totals of one analysis metric in the current analysis step (as Argo Rollouts' MetricResult)."""

    metric: str = Field(description="Analysis metric name.")
    phase: str = Field(default="Running", description="Running, Successful, Failed, Inconclusive or Error.")
    count: int = Field(default=0, ge=0, description="Measurements taken that count toward analysis.count (errors do not).")
    successful: int = Field(default=0, ge=0, description="Successful measurements.")
    failed: int = Field(default=0, ge=0, description="Failed measurements.")
    inconclusive: int = Field(default=0, ge=0, description="Inconclusive measurements.")
    error: int = Field(default=0, ge=0, description="Measurements that could not be taken.")
    consecutive_error: int = Field(default=0, ge=0, description="Errors since the last measurement that could be taken.")


class DriftSignalState(str, Enum):
    OK = "OK"
    DRIFTED = "Drifted"
    DEGRADED = "Degraded"
    INSUFFICIENT_DATA = "InsufficientData"
    NO_BASELINE = "NoBaseline"
    NOT_COMPARABLE = "NotComparable"  # PSI: the train and served histograms share fewer than two buckets
    ERROR = "Error"


class DriftSignal(ApiModel):
    """One signal of the latest drift-watch comparison."""

    signal: str = Field(description="prompt_tokens, generation_tokens (PSI vs the train split), error_rate (increase since promotion) or e2e_latency_p95 (ratio to promotion).")
    state: DriftSignalState = Field(description="OK, Drifted, Degraded, InsufficientData, NoBaseline, NotComparable or Error.")
    value: float | None = Field(default=None, description="The statistic (absent without a verdict).")
    threshold: float | None = Field(default=None, description="Its limit from spec.driftWatch.")
    samples: int | None = Field(default=None, ge=0, description="Requests in the window.")
    message: str = Field(default="", description="Why this state.")


class DriftStatus(ApiModel):
    """The drift watch of the serving version."""

    model_version: str = Field(description="The serving ModelVersion watched.")
    since: datetime | None = Field(default=None, description="When the watch of this version began (its promotion, as seen by the operator).")
    baseline_error_rate: float | None = Field(default=None, description="5xx rate of this version at promotion.")
    baseline_latency_p95: float | None = Field(default=None, description="p95 end-to-end latency (s) of this version at promotion.")
    baseline_recorded_at: datetime | None = Field(default=None, description="When the values at promotion were recorded.")
    checked_at: datetime | None = Field(default=None, description="When the latest comparison ran.")
    signals: list[DriftSignal] = Field(default_factory=list, max_length=8, description="The latest comparison, per signal.")


class RolloutStatus(ApiModel):
    """Observed state of a Rollout."""

    # the reconciler assigns enum members (typed); validation stores their wire value, as use_enum_values does
    model_config = ApiModel.model_config | {"validate_assignment": True}

    phase: RolloutPhase = Field(default=RolloutPhase.PROGRESSING, description="Waiting (no version to serve yet), Progressing, Paused, Promoted, RolledBack, Degraded or Aborted.")
    current_step_index: int | None = Field(default=None, ge=0, description="Index of the step being run.")
    canary_weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic on the candidate.")
    stable_model_version: str | None = Field(default=None, description="ModelVersion serving the stable share.")
    candidate_model_version: str | None = Field(default=None, description="ModelVersion being rolled out.")
    candidate_since: datetime | None = Field(
        default=None, description="When the rollout of candidateModelVersion began (serving pods that failed before it are not its failures)."
    )
    step_started_at: datetime | None = Field(default=None, description="When the current step began.")
    waiting_for: str | None = Field(default=None, description="Why the Rollout is waiting, if it is.")
    measurements: list[Measurement] = Field(default_factory=list, max_length=100, description="The latest measurements (bounded).")
    metric_results: list[MetricResult] = Field(
        default_factory=list, max_length=32, description="Per-metric totals of the current step (its analysis, or background analysis)."
    )
    step: str | None = Field(default=None, description="The current step as N/TOTAL (1-based), for kubectl get.")
    weights: str | None = Field(default=None, description="The traffic split, e.g. `v1=90 v2=10` (ModelVersion=percent), for kubectl get.")
    weight_changed_at: datetime | None = Field(default=None, description="When the canary weight last changed.")
    canary_data_at: datetime | None = Field(default=None, description="When a measurement last got a value from the canary.")
    canary_unready_since: datetime | None = Field(
        default=None,
        description="Since when the weighted canary has had fewer available pods than its weight needs (its measurements wait; "
        "after progressDeadlineSeconds it is rolled back). Empty while its pods serve.",
    )
    canary_scale_down_at: datetime | None = Field(
        default=None, description="When the canary Deployment may be scaled to 0 (scaleDownDelaySeconds after its traffic was removed)."
    )
    drift: DriftStatus | None = Field(default=None, description="Drift and degradation watch of the serving version (spec.driftWatch).")
    experiment: ExperimentStatus | None = Field(default=None, description="The A/B experiment of the current (or last) experiment step.")
    mirror: MirrorStatus | None = Field(default=None, description="The mirror (shadow traffic) of the current (or last) mirror step.")
    conditions: list[Condition] = Field(default_factory=list, max_length=32, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    message: str | None = Field(default=None, description="Human-readable summary.")


class Rollout(ApiModel):
    """Serve ModelVersions and shift traffic to a candidate with automatic promotion or rollback."""

    api_version: Literal["tuneloop.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Rollout"] = "Rollout"
    metadata: ObjectMeta
    spec: RolloutSpec
    status: RolloutStatus | None = None
