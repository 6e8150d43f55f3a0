"""FineTuneJob status: what users read in `kubectl get` / `kubectl tuneloop status`."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from .common import ApiModel, Condition
from .modelversion import TokenLengths


class FineTuneJobPhase(str, Enum):
    PENDING = "Pending"
    VALIDATING_DATA = "ValidatingData"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Progress(ApiModel):
    """Training progress reported by rank 0."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest validation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training throughput (non-padding tokens).")
    tokens_per_second_per_gpu: float | None = Field(default=None, ge=0, description="Training throughput per GPU (non-padding tokens).")
    mfu: float | None = Field(default=None, ge=0, description="Model-FLOPs utilisation (0-1): model FLOPs per second over the GPUs' dense 16-bit peak.")
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated seconds to the end of training.")
    updated_at: datetime | None = Field(default=None, description="When this progress was read.")
    percent: str | None = Field(default=None, description="step/totalSteps as a percentage, for printer columns.")


class DataReportSummary(ApiModel):
    """Counts from the data-preparation step."""

    total: int | None = Field(default=None, ge=0, description="Records read.")
    accepted: int | None = Field(default=None, ge=0, description="Records that passed every check.")
    rejected: int | None = Field(default=None, ge=0, description="Records rejected (each listed in the data report).")
    train: int | None = Field(default=None, ge=0, description="Records in the train split.")
    validation: int | None = Field(default=None, ge=0, description="Records in the validation split.")
    test: int | None = Field(default=None, ge=0, description="Records in the test split.")
    dataset_sha256: str | None = Field(default=None, description="sha256 of the dataset files, for lineage.")
    rejected_by_reason: dict[str, int] = Field(default_factory=dict, description="Rejections counted by reason.")
    token_lengths: TokenLengths | None = Field(
        default=None, description="Token-length histograms of the train split in vLLM's buckets (carried onto the ModelVersion)."
    )


class ChildRefs(ApiModel):
    """Names of the objects the operator created for this job."""

    config_map: str | None = Field(default=None, description="ConfigMap with the spec and DeepSpeed config.")
    service: str | None = Field(default=None, description="Headless Service for the rendezvous.")
    data_job: str | None = Field(default=None, description="Data-preparation Job.")
    train_job: str | None = Field(default=None, description="Training Job.")
    eval_job: str | None = Field(default=None, description="Evaluation Job.")
    model_version: str | None = Field(default=None, description="ModelVersion registered from the result.")
    export_job: str | None = Field(default=None, description="Export Job (output.exports).")
    export_model_versions: list[str] = Field(
        default_factory=list, max_length=3, description="ModelVersions registered from the exports that held up.")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    # the reconciler assigns enum members (typed); validation stores their wire value, as use_enum_values does
    model_config = ApiModel.model_config | {"validate_assignment": True}

    phase: FineTuneJobPhase = Field(default=FineTuneJobPhase.PENDING, description="One-word summary of where the job is.")
    conditions: list[Condition] = Field(default_factory=list, max_length=32, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    base_model: str | None = Field(default=None, description="Display name of the base model (for printer columns).")
    progress: Progress | None = Field(default=None, description="Training progress.")
    data_report: DataReportSummary | None = Field(default=None, description="Data-preparation summary.")
    children: ChildRefs | None = Field(default=None, description="Objects created for this job.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline evaluation metrics of the tuned model.")
    verdict: str | None = Field(default=None, description="Gate verdict: Passed or Failed.")
    start_time: datetime | None = Field(default=None, description="When training started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    message: str | None = Field(default=None, description="Human-readable summary of the latest event.")
