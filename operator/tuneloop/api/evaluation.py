"""Evaluation settings of a FineTuneJob and the evaluation record of a ModelVersion."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from .common import ApiModel, cel


# --- the metric registry: everything about a metric in one entry ----------------------------------
@dataclass(frozen=True)
class MetricInfo:
    """One evaluation metric. Adding a metric is one `MetricInfo` here (plus its scorer function).

    name        the record's row name (camelCase); `selectable` ones are MetricName values (the CRD enum:
                evaluation.metrics and gates)
    label       how the report names it
    lower_is_better  direction (gates, the report's better/worse, the tuned-vs-base gain)
    fraction    a 0–1 score: shown as %, drawn in the grouped bar chart, changes in percentage points
    unit, decimals   how other values are shown ("s" → "0.42 s"); no unit: 3 significant decimals
    scorer      "module:function" that scores one model's task outputs (tuneloop_trainer.evaluation.metrics.Task)
                and returns a float, None (nothing to score) or eval_metrics.SKIP (not applicable: no row);
                None when the evaluate stage measures it itself (forgetting, latency, throughput)
    chart       position in the report's metrics figure (None: not drawn); chart_label names a side panel
    comparison  position in the report's comparison sentence (None: not mentioned)
    headline    preference as the report's ROI headline (None: never the headline)
    """

    name: str
    label: str
    lower_is_better: bool = False
    fraction: bool = False
    unit: str = ""
    decimals: int = 3
    selectable: bool = True
    scorer: str | None = None
    chart: int | None = None
    chart_label: str | None = None
    comparison: int | None = None
    headline: int | None = None


METRICS: dict[str, MetricInfo] = {}


def register(info: MetricInfo) -> MetricInfo:
    """Add (or replace) a metric. Selectable metrics must be registered here, at import (they are the CRD enum)."""
    METRICS[info.name] = info
    return info


def metric_info(name: str) -> MetricInfo:
    """The registered metric, or a neutral stand-in (higher is better, plain number) for an unknown name."""
    return METRICS.get(name) or MetricInfo(name=name, label=name, selectable=False)


_SCORERS = "tuneloop_trainer.evaluation.metrics"
for _info in (
    MetricInfo("perplexity", "Perplexity on references", lower_is_better=True, scorer=f"{_SCORERS}:score_perplexity",
               chart=100, chart_label="perplexity (lower is better)", comparison=4),
    MetricInfo("rougeL", "ROUGE-L F1", fraction=True, scorer=f"{_SCORERS}:score_rouge_l", chart=6, comparison=3, headline=6),
    MetricInfo("bleu", "BLEU (0–1)", fraction=True, scorer=f"{_SCORERS}:score_bleu", chart=7),
    MetricInfo("exactMatch", "Exact match", fraction=True, scorer=f"{_SCORERS}:score_exact_match", chart=1, headline=2),
    MetricInfo("jsonValid", "Valid JSON", fraction=True, scorer=f"{_SCORERS}:score_json_valid", chart=2, comparison=1, headline=5),
    MetricInfo("schemaCompliance", "Schema compliance", fraction=True, scorer=f"{_SCORERS}:score_schema_compliance", chart=3,
               comparison=2, headline=4),
    MetricInfo("fieldAccuracy", "Field accuracy", fraction=True, scorer=f"{_SCORERS}:score_field_accuracy", chart=4, headline=3),
    MetricInfo("forgettingAccuracy", "Forgetting-set accuracy", fraction=True, chart=8),
    # Rows the record carries when measured, not selectable (no gates on them):
    MetricInfo("allFieldsExact", "All fields right", fraction=True, selectable=False, scorer=f"{_SCORERS}:score_all_fields_exact",
               chart=5, headline=1),
    MetricInfo("latencySeconds", "Mean batch latency", lower_is_better=True, unit="s", decimals=2, selectable=False),
    MetricInfo("tokensPerSecond", "Generation throughput", unit="tok/s", decimals=1, selectable=False, chart=101,
               chart_label="generation tokens/s"),
):
    register(_info)

# The selectable metrics, in registry order: evaluation.metrics and gates accept exactly these
# (members as before: MetricName.ROUGE_L == "rougeL"). Built from the registry, so a type checker knows no members:
# typed code names one by its value, MetricName("rougeL").
MetricName = Enum("MetricName", {re.sub(r"(?<!^)(?=[A-Z])", "_", i.name).upper(): i.name for i in METRICS.values() if i.selectable},  # type: ignore[misc]
                  type=str, module=__name__)

# Lower is better for these (at import; use metric_info(name).lower_is_better for metrics registered later).
LOWER_IS_BETTER = {i.name for i in METRICS.values() if i.lower_is_better and i.selectable}


class GateReference(str, Enum):
    """What a gate compares the tuned model with, on the same test items."""

    BASE = "base"
    MAJORITY = "majority"
    SERVING = "serving"


class Gate(ApiModel):
    """A promotion gate on one metric: the tuned model against a named reference (default the base model),
    on the point estimate or, with confidenceBound, on the 95 % confidence bound."""

    metric: MetricName = Field(description="Metric the gate reads.")
    reference: GateReference = Field(
        default=GateReference.BASE,
        description="What minImprovement/maxRegression compare with: base (the base model), majority (the per-field majority "
        "answer of the train split, or its most common answer), or serving (the ModelVersion currently serving the same "
        "modelName, from evaluation.serving; champion/challenger).",
    )
    confidence_bound: bool = Field(
        default=False,
        description="Decide on the 95 % confidence bound instead of the point estimate: the lower bound of the improvement "
        "(paired by test item) for minImprovement/maxRegression, the lower bound of the tuned score (upper, when lower is "
        "better) for minValue.",
    )
    min_improvement: float | None = Field(
        default=None, description="Tuned must beat the reference by at least this much (absolute, in the metric's direction; 0.02 = 2 pp)."
    )
    max_regression: float | None = Field(
        default=None, ge=0, description="Tuned may be worse than the reference by at most this much (absolute)."
    )
    min_value: float | None = Field(default=None, description="Tuned must reach at least this value (at most, for perplexity).")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.minImprovement) || has(self.maxRegression) || has(self.minValue)",
                    "a gate needs minImprovement, maxRegression or minValue",
                )
            ]
        }
    }

    @model_validator(mode="after")
    def _some_bound(self) -> Gate:
        if self.min_improvement is None and self.max_regression is None and self.min_value is None:
            raise ValueError("a gate needs minImprovement, maxRegression or minValue")
        return self


class ServingReference(ApiModel):
    """The ModelVersion currently serving the same modelName (the champion), as evaluated on the same test set."""

    model_version: str | None = Field(default=None, description="Name of the serving ModelVersion (recorded in the verdict).")
    eval_json: str = Field(
        min_length=1,
        description="Its eval.json (next to its artifact). Its per-item scores are paired with this run's by test item "
        "(prompt and reference); items it did not score make the comparison not comparable.",
    )


class ForgettingCheck(ApiModel):
    """Catastrophic-forgetting check on a general-knowledge / instruction-following set."""

    enabled: bool = Field(default=True, description="Score base and tuned on the regression set.")
    path: str | None = Field(default=None, description="A JSONL set of {prompt, answers}; defaults to the set shipped with the trainer.")
    max_regression: float = Field(default=0.1, ge=0, le=1, description="Largest allowed drop in accuracy (forgetting budget).")


class EvaluationSpec(ApiModel):
    """How the tuned model is compared with its base on held-out data."""

    enabled: bool = Field(default=True, description="Run the evaluation stage.")
    split: Literal["test", "validation"] = Field(
        default="test",
        description="The held-out split scored: test (the verdict), or validation (a FineTuneSweep's trials: the search "
        "compares them there, so that the test split stays untouched until the best trial's final verdict).",
    )
    metrics: list[MetricName] = Field(
        default_factory=lambda: [
            MetricName("perplexity"),
            MetricName("rougeL"),
            MetricName("bleu"),
            MetricName("exactMatch"),
            MetricName("jsonValid"),
        ],
        max_length=16,
        description="Metrics computed for base and tuned.",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema the answers must follow; enables schemaCompliance and fieldAccuracy.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    baseline: bool = Field(default=True, description="Also evaluate the base model for comparison.")
    max_samples: int | None = Field(default=None, ge=1, description="Evaluate at most this many test records.")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="Generation length limit.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Prompts generated together.")
    decoding: Literal["greedy", "sample"] = Field(default="greedy", description="Decoding strategy.")
    backend: Literal["auto", "vllm", "transformers"] = Field(
        default="auto",
        description=(
            "What generates the answers: auto (vLLM's OpenAI server when the evaluation image or machine has vLLM and it "
            "can serve the models, else transformers), vllm (required: the stage fails without it) or transformers. "
            "TUNELOOP_EVAL_BACKEND, when set where the stage runs, overrides it. eval.json and the report say which ran and why."
        ),
    )
    gates: list[Gate] = Field(default_factory=list, max_length=32, description="Gates that decide the verdict.")
    forgetting: ForgettingCheck = Field(default_factory=ForgettingCheck, description="Catastrophic-forgetting check.")
    baselines: bool = Field(
        default=True,
        description="Score the trivial baselines on the same test items: majority (per-field majority answer of the train "
        "split, or its most common answer) and, for free-text answers, copyPrompt.",
    )
    serving: ServingReference | None = Field(
        default=None, description="The serving ModelVersion to compare with (champion/challenger; gates with reference: serving)."
    )
    sample_prompts: list[str] = Field(
        default_factory=list, max_length=32, description="Extra prompts answered by base and tuned in the report."
    )


class Verdict(str, Enum):
    PASSED = "Passed"
    FAILED = "Failed"
    NOT_EVALUATED = "NotEvaluated"


class Interval(ApiModel):
    """A 95 % confidence interval."""

    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound.")


class ComparisonOutcome(str, Enum):
    BETTER = "Better"
    WORSE = "Worse"
    NO_SIGNIFICANT_DIFFERENCE = "NoSignificantDifference"
    NOT_COMPARABLE = "NotComparable"


class SignificanceTest(str, Enum):
    """The paired two-sided test that decides Better/Worse, at level 1 − confidenceLevel (0.05)."""

    MCNEMAR_EXACT = "McNemarExact"  # binary per-item outcomes: exact binomial test on the discordant items
    PAIRED_SIGN_FLIP = "PairedSignFlip"  # any other metric: permutation test swapping the two models' scores per item


class ReferenceScore(ApiModel):
    """One metric of one reference (base, majority, copyPrompt, serving) and the tuned model's paired difference."""

    reference: str = Field(description="base, majority, copyPrompt or serving.")
    value: float | None = Field(default=None, description="The reference's score on the same test items.")
    interval: Interval | None = Field(default=None, description="95 % interval of the reference's score.")
    difference: float | None = Field(default=None, description="tuned − reference.")
    difference_interval: Interval | None = Field(
        default=None, description="95 % interval of tuned − reference, paired by test item: exact conditional (consistent with "
        "McNemar's test) for binary per-item outcomes, else bootstrap (fixed seed)."
    )
    mcnemar_p_value: float | None = Field(default=None, description="McNemar's exact test p-value (binary per-item outcomes only).")
    test: SignificanceTest | None = Field(
        default=None, description="The paired test that decided the outcome: McNemarExact (binary per-item outcomes) or PairedSignFlip."
    )
    p_value: float | None = Field(default=None, description="Its two-sided p-value (absent when a per-item score is not a finite number).")
    outcome: ComparisonOutcome | None = Field(
        default=None,
        description="Better/Worse when the paired test's p-value is at most 1 − confidenceLevel (in the direction of the difference, "
        "for the metric), else NoSignificantDifference; absent when there is no paired test.",
    )


class MetricComparison(ApiModel):
    """One metric for the tuned model and its references."""

    name: str = Field(description="Metric name.")
    base: float | None = Field(default=None, description="Base model's score.")
    tuned: float | None = Field(default=None, description="Fine-tuned model's score.")
    delta: float | None = Field(default=None, description="tuned - base.")
    tuned_interval: Interval | None = Field(default=None, description="95 % interval of the tuned score (none for timings).")
    references: list[ReferenceScore] = Field(
        default_factory=list, max_length=8, description="The same metric for base, majority, copyPrompt and serving, with paired differences."
    )


class GateResult(ApiModel):
    """Outcome of one gate."""

    metric: str = Field(description="Metric the gate read.")
    passed: bool = Field(description="Whether the gate held.")
    reason: str = Field(description="Why, with the numbers.")
    reference: str | None = Field(default=None, description="What the gate compared with (base, majority, serving).")
    confidence_bound: bool | None = Field(default=None, description="Whether it decided on the 95 % bound.")


class ServingComparison(ApiModel):
    """Champion/challenger: the tuned model against the serving ModelVersion, paired by test item."""

    model_version: str | None = Field(default=None, description="The serving ModelVersion compared with.")
    outcome: ComparisonOutcome = Field(description="Better, Worse, NoSignificantDifference or NotComparable, on `metric`.")
    metric: str | None = Field(default=None, description="The metric that decided (the first gated or headline quality metric).")
    test: SignificanceTest | None = Field(default=None, description="The paired test that decided: McNemarExact or PairedSignFlip.")
    p_value: float | None = Field(default=None, description="Its two-sided p-value; Better/Worse needs at most 1 − confidenceLevel.")
    reason: str = Field(default="", description="Why, with the numbers.")


class TopicProfileRecord(ApiModel):
    """The topic profile the evaluation built from the training prompts (DIR/topic-profile.json, the output guard's topic
    rule): its calibration and how it scored the test split."""

    method: str = Field(description="How prompts are compared (TF-IDF character n-grams, nearest-neighbour cosine similarity).")
    train_prompts: int = Field(ge=0, description="Distinct in-topic training prompts in the profile.")
    calibration: Literal["validation", "train-leave-one-out"] = Field(
        description="What the threshold was calibrated on: the validation split's in-topic prompts, or (too few) each training prompt against the others.")
    calibration_prompts: int = Field(ge=0, description="Prompts the threshold was calibrated on.")
    pass_rate: float = Field(gt=0, le=1, description="Share of the calibration prompts that pass at the threshold (asked for).")
    threshold: float = Field(description="The similarity at or above which a request is on topic.")
    test_pass_rate: float | None = Field(default=None, ge=0, le=1, description="Share of the test split's in-topic prompts that pass.")
    test_prompts: int | None = Field(default=None, ge=0, description="The test split's in-topic prompts it was measured on.")


class EvaluationRecord(ApiModel):
    """What the evaluation measured and decided."""

    metrics: list[MetricComparison] = Field(default_factory=list, max_length=64, description="Tuned vs references per metric.")
    verdict: Verdict = Field(default=Verdict.NOT_EVALUATED, description="Passed, Failed or NotEvaluated.")
    gates: list[GateResult] = Field(default_factory=list, max_length=64, description="Each gate's outcome.")
    test_examples: int | None = Field(default=None, ge=0, description="Held-out records evaluated.")
    split: Literal["test", "validation"] | None = Field(default=None, description="The split they came from (absent: test).")
    confidence_level: float | None = Field(default=None, description="Confidence level of every interval (0.95).")
    interval_method: str | None = Field(default=None, description="How intervals were computed.")
    serving: ServingComparison | None = Field(default=None, description="The comparison with the serving ModelVersion, when one was given.")
    topic_profile: TopicProfileRecord | None = Field(
        default=None, description="The topic profile built from the training prompts (the output guard's topic rule), when one was built.")
