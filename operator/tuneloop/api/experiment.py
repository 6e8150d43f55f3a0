"""The A/B experiment step of a Rollout, its status, and its result on the candidate's ModelVersion (issue 23, item 5).

An experiment holds a fixed traffic split and compares the candidate with the stable version on an online quality
metric, one number per arm: a proportion (successes out of trials: positive feedback, valid answers) or a mean
(count, sum and sum of squares of a score). The statistics are `tuneloop.operator.analysis.experiment`; the
decision rule is documented in docs/rollout.md ("A/B experiment step").
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field, model_validator

from .common import ApiModel, OneOf, cel
from .durations import DURATION, parse_duration

MIN_EXPERIMENT_DURATION = "1s"
DEFAULT_MIN_SAMPLES = 10  # per arm, when the step sets only a duration (a mean's variance needs 2; 10 keeps the t-interval honest)
NEEDS_AN_END = "an experiment needs duration or minSamples"
DURATION_FLOOR = f"experiment duration must be at least {MIN_EXPERIMENT_DURATION}"
QUERY_MAX = 4096
QUERY_HELP = (
    "PromQL template, evaluated once per arm: {{selector}} (the label matchers of the arm's pods and version), {{modelVersion}} "
    "(the arm's ModelVersion), {{role}} (canary or stable), {{namespace}}, {{rollout}} and {{window}} (the time since the "
    "experiment began: write `increase(COUNTER[{{window}}])`) are substituted; the result is one number."
)


class ExperimentBuiltin(str, Enum):
    # the output guard's answers that follow the output contract, out of all its answers (needs serving.guard)
    CONTRACT_VALIDITY = "contract-validity"


class ProportionQueries(ApiModel):
    """A share per arm: successes out of trials since the experiment began (e.g. thumbs-up out of all votes)."""

    successes: str = Field(min_length=1, max_length=QUERY_MAX, description="Successes of the arm. " + QUERY_HELP)
    trials: str = Field(min_length=1, max_length=QUERY_MAX, description="Trials of the arm (successes are a part of them). " + QUERY_HELP)


class MeanQueries(ApiModel):
    """A mean per arm from three sums over the observations since the experiment began (e.g. a 1–5 rating). Prometheus
    histograms and summaries carry `_count` and `_sum` but no second moment: export the sum of squared scores as a
    counter of its own (bucket midpoints would bias the variance, and with it the interval)."""

    count: str = Field(min_length=1, max_length=QUERY_MAX, description="Number of observations of the arm. " + QUERY_HELP)
    sum: str = Field(min_length=1, max_length=QUERY_MAX, description="Sum of the observed values. " + QUERY_HELP)
    sum_of_squares: str = Field(min_length=1, max_length=QUERY_MAX, description="Sum of the squared observed values. " + QUERY_HELP)


class ExperimentMetric(OneOf):
    """What the experiment compares: exactly one of builtin, proportion, mean."""

    one_of = ("builtin", "proportion", "mean")
    one_of_what = "an experiment metric"

    name: str = Field(min_length=1, max_length=63, description="Metric name in status, events and the ModelVersion.")
    builtin: ExperimentBuiltin | None = Field(
        default=None, description="contract-validity: the output guard's share of answers that follow the output contract (a proportion; needs serving.guard).")
    proportion: ProportionQueries | None = Field(default=None, description="A share: successes out of trials per arm.")
    mean: MeanQueries | None = Field(default=None, description="A mean score per arm: count, sum and sum of squares.")
    higher_is_better: bool = Field(default=True, description="false for a metric where less is better (complaints, regenerations).")

    @property
    def kind(self) -> str:
        """proportion or mean."""
        return "mean" if self.mean is not None else "proportion"


class ExperimentStep(ApiModel):
    """Hold a fixed split and compare candidate and stable on an online quality metric with a two-sample test; the
    candidate continues when it is better by at least minimumEffect, is rolled back when it is significantly worse,
    and the Rollout pauses for a human when the end comes without a decision."""

    split: int = Field(ge=1, le=99, description="Percent of traffic for the candidate, held for the whole experiment.")
    duration: str | None = Field(
        default=None, pattern=DURATION,
        description=(
            "How long the split is held at most (e.g. 2h, 7d as 168h). Before its end a decision needs overwhelming "
            "evidence (a 99.9 % interval: Haybittle–Peto), at its end the interval at `confidence`; no decision at the "
            f"end pauses the Rollout for a human. At least {MIN_EXPERIMENT_DURATION}."
        ),
    )
    min_samples: int | None = Field(
        default=None, ge=1,
        description=(
            "Trials (or observations) each arm must have before any decision. Without duration the experiment decides at "
            f"the first measurement where both arms have them (one look, at `confidence`). Default {DEFAULT_MIN_SAMPLES}."
        ),
    )
    metric: ExperimentMetric = Field(description="What is compared.")
    minimum_effect: float = Field(
        default=0.0, ge=0,
        description="The smallest improvement worth shipping, in the metric's units (0.02: two percentage points of a share; 0.1 points of a mean score).",
    )
    confidence: float = Field(default=0.95, ge=0.5, le=0.999, description="Confidence of the interval the final decision reads.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("has(self.duration) || has(self.minSamples)", NEEDS_AN_END),
                cel(f"!has(self.duration) || duration(self.duration) >= duration('{MIN_EXPERIMENT_DURATION}')", DURATION_FLOOR),
            ]
        }
    }

    @model_validator(mode="after")
    def _shape(self) -> ExperimentStep:
        """The pydantic twin of the CEL rules above (tests/unit/api/test_cel_twins.py keeps them in agreement)."""
        if self.duration is None and self.min_samples is None:
            raise ValueError(NEEDS_AN_END)
        if self.duration is not None and parse_duration(self.duration) < parse_duration(MIN_EXPERIMENT_DURATION):
            raise ValueError(f"{DURATION_FLOOR}; got {self.duration}")
        return self

    @property
    def samples_needed(self) -> int:
        return self.min_samples if self.min_samples is not None else DEFAULT_MIN_SAMPLES


class ExperimentDecision(str, Enum):
    COLLECTING = "Collecting"  # an arm has fewer than minSamples: no decision, whatever the numbers say
    RUNNING = "Running"  # enough samples, no decision yet (the interval does not decide before the end)
    BETTER = "Better"  # candidate better by at least minimumEffect, the interval excludes no improvement: next step
    WORSE = "Worse"  # the interval lies below 0: significantly worse, rolled back
    INCONCLUSIVE = "Inconclusive"  # the end came without a decision: paused for a human
    ERROR = "Error"  # the metrics provider gave no answer


FINAL_DECISIONS = (ExperimentDecision.BETTER.value, ExperimentDecision.WORSE.value, ExperimentDecision.INCONCLUSIVE.value)


class ArmSample(ApiModel):
    """One arm's counts since the experiment began, as the metrics provider answered them."""

    samples: float = Field(ge=0, description="Trials (proportion) or observations (mean).")
    successes: float | None = Field(default=None, ge=0, description="Successes (proportion).")
    sum: float | None = Field(default=None, description="Sum of the values (mean).")
    sum_of_squares: float | None = Field(default=None, ge=0, description="Sum of the squared values (mean).")
    estimate: float | None = Field(default=None, description="The arm's share or mean (absent without samples).")


class ExperimentMeasurement(ApiModel):
    """One look at the experiment."""

    at: datetime = Field(description="When it was taken.")
    candidate: ArmSample | None = Field(default=None, description="The candidate's counts (absent on an error).")
    stable: ArmSample | None = Field(default=None, description="The stable's counts (absent on an error).")
    effect: float | None = Field(default=None, description="Candidate minus stable, signed so that positive is better.")
    low: float | None = Field(default=None, description="Lower bound of the effect's interval.")
    high: float | None = Field(default=None, description="Upper bound of the effect's interval.")
    level: float | None = Field(default=None, description="Confidence of that interval (0.999 before the end of the duration).")
    decision: ExperimentDecision = Field(description="Collecting, Running, Better, Worse, Inconclusive or Error.")
    message: str = Field(default="", description="Why.")


class ExperimentStatus(ApiModel):
    """The experiment of the current (or last) experiment step."""

    step_index: int = Field(ge=0, description="The experiment step (0-based).")
    metric: str = Field(description="The experiment metric's name.")
    candidate_model_version: str = Field(description="The candidate compared.")
    stable_model_version: str | None = Field(default=None, description="The stable compared.")
    started_at: datetime = Field(description="When the split took effect: every count is since then.")
    ends_at: datetime | None = Field(default=None, description="The end of the duration (absent without one).")
    decision: ExperimentDecision = Field(default=ExperimentDecision.COLLECTING, description="The latest decision.")
    decided_at: datetime | None = Field(default=None, description="When a final decision (Better, Worse, Inconclusive) was taken.")
    consecutive_errors: int = Field(default=0, ge=0, description="Looks in a row the provider could not answer.")
    measurements: list[ExperimentMeasurement] = Field(default_factory=list, max_length=20, description="The latest looks (bounded).")
    message: str = Field(default="", description="The latest look, in words.")


class ArmResult(ApiModel):
    """One arm of a decided experiment."""

    model_version: str | None = Field(default=None, description="The ModelVersion of the arm.")
    samples: float = Field(ge=0, description="Trials or observations.")
    estimate: float | None = Field(default=None, description="Its share or mean.")


class ExperimentResult(ApiModel):
    """The outcome of a Rollout's A/B experiment, on the candidate's ModelVersion (status.rollout names the Rollout;
    `kubectl tuneloop report` prints it)."""

    step: int = Field(ge=1, description="Its step (1-based).")
    metric: str = Field(description="The experiment metric's name.")
    kind: str = Field(description="proportion or mean.")
    higher_is_better: bool = Field(default=True, description="Whether more is better.")
    split: int = Field(ge=0, le=100, description="Percent of traffic the candidate had.")
    started_at: datetime = Field(description="When the split took effect.")
    decided_at: datetime = Field(description="When the decision was taken.")
    candidate: ArmResult = Field(description="The candidate arm.")
    stable: ArmResult = Field(description="The stable arm.")
    effect: float | None = Field(default=None, description="Candidate minus stable, signed so that positive is better.")
    low: float | None = Field(default=None, description="Lower bound of the effect's interval.")
    high: float | None = Field(default=None, description="Upper bound of the effect's interval.")
    level: float | None = Field(default=None, description="Confidence of that interval.")
    minimum_effect: float = Field(default=0.0, description="The step's minimumEffect.")
    test: str = Field(default="", description="The two-sample method (Newcombe hybrid score interval, Welch t-interval).")
    decision: ExperimentDecision = Field(description="Better, Worse or Inconclusive.")
    message: str = Field(default="", description="The decision, in words.")
