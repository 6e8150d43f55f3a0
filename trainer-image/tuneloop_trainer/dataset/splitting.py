"""Deterministic, leak-free train/validation/test split.

Records that share a prompt (same conversation before the last assistant turn, normalized) form a
group, and a group goes to one split only — so no prompt is in two splits. Groups are shuffled
with `random.Random(seed)` (independent of PYTHONHASHSEED) and assigned test → validation → train
until each split holds its fraction of the records. Inside a split, records keep source order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def _target(frac: float, n: int) -> int:
    if frac <= 0:
        return 0
    k = round(frac * n)
    return max(k, 1) if n >= 3 else k


def split_groups(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], validation: float, test: float,
                 seed: int) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(key(r), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n = len(records)
    want = {"test": _target(test, n), "validation": _target(validation, n)}
    got = {"test": 0, "validation": 0}
    assign: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for idx in order:
        dest = "train"
        for split in ("test", "validation"):
            if got[split] < want[split]:
                dest = split
                break
        if dest != "train":
            got[dest] += len(idx)
        assign[dest].extend(idx)
    return {s: [records[i] for i in sorted(ix)] for s, ix in assign.items()}
