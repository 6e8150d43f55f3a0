"""A local run of a GGUF base records where vLLM can load that base: the trainer's de-quantised safetensors
(baseModel.servingPath), which `kubectl tuneloop local serve` serves. A pod's record keeps none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tuneloop_trainer.context import load_context
from tuneloop_trainer.modeling import gguf_cache_dir
from tuneloop_trainer.report.modelversion import manifest
from tuneloop_trainer.testing import tiny_spec

pytestmark = pytest.mark.unit


def _ctx(tmp_path: Path):
    gguf = tmp_path / "pkg" / "Tiny.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    spec = tiny_spec(tmp_path / "unused", tmp_path / "train.jsonl", tmp_path / "run")
    spec["baseModel"] = {"gguf": {"path": str(gguf)}}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"}, "spec": spec}))
    return load_context(f, tmp_path / "run"), gguf


def test_local_run_of_a_gguf_base_records_the_dequantised_serving_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_CACHE_DIR", str(tmp_path / "cache"))
    ctx, gguf = _ctx(tmp_path)
    cache = gguf_cache_dir(gguf)
    assert cache.parent == tmp_path / "cache" / "gguf"
    # nothing de-quantised yet (no train stage ran here): no servingPath, so serving says the base is not servable
    assert "servingPath" not in manifest(ctx, {}, {}, None, env={})["spec"]["baseModel"]
    cache.mkdir(parents=True)
    (cache / ".complete").write_text("ok")
    base = manifest(ctx, {}, {}, None, env={})["spec"]["baseModel"]
    assert base["servingPath"] == str(cache) and base["name"].endswith("Tiny.Q4_1.gguf")
    # in a pod the trainer's cache is nothing a serving pod can mount
    in_pod = manifest(ctx, {}, {}, None, env={"TUNELOOP_WORKDIR_URI": "pvc://out/tiny"})["spec"]["baseModel"]
    assert "servingPath" not in in_pod
