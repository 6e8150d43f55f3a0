"""GPU tier (`pytest -m gpu --run-gpu`): the CUDA paths of the trainer on a tiny random Llama, in minutes.

Skipped, with the reason, without --run-gpu or without a CUDA GPU (tests/conftest.py). Covers: the varlen
attention kernel and the fused LM-head loss against references, the packed GPU default = the padded loss,
the train stage with LoRA, QLoRA (bitsandbytes 4-bit), full fine-tuning under DeepSpeed ZeRO-2 and ZeRO-3, all bf16,
Liger's fused RMSNorm/SwiGLU/RoPE against the eager ops, LoRA with compiled decoder layers, and the evaluate stage on
CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tuneloop_trainer.testing import chat_records, make_tiny_model, tiny_spec, write_jsonl

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", hidden=128, layers=2)


def _spec(tmp: Path, model: Path, **overrides) -> tuple[Path, Path]:
    data = write_jsonl(tmp / "train.jsonl", chat_records(64, system=True))
    work = tmp / "work"
    spec = tiny_spec(model, data, work, resources={"gpusPerNode": 1}, **overrides)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "gpu", "namespace": "test"}, "spec": spec}))
    return path, work


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNELOOP_METRICS_PORT="0", TUNELOOP_TERMINATION_LOG=str(tmp / "term"),
               PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer-image"), env.get("PYTHONPATH", "")])
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _stage(stage: str, spec: Path, work: Path, tmp: Path, timeout: int = 240) -> dict:
    if stage == "prepare":  # CPU-only and quick: in process
        from tuneloop_trainer.context import load_context
        from tuneloop_trainer.stages.prepare import run as prepare

        prepare(load_context(spec, work))
        return json.loads((work / "result-prepare.json").read_text()) if (work / "result-prepare.json").exists() else {"outcome": "Succeeded"}
    out = subprocess.run([sys.executable, "-m", "tuneloop_trainer", stage, "--spec", str(spec), "--workdir", str(work)],
                         env=_env(tmp), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((work / f"result-{stage}.json").read_text())


def test_varlen_attention_kernel_matches_reference():
    import torch
    from tuneloop_trainer.training.attention import _sdpa_loop, backend, varlen_attention_forward

    assert backend("cuda") in ("flash_attn", "torch_varlen"), backend("cuda")
    from tuneloop_trainer.training import attention

    attention._probe(backend("cuda"))
    print("varlen kernel", backend("cuda"), "grouped-query native:", attention._state["gqa_native"])
    lengths = [300, 1, 517, 64, 1200, 7]
    t = sum(lengths)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, t, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(1, 8, t, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(1, 8, t, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    cu = torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32, device="cuda")
    out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.125, cu_seq_lens_q=cu, max_length_q=max(lengths))
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = _sdpa_loop(qf[0].transpose(0, 1), kf[0].transpose(0, 1), vf[0].transpose(0, 1), cu, 0.125).unsqueeze(0)
    assert _rel(out, ref) < 2e-2
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    for a, b in ((q, qf), (k, kf), (v, vf)):
        assert _rel(a.grad, b.grad) < 3e-2


@pytest.mark.parametrize("liger", ["1", "0"])
def test_fused_loss_matches_reference_on_cuda(monkeypatch, liger):
    import torch
    import torch.nn.functional as F
    from tuneloop_trainer.training import loss

    monkeypatch.setenv("TUNELOOP_LIGER", liger)
    g = torch.Generator(device="cuda").manual_seed(1)
    h = torch.randn(3000, 256, device="cuda", generator=g, requires_grad=True)
    w = (torch.randn(20000, 256, device="cuda", generator=g) * 0.05).requires_grad_()
    t = torch.randint(0, 20000, (3000,), device="cuda", generator=g)
    t[::3] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = loss.linear_cross_entropy(h, w, t)
    ref = F.cross_entropy((h.bfloat16() @ w.bfloat16().t()).float(), t, reduction="sum")
    assert _rel(ours, ref) < 1e-2, (ours, ref, loss.loss_backend("cuda"))
    gh, gw = torch.autograd.grad(ours, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert _rel(gh, rh) < 3e-2 and _rel(gw, rw) < 3e-2


def test_packed_default_gives_the_padded_loss_on_cuda(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tuneloop_trainer.dataset.encoding import encode
    from tuneloop_trainer.training.attention import use_varlen_attention
    from tuneloop_trainer.training.collate import PackedCollator, PaddedCollator
    from tuneloop_trainer.training.loss import install_fused_loss

    tok = AutoTokenizer.from_pretrained(str(tiny))
    feats = [dict(zip(("input_ids", "labels"), encode(tok, r))) for r in chat_records(8, system=True)]
    n = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)
    ref_model = AutoModelForCausalLM.from_pretrained(str(tiny)).cuda()
    model = AutoModelForCausalLM.from_pretrained(str(tiny)).cuda()
    assert use_varlen_attention(model) in ("flash_attn", "torch_varlen") and install_fused_loss(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = ref_model(**{k: v.cuda() for k, v in PaddedCollator(tok.pad_token_id)(feats).items()}).loss
        b = PackedCollator()(feats)
        packed = model(**{k: v.cuda() if hasattr(v, "cuda") else v for k, v in b.items()}, num_items_in_batch=torch.tensor(n)).loss
    assert abs(float(packed) - float(ref)) < 2e-2 * float(ref), (packed, ref)


def test_lora_trains_packed_bf16_then_evaluates_on_cuda(tiny, tmp_path):
    spec, work = _spec(tmp_path, tiny, hyperparameters={"maxSteps": 12, "learningRate": 1e-2, "saveSteps": 100, "evalSteps": 6},
                       evaluation={"maxNewTokens": 8, "batchSize": 8, "metrics": ["perplexity", "exactMatch", "jsonValid"]})
    assert _stage("prepare", spec, work, tmp_path)["outcome"] == "Succeeded"
    res = _stage("train", spec, work, tmp_path)
    assert res["batch_layout"] == "packed" and res["attention"] in ("flash_attn", "torch_varlen"), res
    # the tiny model's MFU rounds to 0.0; that it is reported (not None) is what counts here
    assert res["loss"].startswith("fused_") and res["mfu"] is not None and res["tokens_per_second_per_gpu"] > 0
    assert res["compiled_layers"] == 0 and res["compile"].startswith("auto: 12 steps"), res  # too short to pay
    assert res["fused_ops"] is None, res  # micro-batches of records: Liger's ops measured slower there
    rows = [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    assert json.loads((work / "lineage.json").read_text())["hyperparameters"]["precision"] in ("auto", "bf16")
    pytest.importorskip("rouge_score", reason="the evaluate stage scores ROUGE-L with rouge-score (in the trainer image)")
    ev = _stage("evaluate", spec, work, tmp_path)
    assert ev["outcome"] == "Succeeded", ev


def test_qlora_trains_on_cuda(tiny, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the trainer image installs it)")
    spec, work = _spec(tmp_path, tiny, method={"type": "qlora", "quantization": {"bits": 4}},
                       hyperparameters={"maxSteps": 4, "saveSteps": 100})
    _stage("prepare", spec, work, tmp_path)
    res = _stage("train", spec, work, tmp_path)
    assert res["steps"] == 4 and res["batch_layout"] == "packed"
    assert (work / "artifact" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_full_fine_tuning_with_deepspeed_zero_on_cuda(tiny, tmp_path, stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    spec, work = _spec(tmp_path, tiny, method={"type": "full"}, deepspeed={"enabled": True, "zeroStage": stage},
                       hyperparameters={"maxSteps": 4, "saveSteps": 100, "precision": "bf16"})
    _stage("prepare", spec, work, tmp_path)
    res = _stage("train", spec, work, tmp_path, timeout=300)
    assert res["steps"] == 4 and res["batch_layout"] == "packed" and res["eval_loss"] is not None
    assert (work / "artifact" / "model.safetensors").exists()


def test_liger_fused_ops_give_the_reference_loss_and_grads_on_cuda(tiny):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tuneloop_trainer.dataset.encoding import encode
    from tuneloop_trainer.training import kernels
    from tuneloop_trainer.training.attention import use_varlen_attention
    from tuneloop_trainer.training.collate import PackedCollator

    pytest.importorskip("liger_kernel", reason="Liger's fused RMSNorm/SwiGLU/RoPE need liger-kernel (the trainer image installs it)")
    tok = AutoTokenizer.from_pretrained(str(tiny))
    feats = [dict(zip(("input_ids", "labels"), encode(tok, r))) for r in chat_records(8, system=True)]
    b = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in PackedCollator(sparse_logits=False)(feats).items()}

    def run(fused: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.bfloat16).cuda()
        assert use_varlen_attention(model) in ("flash_attn", "torch_varlen")
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
        for m in model.modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                torch.nn.init.normal_(m.lora_B["default"].weight, 0, 0.05)
        what, undo = kernels.fused_ops(model, "cuda") if fused else (None, lambda: None)
        undo_casts = kernels.adapter_input_casts_off(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**b).loss
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])
        undo_casts()
        undo()
        return what, float(loss), grads

    _, ref, ref_g = run(False)
    what, got, got_g = run(True)
    assert what == "liger:rms_norm,swiglu,rope"
    assert abs(got - ref) < 2e-2 * ref, (got, ref)
    assert _rel(got_g, ref_g) < 5e-2


def test_lora_compiled_layers_train_on_cuda(tiny, tmp_path):
    spec, work = _spec(tmp_path, tiny, hyperparameters={"maxSteps": 8, "learningRate": 1e-2, "saveSteps": 100, "compile": "on"})
    _stage("prepare", spec, work, tmp_path)
    res = _stage("train", spec, work, tmp_path, timeout=300)
    assert res["compiled_layers"] == 2 and res["compile"] == "compile: on" and res["fused_ops"] is None, res
    rows = [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r["loss"] is not None}  # evaluation rows repeat a step's loss
    assert sorted(losses) == list(range(1, 9)) and losses[8] < losses[1], losses


def test_lora_rows_use_liger_fused_ops_on_cuda(tiny, tmp_path):
    pytest.importorskip("liger_kernel", reason="Liger's fused RMSNorm/SwiGLU/RoPE need liger-kernel (the trainer image installs it)")
    spec, work = _spec(tmp_path, tiny, hyperparameters={"maxSteps": 6, "learningRate": 1e-2, "saveSteps": 100,
                                                         "maxTokensPerBatch": 4096})
    _stage("prepare", spec, work, tmp_path)
    res = _stage("train", spec, work, tmp_path)
    assert res["fused_ops"] == "liger:rms_norm,swiglu,rope" and res["compiled_layers"] == 0, res
