"""The trainer's one reader of its TUNELOOP_* environment (tuneloop_trainer.settings), by the contract's names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuneloop.contract import layout
from tuneloop_trainer.errors import ConfigError
from tuneloop_trainer.settings import TrainerSettings

TRAINER = Path(__file__).resolve().parents[2] / "trainer-image" / "tuneloop_trainer"

# field -> (variable, a value, what the field holds then)
SET = {
    "job_name": (layout.ENV_JOB_NAME, "j", "j"),
    "namespace": (layout.ENV_NAMESPACE, "ns", "ns"),
    "metrics_port_text": (layout.ENV_METRICS_PORT, "0", "0"),
    "data_dir": (layout.ENV_DATA_DIR, "/d", Path("/d")),
    "model_dir": (layout.ENV_MODEL_DIR, "/m", Path("/m")),
    "cache_dir": (layout.ENV_CACHE_DIR, "/c", Path("/c")),
    "termination_log": (layout.ENV_TERMINATION_LOG, "/t", Path("/t")),
    "image": (layout.ENV_IMAGE, "reg/img:1", "reg/img:1"),
    "workdir_uri": (layout.ENV_WORKDIR_URI, "pvc://c/p", "pvc://c/p"),
    "metrics_addr": (layout.ENV_METRICS_ADDR, "::1", "::1"),
    "batch_layout": (layout.ENV_BATCH_LAYOUT, "flat", "flat"),
    "fused_loss": (layout.ENV_FUSED_LOSS, "0", False),
    "fused_ops": (layout.ENV_FUSED_OPS, "1", True),
    "liger": (layout.ENV_LIGER, "0", False),
    "compile": (layout.ENV_COMPILE, "1", True),
    "adapter_casts": (layout.ENV_ADAPTER_CASTS, "1", True),
    "ds_shm_comm": (layout.ENV_DS_SHM_COMM, "1", True),
    "varlen_backend": (layout.ENV_VARLEN_BACKEND, "sdpa_loop", "sdpa_loop"),
    "peak_tflops_text": (layout.ENV_PEAK_TFLOPS, "989", "989"),
    "eval_backend": (layout.ENV_EVAL_BACKEND, " VLLM ", " VLLM "),
    "vllm_python": (layout.ENV_VLLM_PYTHON, " /v/bin/python ", "/v/bin/python"),
    "vllm_args": (layout.ENV_VLLM_ARGS, "--dtype bfloat16", "--dtype bfloat16"),
}


def test_every_field_is_read_from_its_contract_name_and_defaults_when_unset():
    fields = {f.name for f in dataclasses.fields(TrainerSettings)}
    assert fields == set(SET)
    assert TrainerSettings.from_env({}) == TrainerSettings()
    for name, (var, value, held) in SET.items():
        got = TrainerSettings.from_env({var: value})
        assert getattr(got, name) == held, name
        assert dataclasses.replace(got, **{name: getattr(TrainerSettings(), name)}) == TrainerSettings(), name  # only that field


def test_defaults_are_the_historical_ones():
    s = TrainerSettings.from_env({})
    assert (s.job_name, s.namespace, s.metrics_port, s.data_dir, s.model_dir) == ("local", "default", 9400, Path("/data"), Path("/models"))
    assert s.model_cache == Path.home() / ".cache" / "tuneloop" and s.termination_log == Path("/dev/termination-log")
    assert (s.liger, s.adapter_casts, s.ds_shm_comm, s.compile, s.fused_ops, s.fused_loss, s.peak_tflops) == (True, False, False, None, None, None, None)


@given(st.one_of(st.sampled_from(["0", "1", "", " 1", "true", "yes", "01"]), st.text(max_size=4)))
def test_flags_keep_the_old_rules(value):
    s = TrainerSettings.from_env({layout.ENV_COMPILE: value, layout.ENV_FUSED_OPS: value, layout.ENV_FUSED_LOSS: value,
                                  layout.ENV_LIGER: value, layout.ENV_ADAPTER_CASTS: value, layout.ENV_DS_SHM_COMM: value})
    override = (value == "1") if value in ("0", "1") else None  # `env in ("0", "1")` then `env == "1"`, as before
    assert s.compile is override and s.fused_ops is override and s.fused_loss is override
    assert s.liger is (value != "0") and s.adapter_casts is (value == "1") and s.ds_shm_comm is (value == "1")


def test_a_malformed_number_fails_where_it_is_read_naming_the_variable():
    s = TrainerSettings.from_env({layout.ENV_METRICS_PORT: "ninety", layout.ENV_PEAK_TFLOPS: "lots"})  # never fails here
    with pytest.raises(ConfigError, match=layout.ENV_METRICS_PORT):
        _ = s.metrics_port
    with pytest.raises(ConfigError, match=layout.ENV_PEAK_TFLOPS):
        _ = s.peak_tflops
    assert TrainerSettings.from_env({layout.ENV_PEAK_TFLOPS: "989.5"}).peak_tflops == 989.5


def test_reads_the_environment_when_asked(monkeypatch):
    monkeypatch.setenv(layout.ENV_JOB_NAME, "first")
    assert TrainerSettings.from_env().job_name == "first"
    monkeypatch.setenv(layout.ENV_JOB_NAME, "second")
    assert TrainerSettings.from_env().job_name == "second"


def test_no_other_trainer_module_spells_a_tuneloop_variable():
    """Code outside settings.py names TUNELOOP_* variables only through the contract's constants (prose may mention them)."""
    literal = re.compile(r"""["']TUNELOOP_[A-Z_]+["']""")
    found = [f"{p.relative_to(TRAINER)}:{n}" for p in TRAINER.rglob("*.py") if p.name != "settings.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []
