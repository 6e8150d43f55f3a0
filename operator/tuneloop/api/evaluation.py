"""Evaluation settings of a FineTuneJob and the evaluation record of a ModelVersion."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from .common import ApiModel, cel


class MetricName(str, Enum):
    PERPLEXITY = "perplexity"
    ROUGE_L = "rougeL"
    BLEU = "bleu"
    EXACT_MATCH = "exactMatch"
    JSON_VALID = "jsonValid"
    SCHEMA_COMPLIANCE = "schemaCompliance"
    FIELD_ACCURACY = "fieldAccuracy"
    FORGETTING_ACCURACY = "forgettingAccuracy"


# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = {MetricName.PERPLEXITY.value}


class Gate(ApiModel):
    """A promotion gate on one metric, tuned versus base."""

    metric: MetricName = Field(description="Metric the gate reads.")
    min_improvement: float | None = Field(
        default=None, description="Tuned must beat base by at least this much (absolute, in the metric's direction)."
    )
    max_regression: float | None = Field(
        default=None, ge=0, description="Tuned may be worse than base by at most this much (absolute)."
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


class ForgettingCheck(ApiModel):
    """Catastrophic-forgetting check on a general-knowledge / instruction-following set."""

    enabled: bool = Field(default=True, description="Score base and tuned on the regression set.")
    path: str | None = Field(default=None, description="A JSONL set of {prompt, answers}; defaults to the set shipped with the trainer.")
    max_regression: float = Field(default=0.1, ge=0, le=1, description="Largest allowed drop in accuracy (forgetting budget).")


class EvaluationSpec(ApiModel):
    """How the tuned model is compared with its base on held-out data."""

    enabled: bool = Field(default=True, description="Run the evaluation stage.")
    metrics: list[MetricName] = Field(
        default_factory=lambda: [
            MetricName.PERPLEXITY,
            MetricName.ROUGE_L,
            MetricName.BLEU,
            MetricName.EXACT_MATCH,
            MetricName.JSON_VALID,
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
    gates: list[Gate] = Field(default_factory=list, max_length=32, description="Gates that decide the verdict.")
    forgetting: ForgettingCheck = Field(default_factory=ForgettingCheck, description="Catastrophic-forgetting check.")
    sample_prompts: list[str] = Field(
        default_factory=list, max_length=32, description="Extra prompts answered by base and tuned in the report."
    )


class Verdict(str, Enum):
    PASSED = "Passed"
    FAILED = "Failed"
    NOT_EVALUATED = "NotEvaluated"


class MetricComparison(ApiModel):
    """One metric for base and tuned."""

    name: str = Field(description="Metric name.")
    base: float | None = Field(default=None, description="Base model's score.")
    tuned: float | None = Field(default=None, description="Fine-tuned model's score.")
    delta: float | None = Field(default=None, description="tuned - base.")


class GateResult(ApiModel):
    """Outcome of one gate."""

    metric: str = Field(description="Metric the gate read.")
    passed: bool = Field(description="Whether the gate held.")
    reason: str = Field(description="Why, with the numbers.")


class EvaluationRecord(ApiModel):
    """What the evaluation measured and decided."""

    metrics: list[MetricComparison] = Field(default_factory=list, max_length=64, description="Base vs tuned per metric.")
    verdict: Verdict = Field(default=Verdict.NOT_EVALUATED, description="Passed, Failed or NotEvaluated.")
    gates: list[GateResult] = Field(default_factory=list, max_length=64, description="Each gate's outcome.")
    test_examples: int | None = Field(default=None, ge=0, description="Held-out records evaluated.")
