"""LM head + cross-entropy without materialising [tokens × vocab] logits.

`linear_cross_entropy(hidden [N, H], weight [V, H], targets [N])` returns the summed cross-entropy of
`hidden @ weight.T` against `targets` (-100 ignored):

- Liger-kernel's fused Triton kernel on CUDA when `liger-kernel` is installed (TUNELOOP_LIGER=0 turns it off);
- otherwise `ChunkedLinearCrossEntropy`: rows in chunks of ~64 Mi logits; each chunk's logits, softmax and
  the gradients for hidden and weight are computed in the forward pass and the chunk is dropped, so
  memory holds one chunk, never N × V. Same value and gradients as `F.cross_entropy(F.linear(h, W), t)`
  (tests/trainer/test_packing.py checks both against the reference on CPU).

`install_fused_loss(model)` rebinds the causal-LM's `forward` (the instance's, not the class's) so that,
when labels are given, the decoder's hidden states go straight into that loss — only at the positions whose
next token is trained (`logits_to_keep` from the collators) — and no logits are returned. Without labels
(generation, evaluation) the model's own forward runs unchanged. Parameters partitioned by DeepSpeed ZeRO-3
go through the LM head module (its hooks gather them) and the standard cross-entropy instead.
"""

from __future__ import annotations

import types
from typing import Any

from ..settings import TrainerSettings

IGNORE = -100
_CHUNK_ELEMENTS = 1 << 26  # logits held at once (fp32: 256 MiB)
_liger_state = {"ok": True}


def _compute_dtype(x: Any):
    import torch

    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _chunk_rows(vocab: int) -> int:
    return max(64, _CHUNK_ELEMENTS // max(1, vocab))


def _make_function():
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, compute_dtype, chunk):
            need_h = ctx.needs_input_grad[0]
            need_w = ctx.needs_input_grad[1]
            need_b = bias is not None and ctx.needs_input_grad[2]
            n = hidden.shape[0]
            grad_h = torch.empty_like(hidden) if need_h else None
            acc_w = torch.promote_types(weight.dtype, torch.float32)
            grad_w = torch.zeros(weight.shape, dtype=acc_w, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc_w, device=bias.device) if need_b else None
            acc = torch.promote_types(compute_dtype, torch.float32)  # logits/softmax in fp32 (fp64 stays fp64)
            total = torch.zeros((), dtype=acc, device=hidden.device)
            with torch.autocast(hidden.device.type, enabled=False):
                w = weight.to(compute_dtype)
                for s in range(0, n, chunk):
                    h = hidden[s:s + chunk].to(compute_dtype)
                    t = targets[s:s + chunk]
                    logits = (h @ w.t()).to(acc)
                    if bias is not None:
                        logits += bias.to(acc)
                    valid = t != IGNORE
                    tt = t.masked_fill(~valid, 0).unsqueeze(1)
                    lse = torch.logsumexp(logits, dim=-1)
                    picked = logits.gather(1, tt).squeeze(1)
                    total += ((lse - picked) * valid).sum()
                    if not (need_h or need_w or need_b):
                        continue
                    g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                    g.scatter_add_(1, tt, -valid.to(g.dtype).unsqueeze(1))
                    g.mul_(valid.unsqueeze(1))
                    if need_b:
                        grad_b += g.sum(0)
                    gc = g.to(compute_dtype)
                    del g, logits
                    if need_h:
                        grad_h[s:s + chunk] = (gc @ w).to(hidden.dtype)
                    if need_w:
                        grad_w += (gc.t() @ h).to(grad_w.dtype)
            ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
            ctx.which = (need_h, need_w, need_b)
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx, grad_out):
            saved = iter(ctx.saved_tensors)
            need_h, need_w, need_b = ctx.which
            gh = next(saved) * grad_out if need_h else None  # a 0-dim factor keeps the hidden dtype
            gw = (next(saved) * grad_out).to(ctx.dtypes[0]) if need_w else None
            gb = (next(saved) * grad_out).to(ctx.dtypes[1]) if need_b else None
            return gh, gw, gb, None, None, None

    return ChunkedLinearCrossEntropy


_FN: Any = None


def chunked_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, bias: Any = None, chunk: int | None = None) -> Any:
    """Summed CE of hidden @ weight.T (+ bias) against targets, chunked over rows (see module doc)."""
    global _FN
    if _FN is None:
        _FN = _make_function()
    return _FN.apply(hidden, weight, bias, targets, _compute_dtype(hidden), chunk or _chunk_rows(weight.shape[0]))


def liger_available(device_type: str) -> bool:
    if device_type != "cuda" or not TrainerSettings.from_env().liger or not _liger_state["ok"]:
        return False
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def loss_backend(device_type: str) -> str:
    return "liger" if liger_available(device_type) else "chunked"


def linear_cross_entropy(hidden: Any, weight: Any, targets: Any, bias: Any = None) -> Any:
    """Summed cross-entropy of the LM head over `hidden` rows; Liger's kernel when available, else chunked."""
    if liger_available(hidden.device.type):
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        dt = _compute_dtype(hidden)
        try:
            return LigerFusedLinearCrossEntropyFunction.apply(
                hidden.to(dt), weight.to(dt), targets, bias, None, IGNORE, 0.0, 0.0, "sum")[0].float()
        except Exception as exc:  # noqa: BLE001  # an incompatible liger/triton build: fall back for the rest of the run
            import sys

            print(f"tuneloop train: liger fused cross-entropy failed ({type(exc).__name__}: {exc}); using the chunked loss",
                  file=sys.stderr)
            _liger_state["ok"] = False
    return chunked_linear_cross_entropy(hidden, weight, targets, bias)


def _causal_lm(model: Any) -> Any:
    """The transformers *ForCausalLM inside a peft wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def fusable(model: Any) -> bool:
    import torch

    lm = _causal_lm(model)
    head = getattr(lm, "lm_head", None)
    cfg = getattr(lm, "config", None)
    return (
        type(head) is torch.nn.Linear
        and hasattr(lm, "model")
        and not getattr(cfg, "final_logit_softcapping", None)
        and getattr(cfg, "logit_scale", None) is None
        and "lm_head" not in (getattr(lm, "_tuneloop_skip", ()) or ())
    )


def install_fused_loss(model: Any) -> bool:
    """Rebind the causal LM's forward to the fused loss (see module doc). False when the model's head is not a
    plain Linear (LoRA on lm_head, logit soft-capping/scaling): the caller keeps the standard loss."""
    if not fusable(model):
        return False
    lm = _causal_lm(model)
    if getattr(lm, "_tuneloop_fused_loss", False):
        return True
    original = lm.forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                            logits_to_keep=logits_to_keep, **kwargs)
        return fused_causal_lm_forward(self, input_ids, attention_mask, position_ids, inputs_embeds, labels, logits_to_keep, kwargs)

    lm.forward = types.MethodType(forward, lm)
    lm._tuneloop_fused_loss = True
    return True


def fused_causal_lm_forward(lm: Any, input_ids, attention_mask, position_ids, inputs_embeds, labels, logits_to_keep, kwargs):
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutputWithPast

    num_items = kwargs.pop("num_items_in_batch", None)
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                   use_cache=False, **kwargs)
    hidden = out.last_hidden_state
    labels = labels.to(hidden.device)
    if isinstance(logits_to_keep, torch.Tensor):
        # sparse labels from the collators: [-100, t1..tK] per row, the k-th target predicted from position keep[k]
        h = hidden[:, logits_to_keep.to(hidden.device)]
        targets = labels[:, 1:]
    else:
        h = hidden[:, :-1]
        targets = labels[:, 1:]
    h = h.reshape(-1, h.shape[-1])
    targets = targets.reshape(-1)
    head = lm.lm_head
    if hasattr(head.weight, "ds_id"):  # ZeRO-3 partitioned: the module's hooks gather the weight
        logits = head(h).float()
        total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    else:
        total = linear_cross_entropy(h, head.weight, targets, head.bias)
    if num_items is None:
        denom = (targets != IGNORE).sum().clamp(min=1)
    else:
        denom = num_items.to(total.device) if hasattr(num_items, "to") else num_items
    return CausalLMOutputWithPast(loss=total / denom)
