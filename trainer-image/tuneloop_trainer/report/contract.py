"""The report's output-contract section: the tuned model's answers with and without the contract enforced
(eval.json `enforcement`, measured through vLLM's structured outputs), and the topic profile the output guard's topic
rule serves with (eval.json `topicProfile`)."""

from __future__ import annotations

from typing import Any

from .analysis import fmt, label

ROWS = ("violationRate", "jsonValid", "schemaCompliance", "fieldAccuracy", "allFieldsExact", "exactMatch")


def _value(name: str, v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if name == "violationRate" else fmt(name, v)


def section(ev: dict[str, Any] | None) -> list[str]:
    doc = (ev or {}).get("enforcement")
    if not doc:
        return []
    un = doc.get("unenforced") or {}
    lines = ["### Output contract: with and without enforcement",
             "The served contract is `evaluation.jsonSchema` (the ModelVersion records it as `spec.outputContract`; a client asks "
             "vLLM to enforce it with `structured_outputs: {json: SCHEMA}` or `response_format: {type: json_schema, …}`). "
             "A contract violation is an answer that is not valid JSON following the schema."]
    if not doc.get("measured"):
        lines += [f"Enforced answers were not measured: {doc.get('reason', '')}. Without enforcement the tuned model violates the "
                  f"contract on {_value('violationRate', un.get('violationRate'))} of the test items.", ""]
        return lines
    en = doc.get("enforced") or {}
    lines += ["", "| Metric | Tuned, free | Tuned, contract enforced |", "|--------|-------------|--------------------------|"]
    for name in ROWS:
        if name in un or name in en:
            lines.append(f"| {'Contract violations' if name == 'violationRate' else label(name)} | {_value(name, un.get(name))} | "
                         f"{_value(name, en.get(name))} |")
    gap = (en.get("fieldAccuracy") or 0) - (un.get("fieldAccuracy") or 0) if "fieldAccuracy" in en and "fieldAccuracy" in un else None
    note = ("Enforcement makes every answer parse, but what the fields say is the model's own: "
            + (f"field accuracy moves {_value('fieldAccuracy', un.get('fieldAccuracy'))} → {_value('fieldAccuracy', en.get('fieldAccuracy'))}. "
               if gap is not None else "")
            + ("The free answers already follow the contract: the model has learned the format."
               if (un.get("violationRate") or 0) <= 0.05 else
               "The free answers violate the contract often: without enforcement at serving time, clients see those violations."))
    return [*lines, "", note, ""]


def topic_section(ev: dict[str, Any] | None) -> list[str]:
    """The topic profile: what it was built and calibrated on, and how the test split and general prompts fare."""
    doc = (ev or {}).get("topicProfile")
    if not doc:
        return []
    lines = ["### Topic profile (the serving guard's topic rule)"]
    if not doc.get("built"):
        return [*lines, f"No topic profile was built: {doc.get('reason', '')}. A Rollout cannot use `serving.guard.topic` with this version.", ""]
    which = ("the prompts whose reference answer follows the output contract" if doc.get("contractFiltered") else "every chat prompt")
    lines.append(f"Built from {doc['trainPrompts']} training prompts ({which}; TF-IDF of character n-grams, nearest-neighbour cosine "
                 f"similarity), written to `{doc['file']}` ({doc['sizeBytes'] / 1024:.0f} KiB). Threshold {doc['threshold']:.3f}: "
                 f"{100 * doc['passRate']:g} % of the {doc['calibrationPrompts']} {doc['calibration']} prompts pass.")
    rows = []
    if "testPassRate" in doc:
        rows.append(f"| In-topic test prompts | {doc['testPrompts']} | {100 * doc['testPassRate']:.1f} % |")
    if "generalPassRate" in doc:
        rows.append(f"| General prompts (forgetting set) | {doc['generalPrompts']} | {100 * doc['generalPassRate']:.1f} % |")
    if rows:
        lines += ["", "| Prompts | n | Pass the topic rule |", "|---------|---|---------------------|", *rows]
    return [*lines, ""]
