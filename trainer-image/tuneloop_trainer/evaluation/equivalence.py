"""The equivalence gate of an export (output.exports): does it answer like the model it was made from? Pure.

Both models answer the evaluation's test items with greedy decoding on the same backend. The record holds:

- agreement: the share of items whose answer is the same string (with its 95 % Wilson interval);
- per answer metric (the 0–1 metrics scored from the answers: exact match, ROUGE-L, BLEU, valid JSON, schema
  compliance, field accuracy, …): source and export scores, export − source with its paired 95 % interval.

`decide` is the gate: the export passes when agreement ≥ minAgreement and no metric drops by more than maxDrop
(source − export, in the metric's direction; an improvement never fails). A refused export is not registered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.api.evaluation import metric_info

from . import items as eval_items
from . import stats

EPSILON = 1e-9  # a drop equal to maxDrop passes, whatever the floating-point rounding


@dataclass(frozen=True)
class Decision:
    passed: bool
    reason: str
    metric_passed: dict[str, bool]


def drop(name: str, source: float, export: float) -> float:
    """How much worse the export is on `name` (negative: better), in the metric's direction."""
    return (export - source) if metric_info(name).lower_is_better else (source - export)


def decide(agreement: float, items: int, metrics: Mapping[str, tuple[float | None, float | None]], *, min_agreement: float,
           max_drop: float) -> Decision:
    """The gate. `metrics`: name → (source score, export score); a metric only one side has (None on the other)
    cannot be compared and fails (an export that cannot be scored like its source has not shown it holds up)."""
    failures: list[str] = []
    per: dict[str, bool] = {}
    if agreement + EPSILON < min_agreement:
        failures.append(f"same greedy answer on {agreement:.1%} of {items} test items (at least {min_agreement:.1%} required)")
    for name, (src, exp) in metrics.items():
        if src is None and exp is None:
            continue
        if src is None or exp is None:
            per[name] = False
            failures.append(f"{name} not measured for {'the source' if src is None else 'the export'}")
            continue
        d = drop(name, src, exp)
        per[name] = d <= max_drop + EPSILON
        if not per[name]:
            failures.append(f"{name} {exp:.4g} vs {src:.4g} for the source: drop {d:.4g} > maxDrop {max_drop:.4g}")
    if failures:
        return Decision(False, "refused: " + "; ".join(failures), per)
    checked = f", {len(per)} metric(s) within maxDrop {max_drop:.4g}" if per else ""
    return Decision(True, f"same greedy answer on {agreement:.1%} of {items} test items (≥ {min_agreement:.1%}){checked}", per)


def answer_metrics(available: Sequence[str]) -> list[str]:
    """The answer metrics the gate reads among those computed: 0–1 metrics scored from the generations."""
    return [m for m in available if metric_info(m).fraction and metric_info(m).scorer is not None]


def compare(source: list[str], export: list[str], references: list[str], *, schema: dict[str, Any] | None, min_agreement: float,
            max_drop: float, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """The EquivalenceRecord (wire form, without speeds and sizes) of one export's answers against its source's, on the
    answer metrics among `metrics` (the evaluation's; None: every answer metric)."""
    if len(source) != len(export) or len(source) != len(references):
        raise ValueError(f"paired answers needed: {len(source)} source, {len(export)} export, {len(references)} references")
    n = len(source)
    same = [a == b for a, b in zip(source, export)]
    agreement = sum(same) / n if n else 1.0
    src_items = eval_items.task_items(source, references, schema)
    exp_items = eval_items.task_items(export, references, schema)
    names = answer_metrics([m for m in src_items if m in exp_items and (metrics is None or m in metrics)])
    values: dict[str, tuple[float | None, float | None]] = {m: (src_items[m].value(), exp_items[m].value()) for m in names}
    decision = decide(agreement, n, values, min_agreement=min_agreement, max_drop=max_drop)
    rows = []
    for m in names:
        src, exp = values[m]
        row: dict[str, Any] = {"name": m, "source": _r(src), "export": _r(exp), "maxDrop": max_drop, "passed": decision.metric_passed.get(m, True)}
        if src is not None and exp is not None:
            row["difference"] = _r(exp - src)
        iv = stats.difference_interval(exp_items[m], src_items[m])
        if iv is not None:
            row["differenceInterval"] = iv.wire()
        rows.append(row)
    record: dict[str, Any] = {"testItems": n, "agreement": round(agreement, 6), "minAgreement": min_agreement, "metrics": rows,
                              "passed": decision.passed, "reason": decision.reason}
    wi = stats.wilson(sum(same), n)
    if wi is not None:
        record["agreementInterval"] = wi.wire()
    return record


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)
