"""The quickstart's dataset: reproducible from its generator, varied, and consistent with the spec's schema.

train.jsonl mixes triage tickets (under the triage system prompt) with rehearsal records (general
prompts under the model's default system prompt, answered by the base model: rehearsal.jsonl);
tests/evaluation/test_quickstart_rehearsal.py checks the rehearsal part."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from tuneloop_trainer.evaluation import metrics as eval_metrics

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def quickstart(repo_root):
    return yaml.safe_load((repo_root / "manifests/samples/quickstart.yaml").read_text())


def _records(repo_root, name):
    return [json.loads(line) for line in (repo_root / "manifests/samples/data" / name).read_text().splitlines()]


def _tickets(repo_root, name):
    """The triage records of a file (rehearsal records are under another system prompt)."""
    spec = importlib.util.spec_from_file_location("quickstart_generate", repo_root / "manifests/samples/data/generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return [r for r in _records(repo_root, name) if r["messages"][0]["content"] == gen.SYSTEM_PROMPT]


def test_committed_files_match_the_generator(repo_root):
    gen = repo_root / "manifests/samples/data/generate.py"
    result = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_sizes_and_no_overlap(repo_root):
    train, test = _tickets(repo_root, "train.jsonl"), _tickets(repo_root, "test.jsonl")
    assert len(train) >= 300 and len(test) >= 50
    assert len(test) == len(_records(repo_root, "test.jsonl"))  # the test set is tickets only

    def prompts(rs):
        return {" ".join(r["messages"][1]["content"].lower().split()) for r in rs}

    assert not prompts(train) & prompts(test)
    assert len(prompts(train)) == len(train)


def test_every_answer_follows_the_spec_schema_and_labels_are_varied(repo_root, quickstart):
    schema = quickstart["spec"]["evaluation"]["jsonSchema"]
    validator = eval_metrics.schema_validator(schema)
    answers = []
    tickets = _tickets(repo_root, "train.jsonl") + _tickets(repo_root, "test.jsonl")
    assert len(tickets) == 420  # 360 train + 60 test; the rest of train.jsonl is rehearsal
    for r in tickets:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        ok, value = eval_metrics.parse_json(r["messages"][-1]["content"])
        assert ok and validator.is_valid(value), r["messages"][-1]["content"]
        answers.append(value)
    for field in ("category", "priority", "sentiment", "needs_human"):
        counts = Counter(a[field] for a in answers)
        assert len(counts) == len(schema["properties"][field].get("enum", [True, False])), field
        assert min(counts.values()) >= 0.05 * len(answers), (field, counts)
    assert 0.2 < sum(a["order_id"] is None for a in answers) / len(answers) < 0.8
    assert 0.2 < sum(a["product"] is None for a in answers) / len(answers) < 0.8


def test_quickstart_manifest_is_valid(repo_root, capsys):
    from tuneloop.cli.main import main as cli

    assert cli(["validate", str(repo_root / "manifests/samples/quickstart.yaml")]) == 0
