"""The quickstart's data as the prepare stage splits it (validation 10 %, seed 42, leak-free by prompt), for the topic
rule's tests and measurements; the generic off-topic prompts of data/off_topic_prompts.jsonl; the forgetting set."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
OFF_TOPIC = Path(__file__).resolve().parent / "data" / "off_topic_prompts.jsonl"
FORGETTING = ROOT / "trainer-image" / "tuneloop_trainer" / "data" / "forgetting.jsonl"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@functools.cache
def spec() -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / "quickstart.yaml").read_text())["spec"]


def schema() -> dict[str, Any]:
    return spec()["evaluation"]["jsonSchema"]


@functools.cache
def splits() -> dict[str, list[dict[str, Any]]]:
    """train / validation / test records (normalized chat records), split like prepare does."""
    from tuneloop_trainer.dataset.records import normalize_chat, prompt_key
    from tuneloop_trainer.dataset.splitting import split_groups

    split = spec()["dataset"]["split"]
    train = [normalize_chat(r) for r in _jsonl(SAMPLES / "data" / "train.jsonl")]
    parts = split_groups(train, prompt_key, split["validation"], split["test"], split["seed"])
    return {"train": parts["train"], "validation": parts["validation"], "test": [normalize_chat(r) for r in _jsonl(SAMPLES / "data" / "test.jsonl")]}


def write_data_dir(data_dir: Path) -> None:
    """DIR/data/{train,validation,test}.jsonl as prepare writes them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in splits().items():
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def off_topic() -> list[str]:
    return [r["prompt"] for r in _jsonl(OFF_TOPIC)]


def rehearsal() -> list[str]:
    """The quickstart's rehearsal prompts (general requests mixed into train.jsonl under the default system prompt)."""
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in _jsonl(SAMPLES / "data" / "rehearsal.jsonl")]


def forgetting() -> list[str]:
    return [r["prompt"] for r in _jsonl(FORGETTING)]
