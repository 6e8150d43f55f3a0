"""What every stage gets (`StageContext`): the parsed spec, the work directory, and path resolution.

Every stage's `run(ctx)`, and every helper that needs the job, takes a `StageContext`; `load_context` builds it
from the spec file (a pod's ConfigMap, or a local run's manifest) and the trainer's settings (settings.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from tuneloop.api import FineTuneJobSpec
from tuneloop.contract import layout
from tuneloop.contract.termination import TERMINATION_LIMIT

from .errors import ConfigError
from .settings import TrainerSettings

__all__ = ["TERMINATION_LIMIT", "ProgressCallback", "StageContext", "load_context"]


# A stage's progress event: {"event"|"stage", "phase", "done", "total", "loss", ...} (train: a progress.jsonl row).
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class StageContext:
    """One stage's inputs. `spec_dir` anchors relative paths in the spec (local runs)."""

    spec: FineTuneJobSpec
    workdir: Path
    spec_dir: Path
    name: str = "local"
    namespace: str = "default"
    uid: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    # Progress callback for interactive front-ends (local run: tuneloop.cli.local_progress); pods leave it None.
    on_progress: ProgressCallback | None = None
    # The spec file itself (the train stage re-executes itself under torchrun with it).
    spec_file: Path | None = None

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(str(path))))
        return p if p.is_absolute() else (self.spec_dir / p).resolve()

    # The work directory layout, shared by the stages, the operator and local runs (tuneloop.contract.layout).
    @property
    def data_dir(self) -> Path:
        return self.workdir / layout.DATA_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / layout.CHECKPOINT_DIR

    @property
    def artifact_dir(self) -> Path:
        return self.workdir / layout.ARTIFACT_DIR

    @property
    def report_dir(self) -> Path:
        return self.workdir / layout.REPORT_DIR


def load_context(spec_file: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> StageContext:
    """Read a FineTuneJob manifest (or a bare spec) and validate it with the API models."""
    path = Path(spec_file)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"spec file {path} does not hold a mapping")
    meta = doc.get("metadata") or {}
    spec_doc = doc.get("spec", doc) if doc.get("kind") == "FineTuneJob" or "spec" in doc else doc
    try:
        spec = FineTuneJobSpec.model_validate(spec_doc)
    except ValidationError as exc:
        from tuneloop.api.spec_errors import problems

        found = problems(exc, FineTuneJobSpec, "spec")  # every problem at once, in the spec's words
        text = found[0] if len(found) == 1 else f"{len(found)} problems:\n  " + "\n  ".join(found)
        raise ConfigError(f"invalid spec {path}: {text}", hint=f"run `kubectl tuneloop validate {path}`") from None
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    env = TrainerSettings.from_env()
    return StageContext(
        spec=spec,
        workdir=wd.resolve(),
        spec_dir=path.resolve().parent,
        name=meta.get("name", env.job_name),
        namespace=meta.get("namespace", env.namespace),
        uid=meta.get("uid", ""),
        raw=doc,
        spec_file=path.resolve(),
    )
