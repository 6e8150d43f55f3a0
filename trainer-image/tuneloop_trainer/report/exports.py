"""The report's Exports section and the exports' ModelVersion manifests, from DIR/exports.json (the export stage)."""

from __future__ import annotations

from typing import Any

from tuneloop.contract import modelversion as contract

from .analysis import fmt, label


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _speed(v: Any) -> str:
    return f"{v:.1f} tok/s" if isinstance(v, (int, float)) else "n/a"


def _interval(iv: dict[str, Any] | None, pct: bool = True) -> str:
    if not iv:
        return ""
    return f" [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}] %" if pct else f" [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def section(doc: dict[str, Any] | None) -> list[str]:
    """The size / speed / quality table of every export against its source (nothing when there were none)."""
    exports = (doc or {}).get("exports") or []
    if not exports:
        return []
    source = doc.get("source") or {} if doc else {}
    n = (doc or {}).get("testItems", "n/a")
    lines = ["## Exports",
             f"Each export answered the {n} test items greedily next to its source (the tuned model as evaluated) on the same "
             f"backend ({(doc or {}).get('backend', 'transformers')}) and machine; agreement is the share of identical answers "
             "(95 % Wilson interval), metric differences are export − source, paired by item (95 % bootstrap interval). "
             "An export that fails its gate (minAgreement, maxDrop) is not registered.", "",
             "| Export | Size | Generation | Agreement | Metrics (export − source) | Gate |",
             "|--------|------|------------|-----------|---------------------------|------|",
             f"| source (tuned) | {_size(source.get('sizeBytes'))} | {_speed((source.get('generation') or {}).get('tokensPerSecond'))} | — | — | — |"]
    for e in exports:
        eq = e.get("equivalence") or {}
        metrics = "; ".join(f"{label(m['name'])} {fmt(m['name'], m.get('export'))} ({m.get('difference', 0):+.3f}"
                            f"{_interval(m.get('differenceInterval'), pct=False)})" for m in eq.get("metrics") or []) or "—"
        gate = "✅ registered" if eq.get("passed") else "❌ refused"
        lines.append(f"| `{e['format']}` | {_size(e.get('sizeBytes'))} | {_speed(eq.get('tokensPerSecond'))} | "
                     f"{100 * eq.get('agreement', 0):.1f} %{_interval(eq.get('agreementInterval'))} | {metrics} | {gate} |")
    lines += ["", *(f"- `{e['format']}`: {(e.get('equivalence') or {}).get('reason', '')}" for e in exports), ""]
    return lines


def manifests(source_mv: dict[str, Any], doc: dict[str, Any] | None, workdir_uri: str) -> dict[str, dict[str, Any]]:
    """format → the ModelVersion of every export that held up (the refused ones get none)."""
    return {e["format"]: contract.build_export(source_mv, e, workdir_uri=workdir_uri)
            for e in (doc or {}).get("exports") or [] if contract.export_passed(e)}
