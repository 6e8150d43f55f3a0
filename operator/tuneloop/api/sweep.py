"""FineTuneSweep: a hyperparameter search whose objective is the evaluation metric the promotion gate later judges.

Why a resource of its own rather than a `search` block on FineTuneJob: a FineTuneJob is one immutable training run with
one status (one progress, one verdict, one ModelVersion); a search is many runs, a study that outlives any one of them
(the trials' parameters, values and pruning decisions, persisted so an operator restart loses nothing) and a final
verdict on the test split. Kept apart, every trial stays an ordinary FineTuneJob that the existing reconciler runs and
`kubectl get ftj` shows, and the sweep follows the FineTuneSchedule's shape (a `jobTemplate`, child FineTuneJobs with
owner references, an optional hand-off to a Rollout) — see docs/sweep.md.
"""

from __future__ import annotations

import copy
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from .common import API_VERSION, ApiModel, Condition, ObjectMeta, OneOf, cel
from .evaluation import EvaluationSpec, MetricName, metric_info
from .finetunejob import FineTuneJobSpec
from .schedule import FineTuneJobTemplate, HandOff

# What a search may vary: any field under hyperparameters or method.lora of the template (wire names).
PARAM_PATH = r"^(hyperparameters|method\.lora)(\.[a-zA-Z][a-zA-Z0-9]*)+$"
RANGE_MESSAGE = "low must be below high (an empty or inverted range searches nothing)"
LOG_MESSAGE = "a log range must lie above 0 (low > 0): the logarithm of 0 or a negative number does not exist"
LOG_INT_MESSAGE = "a log int range must start at 1 or above (low >= 1)"
LOG_STEP_MESSAGE = "log and step exclude each other (Optuna draws a log range without a step)"
TEST_SPLIT_MESSAGE = ("objective.split must be validation: the trials are compared on the validation split, and the test split "
                      "stays untouched for the best trial's final verdict")
OBJECTIVE_MESSAGE = ("objective.metric must be one the evaluation computes: list it in jobTemplate.spec.evaluation.metrics")
PARALLELISM_MESSAGE = "parallelism must not exceed maxTrials"
GRID_MESSAGE = ("sampler grid enumerates every parameter: each must be categorical, int, or float with a step")
UNIQUE_MESSAGE = "each searchSpace path may appear once"
EVAL_MESSAGE = "jobTemplate.spec.evaluation.enabled must be true: the objective is an evaluation metric"
VERSION_MESSAGE = "jobTemplate.spec.registry.version must be empty: the sweep names its own versions"
VALIDATION_MESSAGE = ("the template has no validation data: set jobTemplate.spec.dataset.split.validation > 0 or "
                      "dataset.validation (the objective is measured on the validation split)")
SCHEMA_MESSAGE = ("objective schemaCompliance or fieldAccuracy needs jobTemplate.spec.evaluation.jsonSchema: without it the "
                  "evaluation does not compute them")
FORGETTING_MESSAGE = ("objective forgettingAccuracy needs jobTemplate.spec.evaluation.forgetting.enabled: without it the "
                      "evaluation does not compute it")


class FloatRange(ApiModel):
    """A float drawn from [low, high]: uniformly, or log-uniformly with `log` (learning rates)."""

    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value.")
    log: bool = Field(default=False, description="Draw log-uniformly (low must be above 0).")
    step: float | None = Field(default=None, gt=0, description="Discretise the range (low, low+step, ...); not with log.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.low < self.high", RANGE_MESSAGE),
                cel("!self.log || self.low > 0.0", LOG_MESSAGE),
                cel("!self.log || !has(self.step)", LOG_STEP_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _range(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(RANGE_MESSAGE)
        if self.log and self.low <= 0:
            raise ValueError(LOG_MESSAGE)
        if self.log and self.step is not None:
            raise ValueError(LOG_STEP_MESSAGE)
        return self


class IntRange(ApiModel):
    """An integer drawn from [low, high] (both included), in steps of `step`, or log-uniformly."""

    low: int = Field(description="Smallest value.")
    high: int = Field(description="Largest value.")
    step: int = Field(default=1, ge=1, description="Distance between candidate values.")
    log: bool = Field(default=False, description="Draw log-uniformly (low must be at least 1; step 1).")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.low < self.high", RANGE_MESSAGE),
                cel("!self.log || self.low >= 1", LOG_INT_MESSAGE),
                cel("!self.log || self.step == 1", LOG_STEP_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _range(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(RANGE_MESSAGE)
        if self.log and self.low < 1:
            raise ValueError(LOG_INT_MESSAGE)
        if self.log and self.step != 1:
            raise ValueError(LOG_STEP_MESSAGE)
        return self


class Choices(ApiModel):
    """One of a list of values (numbers, strings, booleans or lists, e.g. LoRA target modules)."""

    choices: list[Any] = Field(
        min_length=1, max_length=64, description="The candidate values, each as the template's field takes it.",
        json_schema_extra={"items": {"x-kubernetes-preserve-unknown-fields": True}},
    )


class SearchParameter(OneOf):
    """One searched field of the FineTuneJob template: exactly one of float, int, categorical."""

    one_of = ("float", "int", "categorical")
    one_of_what = "a search parameter"

    path: str = Field(
        pattern=PARAM_PATH, max_length=128,
        description="The template field, in wire names under hyperparameters or method.lora (hyperparameters.learningRate, "
        "method.lora.r, hyperparameters.earlyStopping.patience).",
    )
    float_: FloatRange | None = Field(default=None, alias="float", description="A float range.")
    int_: IntRange | None = Field(default=None, alias="int", description="An integer range.")
    categorical: Choices | None = Field(default=None, description="A list of values.")

    def candidates(self) -> list[Any]:
        """Values that bound what the search may try: the range's ends, or every choice."""
        if self.float_ is not None:
            return [self.float_.low, self.float_.high]
        if self.int_ is not None:
            return [self.int_.low, self.int_.high]
        assert self.categorical is not None
        return list(self.categorical.choices)

    def gridded(self) -> bool:
        return self.float_ is None or self.float_.step is not None


class Direction(str, Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class Objective(ApiModel):
    """What the search optimises: an evaluation metric of each trial's tuned model, on the validation split."""

    metric: MetricName = Field(description="An evaluation metric the template computes; its direction comes from the metric "
                               "registry (perplexity is minimised, every score maximised).")
    split: Literal["validation", "test"] = Field(
        default="validation",
        description="Always validation: trials are compared there; test is refused (it stays untouched for the final verdict).",
        json_schema_extra={"x-kubernetes-validations": [cel("self == 'validation'", TEST_SPLIT_MESSAGE)]},
    )

    @model_validator(mode="after")
    def _split(self) -> Objective:
        if self.split != "validation":
            raise ValueError(TEST_SPLIT_MESSAGE)
        return self

    def direction(self) -> Direction:
        return Direction.MINIMIZE if metric_info(str(self.metric)).lower_is_better else Direction.MAXIMIZE


class SamplerType(str, Enum):
    TPE = "tpe"
    RANDOM = "random"
    GRID = "grid"


class Sampler(ApiModel):
    """How the next trial's parameters are chosen (Optuna's samplers, seeded: the same trials ask the same next point)."""

    type: SamplerType = Field(default=SamplerType.TPE, description="tpe (default), random, or grid (every combination, in a seeded order).")
    seed: int = Field(default=0, ge=0, description="Seed; each trial's draw uses the seed and its trial number.")
    startup_trials: int = Field(default=4, ge=1, le=100, description="tpe: trials drawn at random before the model guides the search.")


class PrunerType(str, Enum):
    NONE = "none"
    MEDIAN = "median"
    SUCCESSIVE_HALVING = "successiveHalving"


class Pruner(ApiModel):
    """Stop a trial whose live validation loss (status.progress.evalLoss at its eval steps) falls behind the others."""

    type: PrunerType = Field(default=PrunerType.NONE, description="none, median (behind the median of the other trials at the same "
                             "step) or successiveHalving (outside the best 1/reductionFactor at each rung).")
    warmup_steps: int = Field(default=0, ge=0, description="median: never prune before this training step.")
    startup_trials: int = Field(default=2, ge=1, le=100, description="median: other trials that must have reported at the step.")
    min_resource: int = Field(default=1, ge=1, description="successiveHalving: the first rung, in training steps.")
    reduction_factor: int = Field(default=3, ge=2, le=16, description="successiveHalving: rung k is at minResource × factor^k; "
                                  "the best 1/factor go on.")


_DEFAULT_METRICS = [str(getattr(m, "value", m)) for m in EvaluationSpec().metrics]  # evaluation.metrics when absent


class FineTuneSweepSpec(ApiModel):
    """Desired state of a FineTuneSweep."""

    job_template: FineTuneJobTemplate = Field(description="The FineTuneJob every trial runs, the searched fields replaced.")
    search_space: list[SearchParameter] = Field(min_length=1, max_length=16, description="The searched fields.")
    objective: Objective = Field(description="The evaluation metric optimised, on the validation split.")
    max_trials: int = Field(default=8, ge=1, le=100, description="Trials to run in all (grid: at most the grid's size).")
    parallelism: int = Field(default=1, ge=1, le=16, description="Trials running at the same time.")
    sampler: Sampler = Field(default_factory=Sampler, description="tpe, random or grid.")
    pruner: Pruner = Field(default_factory=Pruner, description="Early stopping of trials on their live validation loss.")
    hand_off: HandOff | None = Field(default=None, description="Hand the winner to a Rollout, by the FineTuneSchedule's rule.")
    suspend: bool = Field(default=False, description="Start no new trials (running ones continue).")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.parallelism <= self.maxTrials", PARALLELISM_MESSAGE),
                cel("self.sampler.type != 'grid' || self.searchSpace.all(p, !has(p.float) || has(p.float.step))", GRID_MESSAGE),
                cel("self.searchSpace.all(p, self.searchSpace.exists_one(q, q.path == p.path))", UNIQUE_MESSAGE),
                cel("self.jobTemplate.spec.evaluation.enabled", EVAL_MESSAGE),
                cel("(has(self.jobTemplate.spec.evaluation.metrics) ? self.jobTemplate.spec.evaluation.metrics : "
                    f"[{', '.join(repr(str(m)) for m in _DEFAULT_METRICS)}]).exists(m, m == self.objective.metric)", OBJECTIVE_MESSAGE),
                cel("!(self.objective.metric in ['schemaCompliance', 'fieldAccuracy']) || has(self.jobTemplate.spec.evaluation.jsonSchema)",
                    SCHEMA_MESSAGE),
                cel("self.objective.metric != 'forgettingAccuracy' || self.jobTemplate.spec.evaluation.forgetting.enabled",
                    FORGETTING_MESSAGE),
                cel("!has(self.jobTemplate.spec.registry.version)", VERSION_MESSAGE),
                cel("has(self.jobTemplate.spec.dataset.validation) || self.jobTemplate.spec.dataset.split.validation > 0.0",
                    VALIDATION_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _shape(self) -> FineTuneSweepSpec:
        if self.parallelism > self.max_trials:
            raise ValueError(PARALLELISM_MESSAGE)
        if self.sampler.type == SamplerType.GRID.value and not all(p.gridded() for p in self.search_space):
            raise ValueError(GRID_MESSAGE)
        paths = [p.path for p in self.search_space]
        if len(set(paths)) != len(paths):
            raise ValueError(UNIQUE_MESSAGE)
        tmpl = self.job_template.spec
        if not tmpl.evaluation.enabled:
            raise ValueError(EVAL_MESSAGE)
        objective = str(getattr(self.objective.metric, "value", self.objective.metric))
        if objective not in {str(getattr(m, "value", m)) for m in tmpl.evaluation.metrics}:
            raise ValueError(OBJECTIVE_MESSAGE)
        if objective in ("schemaCompliance", "fieldAccuracy") and tmpl.evaluation.json_schema is None:
            raise ValueError(SCHEMA_MESSAGE)
        if objective == "forgettingAccuracy" and not tmpl.evaluation.forgetting.enabled:
            raise ValueError(FORGETTING_MESSAGE)
        if tmpl.registry.version is not None:
            raise ValueError(VERSION_MESSAGE)
        if tmpl.dataset.validation is None and tmpl.dataset.split.validation <= 0:
            raise ValueError(VALIDATION_MESSAGE)
        for p in self.search_space:  # model-only: CEL cannot see the template's field types
            field_problem(tmpl, p)
        return self


def set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted wire path in a FineTuneJob spec body (creating the objects on the way)."""
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def get_path(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def has_field(path: str) -> bool:
    """Whether the FineTuneJob spec has the field at this wire path (walking the models, not a body)."""
    model: Any = FineTuneJobSpec
    for part in path.split("."):
        fields = {(f.alias or n): f for n, f in getattr(model, "model_fields", {}).items()}
        if part not in fields:
            return False
        ann = fields[part].annotation
        args = getattr(ann, "__args__", None)
        model = next((a for a in (args or (ann,)) if hasattr(a, "model_fields")), None)
    return True


def field_problem(tmpl: FineTuneJobSpec, p: SearchParameter) -> None:
    """ValueError when the template has no such field, or a value the search may try is not one it accepts."""
    if not has_field(p.path):
        raise ValueError(f"searchSpace path {p.path}: the FineTuneJob template has no such field")
    base = tmpl.model_dump(by_alias=True, exclude_none=True, mode="json")
    for value in p.candidates():
        body = copy.deepcopy(base)
        set_path(body, p.path, value)
        try:
            FineTuneJobSpec.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"searchSpace path {p.path}: the template does not accept {value!r} there ({first['msg']})") from None


class TrialState(str, Enum):
    RUNNING = "Running"
    COMPLETE = "Complete"
    PRUNED = "Pruned"
    FAILED = "Failed"


class IntermediateValue(ApiModel):
    """The trial's validation loss at one training step (what the pruner reads)."""

    step: int = Field(ge=0, description="Training step.")
    eval_loss: float = Field(description="status.progress.evalLoss at that step.")


class SweepTrial(ApiModel):
    """One trial: its parameters, what it scored and why it ended."""

    number: int = Field(ge=0, description="Trial number (0, 1, ...): the order the sampler asked them in.")
    name: str = Field(description="Its FineTuneJob.")
    uid: str | None = Field(default=None, description="The uid of the FineTuneJob the sweep created.")
    params: dict[str, Any] = Field(default_factory=dict, description="The searched fields' values, by path.",
                                   json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    state: TrialState = Field(default=TrialState.RUNNING, description="Running, Complete, Pruned or Failed.")
    value: float | None = Field(default=None, description="The objective on the validation split (Complete trials).")
    split: Literal["validation", "test"] | None = Field(default=None, description="The split the value was measured on "
                                                          "(the evaluation record's); only validation values are ever compared.")
    intermediate: list[IntermediateValue] = Field(default_factory=list, max_length=200, description="Validation loss by step.")
    started_at: datetime | None = Field(default=None, description="When its FineTuneJob was created.")
    finished_at: datetime | None = Field(default=None, description="When it completed, was pruned or failed.")
    message: str = Field(default="", description="Why it ended this way (a pruned trial: the rule and the numbers).")


class SweepPhase(str, Enum):
    RUNNING = "Running"
    EVALUATING = "Evaluating"  # the best trial's configuration on the test split
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class BestRun(ApiModel):
    """The best trial's configuration, trained once more and evaluated on the test split like any FineTuneJob."""

    name: str = Field(description="The final FineTuneJob.")
    uid: str | None = Field(default=None, description="Its uid.")
    trial: str = Field(description="The trial it repeats.")
    model_version: str | None = Field(default=None, description="The ModelVersion it registered (lineage names the sweep and trial).")
    verdict: str | None = Field(default=None, description="Its test-split verdict.")
    outcome: str | None = Field(default=None, description="The hand-off outcome (the FineTuneSchedule's: HandedOff, Rejected, ...).")
    message: str = Field(default="", description="Why this outcome.")


class FineTuneSweepStatus(ApiModel):
    """Observed state of a FineTuneSweep (the study: every trial's parameters, values and states)."""

    phase: SweepPhase = Field(default=SweepPhase.RUNNING, description="Running, Evaluating, Succeeded, Failed or Suspended.")
    direction: Direction | None = Field(default=None, description="maximize or minimize (the objective metric's direction).")
    trials: list[SweepTrial] = Field(default_factory=list, max_length=100, description="Every trial, by number.")
    trials_complete: int = Field(default=0, ge=0, description="Trials that completed.")
    trials_running: int = Field(default=0, ge=0, description="Trials running now.")
    trials_pruned: int = Field(default=0, ge=0, description="Trials the pruner stopped.")
    trials_failed: int = Field(default=0, ge=0, description="Trials whose FineTuneJob failed.")
    best_trial: str | None = Field(default=None, description="The best complete trial so far.")
    best_value: float | None = Field(default=None, description="Its objective on the validation split.")
    best: BestRun | None = Field(default=None, description="The best trial's final run on the test split.")
    last_progress_time: datetime | None = Field(default=None, description="When a trial last started, reported or ended.")
    conditions: list[Condition] = Field(default_factory=list, max_length=32, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    message: str | None = Field(default=None, description="Human-readable summary.")


class FineTuneSweep(ApiModel):
    """A hyperparameter search over a FineTuneJob template, optimising an evaluation metric on the validation split."""

    api_version: Literal["tuneloop.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneSweep"] = "FineTuneSweep"
    metadata: ObjectMeta
    spec: FineTuneSweepSpec
    status: FineTuneSweepStatus | None = None
