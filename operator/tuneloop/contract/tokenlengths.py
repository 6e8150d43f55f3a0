"""Token-length histograms in vLLM's buckets — what `prepare` records and the Rollout's drift watch compares.

vLLM exports `vllm:request_prompt_tokens` and `vllm:request_generation_tokens` as histograms whose
bounds are `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, 100, … up to the model's maximum
length (vllm/v1/metrics/loggers.py). `prepare` counts the train split in the same bounds, up to its
maximum sequence length; a served model with a different maximum length has a longer or shorter list of
the same bounds, and the drift watch compares the two on the bounds they share.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any


def vllm_buckets(max_value: int) -> list[int]:
    """vLLM's build_1_2_5_buckets: [1, 2, 5, 10, 20, 50, …] while <= max_value."""
    out: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return out
            out.append(value)
        exponent += 1


def histogram(values: Iterable[int], le: list[int]) -> list[int]:
    """Counts per bucket (not cumulative): bucket i holds le[i-1] < v <= le[i]; the last one is +Inf."""
    counts = [0] * (len(le) + 1)
    for v in values:
        counts[bisect_left(le, v)] += 1
    return counts


def token_lengths(prompt: list[int], generation: list[int], max_len: int) -> dict[str, Any]:
    """The wire form of `ModelVersion.spec.lineage.tokenLengths` (and of the data report's `token_lengths`)."""
    le = vllm_buckets(max(1, max_len))
    return {"le": le, "prompt": histogram(prompt, le), "generation": histogram(generation, le)}
