"""The DeepSpeed config for the train stage: `tuneloop.contract.deepspeed` (the operator shows the
same JSON in the job's ConfigMap), with its batch-split refusal as the trainer's ConfigError (exit 42).

    deepspeed_config(spec, world_size) -> dict
"""

from __future__ import annotations

from typing import Any

from tuneloop.contract import deepspeed as _contract
from tuneloop.contract.deepspeed import deep_merge

from ..errors import ConfigError

__all__ = ["deep_merge", "deepspeed_config", "gradient_accumulation"]


def gradient_accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Steps of accumulation so that micro × accumulation × world == batchSize (the global batch)."""
    try:
        return _contract.gradient_accumulation(batch_size, micro_batch_size, world_size)
    except _contract.BatchSplitError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


def deepspeed_config(spec: Any, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON for `spec` (a FineTuneJobSpec) trained on `world_size` ranks."""
    if not _contract.enabled(spec):
        raise ConfigError("spec.deepspeed is not enabled")
    try:
        return _contract.deepspeed_config(spec, world_size)
    except _contract.BatchSplitError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None
