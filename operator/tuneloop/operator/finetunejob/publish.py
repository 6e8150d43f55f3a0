"""Runs last in the evaluation pod: hands the results to the operator without storage access.

    python -m tuneloop.operator.finetunejob.publish --workdir DIR

- the termination message (≤ 4 KiB, read from the pod status): ``{"stage": "publish",
  "outcome": "Succeeded", "evaluation": <EvaluationRecord>, "lineage": {...}}`` — the record is
  trimmed (long gate reasons shortened, then gates dropped) if it would not fit;
- the pod log: ``report.md`` between ``----- BEGIN tuneloop-report.md -----`` and
  ``----- END tuneloop-report.md -----`` lines, which the operator copies into a ConfigMap owned
  by the ModelVersion (pod logs need only ``pods/log: get``; nothing in the pod needs RBAC).

Pure standard library + tuneloop.api: no Kopf, runs in the trainer image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

LIMIT = 4096
MARKER = "tuneloop-report.md"
BEGIN = f"----- BEGIN {MARKER} -----"
END = f"----- END {MARKER} -----"


def fit(message: dict[str, Any], limit: int = LIMIT) -> str:
    """JSON ≤ `limit` bytes, dropping detail in order of least importance."""
    msg = json.loads(json.dumps(message, default=str))

    def text() -> str:
        return json.dumps(msg, separators=(",", ":"))

    steps = [
        lambda: msg.get("lineage", {}).pop("libraryVersions", None),
        lambda: [g.update(reason=g.get("reason", "")[:80]) for g in msg.get("evaluation", {}).get("gates", [])],
        lambda: msg.get("evaluation", {}).pop("gates", None),
        lambda: msg.pop("lineage", None),
        lambda: msg.get("evaluation", {}).update(metrics=msg.get("evaluation", {}).get("metrics", [])[:8]),
    ]
    for step in steps:
        if len(text().encode()) <= limit:
            break
        step()
        msg["truncated"] = True
    return text()[:limit]


def collect(workdir: Path) -> tuple[dict[str, Any], str | None]:
    """(termination message, report markdown or None) from the work directory."""
    msg: dict[str, Any] = {"stage": "publish", "outcome": "Succeeded"}
    ev_path = workdir / "eval.json"
    if ev_path.exists():
        ev = json.loads(ev_path.read_text())
        msg["evaluation"] = ev.get("record", ev)
    lineage_path = workdir / "lineage.json"
    if lineage_path.exists():
        msg["lineage"] = lineage_summary(json.loads(lineage_path.read_text()))
    report = workdir / "report" / "report.md"
    return msg, report.read_text(errors="replace") if report.exists() else None


def lineage_summary(lin: dict[str, Any]) -> dict[str, Any]:
    """The ModelVersion lineage fields from the trainer's lineage.json."""
    out: dict[str, Any] = {}
    sha = (lin.get("dataset") or {}).get("sha256") if isinstance(lin.get("dataset"), dict) else None
    if sha:
        out["datasetSha256"] = sha
    if isinstance(lin.get("libraries"), dict):
        out["libraryVersions"] = {str(k): str(v) for k, v in lin["libraries"].items()}
    for src, dst in (("wall_time_seconds", "trainSeconds"), ("tokens_seen", "tokensSeen")):
        if isinstance(lin.get(src), int | float):
            out[dst] = lin[src]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuneloop.operator.finetunejob.publish")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    msg, report = collect(Path(args.workdir))
    if report is not None:
        sys.stdout.write(f"{BEGIN}\n{report.rstrip()}\n{END}\n")
        sys.stdout.flush()
    path = Path(os.environ.get("TUNELOOP_TERMINATION_LOG", "/dev/termination-log"))
    try:
        path.write_text(fit(msg))
    except OSError as exc:
        print(f"publish: cannot write the termination message to {path}: {exc}", file=sys.stderr)
    return 0


def extract_report(log: str) -> str | None:
    """The report Markdown from an evaluation pod's log (the last complete block), or None."""
    start = log.rfind(BEGIN)
    if start < 0:
        return None
    end = log.find(END, start)
    if end < 0:
        return None
    return log[start + len(BEGIN):end].strip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
