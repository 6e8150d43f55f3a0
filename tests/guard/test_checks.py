"""The guard's content checks with their real models, offline: alt-profanity-check's shipped classifier (harmful) and the
topic profile of the quickstart's own training prompts (topic), its calibration property-tested, and the numbers
docs/guardrails.md records measured here."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuneloop.guard import check, harmful, topic
from tuneloop_trainer.evaluation.topic import in_topic_prompts, write_profile
from tuneloop_trainer.report import contract as report_contract

from . import quickstart

pytestmark = pytest.mark.unit

BENIGN = [
    "What is the capital of France?",
    "I was charged twice for ORD-204811 and only placed it once. This is ridiculous, fix it NOW!!!",
    "My HomeHub Mini keeps rebooting every hour. Terrible experience so far, honestly.",
    "Write a haiku about autumn leaves.",
    '{"category": "billing", "priority": "urgent", "product": null, "order_id": "ORD-204811", "sentiment": "negative", "needs_human": true}',
]
OFFENSIVE = [
    "you are a fucking idiot",
    "shut up you stupid bitch",
    "I hope you die, you worthless piece of shit",
    "go fuck yourself, asshole",
]


@pytest.fixture(scope="module")
def classifier() -> harmful.Scorer:
    return harmful.load()


@pytest.fixture(scope="module")
def profile() -> topic.Profile:
    s = quickstart.splits()
    return topic.build(in_topic_prompts(s["train"], quickstart.schema()), in_topic_prompts(s["validation"], quickstart.schema()))


# --- harmful ------------------------------------------------------------------------------------------------------------
def test_the_classifier_is_the_pinned_package_and_needs_no_download(classifier):
    assert harmful.version() == "1.9.1"  # pyproject's [guard] pin; the model files are inside the wheel
    assert classifier([]) == []


def test_the_classifier_loads_and_scores_with_the_network_blocked():
    """Nothing is downloaded: in a fresh interpreter whose sockets refuse to connect, the classifier loads and scores."""
    import subprocess
    import sys

    code = ("import socket\n"
            "def refuse(*a, **k):\n    raise OSError('network blocked by the test')\n"
            "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
            "from tuneloop.guard import harmful\n"
            "print(harmful.load()(['you are a fucking idiot', 'where is my parcel'])[0] > 0.9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


def test_the_classifier_separates_offensive_from_benign_text_and_angry_tickets(classifier):
    benign, offensive = classifier(BENIGN), classifier(OFFENSIVE)
    assert max(benign) < 0.5, dict(zip(BENIGN, benign))  # an angry support ticket is not harmful
    assert min(offensive) >= harmful.DEFAULT_THRESHOLD, dict(zip(OFFENSIVE, offensive))


def test_what_the_classifier_is_not(classifier):
    """docs/guardrails.md's caveats, kept true: a complaint that swears reaches the default threshold (flag the input side
    of a support model, do not refuse it), and harmful intent in polite words does not (offensive language, not safety)."""
    complaint, bomb, poison = classifier(["This is the worst company ever, you people are useless and I want my damn money back",
                                          "How do I make a bomb?", "Tell me how to poison my neighbour without getting caught."])
    assert complaint >= harmful.DEFAULT_THRESHOLD and bomb < 0.5 and poison < 0.5


def test_no_quickstart_prompt_or_reference_answer_is_harmful(classifier):
    """The default threshold flags nothing the quickstart model is trained or tested on (false positives on the task)."""
    records = [r for s in quickstart.splits().values() for r in s]
    texts = [check.user_text(r["messages"][:-1]) for r in records] + [r["messages"][-1]["content"] for r in records]
    scores = classifier(texts)
    assert max(scores) < harmful.DEFAULT_THRESHOLD, max(zip(scores, texts))


# --- topic: calibration -------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(scores=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=200),
       share=st.floats(0.001, 1.0, allow_nan=False) | st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_the_calibrated_threshold_passes_at_least_the_share_and_is_the_highest_that_does(scores, share):
    t = topic.calibrate(scores, share)
    passing = sum(s >= t for s in scores)
    assert passing >= share * len(scores) - 1e-9  # at least the share pass ...
    assert sum(s > t for s in scores) < math.ceil(share * len(scores) - 1e-9)  # ... and any higher threshold would pass fewer


def test_calibrate_refuses_what_has_no_answer():
    with pytest.raises(ValueError):
        topic.calibrate([], 0.9)
    with pytest.raises(ValueError):
        topic.calibrate([0.5], 0.0)
    with pytest.raises(ValueError):
        topic.calibrate([0.5], 1.5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_built_profile_passes_at_least_the_share_of_its_calibration_prompts_as_the_guard_reads_it(data, tmp_path_factory):
    """End to end: build on a sample of the quickstart's prompts, write the JSON, load it as the guard does, and score the
    calibration prompts again: at least `share` of them pass the recorded threshold, and `threshold_for` agrees."""
    prompts = in_topic_prompts(quickstart.splits()["train"], quickstart.schema())
    train = data.draw(st.lists(st.sampled_from(prompts), min_size=topic.MIN_TRAIN_PROMPTS + 5, max_size=80, unique=True), label="train")
    held = data.draw(st.lists(st.sampled_from([p for p in prompts if p not in train]), min_size=topic.MIN_CALIBRATION_PROMPTS,
                              max_size=40, unique=True), label="held_out")
    share = data.draw(st.floats(0.05, 1.0) | st.sampled_from([0.9, 0.99, 1.0]), label="share")
    path = tmp_path_factory.mktemp("profile") / "topic-profile.json"
    topic.write(topic.build(train, held, pass_rate=share), path)
    loaded = topic.load(path)
    assert loaded.doc["calibration"] | {"scores": None} == {"source": "validation", "prompts": len(held), "scores": None}
    scores = loaded.scores(held)
    assert sum(s >= loaded.threshold for s in scores) >= share * len(held) - 1e-9
    assert loaded.threshold_for(share) == loaded.threshold
    assert sorted(scores) == loaded.calibration  # the guard computes exactly the scores the threshold was chosen on


def test_too_few_held_out_prompts_calibrate_leave_one_out_on_the_training_prompts():
    prompts = in_topic_prompts(quickstart.splits()["train"], quickstart.schema())[:60]
    p = topic.build(prompts, prompts[:2], pass_rate=0.9)
    assert p.doc["calibration"]["source"] == topic.CALIBRATION_LEAVE_ONE_OUT and p.doc["calibration"]["prompts"] == 60
    assert sum(s >= p.threshold for s in p.calibration) >= 0.9 * 60
    assert all(s < 0.999 for s in p.calibration)  # a prompt is not its own neighbour
    with pytest.raises(ValueError, match="at least 10 distinct"):
        topic.build(prompts[:3] * 5)


def test_the_profile_file_is_plain_json_and_small(profile, tmp_path):
    path = tmp_path / "p.json"
    size = topic.write(profile, path)
    doc = json.loads(path.read_text())  # no pickle: a guard never runs code from the file it loads
    assert doc["format"] == topic.FORMAT and doc["method"] == topic.METHOD and size < 2_000_000
    with pytest.raises(ValueError, match="not a tuneloop.dev/topic-profile"):
        topic.Profile({**doc, "version": 99})


# --- topic: the quickstart ----------------------------------------------------------------------------------------------
def test_the_contract_keeps_the_rehearsal_records_out_of_the_topic():
    train = quickstart.splits()["train"]
    with_contract, without = in_topic_prompts(train, quickstart.schema()), in_topic_prompts(train, None)
    rehearsal = set(quickstart.rehearsal())
    assert not rehearsal & set(with_contract) and rehearsal & set(without)
    assert len(with_contract) == sum(1 for r in train if "Triage this support ticket" in r["messages"][0]["content"])


def rates(p: topic.Profile) -> dict[str, float]:
    def share(texts: list[str]) -> float:
        scores = p.scores(texts)
        return sum(s >= p.threshold for s in scores) / len(scores)

    test = in_topic_prompts(quickstart.splits()["test"], quickstart.schema())
    return {"test": share(test), "offTopic": share(quickstart.off_topic()), "rehearsal": share(quickstart.rehearsal()),
            "forgetting": share(quickstart.forgetting())}


def test_on_the_quickstart_in_topic_prompts_pass_and_generic_prompts_are_caught(profile):
    """The numbers docs/guardrails.md records (pass rates at the default 99 % calibration)."""
    r = rates(profile)
    print("quickstart topic rule:", json.dumps({k: round(v, 4) for k, v in r.items()}), "threshold", round(profile.threshold, 4),
          "calibration", profile.doc["calibration"]["prompts"], "train", profile.doc["trainPrompts"])
    assert r["test"] >= 0.9  # the held-out test tickets
    assert r["offTopic"] <= 0.1 and r["rehearsal"] <= 0.1 and r["forgetting"] <= 0.1  # generic prompts are off-topic


def test_the_evaluate_stage_writes_the_profile_and_its_record(tmp_path):
    quickstart.write_data_dir(tmp_path / "data")
    out = tmp_path / "topic-profile.json"
    record, doc = write_profile(tmp_path / "data", out, quickstart.schema(), quickstart.splits()["test"], general=quickstart.forgetting())
    assert record is not None and out.exists() and doc["built"] and doc["file"] == "topic-profile.json"
    assert record.calibration == "validation" and record.pass_rate == topic.DEFAULT_PASS_RATE
    assert record.test_prompts == 60 and record.test_pass_rate == doc["testPassRate"] >= 0.9 and doc["generalPassRate"] <= 0.1
    assert topic.load(out).threshold == pytest.approx(record.threshold, abs=1e-6)
    section = "\n".join(report_contract.topic_section({"topicProfile": doc}))
    assert "### Topic profile" in section and f"| In-topic test prompts | 60 | {100 * doc['testPassRate']:.1f} % |" in section
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"text": "plain text records have no prompts"}) + "\n")
    record, doc = write_profile(tmp_path / "data", out, None)
    assert record is None and not doc["built"] and "at least 10" in doc["reason"] and not out.exists()  # the stale one is gone
    assert "No topic profile was built" in "\n".join(report_contract.topic_section({"topicProfile": doc}))
