"""Model FLOPs and model-FLOPs utilisation (MFU), from the model's config and the tokens trained.

Per trained token (every non-padding token of the micro-batches, prompt tokens included):

    dense  = k · N                      N = parameters of every matmul the token passes through: all
                                        decoder linear layers + the LM head (the input embedding is a
                                        lookup and not counted); LoRA adapters are added to N
             k = 6 for full fine-tuning (forward 2, input gradients 2, weight gradients 2);
             k = 4 for LoRA / QLoRA on the frozen weights (no weight gradients), 6 on the adapters
    attn   = 12 · n_layers · d_attn · c  d_attn = heads × head_dim; c = mean causal context per token,
                                        Σ L(L+1)/2 / Σ L over the records (QKᵀ and AV, 2 FLOPs per
                                        multiply-add each, forward + 2× for backward)

MFU = (dense + attn) × tokens / seconds / (GPUs × peak). The peak is the GPU's dense bf16/fp16 tensor
rate from the table below (H100/H200 SXM: 989 TFLOP/s) or TUNELOOP_PEAK_TFLOPS. This is the
"model FLOPs" convention (PaLM, Megatron): work the tokens need, not what a layout happens to compute
— padding, recomputation (gradient checkpointing) and the LM head on prompt tokens that the trainer
skips are not credited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..settings import TrainerSettings

# dense bf16/fp16 tensor-core TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10G", 125.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 6000 Ada", 364.0),
    ("V100", 125.0), ("T4", 65.0),
]


def peak_tflops(device_name: str | None = None) -> float | None:
    """Dense 16-bit peak of the local GPU (TUNELOOP_PEAK_TFLOPS overrides); None on CPU or an unknown GPU."""
    forced = TrainerSettings.from_env().peak_tflops
    if forced is not None:
        return forced
    if device_name is None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            device_name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001
            return None
    for key, tf in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tf
    return None


@dataclass(frozen=True)
class FlopsModel:
    frozen_params: int       # matmul parameters without weight gradients (LoRA base)
    trained_params: int      # matmul parameters with weight gradients (full: all; LoRA: the adapters)
    n_layers: int
    d_attn: int

    def dense_per_token(self) -> float:
        return 4.0 * self.frozen_params + 6.0 * self.trained_params

    def attention_per_token(self, mean_context: float) -> float:
        return 12.0 * self.n_layers * self.d_attn * mean_context

    def per_token(self, mean_context: float) -> float:
        return self.dense_per_token() + self.attention_per_token(mean_context)

    def flops(self, tokens: int, attn_pairs: int) -> float:
        """Model FLOPs of training on `tokens` tokens whose records attend `attn_pairs` causal (q, k) pairs."""
        return self.dense_per_token() * tokens + 12.0 * self.n_layers * self.d_attn * attn_pairs


def _config_dims(config: Any) -> tuple[int, int]:
    cfg = getattr(config, "text_config", None) or config
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", 0) or (hidden // heads if heads else 0))
    return layers, heads * head_dim


def flops_model(model: Any) -> FlopsModel:
    """Count the matmul parameters of `model` (a transformers model, possibly peft-wrapped): every 2-D weight
    except the input embedding; 4-bit weights count by their logical size."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    emb_w = getattr(emb, "weight", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    head_w = getattr(head, "weight", None)
    frozen = trained = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 and not hasattr(p, "quant_state"):
            continue
        n = p.numel()
        if hasattr(p, "quant_state"):  # bitsandbytes Params4bit: packed storage
            shape = getattr(p.quant_state, "shape", None)
            n = int(torch.Size(shape).numel()) if shape is not None else n * 2
        elif hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3 partitioned
            n = int(p.ds_numel)
        if emb_w is not None and p is emb_w and not (head_w is not None and head_w is emb_w):
            continue
        if p.requires_grad:
            trained += n
        else:
            frozen += n
    if head_w is not None and emb_w is not None and head_w is emb_w:
        pass  # tied: counted once, as the LM head
    layers, d_attn = _config_dims(base.config)
    return FlopsModel(frozen, trained, layers, d_attn)


def mfu(flops: float, seconds: float, gpus: int, peak: float | None) -> float | None:
    if not peak or seconds <= 0 or gpus <= 0:
        return None
    return flops / seconds / (gpus * peak * 1e12)
