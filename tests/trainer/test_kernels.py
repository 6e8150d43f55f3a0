"""training/kernels.py on CPU: the compile decision, peft's adapter input casts switched off under autocast
(same loss, adapters fed bf16), Liger's fused ops bound to one model instance and undone (with a stand-in
liger-kernel module whose ops are the reference maths, so the binding is tested without a GPU), the fallback
without CUDA or liger-kernel, and the dtype the base weights are loaded in."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from tuneloop_trainer.dataset.encoding import encode
from tuneloop_trainer.testing import chat_records
from tuneloop_trainer.training import kernels
from tuneloop_trainer.training.collate import PaddedCollator


def _batch(tiny_model: str, n: int = 4) -> dict:
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    feats = [dict(zip(("input_ids", "labels"), encode(tok, r))) for r in chat_records(n, system=True)]
    return PaddedCollator(tok.pad_token_id)(feats)


@pytest.mark.parametrize("setting,device,method,ds,steps,expected", [
    ("auto", "cuda", "lora", False, kernels.COMPILE_MIN_STEPS, True),
    ("auto", "cuda", "lora", False, kernels.COMPILE_MIN_STEPS - 1, False),
    ("auto", "cpu", "lora", False, 10_000, False),
    ("auto", "cuda", "qlora", False, 10_000, False),
    ("auto", "cuda", "full", False, 10_000, False),
    ("auto", "cuda", "lora", True, 10_000, False),
    ("on", "cpu", "full", True, 1, True),
    ("off", "cuda", "lora", False, 10_000, False),
])
def test_compile_plan(monkeypatch, setting, device, method, ds, steps, expected):
    monkeypatch.delenv("TUNELOOP_COMPILE", raising=False)
    on, why = kernels.compile_plan(setting, device=device, method=method, deepspeed=ds, planned_steps=steps)
    assert on is expected and why


@pytest.mark.parametrize("env,row_tokens,expected", [
    (None, None, False), (None, 2048, False), (None, kernels.FUSED_OPS_MIN_ROW_TOKENS, True), (None, 16384, True),
    ("0", 16384, False), ("1", None, True),
])
def test_fused_ops_wanted_for_big_rows_only(monkeypatch, env, row_tokens, expected):
    if env is None:
        monkeypatch.delenv("TUNELOOP_FUSED_OPS", raising=False)
    else:
        monkeypatch.setenv("TUNELOOP_FUSED_OPS", env)
    assert kernels.fused_ops_wanted(row_tokens) is expected


def test_compile_env_overrides_the_spec(monkeypatch):
    monkeypatch.setenv("TUNELOOP_COMPILE", "0")
    assert kernels.compile_plan("on", device="cuda", method="lora", deepspeed=False, planned_steps=1000) == (False, "TUNELOOP_COMPILE=0")
    monkeypatch.setenv("TUNELOOP_COMPILE", "1")
    assert kernels.compile_plan("off", device="cpu", method="full", deepspeed=False, planned_steps=1)[0] is True


def test_adapter_input_casts_off_keeps_the_loss_and_feeds_adapters_bf16(tiny_model):
    from peft import LoraConfig, get_peft_model

    batch = _batch(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapters = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    assert adapters and all(m.weight.dtype == torch.float32 for m in adapters)  # peft keeps adapters in fp32
    with torch.no_grad():
        for m in model.modules():  # a non-zero adapter, so that its path counts in the loss
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.normal_(0, 0.05)
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype)) for m in adapters]

    def loss() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch).loss
        out.backward()
        return out.detach().float(), adapters[0].weight.grad.detach().clone()

    ref, ref_grad = loss()
    assert set(seen) == {torch.float32}
    seen.clear()
    undo = kernels.adapter_input_casts_off(model)
    got, got_grad = loss()
    assert set(seen) == {torch.bfloat16}  # no fp32 copy of the activations any more
    assert abs(float(got - ref)) < 2e-2 * float(ref), (got, ref)
    assert float((got_grad - ref_grad).norm() / ref_grad.norm()) < 5e-2
    undo()
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    for h in hooks:
        h.remove()


def test_fused_ops_fall_back_without_cuda_or_liger(tiny_model, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    what, undo = kernels.fused_ops(model, "cpu")
    assert what is None
    undo()
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    assert kernels.fused_ops(model, "cuda")[0] is None
    assert not any("forward" in m.__dict__ for m in model.modules())


def _stand_in_liger(calls: dict) -> types.ModuleType:
    """liger_kernel.transformers with the reference maths (what the Triton kernels compute), counting calls."""
    from transformers.models.llama import modeling_llama

    class LigerRMSNorm(torch.nn.Module):
        def forward(self, hidden_states):
            calls["rms"] += 1
            x = hidden_states.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight * x.to(hidden_states.dtype)

    class LigerSwiGLUMLP(torch.nn.Module):
        def forward(self, x):
            calls["swiglu"] += 1
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    reference_rope = modeling_llama.apply_rotary_pos_emb

    def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        calls["rope"] += 1
        return reference_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    mod = types.ModuleType("liger_kernel.transformers")
    mod.LigerRMSNorm, mod.LigerSwiGLUMLP, mod.liger_rotary_pos_emb = LigerRMSNorm, LigerSwiGLUMLP, liger_rotary_pos_emb
    return mod


def test_fused_ops_bind_to_the_instance_keep_the_loss_and_undo(tiny_model, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers.models.llama import modeling_llama

    calls = {"rms": 0, "swiglu": 0, "rope": 0}
    pkg = types.ModuleType("liger_kernel")
    monkeypatch.setitem(sys.modules, "liger_kernel", pkg)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", _stand_in_liger(calls))
    monkeypatch.delenv("TUNELOOP_FUSED_OPS", raising=False)
    batch = _batch(tiny_model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.eval()
    other = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()  # another model in the same process
    original_rope = modeling_llama.apply_rotary_pos_emb
    with torch.no_grad():
        ref = model(**batch).loss
        what, undo = kernels.fused_ops(model, "cuda")
        assert what == "liger:rms_norm,swiglu,rope"
        got = model(**batch).loss
        layers = len(kernels.decoder_layers(model))
        assert calls == {"rms": 2 * layers + 1, "swiglu": layers, "rope": layers}, calls
        assert torch.allclose(got, ref, atol=1e-5), (got, ref)
        assert not any("forward" in m.__dict__ for m in other.modules())  # only this instance was patched
        undo()
        assert modeling_llama.apply_rotary_pos_emb is original_rope
        before = dict(calls)
        assert torch.allclose(model(**batch).loss, ref, atol=1e-6) and calls == before
    monkeypatch.setenv("TUNELOOP_FUSED_OPS", "0")
    assert kernels.fused_ops(model, "cuda")[0] is None


def test_fused_ops_leave_other_model_families_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", _stand_in_liger({"rms": 0, "swiglu": 0, "rope": 0}))
    gpt2 = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"), model=SimpleNamespace(layers=[object()]))
    assert kernels.fused_ops(gpt2, "cuda")[0] is None


@pytest.mark.parametrize("method,for_training,precision,expected", [
    ("lora", True, "auto", torch.bfloat16),
    ("lora", True, "fp32", None),
    ("full", True, "auto", None),
    ("qlora", True, "auto", None),
    ("full", False, "auto", torch.bfloat16),
])
def test_base_weights_dtype_on_cuda(monkeypatch, method, for_training, precision, expected):
    from tuneloop_trainer import modeling

    monkeypatch.setattr(modeling, "use_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    ctx = SimpleNamespace(spec=SimpleNamespace(method=SimpleNamespace(type=method), hyperparameters=SimpleNamespace(precision=precision)))
    assert modeling.load_dtype(ctx, for_training) == expected


def test_base_weights_stay_fp32_on_cpu():
    from tuneloop_trainer import modeling

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU rule is what is tested here")
    ctx = SimpleNamespace(spec=SimpleNamespace(method=SimpleNamespace(type="lora"), hyperparameters=SimpleNamespace(precision="auto")))
    assert modeling.load_dtype(ctx, True) is None and modeling.load_dtype(ctx, False) is None


@pytest.mark.parametrize("items,batch,micro,rows,expected", [
    (1000, 8, 1, False, 125), (1000, 8, 4, False, 125),  # records: batchSize per optimizer step, whatever the micro-batch
    (100, 8, 4, True, 50), (100, 8, 8, True, 100),       # rows: batchSize / microBatchSize rows per step
    (3, 8, 1, False, 1),
])
def test_optimizer_steps_per_epoch(items, batch, micro, rows, expected):
    from tuneloop_trainer.stages.train import optimizer_steps_per_epoch

    hp = SimpleNamespace(batch_size=batch, micro_batch_size=micro)
    assert optimizer_steps_per_epoch(items, hp, rows) == expected


def test_compile_cache_is_kept_per_node_in_the_work_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded, so the value set below is undone after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    path = kernels.compile_cache(tmp_path, 1)
    assert path == str(tmp_path / "compile-cache" / "node-1") and (tmp_path / "compile-cache" / "node-1").is_dir()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # the user's choice wins
    assert kernels.compile_cache(tmp_path, 0) is None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    cache_dir()  # inductor, once used, writes its default into the environment: that is not a user's choice
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.abspath(default_cache_dir())
    assert kernels.compile_cache(tmp_path, 0) == str(tmp_path / "compile-cache" / "node-0")
