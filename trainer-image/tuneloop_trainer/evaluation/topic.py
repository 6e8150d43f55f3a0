"""The fine-tune's topic profile (the output guard's topic rule, `tuneloop.guard.topic`), built by the evaluate stage
(`stages/evaluate.py` `run`, so by a cluster's evaluation pod and `kubectl tuneloop local run` alike) from
DIR/data/train.jsonl, calibrated on DIR/data/validation.jsonl, written to DIR/topic-profile.json and recorded in the
EvaluationRecord (`topicProfile`), from which the ModelVersion gets spec.topicProfile.uri.

In-topic prompts: with an output contract (evaluation.jsonSchema), the chat records whose reference answer follows it
(the same check as the guard's `contract-violation-rate`). A record that teaches another kind of answer is not the task:
the quickstart's 116 rehearsal records are general prompts under the model's default system prompt, kept so that the
adapter stays off outside triage, and a profile that included them would call "write a haiku" on topic. Without a
contract, every chat record. A prompt is its user turns (`tuneloop.guard.check.user_text`, as the guard reads a request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.api.evaluation import TopicProfileRecord
from tuneloop.guard import check

from .inputs import read_jsonl


def in_topic_prompts(records: list[dict[str, Any]], schema: dict[str, Any] | None) -> list[str]:
    """The user text of each chat record on the task: all of them, or with a contract those whose answer follows it."""
    follows = check.validator(schema) if schema is not None else None
    out = []
    for rec in records:
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
            continue
        if follows is not None and not follows(str(msgs[-1].get("content", ""))):
            continue
        text = check.user_text(msgs[:-1])
        if text:
            out.append(text)
    return out


def _split(data_dir: Path, name: str) -> list[dict[str, Any]]:
    path = data_dir / f"{name}.jsonl"
    return read_jsonl(path, f"{name} split") if path.exists() else []


def write_profile(data_dir: Path, out_path: Path, schema: dict[str, Any] | None, test_records: list[dict[str, Any]] | None = None, *,
                  general: list[str] | None = None, pass_rate: float | None = None, seed: int = 0) -> tuple[TopicProfileRecord | None, dict[str, Any]]:
    """Build and write the profile; (the record for the ModelVersion or None, eval.json's `topicProfile`). Never raises for
    data that cannot make a profile (no chat records, too few prompts, scikit-learn missing): the doc says why and no file
    is left behind. `test_records`: the evaluated split, whose in-topic pass rate is measured; `general`: prompts of no task
    (the forgetting set), whose pass rate is recorded as well."""
    from tuneloop.guard import topic

    out_path.unlink(missing_ok=True)  # a profile of an earlier run must not outlive a run that builds none
    train = in_topic_prompts(_split(data_dir, "train"), schema)
    held_out = in_topic_prompts(_split(data_dir, "validation"), schema)
    rate = topic.DEFAULT_PASS_RATE if pass_rate is None else pass_rate
    try:
        profile = topic.build(train, held_out, pass_rate=rate, seed=seed)
    except (ValueError, ImportError) as exc:
        return None, {"built": False, "reason": str(exc), "trainPrompts": len(train)}
    size = topic.write(profile, out_path)
    cal = profile.doc["calibration"]
    doc: dict[str, Any] = {
        "built": True, "file": out_path.name, "sizeBytes": size, "method": topic.METHOD, "trainPrompts": profile.doc["trainPrompts"],
        "calibration": cal["source"], "calibrationPrompts": cal["prompts"], "passRate": rate, "threshold": profile.threshold,
        "contractFiltered": schema is not None,
    }
    test = in_topic_prompts(test_records or [], schema)
    if test:
        scores = profile.scores(test)
        doc["testPrompts"] = len(test)
        doc["testPassRate"] = round(sum(s >= profile.threshold for s in scores) / len(scores), 6)
    if general:
        scores = profile.scores(general)
        doc["generalPrompts"] = len(general)
        doc["generalPassRate"] = round(sum(s >= profile.threshold for s in scores) / len(scores), 6)
    record = TopicProfileRecord(method=topic.METHOD, train_prompts=doc["trainPrompts"], calibration=cal["source"],
                                calibration_prompts=cal["prompts"], pass_rate=rate, threshold=round(profile.threshold, 6),
                                test_pass_rate=doc.get("testPassRate"), test_prompts=doc.get("testPrompts"))
    return record, doc


def summary_line(doc: dict[str, Any]) -> str:
    """One line for the log and the report."""
    if not doc.get("built"):
        return f"no topic profile: {doc.get('reason', 'not built')}"
    parts = [f"{doc['trainPrompts']} training prompts", f"threshold {doc['threshold']:.3f} ({100 * doc['passRate']:g} % of "
             f"{doc['calibrationPrompts']} {doc['calibration']} prompts pass)"]
    if "testPassRate" in doc:
        parts.append(f"test prompts passing {100 * doc['testPassRate']:.1f} % of {doc['testPrompts']}")
    if "generalPassRate" in doc:
        parts.append(f"general prompts (forgetting set) passing {100 * doc['generalPassRate']:.1f} % of {doc['generalPrompts']}")
    return "topic profile: " + ", ".join(parts) + f" ({json.dumps(doc['file'])}, {doc['sizeBytes']} bytes)"
