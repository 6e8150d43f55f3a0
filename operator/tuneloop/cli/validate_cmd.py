"""`kubectl tuneloop validate FILE…`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneloop.api.schema_check import check_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML files (multi-document allowed)")


def run(args: argparse.Namespace) -> int:
    count, problems = check_files(args.files)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {count} document(s)", file=sys.stderr)
        return 1
    print(f"valid ({count} document{'s' if count != 1 else ''})")
    return 0
