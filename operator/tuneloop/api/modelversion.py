"""ModelVersion: the registry record of one fine-tuned artifact."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from .common import API_VERSION, ApiModel, Condition, ObjectMeta, cel
from .evaluation import EvaluationRecord, Interval
from .experiment import ExperimentResult


class ArtifactFormat(str, Enum):
    LORA_ADAPTER = "lora-adapter"
    MERGED = "merged"
    FULL = "full"
    GGUF = "gguf"


class BaseModelRecord(ApiModel):
    """The base model the artifact was trained from."""

    name: str = Field(min_length=1, description="Hugging Face id, path or URI of the base model.")
    revision: str = Field(default="", description="Revision (commit sha or tag) of the base model.")
    serving_path: str | None = Field(default=None, description="Path or id vLLM loads the base model from (LoRA artifacts).")


LORA_RANK_MESSAGE = "a lora-adapter artifact needs artifact.loraRank (vLLM's --max-lora-rank)"
GGUF_QUANT_MESSAGE = "a gguf artifact needs artifact.quantization"


class Artifact(ApiModel):
    """Where the trained weights live."""

    uri: str = Field(min_length=1, description="pvc://CLAIM/PATH, s3://BUCKET/PREFIX or file:///PATH of the artifact directory.")
    format: ArtifactFormat = Field(
        description="lora-adapter (needs the base model), merged or full weights (safetensors directories), or gguf (one "
        ".gguf file: uri names the file).")
    lora_rank: int | None = Field(default=None, ge=1, description="LoRA rank (sets vLLM's --max-lora-rank).")
    quantization: str | None = Field(default=None, description="GGUF tensor type of the weights: f16 or q8_0 (gguf only).")
    size_bytes: int | None = Field(default=None, ge=0, description="Size on disk of the weights.")


class FineTuneJobRef(ApiModel):
    """The FineTuneJob that produced the artifact."""

    name: str = Field(description="FineTuneJob name.")
    namespace: str | None = Field(default=None, description="FineTuneJob namespace.")
    uid: str | None = Field(default=None, description="FineTuneJob uid.")


class TokenLengths(ApiModel):
    """Token-length histograms of the train split, in the buckets of vLLM's `vllm:request_prompt_tokens` and
    `vllm:request_generation_tokens` (1, 2, 5, 10, 20, 50, … up to the maximum sequence length), so that served
    traffic can be compared with what the model was trained on (the Rollout's drift watch)."""

    le: list[int] = Field(max_length=32, description="Upper bounds of the buckets (tokens, ascending); a last +Inf bucket follows.")
    prompt: list[int] = Field(
        max_length=33, description="Train records per bucket (not cumulative) by prompt tokens: the chat-templated record minus the tokens trained on; the last count is the +Inf bucket."
    )
    generation: list[int] = Field(
        max_length=33, description="Train records per bucket (not cumulative) by generation tokens: the assistant (completion) tokens trained on; the last count is the +Inf bucket."
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("size(self.prompt) == size(self.le) + 1 && size(self.generation) == size(self.le) + 1",
                    "prompt and generation hold one count per bucket bound plus the +Inf bucket"),
            ]
        }
    }

    @model_validator(mode="after")
    def _shape(self) -> TokenLengths:
        if len(self.prompt) != len(self.le) + 1 or len(self.generation) != len(self.le) + 1:
            raise ValueError("prompt and generation hold one count per bucket bound plus the +Inf bucket")
        if any(b <= a for a, b in zip(self.le, self.le[1:])):
            raise ValueError("le must be strictly ascending")
        return self


class SweepLineage(ApiModel):
    """The FineTuneSweep trial whose configuration produced the artifact."""

    name: str = Field(description="The FineTuneSweep.")
    trial: str = Field(description="The winning trial's FineTuneJob.")
    trial_number: int | None = Field(default=None, ge=0, description="Its trial number.")
    objective: str | None = Field(default=None, description="The objective metric (on the validation split).")
    value: float | None = Field(default=None, description="The trial's objective value on the validation split.")
    params: dict[str, str] = Field(default_factory=dict, description="The searched fields' winning values (JSON text).")


class Lineage(ApiModel):
    """Everything needed to reproduce the artifact."""

    fine_tune_job: FineTuneJobRef | None = Field(default=None, description="The producing FineTuneJob.")
    sweep: SweepLineage | None = Field(default=None, description="The FineTuneSweep and trial it was chosen by, when a sweep made it.")
    dataset_sha256: str | None = Field(default=None, description="sha256 of the training data.")
    method: str | None = Field(default=None, description="lora, qlora or full.")
    hyperparameters: dict[str, str] = Field(default_factory=dict, description="Effective hyperparameters, as strings.")
    trainer_image: str | None = Field(default=None, description="Trainer image (or 'local') that trained it.")
    library_versions: dict[str, str] = Field(default_factory=dict, description="torch, transformers, peft, deepspeed, … versions.")
    world_size: int | None = Field(default=None, ge=1, description="Training processes.")
    train_seconds: float | None = Field(default=None, ge=0, description="Wall time of training.")
    tokens_seen: int | None = Field(default=None, ge=0, description="Non-padding tokens trained on.")
    token_lengths: TokenLengths | None = Field(
        default=None, description="Token-length histograms of the train split (vLLM's buckets), the baseline of the Rollout's drift watch."
    )
    export_of: ExportSource | None = Field(default=None, description="For an export: the ModelVersion it was made from.")


class ExportSource(ApiModel):
    """The ModelVersion an export was made from."""

    model_version: str = Field(min_length=1, description="Name of the source ModelVersion (same namespace).")
    format: str = Field(description="The export's format (merged, gguf-f16, gguf-q8_0).")


class MetricEquivalence(ApiModel):
    """One answer metric of the export next to its source's, paired by test item."""

    name: str = Field(description="Metric name.")
    source: float | None = Field(default=None, description="The source model's score.")
    export: float | None = Field(default=None, description="The export's score on the same items.")
    difference: float | None = Field(default=None, description="export − source.")
    difference_interval: Interval | None = Field(default=None, description="95 % paired bootstrap interval of export − source.")
    max_drop: float = Field(description="The largest drop the gate allowed.")
    passed: bool = Field(description="Whether the drop is within maxDrop.")


class EquivalenceRecord(ApiModel):
    """How an export answers compared with the model it was made from, on the evaluation's test items."""

    test_items: int = Field(ge=0, description="Test items both models answered (greedy decoding).")
    agreement: float = Field(ge=0, le=1, description="Share of the items where the export's answer equals the source's.")
    agreement_interval: Interval | None = Field(default=None, description="95 % Wilson interval of the agreement.")
    min_agreement: float = Field(ge=0, le=1, description="The smallest agreement the gate allowed.")
    metrics: list[MetricEquivalence] = Field(default_factory=list, max_length=16, description="Answer metrics, export vs source.")
    passed: bool = Field(description="Whether the export held up (agreement and every metric); a refused export is not registered.")
    reason: str = Field(default="", description="Why, with the numbers.")
    backend: str | None = Field(default=None, description="What generated both models' answers (same backend, same machine).")
    tokens_per_second: float | None = Field(default=None, ge=0, description="The export's generation throughput.")
    source_tokens_per_second: float | None = Field(default=None, ge=0, description="The source's, measured the same way.")
    source_size_bytes: int | None = Field(default=None, ge=0, description="Size on disk of the source's weights.")


class OutputContract(ApiModel):
    """What every answer must look like: the JSON Schema the evaluation scored (evaluation.jsonSchema). Serving enables
    vLLM's structured outputs for it; a client enforces it per request with `structured_outputs: {json: SCHEMA}` (or
    `response_format: {type: json_schema, json_schema: {name, schema}}`)."""

    json_schema: dict[str, Any] = Field(
        description="JSON Schema of an answer.", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


class TopicProfileLocation(ApiModel):
    """Where the topic profile is: the JSON file the evaluation built from the training prompts (DIR/topic-profile.json;
    its calibration is in spec.evaluation.topicProfile). A Rollout's serving.guard.topic reads it (pvc:// only)."""

    uri: str = Field(min_length=1, description="pvc://CLAIM/PATH or file:///PATH of topic-profile.json.")


class ReportLocation(ApiModel):
    """Where the experiment report is."""

    uri: str | None = Field(default=None, description="Location of report.md next to the artifact.")
    config_map: str | None = Field(default=None, description="ConfigMap holding the report Markdown (key report.md).")


class ModelVersionSpec(ApiModel):
    """A registered fine-tuned model."""

    model_name: str = Field(min_length=1, max_length=253, description="Registered model name (several versions share it).")
    version: str = Field(min_length=1, max_length=63, description="Version label, unique per modelName.")
    base_model: BaseModelRecord = Field(description="The base model.")
    artifact: Artifact = Field(description="The trained weights.")
    lineage: Lineage = Field(default_factory=Lineage, description="How it was produced.")
    evaluation: EvaluationRecord = Field(default_factory=EvaluationRecord, description="Base vs tuned metrics and the gate verdict.")
    report: ReportLocation = Field(default_factory=ReportLocation, description="The experiment report.")
    output_contract: OutputContract | None = Field(
        default=None, description="The answers' contract the evaluation scored (evaluation.jsonSchema), served with vLLM's structured outputs.")
    equivalence: EquivalenceRecord | None = Field(
        default=None, description="For an export: its answers against its source's on the test items, and the gate it passed.")
    topic_profile: TopicProfileLocation | None = Field(
        default=None, description="The topic profile of the training prompts (the output guard's topic rule), when the evaluation built one.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self == oldSelf", "a ModelVersion is an immutable registry record; register a new version instead"),
                cel("self.artifact.format != 'lora-adapter' || has(self.artifact.loraRank)", LORA_RANK_MESSAGE),
                cel("self.artifact.format != 'gguf' || has(self.artifact.quantization)", GGUF_QUANT_MESSAGE),
            ]
        }
    }

    @model_validator(mode="after")
    def _lora_rank(self) -> ModelVersionSpec:
        """The pydantic twin of the CEL rule above (tests/unit/api/test_cel_twins.py keeps them in agreement)."""
        if self.artifact.format == ArtifactFormat.LORA_ADAPTER and self.artifact.lora_rank is None:
            raise ValueError(LORA_RANK_MESSAGE)
        if self.artifact.format == ArtifactFormat.GGUF and self.artifact.quantization is None:
            raise ValueError(GGUF_QUANT_MESSAGE)
        return self


class ModelVersionPhase(str, Enum):
    PENDING = "Pending"
    READY = "Ready"
    REJECTED = "Rejected"
    SERVING = "Serving"
    ROLLED_BACK = "RolledBack"
    RETIRED = "Retired"


class ModelVersionStatus(ApiModel):
    """Lifecycle of the version in the registry and in serving."""

    phase: ModelVersionPhase = Field(default=ModelVersionPhase.PENDING, description="Pending, Ready, Rejected, Serving, RolledBack or Retired.")
    conditions: list[Condition] = Field(default_factory=list, max_length=32, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    rollout: str | None = Field(default=None, description="Rollout currently serving or last serving this version.")
    experiment: ExperimentResult | None = Field(default=None, description="The decided A/B experiment of a Rollout that ran this version as its candidate.")
    message: str | None = Field(default=None, description="Human-readable summary.")


class ModelVersion(ApiModel):
    """The registry record of one fine-tuned artifact."""

    api_version: Literal["tuneloop.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["ModelVersion"] = "ModelVersion"
    metadata: ObjectMeta
    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None
