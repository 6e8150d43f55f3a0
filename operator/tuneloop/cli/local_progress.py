"""Terminal display for `kubectl tuneloop local run`: one live progress bar per stage, then a summary.

Stages report through `ctx.on_progress(event: dict)`:
  training rows (the progress.jsonl record): {"step", "total_steps", "loss", "eval_loss", "eta_seconds", ...}
  other work:                                {"phase": "base: test set", "done": 3, "total": 8}
Anything else is ignored, so a stage may report more than the display shows.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class StageDisplay:
    """Progress bars for the stage now running (rich; plain lines when the output is not a terminal)."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def start(self, stage: str, index: int, count: int) -> None:
        self.tasks, self.last = {}, {}
        self.console.rule(f"[bold]{index}/{count} {stage}")
        if not self.enabled:
            return
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=None if self.console.width >= 120 else 16),  # fits 80 columns with the loss and tok/s
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: Any = None, **kwargs: Any) -> None:
        """The ctx.on_progress callback."""
        if not isinstance(event, dict):
            event = dict(kwargs)
        self.last = event
        if not self.progress:
            return
        if "step" in event and event.get("total_steps"):
            self._bar("train", "training", int(event["step"]), int(event["total_steps"]), self._train_info(event))
        elif "total" in event and "done" in event:
            phase = str(event.get("phase") or event.get("stage") or "working")
            self._bar(phase, phase, int(event["done"]), int(event["total"]), "")

    def _bar(self, key: str, description: str, done: int, total: int, info: str) -> None:
        assert self.progress is not None  # __call__ draws only while started
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=max(total, 1), info=info)
        self.progress.update(self.tasks[key], completed=done, total=max(total, 1), info=info)

    @staticmethod
    def _train_info(e: dict[str, Any]) -> str:
        parts = []
        if isinstance(e.get("loss"), (int, float)):
            parts.append(f"loss {e['loss']:.4f}")
        if isinstance(e.get("eval_loss"), (int, float)):
            parts.append(f"val {e['eval_loss']:.4f}")
        if isinstance(e.get("tokens_per_second"), (int, float)) and e["tokens_per_second"]:
            parts.append(f"{e['tokens_per_second']:.0f} tok/s")
        # no ETA here: the bar's own ETA column shows it (it was printed twice)
        return " · ".join(parts)


def stage_headline(stage: str, summary: dict[str, Any]) -> str:
    """One line of what a stage produced, from its summary."""
    if summary.get("outcome") != "Succeeded":
        return str(summary.get("error") or summary.get("reason") or summary.get("outcome"))
    if stage == "prepare":
        c = summary.get("counts") or {}
        return f"{c.get('accepted', '?')} accepted / {c.get('rejected', '?')} rejected → train {c.get('train', '?')}, validation {c.get('validation', '?')}, test {c.get('test', '?')}"
    if stage == "train":
        # the last step's loss (what the report's curve ends at), not train_loss, the mean over the whole run
        keys = [("steps", "steps"), ("global_step", "steps"), ("final_loss", "last-step train loss"), ("eval_loss", "val loss"),
                ("final_eval_loss", "val loss")]
        parts, named = [], set()
        for k, name in keys:
            v = summary.get(k)
            if isinstance(v, (int, float)) and name not in named:
                named.add(name)
                parts.append(f"{name} {v:.4f}" if isinstance(v, float) else f"{name} {v}")
        return ", ".join(parts) or "artifact saved"
    if stage == "evaluate":
        g = summary.get("gates") or {}
        return f"verdict {summary.get('verdict')} ({g.get('passed', 0)}/{g.get('total', 0)} gates)"
    if stage == "export":
        exports = summary.get("exports") or []
        if not exports:
            return "no exports"
        return ", ".join(f"{e.get('format')} {'registered' if (e.get('equivalence') or {}).get('passed') else 'refused'} "
                         f"(agreement {100 * (e.get('equivalence') or {}).get('agreement', 0):.0f} %)" for e in exports)
    if stage == "report":
        return str(summary.get("report", ""))
    return ""


def summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="tuneloop local run", show_lines=False)
    table.add_column("stage")
    table.add_column("outcome")
    table.add_column("time", justify="right")
    table.add_column("result", overflow="fold")
    styles = {"Succeeded": "green", "Failed": "red", "Skipped": "dim", "Interrupted": "yellow"}
    for r in rows:
        secs = r.get("seconds")
        table.add_row(r["stage"], f"[{styles.get(r['outcome'], '')}]{r['outcome']}", f"{secs:.1f}s" if isinstance(secs, (int, float)) else "—", r.get("headline", ""))
    return table


def metrics_table(metrics: dict[str, dict[str, Any]], verdict: str | None) -> Table:
    table = Table(title=f"evaluation — verdict {verdict}")
    table.add_column("metric")
    table.add_column("base", justify="right")
    refs = [r for r in ("majority", "serving") if any(v.get(r) is not None for v in metrics.values())]
    for ref in refs:
        table.add_column("serving (champion)" if ref == "serving" else ref, justify="right")
    table.add_column("tuned [95% CI]", justify="right")
    for name, v in metrics.items():
        iv = v.get("tunedInterval")
        tuned = _num(v.get("tuned")) + (f" [{_num(iv[0])}, {_num(iv[1])}]" if iv else "")
        table.add_row(name, _num(v.get("base")), *[_num(v.get(r)) for r in refs], tuned)
    return table


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def chained(first: Any, then: Any) -> Any:
    """One on_progress callback calling `first`, then `then` (which may raise to stop the stage: a pruned trial)."""

    def call(event: dict[str, Any]) -> None:
        first(event)
        then(event)

    return call
