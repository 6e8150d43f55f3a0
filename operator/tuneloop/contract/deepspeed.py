"""World size, batch divisibility and the DeepSpeed config — computed once, from the spec.

    deepspeed_config(spec, world_size) -> dict

The train stage passes the config to the HF Trainer; the operator shows the same JSON in the job's
ConfigMap (`deepspeed.json`, for inspection). Batch sizes are concrete (they must agree with the
TrainingArguments the train stage builds from the same spec and world size); precision and
clipping stay "auto" so the HF Trainer fills them. `spec.deepspeed.overrides` is deep-merged last.
"""

from __future__ import annotations

import copy
from typing import Any

BATCH_FIELD = "spec.hyperparameters.batchSize"


class BatchSplitError(ValueError):
    """batchSize does not split evenly over microBatchSize × world size. `field` is the spec path."""

    field = BATCH_FIELD

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


def world_size(spec: Any) -> int:
    """Training processes the spec asks for: nodes × GPUs per node (one process on a CPU node)."""
    return int(spec.resources.nodes * max(1, spec.resources.gpus_per_node))


def gradient_accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Steps of accumulation so that micro × accumulation × world == batchSize (the global batch)."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise BatchSplitError(
            f"hyperparameters.batchSize {batch_size} is not a multiple of microBatchSize {micro_batch_size} × world size {world_size}",
            hint=f"use a batchSize that is a multiple of {per_step}",
        )
    return batch_size // per_step


def check_batch(spec: Any, world: int | None = None) -> int:
    """The gradient accumulation of `spec` on `world` ranks (default: the spec's world size)."""
    hp = spec.hyperparameters
    return gradient_accumulation(hp.batch_size, hp.micro_batch_size, world_size(spec) if world is None else world)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def enabled(spec: Any) -> bool:
    return spec.deepspeed is not None and bool(spec.deepspeed.enabled)


def deepspeed_config(spec: Any, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON for `spec` (a FineTuneJobSpec with DeepSpeed enabled) trained on `world_size` ranks."""
    hp, ds = spec.hyperparameters, spec.deepspeed
    if not enabled(spec):
        raise ValueError("spec.deepspeed is not enabled")
    accum = gradient_accumulation(hp.batch_size, hp.micro_batch_size, world_size)
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.zero_stage > 0,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.zero_stage >= 2:
        zero["allgather_bucket_size"] = 5e8
    if ds.offload == "cpu" and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        })
        if ds.offload == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_batch_size": hp.micro_batch_size * accum * world_size,
        "train_micro_batch_size_per_gpu": hp.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, ds.overrides or {})
