"""`python -m tuneloop_trainer <stage> --spec FILE --workdir DIR` — the contract with the operator."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tuneloop.contract import layout
from tuneloop.contract.exits import Reason
from tuneloop.contract.results import StageResult
from tuneloop.contract.termination import TERMINATION_LIMIT, fit

from . import STAGES
from .context import StageContext, load_context
from .errors import EXIT_RUNTIME_ERROR, TrainerError
from .settings import TrainerSettings


def compact(summary: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """JSON no longer than `limit` bytes (the contract's fitter): drops the largest values first."""
    return fit(summary, limit)


def write_summary(workdir: Path, stage: str, summary: dict[str, Any]) -> None:
    """Full summary to DIR/result-<stage>.json (and DIR/result.json for train); ≤4 KiB to the termination log.

    Under torchrun only rank 0 writes (the other ranks' failures reach the launcher's exit code).
    """
    if os.environ.get("RANK", "0") != "0":
        return
    workdir.mkdir(parents=True, exist_ok=True)
    full = json.dumps(summary, indent=2, default=str)
    (workdir / layout.result_file(stage)).write_text(full)
    if stage == "train":
        (workdir / layout.RESULT_FILE).write_text(full)
    log = TrainerSettings.from_env().termination_log
    if log.parent.exists() and (log.exists() or log.parent != Path("/dev")):
        try:
            log.write_text(compact(summary))
        except OSError:
            pass


def run_stage(stage: str, ctx: StageContext) -> dict[str, Any]:
    module, func = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), func)(ctx)


def success_summary(stage: str, started: float, result: dict[str, Any]) -> dict[str, Any]:
    return StageResult.succeeded(stage, round(time.time() - started, 1), result).wire()


def failure_summary(stage: str, exc: BaseException) -> tuple[dict[str, Any], int, str]:
    """(summary, exit code, one-line cause) of a failed stage: expected (TrainerError) or not."""
    if isinstance(exc, TrainerError):
        line = exc.one_line()
        return StageResult.failed(stage, exc.reason, line).wire(), exc.exit_code, line
    line = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:1000]
    return StageResult.failed(stage, Reason.INTERNAL_ERROR, line).wire(), EXIT_RUNTIME_ERROR, line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuneloop_trainer", description=__doc__)
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--spec", required=True, help="FineTuneJob manifest or bare spec (YAML/JSON)")
    ap.add_argument("--workdir", required=True, help="the job's output directory")
    args = ap.parse_args(argv)
    started = time.time()
    workdir = Path(args.workdir)
    try:
        ctx = load_context(args.spec, workdir)
        write_summary(workdir, args.stage, success_summary(args.stage, started, run_stage(args.stage, ctx) or {}))
        return 0
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 — the cause must reach the pod status, not only a traceback
        expected = isinstance(exc, TrainerError)
        if not expected:
            traceback.print_exc()
        summary, code, line = failure_summary(args.stage, exc)
        print(f"tuneloop {args.stage}: {'error' if expected else 'unexpected error'}: {line}", file=sys.stderr)
        write_summary(workdir, args.stage, summary)
        return code


if __name__ == "__main__":
    sys.exit(main())
