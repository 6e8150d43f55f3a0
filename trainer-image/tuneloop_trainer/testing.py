"""Test helpers shared by every test tier: a tiny random Llama with a small tokenizer, and tiny data.

    from tuneloop_trainer.testing import make_tiny_model
    model_dir = make_tiny_model(tmp_path / "tiny")      # baseModel: {path: str(model_dir)}

The model has 2 layers and hidden size 64; the tokenizer is a byte-level BPE trained on the fly
(vocabulary ≤ 2k) with a chat template, `<|im_start|>`/`<|im_end|>` turn markers (SmolLM2 style),
`<|im_end|>` as eos and `<|pad|>` as pad. Nothing is downloaded. Building takes ~1 s.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an cat dog model train data token loss step learning rate batch answer question user assistant "
    "system hello world please reply with yes no json list number one two three four five six seven eight nine "
    "ten red green blue kubernetes pod node gpu cluster job fine tune adapter lora weight eval test split seed "
    "what is how do i reset my password order ship refund thanks help support ticket account login error"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A small deterministic English-ish corpus to train the tokenizer on."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 20))) for _ in range(n)]
    lines += [w.capitalize() + "?" for w in _WORDS] + ["{\"answer\": 42}", "0 1 2 3 4 5 6 7 8 9 . , ! ? : ;"]
    return lines


def make_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on `corpus()`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(
    directory: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    vocab_size: int = 1024,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Save a tiny random LlamaForCausalLM + tokenizer with save_pretrained; returns the directory.

    Idempotent: an existing complete directory is returned as is.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def chat_records(n: int = 40, seed: int = 0, *, system: bool = False) -> list[dict[str, Any]]:
    """`n` distinct, learnable chat records: the answer is a deterministic function of the question."""
    rng = random.Random(seed)
    colors = ["red", "green", "blue"]
    out = []
    for i in range(n):
        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
        messages = [
            {"role": "user", "content": f"question {i} what is {a} {b}"},
            {"role": "assistant", "content": f"the answer is {colors[i % 3]} {a}"},
        ]
        if system:
            messages.insert(0, {"role": "system", "content": "reply with one line"})
        out.append({"messages": messages})
    return out


def write_jsonl(path: str | Path, records: list[Any]) -> Path:
    """Write records (dicts, or raw strings written verbatim) one per line."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return p


def tiny_spec(model_dir: str | Path, data_file: str | Path, output: str | Path, **overrides: Any) -> dict[str, Any]:
    """A bare FineTuneJob spec (wire form) for a fast CPU run; `overrides` are deep-merged."""
    spec: dict[str, Any] = {
        "baseModel": {"path": str(model_dir)},
        "dataset": {
            "train": {"path": str(data_file)},
            "format": "chat",
            "split": {"validation": 0.1, "test": 0.1, "seed": 1},
            "checks": {"minExamples": 4},
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {
            "maxSteps": 4,
            "batchSize": 4,
            "microBatchSize": 2,
            "learningRate": 5e-3,
            "maxSeqLength": 256,
            "saveSteps": 2,
            "warmupRatio": 0.0,
            "scheduler": "constant",
        },
        "resources": {"gpusPerNode": 0},
        "output": {"path": str(output)},
    }
    return _merge(spec, overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base
