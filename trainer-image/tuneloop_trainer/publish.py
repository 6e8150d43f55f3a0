"""Runs last in the evaluation pod: hands the results to the operator without storage access.

    python -m tuneloop_trainer.publish --workdir DIR

- the termination message (≤ 4 KiB, read from the pod status): ``{"stage": "publish",
  "outcome": "Succeeded", "evaluation": <EvaluationRecord>, "lineage": {...}}`` — fitted by
  `tuneloop.contract.termination.fit_publish` (long gate reasons shortened, then gates dropped, …);
- the pod log: ``report.md`` between the contract's BEGIN/END lines, which the operator copies into a
  ConfigMap owned by the ModelVersion (pod logs need only ``pods/log: get``; nothing in the pod needs RBAC).

Pure standard library + tuneloop.contract: no torch, no Kopf.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tuneloop.contract import layout
from tuneloop.contract.lineage import LineageFile
from tuneloop.contract.termination import (
    PUBLISH_STAGE,
    REPORT_BEGIN,
    REPORT_END,
    REPORT_MARKER,
    TERMINATION_LIMIT,
    extract_report,
    fit_publish,
    report_block,
)

from .settings import TrainerSettings

# The names this module had when it lived in the operator (tuneloop.operator.finetunejob.publish).
LIMIT, MARKER, BEGIN, END = TERMINATION_LIMIT, REPORT_MARKER, REPORT_BEGIN, REPORT_END
fit = fit_publish
__all__ = ["BEGIN", "END", "LIMIT", "MARKER", "collect", "exports_entry", "extract_report", "fit", "lineage_summary", "main"]


def collect(workdir: Path, exports: bool = False) -> tuple[dict[str, Any], str | None]:
    """(termination message, report markdown or None) from the work directory. `exports` (the export pod): the message
    carries the exports' records (what the operator registers) instead of the evaluation, which the evaluation pod handed over."""
    wd = layout.WorkDir(workdir)
    msg: dict[str, Any] = {"stage": PUBLISH_STAGE, "outcome": "Succeeded"}
    if exports:
        doc = json.loads(wd.exports_file.read_text()) if wd.exports_file.exists() else {}
        msg["exports"] = [exports_entry(e) for e in doc.get("exports") or []]
        return msg, wd.report_file.read_text(errors="replace") if wd.report_file.exists() else None
    if wd.eval_file.exists():
        ev = json.loads(wd.eval_file.read_text())
        msg["evaluation"] = ev.get("record", ev)
    if wd.lineage_file.exists():
        msg["lineage"] = lineage_summary(LineageFile.read(wd.lineage_file))
    return msg, wd.report_file.read_text(errors="replace") if wd.report_file.exists() else None


def exports_entry(e: dict[str, Any]) -> dict[str, Any]:
    """One export as the operator registers it: format, size and the equivalence record, numbers rounded (≤ 4 KiB for three)."""
    eq = dict(e.get("equivalence") or {})
    eq["metrics"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if k != "differenceInterval"}
                     | ({"differenceInterval": {k: round(v, 4) for k, v in m["differenceInterval"].items()}} if m.get("differenceInterval") else {})
                     for m in eq.get("metrics") or []]
    eq["reason"] = str(eq.get("reason", ""))[:400]
    return {"format": e["format"], "sizeBytes": e.get("sizeBytes"), "equivalence": eq}


def lineage_summary(lin: LineageFile | dict[str, Any]) -> dict[str, Any]:
    """The ModelVersion lineage facts (camelCase) from the trainer's lineage.json."""
    return LineageFile.of(lin).facts().wire()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {layout.PUBLISH_MODULE}")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--exports", action="store_true", help="hand over the exports (the export pod) instead of the evaluation")
    args = ap.parse_args(argv)
    msg, report = collect(Path(args.workdir), exports=args.exports)
    if report is not None:
        sys.stdout.write(report_block(report))
        sys.stdout.flush()
    path = TrainerSettings.from_env().termination_log
    try:
        path.write_text(fit(msg))
    except OSError as exc:
        print(f"publish: cannot write the termination message to {path}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
