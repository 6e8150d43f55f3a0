"""Fixtures for the trainer tests: one tiny model per session, spec files, stage runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

# DeepSpeed's CPU accelerator JIT-builds its shared-memory comm op once; keep it across sessions.
EXT_DIR = Path(tempfile.gettempdir()) / "tuneloop-tests-torch-extensions"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def write_spec(tmp_path, tiny_model):
    """write_spec(records=None, data_file=None, **overrides) -> (spec_path, workdir)."""

    def make(records: list[Any] | None = None, data_file: Path | None = None, **overrides: Any) -> tuple[Path, Path]:
        data = data_file or write_jsonl(tmp_path / "train.jsonl", chat_records(40) if records is None else records)
        workdir = tmp_path / "work"
        spec = tiny_spec(tiny_model, data, workdir, **overrides)
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                        "metadata": {"name": "tiny", "namespace": "test"}, "spec": spec}))
        return path, workdir

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TUNELOOP_METRICS_PORT": "0", "TUNELOOP_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "TORCH_EXTENSIONS_DIR": str(EXT_DIR), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore"})
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_stage(stage: str, spec: Path, workdir: Path, env: dict[str, str], launcher: list[str] | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m"]) + ["tuneloop_trainer", stage, "--spec", str(spec), "--workdir", str(workdir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
