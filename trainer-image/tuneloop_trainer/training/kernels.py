"""What runs around the matmuls of a training step on a GPU (bench/trainer/README.md has the measurements).

A LoRA step on one GPU is mostly *not* matmuls: the profile of the 1B shape on an H200 showed ~4 700 kernel
launches per step, host time 2.4× the GPU's busy time, and of the GPU time only 36 % in matmuls — 20 % dtype
casts, 23 % element-wise glue (RMSNorm, RoPE, SwiGLU, LoRA scaling), 8 % LoRA dropout. Three remedies, each
measured and each with a clean fallback:

- `adapter_input_casts_off(model)`: peft keeps LoRA weights in fp32 on a bf16/fp16 model and casts every
  adapter's *input* [tokens × hidden] to fp32, which autocast then casts back to bf16 for the matmul — two
  copies of the activations per adapter and pass. Under mixed precision autocast already chooses the matmul
  dtype, so the input cast is switched off while training (peft's `cast_input_dtype_enabled`), and restored
  afterwards. The adapters' weights, gradients and optimizer state stay fp32.
- `fused_ops(model)`: Liger-kernel's fused RMSNorm, SwiGLU and RoPE Triton kernels on CUDA for Llama-family
  models (one kernel where eager PyTorch launches 3–10), bound to this model instance only (RoPE: the modelling
  module's function, restored by the returned undo). Used where measured to pay (`fused_ops_wanted`: token-budget
  rows of >= 4096 tokens); off without CUDA, without liger-kernel, for other model families, and when the layers
  are compiled (inductor fuses the same ops). TUNELOOP_FUSED_OPS=1/0 overrides.
- `compile_plan(...)` / `compile_layers(model)`: torch.compile of each decoder layer (hyperparameters.compile):
  fuses everything between the matmuls and cuts the launches; it costs a compile at the first steps, so `auto`
  turns it on only where it was measured to pay: LoRA on CUDA without DeepSpeed, for runs of at least
  COMPILE_MIN_STEPS optimizer steps (the measured break-even was ~450–1 600 steps). Its cache lives in the work
  directory (`compile_cache`), so a resumed pod does not compile from scratch.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from typing import Any

from tuneloop.contract import layout

from ..settings import TrainerSettings

# `auto` compiles runs of at least this many optimizer steps. Measured on an H100 (bench/trainer/README.md, run 4):
# the compile took 65 s (8B, 4096-token rows) and 16 s (1B, 16k rows) and then saved 0.042 s and 0.035 s per step
# against the uncompiled default — it pays back after ~1 600 and ~450 steps.
COMPILE_MIN_STEPS = 2000
# Liger's fused ops pay on big micro-batches and cost on small ones (Triton's launch overhead on a host-bound step),
# measured on an H100: +22 % (8B, 4096-token rows), +33 % (1B, 16k-token rows); -11 % / -17 % (1B, 16 records of the
# mixed / quickstart sets, ~3.7k / ~1.6k tokens). So by default they are used for token-budget rows of at least:
FUSED_OPS_MIN_ROW_TOKENS = 4096
_LLAMA_LIKE = ("llama", "mistral", "qwen2")


def inner_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: Any) -> list[Any]:
    base = inner_model(model)
    return list(getattr(getattr(base, "model", None), "layers", None) or [])


# -- adapter input casts -------------------------------------------------------------------------------------------

def adapter_input_casts_off(model: Any) -> Callable[[], None]:
    """Stop peft casting each adapter's input to the adapter dtype; returns the undo. Call only under autocast."""
    changed = []
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", None) is True:
            module.cast_input_dtype_enabled = False
            changed.append(module)

    def undo() -> None:
        for m in changed:
            m.cast_input_dtype_enabled = True

    return undo


# -- Liger's fused RMSNorm / SwiGLU / RoPE ----------------------------------------------------------------------------

def fused_ops_wanted(row_tokens: int | None) -> bool:
    """Default: on for token-budget rows (hyperparameters.maxTokensPerBatch) of at least FUSED_OPS_MIN_ROW_TOKENS;
    TUNELOOP_FUSED_OPS=1/0 overrides."""
    forced = TrainerSettings.from_env().fused_ops
    if forced is not None:
        return forced
    return row_tokens is not None and row_tokens >= FUSED_OPS_MIN_ROW_TOKENS  # (the threshold is positive: 0 is off too)


def fused_ops_available(device: str) -> bool:
    if device != "cuda" or TrainerSettings.from_env().fused_ops is False:
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # noqa: BLE001 — not installed, or no Triton for this GPU
        return False
    return True


def fused_ops(model: Any, device: str) -> tuple[str | None, Callable[[], None]]:
    """Bind Liger's RMSNorm, SwiGLU and RoPE kernels to this model; returns (what was fused or None, undo)."""
    noop: Callable[[], None] = lambda: None  # noqa: E731
    base = inner_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", "")
    layers = decoder_layers(model)
    if model_type not in _LLAMA_LIKE or not layers or not fused_ops_available(device):
        return None, noop
    from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP, liger_rotary_pos_emb

    if getattr(base.config, "hidden_act", "silu") not in ("silu", "swish"):
        return None, noop
    bound: list[tuple[Any, str]] = []

    def bind(module: Any, name: str, fn: Any) -> None:
        module.__dict__[name] = types.MethodType(fn, module)
        bound.append((module, name))

    def rms(module: Any) -> None:
        if module is None or getattr(module, "weight", None) is None:
            return
        module.variance_epsilon = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None) or 1e-6
        module.offset, module.casting_mode, module.in_place, module.row_mode = 0.0, "llama", True, None
        module.impl = module.mode = None
        bind(module, "forward", LigerRMSNorm.forward)

    rms(getattr(getattr(base, "model", None), "norm", None))
    for layer in layers:
        rms(getattr(layer, "input_layernorm", None))
        rms(getattr(layer, "post_attention_layernorm", None))
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
            bind(mlp, "forward", LigerSwiGLUMLP.forward)
    modelling = sys.modules.get(type(layers[0]).__module__)
    original_rope = getattr(modelling, "apply_rotary_pos_emb", None)
    if modelling is not None and original_rope is not None:
        setattr(modelling, "apply_rotary_pos_emb", liger_rotary_pos_emb)  # a module attribute mypy cannot see

    def undo() -> None:
        for module, name in bound:
            module.__dict__.pop(name, None)
        if modelling is not None and original_rope is not None:
            setattr(modelling, "apply_rotary_pos_emb", original_rope)

    return "liger:rms_norm,swiglu,rope", undo


# -- torch.compile per decoder layer ----------------------------------------------------------------------------------

def compile_plan(setting: str, *, device: str, method: str, deepspeed: bool, planned_steps: int) -> tuple[bool, str]:
    """(compile?, why) for hyperparameters.compile; TUNELOOP_COMPILE=1/0 overrides (benchmarks)."""
    forced = TrainerSettings.from_env().compile
    if forced is not None:
        return forced, f"{layout.ENV_COMPILE}={int(forced)}"
    if setting == "on":
        return True, "compile: on"
    if setting == "off":
        return False, "compile: off"
    if device != "cuda":
        return False, "auto: not on CPU (not measured to pay there)"
    if method != "lora":
        return False, f"auto: method {method} (compile measured for LoRA only)"
    if deepspeed:
        return False, "auto: not with DeepSpeed"
    if planned_steps < COMPILE_MIN_STEPS:
        return False, f"auto: {planned_steps} steps < {COMPILE_MIN_STEPS} (the compile would not pay back)"
    return True, f"auto: LoRA on CUDA, {planned_steps} steps"


def compile_cache(workdir: Any, node_rank: int) -> str | None:
    """Keep inductor's caches (compiled graphs, Triton kernels) in the job's work directory, one per node, so a pod
    that resumes from a checkpoint reuses the compile instead of paying it again. An explicit
    TORCHINDUCTOR_CACHE_DIR wins. Returns the directory used (None: the user's)."""
    from pathlib import Path

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != _inductor_default_cache():
        return None  # the user's (inductor writes its default into the environment once it is first used)

    from tuneloop.contract.layout import COMPILE_CACHE_DIR

    path = Path(workdir) / COMPILE_CACHE_DIR / f"node-{node_rank}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return str(path)


def _inductor_default_cache() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_layers(model: Any) -> int:
    """torch.compile each decoder layer (dynamic shapes: packed rows vary in length); returns how many."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
