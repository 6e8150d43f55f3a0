"""Test tiers: unit → operator (kmock) → vllm (real vLLM on CPU: `make vllm`) → cluster (--kubeconfig) → gpu (--run-gpu)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The evaluate stage would use vLLM wherever `make vllm` installed it: tests choose their backend (tests/evaluation/
# test_eval_backend.py, the `vllm` tier), every other test evaluates with transformers, as fast and as reproducible as before.
os.environ.setdefault("TUNELOOP_EVAL_BACKEND", "transformers")

ROOT = Path(__file__).resolve().parents[1]

# Property tests: generating inputs slowly is the shared 2-core machine's load, not a defect of the property; the
# examples, their number and the deadlines stay each test's own.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("tuneloop", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tuneloop")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kubeconfig", default=None, help="run the cluster tier against this kubeconfig")
    parser.addoption("--run-gpu", action="store_true", default=False, help="run the gpu tier (needs CUDA)")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 — no torch or a broken CUDA setup just means no GPU tier
        return False


def vllm_wanted() -> Path:
    """Where the vllm tier looks for real vLLM: $TUNELOOP_VLLM, else this checkout's .venv-vllm/bin/vllm (`make vllm`)."""
    explicit = os.environ.get("TUNELOOP_VLLM")
    return Path(explicit) if explicit and explicit != "standin" else ROOT / ".venv-vllm" / "bin" / "vllm"


def vllm_executable() -> Path | None:
    path = vllm_wanted()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kubeconfig = config.getoption("--kubeconfig")
    run_gpu = config.getoption("--run-gpu")
    skip_cluster = pytest.mark.skip(reason="cluster tier: pass --kubeconfig PATH to run against a real cluster")
    skip_gpu = pytest.mark.skip(reason="gpu tier: pass --run-gpu on a machine with a CUDA GPU" if not run_gpu
                                else "gpu tier: --run-gpu given, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    skip_vllm = pytest.mark.skip(reason=f"vllm tier: no vLLM CPU build at {vllm_wanted()} "
                                        "(`make vllm` installs it in .venv-vllm; or set TUNELOOP_VLLM to a vllm executable)")
    has_vllm = vllm_executable() is not None
    for item in items:
        if item.get_closest_marker("vllm") and not has_vllm:
            item.add_marker(skip_vllm)
        # markers, not keywords: a keyword also matches a folder name (tests/cluster/ holds unit tests too)
        if item.get_closest_marker("cluster") and not kubeconfig:
            item.add_marker(skip_cluster)
        if item.get_closest_marker("gpu") and not (run_gpu and _has_cuda()):
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--kubeconfig")
