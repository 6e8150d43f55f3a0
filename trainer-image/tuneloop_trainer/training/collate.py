"""Training examples and the two batch layouts.

- `FlatCollator` (padding-free): a micro-batch of records is concatenated into one row with
  per-record `position_ids`; transformers turns the position resets into a block-diagonal causal
  mask (sdpa/eager) or varlen kernels (flash-attention), so records never attend to each other and
  no compute is spent on padding. The first label of every record is -100 so no token is
  predicted across a record boundary.
- `PaddedCollator`: pad to the longest record of the micro-batch; with length-grouped sampling
  (records of similar length batched together) padding stays small, and attention keeps the
  cheap per-record causal shape. Without flash-attention's varlen kernels (CPU, sdpa) this beats
  the flat layout, whose dense block-diagonal mask computes attention across the whole row.
- `PackedCollator` (the GPU default): the flat row plus the record boundaries (`cu_seq_lens_q/k`,
  `max_length_q/k`) for the varlen attention of `attention.py` — no mask at all, no padding, attention
  only inside each record. `pack_by_tokens` packs records into rows of at most
  `hyperparameters.maxTokensPerBatch` tokens, one row per micro-batch.
All count the non-padding tokens they emit (`tokens`), which the progress callback turns into
tokens/s, and the attended (query, key) pairs of causal attention (`attn_pairs`, Σ L(L+1)/2 over
records) for the model-FLOPs estimate (`flops.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IGNORE = -100


class EncodedDataset:
    """A list of {"input_ids", "labels"} examples (torch Dataset protocol)."""

    def __init__(self, examples: list[dict[str, list[int]]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    @property
    def lengths(self) -> list[int]:
        return [len(e["input_ids"]) for e in self.examples]


def load_split(path: Path, tok: Any, max_len: int) -> EncodedDataset:
    """Encode DIR/data/<split>.jsonl (written by prepare); records are truncated to max_len as a last resort."""
    from ..dataset.encoding import encode

    out = []
    if path.exists():
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    ids, labels = encode(tok, json.loads(line))
                    out.append({"input_ids": ids[:max_len], "labels": labels[:max_len]})
    return EncodedDataset(out)


class FlatCollator:
    """Padding-free micro-batches. With `sparse_logits` (the default) the batch also names the
    positions whose next token is trained (`logits_to_keep`), so the model projects only those
    hidden states onto the vocabulary — prompt tokens never pay for the LM head and its softmax —
    and `labels` holds just their targets behind one -100 (`[-100, t1, …, tK]`: the Trainer's
    shifted token count stays K). Pair it with `sparse_logits_loss` as the Trainer's compute_loss_func.
    """

    def __init__(self, sparse_logits: bool = True) -> None:
        self.tokens = 0
        self.attn_pairs = 0
        self.sparse = sparse_logits

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            labels.append(IGNORE)
            labels.extend(f["labels"][1:])
            pos.extend(range(n))
            self.attn_pairs += n * (n + 1) // 2
        self.tokens += len(ids)
        batch = {"input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": torch.tensor([pos], dtype=torch.long)}
        return with_labels(batch, labels, self.sparse)


def with_labels(batch: dict[str, Any], labels: list[int], sparse: bool) -> dict[str, Any]:
    """Add the labels of one padding-free row. `sparse`: keep the LM head's logits only where a token is
    trained (`logits_to_keep`), with the labels shifted to match."""
    import torch

    if not sparse:
        batch["labels"] = torch.tensor([labels], dtype=torch.long)
        return batch
    keep = [t - 1 for t, lab in enumerate(labels) if lab != IGNORE]
    batch["logits_to_keep"] = torch.tensor(keep, dtype=torch.long)
    batch["labels"] = torch.tensor([[IGNORE] + [labels[t + 1] for t in keep]], dtype=torch.long)
    return batch


def sparse_logits_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy of the kept logits ([1, K, V]) against `labels[:, 1:]` ([1, K]); summed over the
    accumulated batch's K tokens like transformers' ForCausalLMLoss when num_items_in_batch is given."""
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    targets = labels[:, 1:].to(logits.device)
    logits = logits.float().reshape(-1, logits.shape[-1])
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE)
    loss = F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class PaddedCollator:
    """Pad to the longest record of the micro-batch. With `sparse_logits`, `logits_to_keep` names the
    positions where some record of the batch has a trained next token (prompts are usually a common
    prefix region), and `labels` holds just those targets behind one -100 column."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, max_length: int | None = None,
                 sparse_logits: bool = False):
        self.pad = pad_token_id
        self.multiple = pad_to_multiple_of
        self.max_length = max_length
        self.sparse = sparse_logits
        self.tokens = 0
        self.attn_pairs = 0

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = self.max_length or max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(features), width), self.pad, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
            self.tokens += n
            self.attn_pairs += n * (n + 1) // 2
        if not self.sparse:
            return {"input_ids": ids, "labels": labels, "attention_mask": mask}
        keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().flatten()
        targets = labels[:, keep + 1]
        lead = torch.full((len(features), 1), IGNORE, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "logits_to_keep": keep, "labels": torch.cat([lead, targets], dim=1)}


def _segments(f: dict[str, Any]) -> list[int]:
    return list(f.get("lengths") or [len(f["input_ids"])])


class PackedCollator:
    """Records (or pre-packed rows from `pack_by_tokens`) → one padding-free row with varlen-attention
    boundaries. Labels are sparse as in `FlatCollator` (`logits_to_keep` + `[-100, t1..tK]`) unless
    `sparse_logits=False`."""

    def __init__(self, sparse_logits: bool = True) -> None:
        self.sparse = sparse_logits
        self.tokens = 0
        self.attn_pairs = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        for f in features:
            start = 0
            for n in _segments(f):
                ids.extend(f["input_ids"][start:start + n])
                labels.append(IGNORE)
                labels.extend(f["labels"][start + 1:start + n])
                pos.extend(range(n))
                lens.append(n)
                start += n
        self.tokens += len(ids)
        self.attn_pairs += sum(n * (n + 1) // 2 for n in lens)
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        cu_t = torch.tensor(cu, dtype=torch.int32)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": torch.tensor([pos], dtype=torch.long),
            "cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t.clone(), "max_length_q": max(lens), "max_length_k": max(lens),
        }
        return with_labels(batch, labels, self.sparse)


def pack_by_tokens(ds: EncodedDataset, budget: int, seed: int = 0, window: int = 256) -> EncodedDataset:
    """Records shuffled with `seed`, then first-fit into rows of at most `budget` tokens (a record longer than the
    budget gets a row of its own). Each row is one example with `lengths` naming its records."""
    import random

    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(ds[i]["input_ids"])
        lo = max(0, len(rows) - window)  # only the newest rows are searched: linear time, still > 95 % full
        for r in range(lo, len(rows)):
            if room[r] >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(budget - n)
    out = []
    for row in rows:
        ids: list[int] = []
        labels: list[int] = []
        for i in row:
            ids.extend(ds[i]["input_ids"])
            labels.extend(ds[i]["labels"])
        out.append({"input_ids": ids, "labels": labels, "lengths": [len(ds[i]["input_ids"]) for i in row]})
    return EncodedDataset(out)
