"""The quickstart's rehearsal records (manifests/samples/data/rehearsal.jsonl, mixed into train.jsonl).

They keep the LoRA adapter from answering every prompt with a triage record. They must not leak the
forgetting set: a rehearsal prompt that repeats or nearly repeats a forgetting prompt would let the
forgetting gate pass on memorised answers instead of measuring forgetting.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from tuneloop_trainer.evaluation import metrics as eval_metrics
from tuneloop_trainer.evaluation.baselines import majority_answer

pytestmark = pytest.mark.unit

DATA = "manifests/samples/data"
FORGETTING = "trainer-image/tuneloop_trainer/data/forgetting.jsonl"
# Words that carry no content: two prompts sharing only these are not near-duplicates.
STOP = {"the", "a", "an", "is", "are", "of", "what", "in", "to", "and", "do", "does", "with", "how", "for", "on",
        "you", "i", "my", "me", "it", "be", "can", "which", "one", "word", "answer", "just", "only", "this"}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _module(repo_root, name):
    spec = importlib.util.spec_from_file_location(f"quickstart_{name}", repo_root / DATA / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _norm(text):
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _content_words(text):
    return set(_norm(text).split()) - STOP


@pytest.fixture(scope="module")
def rehearsal(repo_root):
    return _jsonl(repo_root / DATA / "rehearsal.jsonl")


def test_rehearsal_prompts_are_disjoint_from_the_forgetting_set(repo_root, rehearsal):
    forgetting = [f["prompt"] for f in _jsonl(repo_root / FORGETTING)]
    written = _module(repo_root, "rehearsal").PROMPTS
    prompts = [r["messages"][1]["content"] for r in rehearsal]
    assert set(prompts) <= set(written)
    for p in written:
        for f in forgetting:
            assert _norm(p) != _norm(f), p
            a, b = _content_words(p), _content_words(f)
            overlap = len(a & b) / len(a | b) if a | b else 1.0
            assert overlap < 0.4, (p, f, overlap)  # near-duplicate: most content words shared
    # the forgetting answers are not taught either: no rehearsal prompt names a forgetting item's topic words together with its answer
    for item in _jsonl(repo_root / FORGETTING):
        topic = _content_words(item["prompt"])
        for r in rehearsal:
            prompt, answer = r["messages"][1]["content"], r["messages"][2]["content"]
            shares_topic = len(topic & _content_words(prompt)) >= 2
            has_answer = any(eval_metrics.answer_found(answer, [a], False) for a in item["answers"])
            assert not (shares_topic and has_answer), (item["prompt"], prompt, answer)


def test_rehearsal_records_use_the_default_system_prompt_and_are_mixed_into_train(repo_root, rehearsal):
    gen = _module(repo_root, "generate")
    assert 80 <= len(rehearsal) <= len(_module(repo_root, "rehearsal").PROMPTS)
    systems = {r["messages"][0]["content"] for r in rehearsal}
    assert len(systems) == 1 and systems != {gen.SYSTEM_PROMPT}  # the model's default, not the triage prompt
    for r in rehearsal:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][2]["content"].strip()
        assert not eval_metrics.parse_json(r["messages"][2]["content"])[0]  # prose, not a triage record
    train = _jsonl(repo_root / DATA / "train.jsonl")
    mixed = [r for r in train if r["messages"][0]["content"] != gen.SYSTEM_PROMPT]
    assert mixed == rehearsal
    positions = [i for i, r in enumerate(train) if r in rehearsal]
    assert positions[0] < len(train) // 4 and positions[-1] > 3 * len(train) // 4  # spread, not appended


def test_rehearsal_records_do_not_change_the_majority_baseline(repo_root):
    """With a schema the majority baseline is built from the task's answers only; prose answers in the mix don't count."""
    import yaml

    schema = yaml.safe_load((repo_root / "manifests/samples/quickstart.yaml").read_text())["spec"]["evaluation"]["jsonSchema"]
    gen = _module(repo_root, "generate")
    train = _jsonl(repo_root / DATA / "train.jsonl")
    answers = [r["messages"][-1]["content"] for r in train]
    tickets = [r["messages"][-1]["content"] for r in train if r["messages"][0]["content"] == gen.SYSTEM_PROMPT]
    assert len(tickets) < len(answers)
    assert majority_answer(answers, schema) == majority_answer(tickets, schema)
    assert json.loads(majority_answer(answers, schema)).keys() == schema["properties"].keys()
    # without a schema a mix of objects and prose is not a structured task: the most common whole answer
    assert majority_answer(['{"a": 1}', "yes", "yes"]) == "yes"
