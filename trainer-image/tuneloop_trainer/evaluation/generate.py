"""Batched generation and reference log-likelihood for evaluation (torch imported lazily).

Prompts are rendered with the tokenizer's chat template, sorted by length so each batch pads
little, left-padded (decoder-only models continue from the right edge), generated together, and
returned in the caller's order. Timing covers tokenization, generation and decoding of each batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Generations:
    texts: list[str]
    new_tokens: list[int]  # generated tokens per prompt, up to and including the first stop token
    seconds: float  # wall time of all batches
    batch_seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # per prompt: its batch's wall time

    @property
    def tokens_per_second(self) -> float | None:
        return sum(self.new_tokens) / self.seconds if self.seconds > 0 else None

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "prompts": len(self.texts),
            "generatedTokens": sum(self.new_tokens),
            "seconds": round(self.seconds, 3),
            "tokensPerSecond": round(self.tokens_per_second, 2) if self.tokens_per_second else None,
            "latencyMeanSeconds": round(sum(lat) / len(lat), 3) if lat else None,
            "latencyP95Seconds": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
            "batches": len(self.batch_seconds),
        }


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """eos of the tokenizer and the model's generation config, plus the chat end-of-turn marker."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    if model is not None and getattr(model, "generation_config", None) is not None:
        candidates.append(model.generation_config.eos_token_id)
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        candidates.append(tid)
    for c in candidates:
        for tid in c if isinstance(c, (list, tuple)) else [c]:
            if isinstance(tid, int) and tid >= 0 and tid not in ids:
                ids.append(tid)
    return ids


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation up to (not including) the answer, rendered with the chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


MIN_SHARED_PREFIX = 8  # tokens; below this a shared prompt prefix is not worth a cache copy per batch


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every prompt starts with (e.g. the system prompt), leaving each at least one of its own."""
    if len(ids) < 2:
        return 0
    first = ids[0]
    n = min(len(r) for r in ids) - 1
    for pos in range(max(n, 0)):
        tid = first[pos]
        if any(r[pos] != tid for r in ids):
            return pos
    return max(n, 0)


def _prefix_cache(model: Any, prefix_ids: list[int], prefix_len: int, device: Any) -> tuple[Any, int]:
    """The KV cache of a prefix every row shares, computed once, and its length; (None, 0) when it is too short
    to be worth a cache copy per batch."""
    import torch

    if prefix_len < MIN_SHARED_PREFIX:
        return None, 0
    with torch.inference_mode():
        prefix = torch.tensor([prefix_ids[:prefix_len]], device=device)
        return model(input_ids=prefix, use_cache=True).past_key_values, prefix_len


def _cache_for(prefix_cache: Any, rows: int) -> dict[str, Any]:
    """`past_key_values` for a batch of `rows`: a copy of the shared prefix's cache ({} without one)."""
    import copy

    if prefix_cache is None:
        return {}
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(rows)
    return {"past_key_values": cache}


def _decoding(decoding: str, seed: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate` keyword arguments of a decoding: greedy, or sampling (seeded here)."""
    import torch

    if decoding == "sample":
        torch.manual_seed(seed)
        return {**kwargs, "do_sample": True, "temperature": 0.7, "top_p": 0.95}
    return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def _left_padded(rows: list[list[int]], prefix_len: int, pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) laid out prefix | left padding | own tokens, the padding masked out."""
    import torch

    width = max(len(r) - prefix_len for r in rows)
    input_ids = torch.full((len(rows), prefix_len + width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for r, ids in enumerate(rows):
        own = ids[prefix_len:]
        input_ids[r, :prefix_len] = torch.tensor(ids[:prefix_len], dtype=torch.long)
        attention[r, :prefix_len] = 1
        input_ids[r, prefix_len + width - len(own) :] = torch.tensor(own, dtype=torch.long)
        attention[r, prefix_len + width - len(own) :] = 1
    return input_ids, attention


def _until_stop(row: list[int], stops: list[int]) -> int:
    """How many generated tokens count: up to and including the first stop token."""
    for pos, tid in enumerate(row):
        if tid in stops:
            return pos + 1
    return len(row)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    decoding: str = "greedy",
    seed: int = 0,
    share_prefix: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Generations:
    """Generate for already-rendered prompt strings; `on_batch(done, total)` after each batch.

    share_prefix: when all prompts start with the same tokens (a common system prompt), their KV
    cache is computed once and copied into every batch instead of being recomputed per prompt;
    rows are laid out prefix | left padding | own tokens, with the padding masked out and position
    ids following the mask, so the outputs are those of plain left-padded generation.
    """
    import torch

    if not prompts:
        return Generations([], [], 0.0)
    started = time.perf_counter()
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    texts: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    latencies: list[float] = [0.0] * len(prompts)
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    kwargs = _decoding(decoding, seed, {"max_new_tokens": max_new_tokens, "eos_token_id": stops, "pad_token_id": pad_id})
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batch_seconds: list[float] = []
    try:
        prefix_cache, prefix_len = _prefix_cache(model, ids[0], shared_prefix_length(ids) if share_prefix else 0, device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            input_ids, attention = _left_padded([ids[i] for i in idx], prefix_len, pad_id)
            extra = _cache_for(prefix_cache, len(idx))
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **extra, **kwargs)
            new = out[:, input_ids.shape[1] :].tolist()
            for row, i in zip(new, idx):
                n = _until_stop(row, stops)
                counts[i] = n
                texts[i] = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            dt = time.perf_counter() - t0
            batch_seconds.append(dt)
            for i in idx:
                latencies[i] = dt
            if on_batch:
                on_batch(min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return Generations(texts, counts, time.perf_counter() - started, batch_seconds, latencies)


def reference_pair(tokenizer: Any, record: dict[str, Any]) -> tuple[str, str]:
    """(context, reference) strings whose concatenation is the rendered record.

    Chat: the conversation before the last (assistant) turn with the generation prompt, and the
    rest of the rendered conversation (the end-of-turn marker included, trailing newline not).
    Text records: no context, the whole text is the reference.
    """
    if "messages" not in record:
        return "", record.get("text", "")
    messages = record["messages"]
    prompt = chat_prompt(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    answer = full[len(prompt) :].rstrip("\n") if full.startswith(prompt) else messages[-1]["content"]
    return prompt, answer


def _scored_rows(tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[list[tuple[list[int], int]], list[int]]:
    """(token ids, context length) of every pair with something to score, and the index of the pair each came from."""
    rows: list[tuple[list[int], int]] = []
    owners: list[int] = []
    for i, (prompt, answer) in enumerate(pairs):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not p_ids and tokenizer.bos_token_id is not None:
            p_ids = [tokenizer.bos_token_id]
        if a_ids and p_ids:
            rows.append((p_ids + a_ids, len(p_ids)))
            owners.append(i)
        elif len(a_ids) > 1:  # no context at all: the first token is given, the rest scored
            rows.append((a_ids, 1))
            owners.append(i)
    return rows, owners


def reference_nll(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    *,
    batch_size: int = 8,
    share_prefix: bool = True,
    per_item: list[tuple[float, int]] | None = None,
) -> tuple[float, int]:
    """Sum of negative log-likelihoods of the reference tokens given their context, and their count.

    share_prefix: a context prefix common to every record (a system prompt) is run once and its
    KV cache reused by every batch, as in `generate`; the sums are the same.
    per_item: when given, filled with one (nll, tokens) per pair, in the pairs' order ((0.0, 0) for a pair
    with nothing to score), for per-item intervals.
    """
    import torch
    import torch.nn.functional as F

    if per_item is not None:
        per_item[:] = [(0.0, 0)] * len(pairs)
    rows, owners = _scored_rows(tokenizer, pairs)
    if not rows:
        return 0.0, 0
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The shared prefix must end inside every context, so each row still predicts its first answer token.
    prefix_len = shared_prefix_length([ids[:n_ctx] for ids, n_ctx in rows]) if share_prefix else 0
    nll, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        prefix_cache, prefix_len = _prefix_cache(model, rows[0][0], prefix_len, device)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk) - prefix_len
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), prefix_len + width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for r, (ids, n_ctx) in enumerate(chunk):
                own = ids[prefix_len:]
                input_ids[r, : len(own)] = torch.tensor(own)
                attention[r, : prefix_len + len(own)] = 1
                labels[r, n_ctx - prefix_len : len(own)] = torch.tensor(ids[n_ctx:])
            kw = _cache_for(prefix_cache, len(chunk))
            with torch.inference_mode():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=bool(kw), **kw).logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            losses = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="none").view(len(chunk), -1)
            scored = (labels[:, 1:] != -100).to(losses.device)
            nll += losses.sum().item()
            count += int(scored.sum().item())
            if per_item is not None:
                for r, (row_nll, row_n) in enumerate(zip(losses.sum(dim=1).tolist(), scored.sum(dim=1).tolist())):
                    per_item[owners[start + r]] = (row_nll, int(row_n))
    finally:
        model.train(was_training)
    return nll, count
