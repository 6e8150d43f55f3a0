"""`kubectl tuneloop crds [--out DIR]`"""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneloop.api import crdgen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=crdgen.CRD_DIR, help="directory for the CRDs (default: crds/)")
    p.add_argument("--chart", type=Path, default=None, help="where to write the chart's copy")


def run(args: argparse.Namespace) -> int:
    argv = ["--out", str(args.out)] + (["--chart", str(args.chart)] if args.chart else [])
    return crdgen.main(argv)
