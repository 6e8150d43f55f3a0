"""Variable-length ("varlen") attention for packed rows, registered through transformers' AttentionInterface.

Packed rows hold several records back to back; `position_ids` restart at 0 for every record and the
collator (`collate.PackedCollator`) passes `cu_seq_lens_q/k` (int32 record boundaries) and
`max_length_q/k`. Attention never crosses a record boundary and no [T × T] mask is ever built:

- CUDA + `flash_attn` installed  → `flash_attn_varlen_func` (FlashAttention-2/3 varlen kernels)
- CUDA + torch ≥ 2.10            → `torch.nn.attention.varlen.varlen_attn` (PyTorch's own FlashAttention kernel)
- otherwise (CPU, older torch)   → one causal `scaled_dot_product_attention` per record (exact; no padding,
                                   no dense block-diagonal mask)

The implementation name is `tuneloop_varlen`. It has no entry in transformers' mask interface, so
`create_causal_mask` returns the collator's mask as is (None for packed rows): the dense
block-diagonal mask transformers would otherwise build from the position resets is never made.

    from tuneloop_trainer.training.attention import use_varlen_attention
    use_varlen_attention(model)         # before peft wraps it; returns the backend name
"""

from __future__ import annotations

import inspect
from typing import Any

from ..settings import TrainerSettings

NAME = "tuneloop_varlen"
# decided once, eagerly, by use_varlen_attention() (the hot path stays free of probes, env reads and try blocks, so
# torch.compile can trace it): the kernel per device type, grouped-query support, torch's varlen signature
_state: dict[str, Any] = {"gqa_native": True, "kind": {}, "window_size": True}


def backend(device_type: str = "cuda") -> str:
    """Which kernel the varlen attention uses on `device_type`: flash_attn, torch_varlen or sdpa_loop."""
    forced = TrainerSettings.from_env().varlen_backend
    if forced:
        return forced
    if device_type != "cuda":
        return "sdpa_loop"
    try:
        import flash_attn  # noqa: F401

        return "flash_attn"
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        return "torch_varlen"
    except ImportError:
        return "sdpa_loop"


def _cu_seqlens(kwargs: dict[str, Any], batch: int, length: int, device: Any) -> tuple[Any, int]:
    """(int32 cumulative record boundaries over the flattened B×T tokens, longest record)."""
    import torch

    cu, mx = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is not None:
        cu = cu.to(device=device, dtype=torch.int32)
        return cu, int(mx) if mx is not None else int((cu[1:] - cu[:-1]).max())
    pos = kwargs.get("position_ids")
    if pos is not None:  # a record starts wherever the position restarts at 0 (row starts included)
        flat = pos.expand(batch, -1).reshape(-1) if pos.shape[0] != batch else pos.reshape(-1)
        starts = (flat == 0).nonzero().flatten().to(torch.int32)
        if starts.numel() == 0 or int(starts[0]) != 0:
            starts = torch.cat([torch.zeros(1, dtype=torch.int32, device=flat.device), starts])
        cu = torch.cat([starts, torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device)]).to(device)
        return cu, int((cu[1:] - cu[:-1]).max())
    cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
    return cu, length


def _sdpa_loop(q, k, v, cu, scaling):
    """q [T, Hq, D], k/v [T, Hk, D] → [T, Hq, D]; one causal SDPA per record."""
    import torch
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for s, e in zip(bounds, bounds[1:]):
        if e <= s:
            continue
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))  # [H, L, D]
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling).transpose(0, 1)
    return out


def _torch_varlen(q, k, v, cu, mx, scaling):
    from torch.nn.attention.varlen import varlen_attn

    if _state["window_size"]:
        return varlen_attn(q, k, v, cu, cu, mx, mx, scale=scaling, window_size=(-1, 0))
    return varlen_attn(q, k, v, cu, cu, mx, mx, is_causal=True, scale=scaling)


def _flash(q, k, v, cu, mx, scaling, dropout):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, dropout_p=dropout, softmax_scale=scaling, causal=True)


def varlen_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: query [B, Hq, T, D], key/value [B, Hk, T, D] → ([B, T, Hq, D], None)."""
    import torch

    if attention_mask is not None and attention_mask.dim() == 4:
        raise ValueError("tuneloop_varlen attention takes packed rows (position_ids / cu_seq_lens), not a 4D mask")
    b, hq, t, d = query.shape
    hk = key.shape[1]
    if scaling is None:
        scaling = d ** -0.5
    cu, mx = _cu_seqlens(kwargs, b, t, query.device)
    q = query.transpose(1, 2).reshape(b * t, hq, d)
    k = key.transpose(1, 2).reshape(b * t, hk, d)
    v = value.transpose(1, 2).reshape(b * t, hk, d)
    kind = _state["kind"].get(query.device.type) or backend(query.device.type)
    in_dtype = q.dtype
    if kind == "sdpa_loop":
        out = _sdpa_loop(q, k, v, cu, scaling)
    else:
        if in_dtype not in (torch.float16, torch.bfloat16):  # flash kernels: 16-bit only (fp32 master weights + autocast)
            target = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = q.to(target), k.to(target), v.to(target)
        if hq != hk and not _state["gqa_native"]:  # a kernel without grouped-query support: repeat the KV heads
            k, v = k.repeat_interleave(hq // hk, 1), v.repeat_interleave(hq // hk, 1)
        if kind == "flash_attn":
            out = _flash(q, k, v, cu, mx, scaling, dropout if module.training else 0.0)
        else:
            out = _torch_varlen(q, k, v, cu, mx, scaling)
        if not torch.is_autocast_enabled(query.device.type):
            out = out.to(in_dtype)
    return out.reshape(b, t, hq, d), None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    return NAME


def use_varlen_attention(model: Any) -> str | None:
    """Switch `model` (a transformers PreTrainedModel using the attention interface) to tuneloop_varlen.
    Returns the kernel it will use, or None when the model cannot switch (it keeps its attention)."""
    register()
    try:
        model.set_attn_implementation(NAME)
    except Exception:  # noqa: BLE001  # a model without the functional attention interface
        return None
    if getattr(model.config, "_attn_implementation", None) != NAME:
        return None
    device = "cuda" if _cuda() else "cpu"
    kind = backend(device)
    _state["kind"][device] = kind
    if device == "cuda" and kind != "sdpa_loop":
        _probe(kind)
    return kind


def _probe(kind: str) -> None:
    """Once, eagerly: torch's varlen signature, and whether the kernel takes fewer KV heads than query heads."""
    import torch

    if kind == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        _state["window_size"] = "window_size" in inspect.signature(varlen_attn).parameters
    q = torch.randn(8, 4, 64, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(8, 2, 64, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device="cuda")
    try:
        _flash(q, kv, kv, cu, 5, 0.125, 0.0) if kind == "flash_attn" else _torch_varlen(q, kv, kv, cu, 5, 0.125)
        _state["gqa_native"] = True
    except RuntimeError:
        _state["gqa_native"] = False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
