"""Entry of `kubectl tuneloop`. Each sub-command lives in its own module, imported only when run."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("tuneloop.cli.validate_cmd", "check FineTuneJob/ModelVersion/Rollout files; print every problem with its field path"),
    "crds": ("tuneloop.cli.crds_cmd", "write the CRDs (and the chart's copy) generated from the API models"),
    "local": ("tuneloop.cli.local_cmd", "run a FineTuneJob on this machine: `local run FILE`, then `local serve RUN_DIR` (vLLM)"),
    "status": ("tuneloop.cli.status_cmd", "show a FineTuneJob's phase, progress, conditions and events"),
    "report": ("tuneloop.cli.report_cmd", "print the experiment report of a ModelVersion"),
    "promote": ("tuneloop.cli.rollout_cmd", "promote a Rollout's candidate now"),
    "abort": ("tuneloop.cli.rollout_cmd", "abort a Rollout: all traffic back to stable"),
    "retrain": ("tuneloop.cli.retrain_cmd", "start a run of a FineTuneSchedule now (the manual trigger)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl tuneloop",
        description="Fine-tune, evaluate, register and roll out LLMs with tuneloop.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
            continue
        add = getattr(mod, "add_arguments_for", None)
        if add:
            add(name, p)
        else:
            mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # `COMMAND ... -- ARGS`: ARGS go to the command untouched (local serve passes them to vllm serve); argparse
    # cannot take them once options follow a positional
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if passthrough and not getattr(args, "accepts_passthrough", False):
        parser.error(f"unexpected arguments after --: {' '.join(passthrough)}")
    args.passthrough = passthrough
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"kubectl tuneloop {args.command}: not available in this build", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
