"""Checkpoints in DIR/checkpoints/checkpoint-<step>/: which are complete, which to resume from.

A checkpoint is complete when the HF Trainer finished writing it: `on_save` (called after the
model, optimizer, scheduler, RNG and trainer_state are written) drops a `.tuneloop-complete`
marker. A pod killed mid-save leaves a directory without the marker; it is ignored and removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

MARKER = ".tuneloop-complete"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(root: Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) sorted by step."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p, (p / MARKER).exists() and (p / "trainer_state.json").exists()))
    return sorted(out)


def newest_complete(root: Path) -> Path | None:
    done = [p for _, p, ok in checkpoints(root) if ok]
    return done[-1] if done else None


def remove_incomplete(root: Path) -> list[str]:
    removed = []
    for _, p, ok in checkpoints(root):
        if not ok:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def mark_complete(path: Path) -> None:
    if path.is_dir():
        (path / MARKER).write_text("ok\n")
