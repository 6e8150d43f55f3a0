"""`kubectl tuneloop validate FILE…`"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneloop.api.schema_check import Problem, check_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML files (multi-document allowed)")
    p.add_argument("--cluster", action="store_true",
                   help="also apply the operator's in-cluster checks to FineTuneJobs (local paths, one dataset claim, "
                        "output.s3 staging, batch split) and to the FineTuneJob every run of a FineTuneSchedule creates "
                        "— what the API server cannot see but the operator refuses")


LOCAL_PATHS = (  # (field path, how to read it from the spec document)
    ("spec.baseModel.path", ("baseModel", "path")),
    ("spec.dataset.train.path", ("dataset", "train", "path")),
    ("spec.dataset.validation.path", ("dataset", "validation", "path")),
    ("spec.dataset.test.path", ("dataset", "test", "path")),
    ("spec.evaluation.forgetting.path", ("evaluation", "forgetting", "path")),
    ("spec.evaluation.serving.evalJson", ("evaluation", "serving", "evalJson")),
)


def local_path_problems(spec: dict, base_dir: Path) -> list[tuple[str, str]]:
    """(field path, problem) for every local path in a FineTuneJob spec that does not exist (relative paths are
    relative to the spec file's directory, as local runs read them), with the closest existing name."""
    import difflib

    out: list[tuple[str, str]] = []
    for where, keys in LOCAL_PATHS:
        node: Any = spec
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, str) or not node or "://" in node:
            continue
        p = Path(node).expanduser()
        full = p if p.is_absolute() else base_dir / p
        if full.exists():
            continue
        parent = full.parent
        hint = ""
        if parent.is_dir():
            close = difflib.get_close_matches(full.name, [c.name for c in parent.iterdir()], n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean `{(Path(node).parent / close[0]).as_posix()}`?"
        else:
            hint = f"; the directory {parent} does not exist either"
        out.append((where, f"{node} does not exist (looked for {full}){hint}"))
    return out


def documents(paths: list[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every mapping document of the files, with its file; unreadable files and YAML errors are check_files' to report."""
    import yaml

    from tuneloop.api.schema_check import load_documents

    for path in paths:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError):
            continue
        yield from ((path, doc) for doc in docs if isinstance(doc, dict))


def path_problems(paths: list[Path]) -> list[Problem]:
    out = []
    for path, doc in documents(paths):
        if doc.get("kind") == "FineTuneJob" and isinstance(doc.get("spec"), dict):
            name = (doc.get("metadata") or {}).get("name", "")
            out += [Problem(str(path), "FineTuneJob", name, where, why) for where, why in local_path_problems(doc["spec"], path.resolve().parent)]
    return out


def cluster_problems(paths: list[Path]) -> list[Problem]:
    """The operator's own refusal (`Failed`, `InvalidSpec`) for each schema-valid FineTuneJob, FineTuneSchedule and FineTuneSweep."""
    from tuneloop.operator.finetunejob.reconcile import validate
    from tuneloop.operator.schedule import admission
    from tuneloop.operator.settings import get_settings

    out = []
    for path, doc in documents(paths):
        if doc.get("kind") == "FineTuneSchedule":
            meta = {"name": "x", **(doc.get("metadata") or {})}
            where, why = admission.first_problem({**doc, "metadata": meta}, get_settings())
            if where:
                out.append(Problem(str(path), "FineTuneSchedule", meta["name"], where,
                                   f"{why} (the operator would set the schedule Failed, InvalidSpec)"))
            continue
        if doc.get("kind") == "FineTuneSweep":
            from tuneloop.operator.sweep import admission as sweep_admission

            meta = {"name": "x", **(doc.get("metadata") or {})}
            where, why = sweep_admission.first_problem({**doc, "metadata": meta}, get_settings())
            if where:
                out.append(Problem(str(path), "FineTuneSweep", meta["name"], where,
                                   f"{why} (the operator would set the sweep Failed, InvalidSpec)"))
            continue
        if doc.get("kind") == "Rollout":
            from pydantic import ValidationError

            from tuneloop.api.rollout import Rollout
            from tuneloop.operator.policy import Policy, rollout_problems

            name = (doc.get("metadata") or {}).get("name", "")
            try:
                refused = rollout_problems(Rollout.model_validate({**doc, "metadata": {"name": "x", **(doc.get("metadata") or {})}}).spec,
                                           Policy.from_settings(get_settings()))
            except ValidationError:
                refused = []  # reported by check_files
            out += [Problem(str(path), "Rollout", name, where, f"{why} (the operator would set the Rollout Degraded, InvalidSpec)")
                    for where, why in refused[:1]]
            continue
        if doc.get("kind") != "FineTuneJob":
            continue
        meta = {"name": "x", **(doc.get("metadata") or {})}
        spec, where, why = validate({**doc, "metadata": meta}, get_settings())
        if spec is None:
            out.append(Problem(str(path), "FineTuneJob", meta["name"], where, f"{why} (the operator would fail it in a cluster)"))
    return out


def deprecation_warnings(paths: list[Path]) -> list[str]:
    """One line per deprecated field a document sets (still accepted: a warning, not a problem)."""
    from tuneloop.api.deprecations import deprecated_fields

    return [f"warning: {path}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name', '')}: {use.message()}"
            for path, doc in documents(paths) for use in deprecated_fields(str(doc.get("kind")), doc.get("spec"))]


def run(args: argparse.Namespace) -> int:
    count, problems = check_files(args.files)
    for warning in deprecation_warnings(args.files):
        print(warning, file=sys.stderr)
    if not args.cluster:
        problems += path_problems(args.files)  # every problem at once: the schema's and the missing local files
    if args.cluster and not problems:
        problems = cluster_problems(args.files)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {count} document(s)", file=sys.stderr)
        return 1
    print(f"valid ({count} document{'s' if count != 1 else ''})")
    return 0
