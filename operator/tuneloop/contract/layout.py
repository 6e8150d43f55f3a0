"""The work directory every stage shares, the pod mounts and env, and where the work directory lives.

A job's stages (prepare → train → evaluate → report → publish) run in separate pods (or one local
process) and hand results over through one directory: DIR below. The names here are the only place
that layout is spelled out; the trainer's StageContext, the local runner and the operator's
builders read them from here.

    DIR/data/{train,validation,test}.jsonl, data_report.json, data_report.txt   (prepare)
    DIR/checkpoints/checkpoint-<step>/                                          (train, resumable)
    DIR/compile-cache/node-<rank>/   (train with hyperparameters.compile: inductor's cache, reused on resume)
    DIR/artifact/ (+ artifact/merged/ when mergeAdapter), DIR/lineage.json,
    DIR/progress.jsonl                                                          (train)
    DIR/eval.json, DIR/topic-profile.json                                       (evaluate)
    DIR/exports/<format>/ (merged: a model directory; gguf-*: model.gguf), DIR/exports.json   (export)
    DIR/report/{report.md, loss.png, metrics.png, modelversion.yaml}            (report)
    DIR/result-<stage>.json (DIR/result.json for train)                         (every stage's summary)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# --- the work directory (names relative to DIR) ----------------------------------------------
DATA_DIR = "data"
CHECKPOINT_DIR = "checkpoints"
COMPILE_CACHE_DIR = "compile-cache"
ARTIFACT_DIR = "artifact"
MERGED_DIR = f"{ARTIFACT_DIR}/merged"
REPORT_DIR = "report"
REPORT_FILE = f"{REPORT_DIR}/report.md"
MODELVERSION_FILE = f"{REPORT_DIR}/modelversion.yaml"
DATA_REPORT_FILE = f"{DATA_DIR}/data_report.json"
EVAL_FILE = "eval.json"
TOPIC_PROFILE_FILE = "topic-profile.json"  # the output guard's topic rule (tuneloop.guard.topic), built from the training prompts
EXPORTS_DIR = "exports"
EXPORTS_FILE = "exports.json"
GGUF_FILE = "model.gguf"
LINEAGE_FILE = "lineage.json"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"  # the train stage's summary, also as result-train.json
LOCAL_RUN_FILE = "local-run.json"

STAGES = ("prepare", "train", "evaluate", "export", "report")


def export_modelversion_file(fmt: str) -> str:
    """The ModelVersion manifest of one registered export (the report stage writes it next to the source's)."""
    return f"{REPORT_DIR}/modelversion-{fmt}.yaml"


def export_path(fmt: str) -> str:
    """Where one export lives, relative to DIR: a model directory (merged) or the .gguf file (gguf-*)."""
    return f"{EXPORTS_DIR}/{fmt}/{GGUF_FILE}" if fmt.startswith("gguf-") else f"{EXPORTS_DIR}/{fmt}"


def result_file(stage: str) -> str:
    return f"result-{stage}.json"


class WorkDir:
    """Paths inside one job's work directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    data = property(lambda self: self.root / DATA_DIR)
    checkpoints = property(lambda self: self.root / CHECKPOINT_DIR)
    artifact = property(lambda self: self.root / ARTIFACT_DIR)
    merged = property(lambda self: self.root / MERGED_DIR)
    report = property(lambda self: self.root / REPORT_DIR)
    report_file = property(lambda self: self.root / REPORT_FILE)
    modelversion_file = property(lambda self: self.root / MODELVERSION_FILE)
    eval_file = property(lambda self: self.root / EVAL_FILE)
    topic_profile_file = property(lambda self: self.root / TOPIC_PROFILE_FILE)
    exports = property(lambda self: self.root / EXPORTS_DIR)
    exports_file = property(lambda self: self.root / EXPORTS_FILE)
    lineage_file = property(lambda self: self.root / LINEAGE_FILE)
    progress_file = property(lambda self: self.root / PROGRESS_FILE)

    def result(self, stage: str) -> Path:
        return self.root / result_file(stage)


# --- how the pods run the trainer ------------------------------------------------------------
TRAINER_MODULE = "tuneloop_trainer"  # python -m tuneloop_trainer <stage> --spec FILE --workdir DIR
PUBLISH_MODULE = "tuneloop_trainer.publish"  # python -m tuneloop_trainer.publish --workdir DIR (last in the eval pod)


def stage_args(stage: str, spec_file: str, workdir: str) -> list[str]:
    """`python` arguments of one stage."""
    return ["-m", TRAINER_MODULE, stage, "--spec", spec_file, "--workdir", workdir]


SPEC_DIR = "/etc/tuneloop"  # the per-job ConfigMap
SPEC_FILE = f"{SPEC_DIR}/spec.yaml"
OUTPUT_MOUNT = "/output"  # the output claim; DIR is below it
DATA_MOUNT = "/data"
MODEL_MOUNT = "/models"
CACHE_MOUNT = "/cache"
TERMINATION_LOG = "/dev/termination-log"
RENDEZVOUS_PORT = 29500  # torchrun's MASTER_PORT on rank 0 (the trainer's default too); never a metrics port

# Environment of the stage containers (set by the operator, read by the trainer).
ENV_JOB_NAME = "TUNELOOP_JOB_NAME"
ENV_NAMESPACE = "TUNELOOP_NAMESPACE"
ENV_METRICS_PORT = "TUNELOOP_METRICS_PORT"
ENV_DATA_DIR = "TUNELOOP_DATA_DIR"
ENV_MODEL_DIR = "TUNELOOP_MODEL_DIR"
ENV_CACHE_DIR = "TUNELOOP_CACHE_DIR"
ENV_TERMINATION_LOG = "TUNELOOP_TERMINATION_LOG"
ENV_IMAGE = "TUNELOOP_IMAGE"  # the image the stage runs in (lineage.trainerImage)
ENV_WORKDIR_URI = "TUNELOOP_WORKDIR_URI"  # pvc://CLAIM/PATH of DIR as the cluster sees it

# Overrides the trainer process reads and the operator never sets (benchmarks, diagnosis, local runs); the trainer's
# one reader of every TUNELOOP_* variable is tuneloop_trainer.settings.TrainerSettings.
ENV_METRICS_ADDR = "TUNELOOP_METRICS_ADDR"  # the metrics endpoint's listen address (default: all interfaces in a pod)
ENV_BATCH_LAYOUT = "TUNELOOP_BATCH_LAYOUT"  # packed | grouped | flat | padded
ENV_FUSED_LOSS = "TUNELOOP_FUSED_LOSS"  # 0/1: the chunked/fused LM-head loss
ENV_FUSED_OPS = "TUNELOOP_FUSED_OPS"  # 0/1: Liger's fused RMSNorm/SwiGLU/RoPE
ENV_LIGER = "TUNELOOP_LIGER"  # 0: never Liger's fused cross-entropy
ENV_COMPILE = "TUNELOOP_COMPILE"  # 0/1: torch.compile per decoder layer
ENV_ADAPTER_CASTS = "TUNELOOP_ADAPTER_CASTS"  # 1: keep peft's fp32 cast of adapter inputs under autocast
ENV_DS_SHM_COMM = "TUNELOOP_DS_SHM_COMM"  # 1: keep DeepSpeed's JIT shared-memory allreduce on CPU
ENV_VARLEN_BACKEND = "TUNELOOP_VARLEN_BACKEND"  # flash_attn | torch_varlen | sdpa_loop
ENV_PEAK_TFLOPS = "TUNELOOP_PEAK_TFLOPS"  # the GPU's dense 16-bit peak, for MFU
ENV_EVAL_BACKEND = "TUNELOOP_EVAL_BACKEND"  # auto | vllm | transformers
ENV_VLLM_PYTHON = "TUNELOOP_VLLM_PYTHON"  # the vLLM interpreter (the only candidate when set)
ENV_VLLM_ARGS = "TUNELOOP_VLLM_ARGS"  # more vLLM server arguments, after the trainer's


# --- where DIR lives ---------------------------------------------------------------------------
class LocationError(ValueError):
    """The spec's output cannot be placed on a cluster; `field` is the offending spec path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def output_location(spec: Any, name: str, namespace: str, staging_claim: str | None = None) -> tuple[str, str]:
    """(output claim, DIR inside the pods): `output.pvc` → CLAIM, /output/<path or the job's name>;
    `output.s3` → the operator's staging claim, /output/<namespace>/<name>; `output.path` is local only."""
    out = spec.output
    if out.pvc:
        sub = out.pvc.path.strip("/") or name
        return out.pvc.claim_name, f"{OUTPUT_MOUNT}/{sub}"
    if out.s3:
        if not staging_claim:
            raise LocationError("spec.output.s3", "s3 output needs a staging PVC: set the operator's TUNELOOP_DEFAULT_OUTPUT_PVC or use output.pvc")
        return staging_claim, f"{OUTPUT_MOUNT}/{namespace}/{name}"
    raise LocationError("spec.output.path", "output.path is for local runs; in a cluster use output.pvc (or output.s3)")


def workdir_uri(claim: str, pod_path: str) -> str:
    """pvc://CLAIM/PATH of a pod's DIR (PATH relative to the claim's root)."""
    return f"pvc://{claim}{pod_path[len(OUTPUT_MOUNT):]}"


def resolve_workdir_uri(spec: Any, name: str, namespace: str, local_dir: Path, env: dict[str, str]) -> str:
    """DIR's URI as seen from the trainer: the operator's $TUNELOOP_WORKDIR_URI in a pod; else (a local run,
    even of a cluster spec with output.pvc) the local directory (file://), where the artifact really is."""
    if env.get(ENV_WORKDIR_URI):
        return env[ENV_WORKDIR_URI].rstrip("/")
    return Path(local_dir).resolve().as_uri()
