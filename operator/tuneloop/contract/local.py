"""How `kubectl tuneloop local run` reaches the trainer without importing it.

The trainer package registers its in-process stage runner as the entry point `local-runner` of the
group `tuneloop.trainer` (pyproject.toml). The CLI loads it here, so `tuneloop.cli` and
`tuneloop.operator` never import `tuneloop_trainer`, and the operator image needs no trainer.

What the runner provides (tuneloop_trainer.local_runner) is the `LocalRunner` protocol below.
"""

from __future__ import annotations

from importlib.metadata import distributions
from pathlib import Path
from typing import Any, Protocol

ENTRY_POINT_GROUP = "tuneloop.trainer"
LOCAL_RUNNER = "local-runner"


class TrainerFailure(Exception):
    """What the CLI reads of the trainer's expected failures (`TrainerError`): the runner's class has these
    attributes and `one_line()`; it is not this class (the contract does not import the trainer)."""

    hint: str | None
    exit_code: int


class LocalRunner(Protocol):
    """The trainer's in-process runner of a FineTuneJob's stages (a module)."""

    STAGE_ORDER: list[str]
    TrainerError: type[TrainerFailure]  # expected failures: .one_line(), .hint, .exit_code

    def load_context(self, spec_file: str | Path, workdir: str | Path) -> Any: ...
    def select_stages(self, from_stage: str | None, to_stage: str | None) -> list[str]: ...
    def default_workdir(self, ctx_name: str, spec: Any, spec_dir: Path) -> Path: ...
    def clean_outputs(self, workdir: Path) -> list[str]: ...
    def apply_overrides(self, spec: Any, overrides: dict[str, Any]) -> None: ...
    def missing_inputs(self, workdir: Path, first_stage: str) -> str | None: ...
    def run_chain(self, ctx: Any, stages: list[str], **kwargs: Any) -> list[Any]: ...
    def spec_fingerprint(self, spec: Any) -> str: ...
    def completed_training(self, workdir: Path, fingerprint: str) -> dict[str, Any] | None: ...
    def evaluation_fingerprint(self, ctx: Any) -> str: ...
    def completed_evaluation(self, workdir: Path, fingerprint: str) -> dict[str, Any] | None: ...
    def exports_fingerprint(self, ctx: Any) -> str: ...
    def completed_exports(self, workdir: Path, fingerprint: str) -> dict[str, Any] | None: ...


class TrainerMissing(ImportError):
    """The trainer (pip install 'tuneloop[trainer]') is not installed here."""


def load_local_runner() -> LocalRunner:
    """The installed trainer's local runner; TrainerMissing when there is none (or it cannot import)."""
    # Every distribution, not importlib's first-per-name: a stale tuneloop.egg-info in the working tree
    # (on sys.path when running from the repository) must not hide the installed entry point.
    found = [ep for dist in distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP and ep.name == LOCAL_RUNNER]
    if not found:
        raise TrainerMissing(f"no '{LOCAL_RUNNER}' entry point in group '{ENTRY_POINT_GROUP}': the trainer package is not installed",
                             name="tuneloop_trainer")
    try:
        runner: LocalRunner = found[0].load()  # a module; the Protocol says what it provides
        return runner
    except ImportError as exc:
        raise TrainerMissing(str(exc), name=exc.name) from exc
