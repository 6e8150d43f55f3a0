"""The report's output-contract section: the tuned model's answers with and without the contract enforced
(eval.json `enforcement`, measured through vLLM's structured outputs)."""

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
