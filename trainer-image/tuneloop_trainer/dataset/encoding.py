"""Normalized record → token ids and labels with the base model's own tokenizer and chat template.

Loss only on what the model should learn to say: labels are -100 everywhere except the assistant
turns (chat, prompt-completion, instruction: each assistant message including its end-of-turn
marker) or the whole text (format text, plus eos). The assistant spans are found by rendering the
conversation prefix with `add_generation_prompt=True` — which holds for every chat template that
renders prefixes as prefixes (Llama 3, ChatML/SmolLM2, Mistral, Qwen, Gemma) — and mapping the
character spans to tokens through the fast tokenizer's offsets.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


class EncodingError(ValueError):
    """The template or tokenizer cannot encode this record as asked."""


def render(tok: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tok: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(full rendered text, [(start, end) character spans of assistant turns])."""
    full = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tok, messages[:i], generation_prompt=True) if i else ""
        upto = render(tok, messages[: i + 1])
        if not full.startswith(upto) or not upto.startswith(before):
            raise EncodingError("the chat template does not render conversation prefixes as prefixes; cannot mask non-assistant tokens")
        spans.append((len(before), len(upto)))
    return full, spans


def encode(tok: Any, record: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one normalized record; no truncation (prepare rejects long records)."""
    if "text" in record:
        ids = tok(record["text"], add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            ids = ids + [tok.eos_token_id]
        return ids, list(ids)
    if not getattr(tok, "chat_template", None):
        raise EncodingError("the base model's tokenizer has no chat template; use dataset.format text or a chat/instruct model")
    text, spans = assistant_spans(tok, record["messages"])
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE] * len(ids)
    j = 0
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and e > spans[j][0] and s < spans[j][1]:
            labels[t] = ids[t]
    return ids, labels


def count_tokens(tok: Any, record: dict[str, Any]) -> tuple[int, int]:
    """(total tokens, trained tokens) of one record."""
    ids, labels = encode(tok, record)
    return len(ids), sum(1 for x in labels if x != IGNORE)
