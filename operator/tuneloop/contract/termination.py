"""How a stage pod tells the operator what happened, without the operator reading its storage.

- Every stage writes a JSON summary, fitted to ≤ 4 KiB, to its termination message (the pod status
  carries it). `fit` is the one fitter: it applies the caller's ordered reductions (least important
  detail first), then drops the largest remaining values, and always returns valid JSON.
- The evaluation pod ends with `python -m tuneloop_trainer.publish`: its termination message is
  ``{"stage": "publish", "outcome": "Succeeded", "evaluation": <EvaluationRecord>, "lineage": {...}}``
  and its log holds report.md between BEGIN and END lines (the operator copies it into a ConfigMap).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
KEEP_SHORTENED = ("outcome", "stage", "error", "reason")  # strings shortened, never dropped

Reduction = Callable[[dict[str, Any]], Any]


def _text(msg: dict[str, Any]) -> str:
    return json.dumps(msg, default=str, separators=(",", ":"))


def fit(message: dict[str, Any], limit: int = TERMINATION_LIMIT, reductions: Iterable[Reduction] = ()) -> str:
    """`message` as JSON of at most `limit` bytes (marked ``"truncated": true`` when anything went)."""
    msg = json.loads(json.dumps(message, default=str))
    for step in reductions:
        if len(_text(msg).encode()) <= limit:
            break
        step(msg)
        msg["truncated"] = True
    text = _text(msg)
    while len(text.encode()) > limit and msg:
        biggest = max(msg, key=lambda k: len(_text({k: msg[k]})))
        if biggest in KEEP_SHORTENED and isinstance(msg[biggest], str) and len(msg[biggest]) > 16:
            msg[biggest] = msg[biggest][: max(16, len(msg[biggest]) // 2)]
        else:
            msg.pop(biggest)
            msg["truncated"] = True
        text = _text(msg)
    return text


# --- the publish step (evaluation pod) -----------------------------------------------------------
PUBLISH_STAGE = "publish"
REPORT_MARKER = "tuneloop-report.md"
REPORT_BEGIN = f"----- BEGIN {REPORT_MARKER} -----"
REPORT_END = f"----- END {REPORT_MARKER} -----"

def _rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    return m.get("evaluation", {}).get("metrics", []) or []


def _keep_refs(m: dict[str, Any], keep: tuple[str, ...]) -> None:
    for row in _rows(m):
        row["references"] = [r for r in row.get("references") or [] if r.get("reference") in keep]


def _drop_ref_keys(m: dict[str, Any], keys: tuple[str, ...]) -> None:
    for row in _rows(m):
        for r in row.get("references") or []:
            for k in keys:
                r.pop(k, None)


def _refs_only_where_decided(m: dict[str, Any]) -> None:
    ev = m.get("evaluation", {})
    decided = {g.get("metric") for g in ev.get("gates", []) or []} | {(ev.get("serving") or {}).get("metric")}
    for row in _rows(m):
        if row.get("name") not in decided:
            row.pop("references", None)


# What the publish message gives up first when it would not fit: library versions, the interval
# method's prose, the references' own intervals, p-values and test names, the base/copyPrompt references (tuned,
# base and delta stay in the row), the majority/serving difference intervals (value, difference and
# outcome stay), references of metrics no gate reads, long gate reasons, the gates, the lineage, the references, then all but 8 metrics. The verdict and the serving
# (champion/challenger) outcome are never reduced: the Rollout reads them.
def _equivalences(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [e.setdefault("equivalence", {}) for e in m.get("exports", []) if isinstance(e, dict)]


PUBLISH_REDUCTIONS: tuple[Reduction, ...] = (
    # the export pod's message (exports instead of the evaluation): intervals first, then long reasons
    lambda m: [q.pop("agreementInterval", None) for q in _equivalences(m)],
    lambda m: [r.pop("differenceInterval", None) for q in _equivalences(m) for r in q.get("metrics", [])],
    lambda m: [q.update(reason=str(q.get("reason", ""))[:120]) for q in _equivalences(m)],
    lambda m: m.get("lineage", {}).pop("libraryVersions", None),
    lambda m: m.get("evaluation", {}).pop("intervalMethod", None),
    lambda m: _drop_ref_keys(m, ("interval", "mcnemarPValue", "pValue", "test")),
    lambda m: _keep_refs(m, ("majority", "serving")),
    lambda m: _drop_ref_keys(m, ("differenceInterval",)),
    lambda m: _refs_only_where_decided(m),
    lambda m: [g.update(reason=g.get("reason", "")[:80]) for g in m.get("evaluation", {}).get("gates", [])],
    lambda m: m.get("evaluation", {}).pop("gates", None),
    lambda m: m.pop("lineage", None),
    lambda m: [row.pop("references", None) for row in _rows(m)],
    lambda m: m.get("evaluation", {}).update(metrics=m.get("evaluation", {}).get("metrics", [])[:8]),
)


def fit_publish(message: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    return fit(message, limit, PUBLISH_REDUCTIONS)


def report_block(markdown: str) -> str:
    """report.md framed for the pod log."""
    return f"{REPORT_BEGIN}\n{markdown.rstrip()}\n{REPORT_END}\n"


def extract_report(log: str) -> str | None:
    """The report Markdown from an evaluation pod's log (the last complete block), or None."""
    start = log.rfind(REPORT_BEGIN)
    if start < 0:
        return None
    end = log.find(REPORT_END, start)
    if end < 0:
        return None
    return log[start + len(REPORT_BEGIN):end].strip("\n") + "\n"
