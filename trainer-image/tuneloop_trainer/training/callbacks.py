"""HF Trainer callbacks, one class each: progress (metrics, progress.jsonl, on_progress),
early stopping on validation loss, and the complete-checkpoint marker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .checkpoints import mark_complete

if TYPE_CHECKING:
    from ..context import ProgressCallback as OnProgress
    from .flops import FlopsModel
    from .metrics import TrainerMetrics


class ProgressCallback(TrainerCallback):
    """Rank 0: every logging step, updates the gauges, appends to progress.jsonl, calls on_progress."""

    def __init__(self, path: Path, metrics: TrainerMetrics | None = None, on_progress: OnProgress | None = None,
                 flops: FlopsModel | None = None, collator: Any = None,
                 world: int = 1, peak_tflops: float | None = None):
        self.path, self.metrics, self.on_progress = path, metrics, on_progress
        self.last: dict[str, Any] = {"loss": None, "eval_loss": None, "learning_rate": None}
        self.t0 = self.step0 = self.tok0 = None
        self.history: list[dict[str, Any]] = []
        # tokens/s per GPU and MFU (flops.py): model FLOPs from the config, the causal attention context from
        # the collator's record lengths, the peak from the GPU's name (None on CPU: no MFU)
        self.flops, self.collator, self.world = flops, collator, max(1, world)
        if peak_tflops is None and flops is not None:
            from .flops import peak_tflops as _peak

            peak_tflops = _peak()
        self.peak = peak_tflops
        self.last_rates: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.step0 = time.time(), state.global_step
        self.tok0 = state.num_input_tokens_seen
        self._emit(state, event="begin")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        for key in ("loss", "eval_loss", "learning_rate"):
            if key in logs:
                self.last[key] = logs[key]
        if "loss" in logs or "eval_loss" in logs:
            self._emit(state, event="eval" if "eval_loss" in logs else "log")

    def on_train_end(self, args, state, control, **kw):
        self._emit(state, event="end")

    def _emit(self, state, event: str) -> None:
        if not state.is_world_process_zero:
            return
        now = time.time()
        elapsed = max(now - (self.t0 or now), 1e-9)
        done = state.global_step - (self.step0 or 0)
        # Trainer counts training inputs only (not evaluation), gathered over all ranks; non-padding tokens
        tokens = state.num_input_tokens_seen - (self.tok0 or 0)
        eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
        row = {
            "step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
            "loss": self.last["loss"], "eval_loss": self.last["eval_loss"], "learning_rate": self.last["learning_rate"],
            "tokens_per_second": round(tokens / elapsed, 2) if done > 0 else None,
            "eta_seconds": round(eta, 1) if eta is not None else None, "time": round(now, 3),
        }
        row.update(self._rates(tokens, elapsed) if done > 0 else {"tokens_per_second_per_gpu": None, "mfu": None})
        if self.metrics:
            self.metrics.update(row)
        if event in ("log", "eval"):
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            self.history.append(row)
        if self.on_progress:
            self.on_progress({**row, "event": event, "tokens_seen": tokens})


    def _rates(self, tokens: int, elapsed: float) -> dict[str, Any]:
        from .flops import mfu

        per_gpu = tokens / elapsed / self.world
        util = None
        if self.flops is not None and self.peak:
            seen = getattr(self.collator, "tokens", 0) or 0
            pairs = getattr(self.collator, "attn_pairs", 0) or 0
            context = pairs / seen if seen else 0.0  # mean causal context per token of the records seen on this rank
            util = mfu(self.flops.per_token(context) * tokens, elapsed, self.world, self.peak)
        self.last_rates = {"tokens_per_second_per_gpu": round(per_gpu, 2), "mfu": round(util, 4) if util is not None else None}
        return self.last_rates


class EarlyStoppingCallback(TrainerCallback):
    """Stop when eval_loss has not decreased by more than `threshold` for `patience` evaluations."""

    def __init__(self, patience: int, threshold: float = 0.0):
        self.patience, self.threshold = patience, threshold
        self.best: float | None = None
        self.bad = 0
        self.stopped_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if self.best is None or loss < self.best - self.threshold:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                control.should_training_stop = True
                self.stopped_at = state.global_step


class CheckpointMarkerCallback(TrainerCallback):
    """Marks checkpoint-<step> complete once the Trainer has written all of it."""

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class TrainTimeCallback(TrainerCallback):
    """Rank 0: training wall time across resumed runs (lineage trainSeconds).

    Each run records its own elapsed seconds in DIR/train-time.json at every log and checkpoint
    (atomically), so a run resumed from a checkpoint adds its time to that of the runs before it,
    killed ones included (up to their last record). A run that starts from scratch resets the file.
    """

    def __init__(self, path: Path, started: float, resumed: bool):
        self.path, self.started = path, started
        self.runs: dict[str, float] = {}
        if resumed:
            try:
                self.runs = {str(k): float(v) for k, v in json.loads(path.read_text()).get("runs", {}).items()}
            except (OSError, ValueError, AttributeError):
                self.runs = {}
        self.key = f"{started:.3f}"
        self.record()

    def record(self) -> None:
        self.runs[self.key] = round(time.time() - self.started, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"runs": self.runs}))
            tmp.replace(self.path)
        except OSError:
            pass  # best effort: the total still counts this run

    def total(self) -> float:
        self.record()
        return round(sum(self.runs.values()), 1)

    def on_log(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.record()

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.record()
