"""Everything the report stage reads from the work directory, loaded once and tolerant of absences.

A missing file is recorded in `missing` (the report says so) instead of failing: a report on a
run whose evaluation was disabled is still worth writing. eval.json is the one hard requirement
when evaluation is enabled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.contract import layout
from tuneloop.contract.lineage import LineageFile


@dataclass
class RunRecord:
    workdir: Path
    data_report: dict[str, Any] = field(default_factory=dict)
    lineage: LineageFile = field(default_factory=LineageFile)  # DIR/lineage.json
    progress: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> result-<stage>.json
    stage_times: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)  # stage -> (start, end)
    evaluation: dict[str, Any] = field(default_factory=dict)
    train_targets: list[str] = field(default_factory=list)  # assistant answers of the train split
    local_run: dict[str, Any] = field(default_factory=dict)  # local-run.json (kubectl tuneloop local run)
    missing: list[str] = field(default_factory=list)

    @property
    def started(self) -> datetime | None:
        starts = [s for s, _ in self.stage_times.values()]
        return min(starts) if starts else None

    @property
    def finished(self) -> datetime | None:
        ends = [e for _, e in self.stage_times.values()]
        return max(ends) if ends else None

    def stage_seconds(self, stage: str) -> float | None:
        res = self.results.get(stage) or {}
        return res.get("seconds")


def _json(path: Path, missing: list[str]) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except FileNotFoundError:
        missing.append(path.name)
        return {}
    except ValueError:
        missing.append(f"{path.name} (unreadable)")
        return {}


def read_progress(path: Path) -> list[dict[str, Any]]:
    """progress.jsonl as one row per optimizer step, in step order: a step logged twice (its log and its
    evaluation row, or again after a resume) is one row, the later values winning — so the curve's last
    point is the last step's loss, not an average of duplicates."""
    by_step: dict[float, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed pod
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            by_step[row["step"]] = {**by_step.get(row["step"], {}), **{k: v for k, v in row.items() if v is not None}}
    return [by_step[s] for s in sorted(by_step)]


def validation_points(progress: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(step, eval_loss) once per evaluation: progress rows repeat the latest eval_loss until the next one."""
    points: list[tuple[float, float]] = []
    last = None
    for r in progress:
        v = r.get("eval_loss")
        if isinstance(v, (int, float)) and v != last:
            points.append((r["step"], v))
            last = v
    return points


def load(workdir: Path) -> RunRecord:
    rec = RunRecord(workdir=workdir)
    rec.data_report = _json(workdir / layout.DATA_REPORT_FILE, rec.missing)
    rec.lineage = LineageFile.of(_json(workdir / layout.LINEAGE_FILE, rec.missing))
    rec.progress = read_progress(workdir / layout.PROGRESS_FILE)
    if not rec.progress:
        rec.missing.append(layout.PROGRESS_FILE)
    rec.evaluation = _json(workdir / layout.EVAL_FILE, rec.missing)
    local = workdir / layout.LOCAL_RUN_FILE
    if local.exists():
        rec.local_run = _json(local, [])
    for stage in ("prepare", "train", "evaluate"):
        p = workdir / layout.result_file(stage)
        if p.exists():
            rec.results[stage] = _json(p, rec.missing)
            end = datetime.fromtimestamp(os.path.getmtime(p), UTC)
            secs = float(rec.results[stage].get("seconds") or 0.0)
            rec.stage_times[stage] = (datetime.fromtimestamp(end.timestamp() - secs, UTC), end)
    train = workdir / "data" / "train.jsonl"
    if train.exists():
        for line in train.read_text().splitlines():
            try:
                msgs = json.loads(line).get("messages") or []
            except ValueError:
                continue
            if msgs and msgs[-1].get("role") == "assistant":
                rec.train_targets.append(msgs[-1].get("content", ""))
    return rec


def label_distribution(targets: list[str], max_values: int = 8) -> dict[str, dict[str, int]]:
    """For JSON-object answers: value counts of every top-level field with few distinct values."""
    counts: dict[str, dict[str, int]] = {}
    objects = 0
    for t in targets:
        try:
            obj = json.loads(t)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        objects += 1
        for k, v in obj.items():
            key = "null" if v is None else json.dumps(v) if isinstance(v, bool) else str(v)
            counts.setdefault(k, {})
            counts[k][key] = counts[k].get(key, 0) + 1
    if objects < max(1, len(targets) // 2):
        return {}
    out = {}
    for k, c in counts.items():
        if len(c) <= max_values:
            out[k] = dict(sorted(c.items(), key=lambda kv: -kv[1]))
        else:  # many distinct values (ids, names): present vs null
            nulls = c.get("null", 0)
            out[k] = {"set": objects - nulls, "null": nulls} if nulls else {"distinct values": len(c)}
    return out
