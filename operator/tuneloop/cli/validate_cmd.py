"""`kubectl tuneloop validate FILE…`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneloop.api.schema_check import Problem, check_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML files (multi-document allowed)")
    p.add_argument("--cluster", action="store_true",
                   help="also apply the operator's in-cluster checks to FineTuneJobs (local paths, one dataset claim, "
                        "output.s3 staging, batch split) — what the API server cannot see but the operator refuses")


def cluster_problems(paths: list[Path]) -> list[Problem]:
    """The operator's own refusal (`Failed`, `InvalidSpec`) for each schema-valid FineTuneJob."""
    import yaml

    from tuneloop.api.schema_check import load_documents
    from tuneloop.operator.finetunejob.reconcile import validate
    from tuneloop.operator.settings import get_settings

    out = []
    for path in paths:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError):
            continue  # reported by check_files
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "FineTuneJob":
                continue
            meta = {"name": "x", **(doc.get("metadata") or {})}
            spec, where, why = validate({**doc, "metadata": meta}, get_settings())
            if spec is None:
                out.append(Problem(str(path), "FineTuneJob", meta["name"], where, f"{why} (the operator would fail it in a cluster)"))
    return out


def run(args: argparse.Namespace) -> int:
    count, problems = check_files(args.files)
    if args.cluster and not problems:
        problems = cluster_problems(args.files)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {count} document(s)", file=sys.stderr)
        return 1
    print(f"valid ({count} document{'s' if count != 1 else ''})")
    return 0
