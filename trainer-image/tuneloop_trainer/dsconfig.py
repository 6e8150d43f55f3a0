"""The DeepSpeed config generated from the spec — pure, so the operator can render it into a ConfigMap.

    deepspeed_config(spec, world_size) -> dict

Batch sizes are concrete (they must agree with the TrainingArguments the train stage builds from
the same spec and world size); precision and clipping stay "auto" so the HF Trainer fills them.
`spec.deepspeed.overrides` is deep-merged last.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError


def gradient_accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Steps of accumulation so that micro × accumulation × world == batchSize (the global batch)."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise ConfigError(
            f"hyperparameters.batchSize {batch_size} is not a multiple of microBatchSize {micro_batch_size} × world size {world_size}",
            hint=f"use a batchSize that is a multiple of {per_step}",
        )
    return batch_size // per_step


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def deepspeed_config(spec: Any, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON for `spec` (a FineTuneJobSpec) trained on `world_size` ranks."""
    hp, ds = spec.hyperparameters, spec.deepspeed
    if ds is None or not ds.enabled:
        raise ConfigError("spec.deepspeed is not enabled")
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
