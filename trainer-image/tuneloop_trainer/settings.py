"""The trainer process's settings: every TUNELOOP_* environment variable it reads, in one typed object.

The names are the contract's (tuneloop.contract.layout.ENV_*): the operator sets the first group in the stage
pods; the overrides are for benchmarks, diagnosis and local runs. `TrainerSettings.from_env()` reads the
environment when it is called (never cached at import), so a test's monkeypatched variable, or a variable a stage
sets for its own children, is seen by the next read. `from_env` never fails (a failing stage must still be able to
write its summary): a number that does not parse raises ConfigError, naming the variable, where it is used.

The vLLM backend's pure functions (evaluation/vllm_backend) take the environment mapping they are handed (tests pass
a dict) and read it through `TrainerSettings.from_env(env)` too.

To add a setting: name it in contract/layout.py (ENV_...), add a field here with the value that applies when the
variable is unset, read it in `from_env` (tri-state 0/1 overrides through `_flag`), and read
`TrainerSettings.from_env().<field>` where it is used; tests/trainer/test_settings.py checks every field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tuneloop.contract import layout

from .errors import ConfigError

__all__ = ["TrainerSettings"]


def _flag(value: str | None) -> bool | None:
    """A 0/1 override: True for "1", False for "0", None (not overridden) for anything else."""
    return {"1": True, "0": False}.get(value or "")


def _number(name: str, raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class TrainerSettings:
    """The environment as the trainer understands it; each field says what an unset variable means."""

    # set by the operator in the stage pods
    job_name: str = "local"
    namespace: str = "default"
    metrics_port_text: str = "9400"  # read through `metrics_port`
    data_dir: Path = Path(layout.DATA_MOUNT)  # where a pvc data source's claim is mounted
    model_dir: Path = Path(layout.MODEL_MOUNT)  # where a pvc base model's claim is mounted
    cache_dir: Path | None = None  # the model cache (GGUF de-quantised copies); None: ~/.cache/tuneloop
    termination_log: Path = Path(layout.TERMINATION_LOG)
    image: str | None = None  # the image the stage runs in
    workdir_uri: str | None = None  # pvc://CLAIM/PATH of DIR as the cluster sees it; None: a local run
    # overrides (benchmarks, diagnosis); None: the trainer decides
    metrics_addr: str | None = None
    batch_layout: str | None = None  # validated where the layout is chosen (stages/train.py)
    fused_loss: bool | None = None
    fused_ops: bool | None = None
    liger: bool = True
    compile: bool | None = None
    adapter_casts: bool = False
    ds_shm_comm: bool = False
    varlen_backend: str | None = None
    peak_tflops_text: str | None = None  # read through `peak_tflops`
    # the evaluation backend
    eval_backend: str = ""  # auto | vllm | transformers, as given (evaluation/vllm_backend.requested_backend normalises it)
    vllm_python: str = ""  # the vLLM interpreter, stripped ("" : look for one)
    vllm_args: str = ""  # more vLLM server arguments, shell-quoted

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerSettings:
        """The settings of `env` (default: this process's environment, read now)."""
        e = os.environ if env is None else env
        cache = e.get(layout.ENV_CACHE_DIR)
        return cls(
            job_name=e.get(layout.ENV_JOB_NAME, "local"),
            namespace=e.get(layout.ENV_NAMESPACE, "default"),
            metrics_port_text=e.get(layout.ENV_METRICS_PORT, "9400"),
            data_dir=Path(e.get(layout.ENV_DATA_DIR, layout.DATA_MOUNT)),
            model_dir=Path(e.get(layout.ENV_MODEL_DIR, layout.MODEL_MOUNT)),
            cache_dir=Path(cache) if cache is not None else None,
            termination_log=Path(e.get(layout.ENV_TERMINATION_LOG, layout.TERMINATION_LOG)),
            image=e.get(layout.ENV_IMAGE) or None,
            workdir_uri=e.get(layout.ENV_WORKDIR_URI) or None,
            metrics_addr=e.get(layout.ENV_METRICS_ADDR) or None,
            batch_layout=e.get(layout.ENV_BATCH_LAYOUT) or None,
            fused_loss=_flag(e.get(layout.ENV_FUSED_LOSS)),
            fused_ops=_flag(e.get(layout.ENV_FUSED_OPS)),
            liger=e.get(layout.ENV_LIGER, "1") != "0",
            compile=_flag(e.get(layout.ENV_COMPILE)),
            adapter_casts=e.get(layout.ENV_ADAPTER_CASTS) == "1",
            ds_shm_comm=e.get(layout.ENV_DS_SHM_COMM) == "1",
            varlen_backend=e.get(layout.ENV_VARLEN_BACKEND) or None,
            peak_tflops_text=e.get(layout.ENV_PEAK_TFLOPS) or None,
            eval_backend=e.get(layout.ENV_EVAL_BACKEND) or "",
            vllm_python=(e.get(layout.ENV_VLLM_PYTHON) or "").strip(),
            vllm_args=e.get(layout.ENV_VLLM_ARGS) or "",
        )

    @property
    def model_cache(self) -> Path:
        """The trainer's model cache directory."""
        return self.cache_dir if self.cache_dir is not None else Path.home() / ".cache" / "tuneloop"

    @property
    def metrics_port(self) -> int:
        """The port of the trainer's metrics endpoint (0: any free port)."""
        try:
            return int(self.metrics_port_text)
        except ValueError:
            raise ConfigError(f"{layout.ENV_METRICS_PORT}={self.metrics_port_text!r} is not a port number") from None

    @property
    def peak_tflops(self) -> float | None:
        """The GPU's dense 16-bit peak in TFLOP/s, when overridden."""
        return _number(layout.ENV_PEAK_TFLOPS, self.peak_tflops_text)
