"""Length statistics and the short human-readable data report."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {"records": 0}
    s = sorted(lengths)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return {"records": len(s), "tokens": sum(s), "min": s[0], "mean": round(sum(s) / len(s), 1),
            "p50": pct(0.5), "p95": pct(0.95), "max": s[-1]}


def write_text_report(path: Path, report: dict[str, Any], limit: int = 50) -> None:
    c = report["counts"]
    lines = [
        f"tuneloop data report — {report['outcome']}",
        f"dataset sha256: {report['dataset_sha256']}",
        f"format {report['format']}, tokenizer {report['tokenizer']}, maxSeqLength {report['max_seq_length']}, dedupe {report['dedupe']}",
        f"records read {c['read']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in c["read_by_source"].items()) + ")" if len(c.get("read_by_source") or {}) > 1 else "")
        + f", accepted {c['accepted']}, rejected {c['rejected']} ({report['rejected_fraction']:.1%})"
        + (f", blank lines skipped {c['blank_lines']}" if c["blank_lines"] else ""),
        f"split (seed {report['split']['seed']}): train {c['train']}, validation {c['validation']}, test {c['test']}",
    ]
    if report.get("error"):
        lines.append(f"ERROR: {report['error']}")
    lines.append("")
    lines.append("token lengths (chat template applied):")
    for split, st in report["lengths"].items():
        if st.get("records"):
            lines.append(f"  {split:<10} n={st['records']:<6} min={st['min']} mean={st['mean']} p50={st['p50']} p95={st['p95']} max={st['max']}")
    hist = report.get("token_lengths")
    if hist:
        lines.append("train token lengths in vLLM's buckets (le " + ", ".join(str(b) for b in hist["le"]) + ", +Inf):")
        lines.append("  prompt     " + " ".join(str(c) for c in hist["prompt"]))
        lines.append("  generation " + " ".join(str(c) for c in hist["generation"]))
    if report["rejected_by_rule"]:
        lines.append("")
        lines.append("rejected by rule: " + ", ".join(f"{k} {v}" for k, v in sorted(report["rejected_by_rule"].items())))
        for r in report["rejected"][:limit]:
            lines.append(f"  {r['file']}:{r['line']}  [{r['rule']}] {r['reason']}")
        if len(report["rejected"]) > limit:
            lines.append(f"  … {len(report['rejected']) - limit} more in data_report.json")
    path.write_text("\n".join(lines) + "\n")
