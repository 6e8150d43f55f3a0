"""Condition types and reasons of the four kinds, and the one way to set a condition.

Every `status.conditions` entry tuneloop writes has a `type` from one of the `*Condition` enums below
and a `reason` from one of the `*Reason` enums (a few reasons are data: a FineTuneJob's `Evaluated`
reason is the gate verdict, a failed stage Job may carry the Job controller's reason, a Rollout's
`Progressing` reason while it steps is `Step<i>`; `step_reason` builds that one). `set_condition`
upserts one condition the Kubernetes way: `lastTransitionTime` moves only when the status changes.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Any

from .common import Condition, ConditionStatus

MAX_MESSAGE = 2000  # a condition message is cut to this length


# --- FineTuneJob ------------------------------------------------------------------------------------
class FineTuneJobCondition(str, Enum):
    DATA_VALIDATED = "DataValidated"
    TRAINING = "Training"
    EVALUATED = "Evaluated"
    EXPORTED = "Exported"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    READY = "Ready"


class StageFailureReason(str, Enum):
    """Why a stage (prepare, train, evaluate) failed, as its summary says; the reason of the FineTuneJob's
    stage condition, `Failed` and `Ready` then. `tuneloop.contract.exits.Reason` is this enum."""

    INVALID_SPEC = "InvalidSpec"
    INVALID_DATA = "InvalidData"
    RUNTIME_ERROR = "RuntimeError"
    OUT_OF_RESOURCES = "OutOfResources"
    INTERNAL_ERROR = "InternalError"
    INTERRUPTED = "Interrupted"


class FineTuneJobReason(str, Enum):
    """The operator's own reasons on a FineTuneJob (besides StageFailureReason and the gate verdict)."""

    VALIDATING = "Validating"  # DataValidated Unknown
    VALIDATED = "Validated"  # DataValidated True
    STARTING = "Starting"  # Training Unknown: the Job has no running pod yet
    RUNNING = "Running"  # Training True
    SUSPENDED = "Suspended"  # Training Unknown: spec.suspend
    EVALUATING = "Evaluating"  # Evaluated Unknown
    DISABLED = "Disabled"  # Evaluated False: evaluation.enabled is false
    EXPORTING = "Exporting"  # Exported Unknown
    EXPORTED = "Exported"  # Exported True: every export held up against its source
    EXPORTS_REFUSED = "ExportsRefused"  # Exported True: some exports failed the equivalence gate (not registered)
    COMPLETED = "Completed"  # Training False (done), Succeeded True
    SUCCEEDED = "Succeeded"  # Ready True
    JOB_FAILED = "JobFailed"  # a stage Job failed and neither it nor its pod said why
    CHILD_NOT_OWNED = "ChildNotOwned"  # Failed: a child (ConfigMap, Service, Job, ModelVersion) of that name is someone else's


# --- ModelVersion -----------------------------------------------------------------------------------
class ModelVersionCondition(str, Enum):
    EVALUATED = "Evaluated"  # reason: the gate verdict (Passed, Failed, NotEvaluated)
    READY = "Ready"
    DRIFTED = "Drifted"  # reason: DriftReason (written by the Rollout's drift watch)
    DEGRADED = "Degraded"  # reason: DriftReason


class ModelVersionReason(str, Enum):
    REGISTERED = "Registered"  # Ready True: evaluated, gates passed
    REGISTERED_NOT_EVALUATED = "RegisteredNotEvaluated"  # Ready True: never evaluated
    GATES_FAILED = "GatesFailed"  # Ready False


# --- Rollout ----------------------------------------------------------------------------------------
class RolloutCondition(str, Enum):
    PROGRESSING = "Progressing"
    ROLLED_BACK = "RolledBack"
    SERVABLE = "Servable"
    STABLE_IN_SYNC = "StableInSync"
    DRIFTED = "Drifted"  # reason: DriftReason
    DEGRADED = "Degraded"  # reason: DriftReason
    OBJECTS_OWNED = "ObjectsOwned"  # False while an object the Rollout needs is someone else's (set only once that happened)
    DEPRECATED_FIELDS = "DeprecatedFields"  # reason: DeprecationReason (api.deprecations; set only once a deprecated field was used)


class RolloutReason(str, Enum):
    """Reasons of a Rollout's conditions (and of the Events of the same transitions)."""

    INVALID_SPEC = "InvalidSpec"
    WAITING_FOR_FIRST_VERSION = "WaitingForFirstVersion"  # Progressing False: no stable, no candidate (phase Waiting)
    NEW_CANDIDATE = "NewCandidate"
    PROMOTED = "Promoted"
    PROMOTED_BY_USER = "PromotedByUser"
    FIRST_VERSION = "FirstVersion"
    ABORTED = "Aborted"
    CANDIDATE_REMOVED = "CandidateRemoved"
    PAUSED_INDEFINITELY = "PausedIndefinitely"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_ERROR = "AnalysisError"
    EXPERIMENT_WORSE = "ExperimentWorse"  # an A/B experiment found the candidate significantly worse: rolled back
    EXPERIMENT_INCONCLUSIVE = "ExperimentInconclusive"  # an A/B experiment ended without a decision: paused for a human
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    SERVABLE = "Servable"
    IN_SYNC = "InSync"
    SPEC_STABLE_NOT_SERVING = "SpecStableNotServing"
    # why a ModelVersion is not served (Servable False, Progressing False)
    SERVING_ERROR = "ServingError"
    MODEL_VERSION_NOT_FOUND = "ModelVersionNotFound"
    MODEL_VERSION_INVALID = "ModelVersionInvalid"
    CANDIDATE_REJECTED = "CandidateRejected"
    CANDIDATE_LOST_TO_SERVING = "CandidateLostToServing"
    CANDIDATE_NOT_EVALUATED = "CandidateNotEvaluated"
    NOT_SERVABLE = "NotServable"
    ARTIFACT_NOT_SERVABLE = "ArtifactNotServable"
    BASE_MODEL_NOT_SERVABLE = "BaseModelNotServable"
    LORA_RANK_TOO_LARGE = "LoraRankTooLarge"
    STARTING = "Starting"  # Progressing True: the first version's pods are not serving yet
    SERVING_POD_FAILED = "ServingPodFailed"  # a vLLM pod of the version exited or restarted (any exit code)
    OBJECT_NOT_OWNED = "ObjectNotOwned"  # ObjectsOwned False: a Service/HTTPRoute/Deployment of that name is someone else's
    OWNED = "Owned"  # ObjectsOwned True: the conflict is gone
    # serving.mode sharedBase (one Deployment of the base serves every version as a LoRA adapter)
    NOT_AN_ADAPTER = "NotAnAdapter"  # a merged/full/GGUF ModelVersion: it has no base to share
    BASE_MISMATCH = "BaseMismatch"  # the candidate's base (name, serving path or revision) is not the one the Deployment serves
    ADAPTER_CLAIM_MISMATCH = "AdapterClaimMismatch"  # the candidate's artifact is on another claim than the one the pods mount
    ADAPTER_LOAD_FAILED = "AdapterLoadFailed"  # a pod refused to load the adapter (vLLM's /v1/load_lora_adapter answer)
    INFERENCE_EXTENSION_MISSING = "InferenceExtensionMissing"  # the InferenceModelRewrite API is not installed


def step_reason(index: int) -> str:
    """`Progressing` True while the Rollout is at step `index` (0-based): Step0, Step1, …"""
    return f"Step{index}"


class DriftReason(str, Enum):
    """Reasons of the Drifted and Degraded conditions (Rollout and serving ModelVersion)."""

    DISTRIBUTION_SHIFTED = "DistributionShifted"
    WITHIN_THRESHOLD = "WithinThreshold"
    INSUFFICIENT_DATA = "InsufficientData"
    NO_TRAINING_HISTOGRAM = "NoTrainingHistogram"
    NO_COMPARABLE_BUCKETS = "NoComparableBuckets"  # the train and served histograms share no bucket that tells lengths apart
    SERVING_DEGRADED = "ServingDegraded"
    AS_AT_PROMOTION = "AsAtPromotion"
    NO_PROMOTION_BASELINE = "NoPromotionBaseline"
    PROVIDER_ERROR = "ProviderError"  # the metrics provider gave no answer (formerly "PrometheusError": DEPRECATED_REASONS)


# Reasons tuneloop no longer writes, with the one that replaced each: a reader (an alert, a dashboard, a script)
# matching the old value must match the new one (docs/api-reference.md, "Deprecations").
DEPRECATED_REASONS: dict[str, str] = {"PrometheusError": DriftReason.PROVIDER_ERROR.value}


# --- FineTuneSchedule -------------------------------------------------------------------------------
class FineTuneScheduleCondition(str, Enum):
    LAST_RUN_SUCCEEDED = "LastRunSucceeded"  # reason: the run's outcome (api.schedule.RunOutcome)
    READY = "Ready"  # reason: FineTuneScheduleReason
    RUNS_OWNED = "RunsOwned"  # set once a FineTuneJob labelled for the schedule is not its own: False JobNotOwned, then True Owned
    DEPRECATED_FIELDS = "DeprecatedFields"  # reason: DeprecationReason (api.deprecations; set only once a deprecated field was used)


class FineTuneScheduleReason(str, Enum):
    """Reasons of a FineTuneSchedule's Ready condition."""

    RECONCILED = "Reconciled"  # Ready True: the latest tick completed
    INVALID_SPEC = "InvalidSpec"  # Ready False, phase Failed: the spec cannot run (nothing starts until it is fixed)
    TICK_FAILED = "TickFailed"  # Ready False: the latest tick failed (the error is the message); retried
    JOB_NOT_OWNED = "JobNotOwned"  # RunsOwned False: a FineTuneJob carries the schedule's label but was not created by it (ignored)
    OWNED = "Owned"  # RunsOwned True: every FineTuneJob labelled for the schedule is its own again


# --- both: deprecated fields (api.deprecations) ------------------------------------------------------
class DeprecationReason(str, Enum):
    """Reasons of the DeprecatedFields condition of a Rollout or a FineTuneSchedule."""

    DEPRECATED_FIELD = "DeprecatedField"  # True: the spec uses a deprecated field (the message names each, and its replacement)
    NO_DEPRECATED_FIELDS = "NoDeprecatedFields"  # False: it no longer does


# --- the one setter -----------------------------------------------------------------------------------
def _text(x: object) -> str:
    return str(getattr(x, "value", x))


def condition_status(value: bool | str | ConditionStatus) -> str:
    """True/False from a bool, else the ConditionStatus value ("True", "False", "Unknown")."""
    if isinstance(value, bool):
        return ConditionStatus.TRUE.value if value else ConditionStatus.FALSE.value
    return ConditionStatus(_text(value)).value


def find_condition(conditions: list[Condition], type_: str | Enum) -> Condition | None:
    t = _text(type_)
    return next((c for c in conditions if c.type == t), None)


def parse_conditions(status: dict[str, Any]) -> list[Condition]:
    """The conditions of a raw status, each as a Condition; one that does not validate is dropped."""
    from pydantic import ValidationError

    out = []
    for c in status.get("conditions") or []:
        try:
            out.append(Condition.model_validate(c))
        except ValidationError:
            continue
    return out


def set_condition(conditions: list[Condition], type_: str | Enum, status: bool | str | ConditionStatus, reason: str | Enum,
                  message: str, *, now: dt.datetime, generation: int | None = None) -> Condition:
    """Upsert one condition in `conditions` (in place) and return it. `lastTransitionTime` becomes `now` for a
    new condition or a changed status; the message is cut to MAX_MESSAGE characters."""
    t, s, r, m = _text(type_), condition_status(status), _text(reason), message[:MAX_MESSAGE]
    cond = find_condition(conditions, t)
    if cond is None:
        cond = Condition(type=t, status=ConditionStatus(s), reason=r, message=m, last_transition_time=now, observed_generation=generation)
        conditions.append(cond)
        return cond
    if _text(cond.status) != s:
        cond.last_transition_time = now
    cond.status, cond.reason, cond.message = s, r, m  # type: ignore[assignment]
    if generation is not None:
        cond.observed_generation = generation
    return cond
