"""Packed rows + varlen attention + the fused/chunked LM-head loss, against the plain padded reference (CPU).

The GPU kernels behind the same code paths (torch/flash-attn varlen, Liger) are checked by tests/gpu/.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from tuneloop_trainer.context import load_context
from tuneloop_trainer.stages.prepare import run as prepare
from tuneloop_trainer.stages.train import run as train

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- chunked linear + cross-entropy

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_cross_entropy_matches_reference(dtype, tol, bias):
    from tuneloop_trainer.training.loss import chunked_linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    n, h, v = 53, 24, 301
    x = torch.randn(n, h, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(v, h, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(v, dtype=dtype, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = -100
    ours = chunked_linear_cross_entropy(x, w, t, b, chunk=7)  # 8 chunks, the last one partial
    ref = F.cross_entropy(F.linear(x, w, b), t, ignore_index=-100, reduction="sum")
    assert torch.allclose(ours, ref, rtol=tol, atol=tol), (ours, ref)
    params = [p for p in (x, w, b) if p is not None]
    g_ours = torch.autograd.grad(ours * 0.37, params)
    g_ref = torch.autograd.grad(ref * 0.37, params)
    for a, c in zip(g_ours, g_ref):
        assert torch.allclose(a, c, rtol=tol, atol=tol), (a - c).abs().max()


def test_chunked_loss_skips_gradients_it_does_not_need():
    from tuneloop_trainer.training.loss import chunked_linear_cross_entropy

    x = torch.randn(9, 8, requires_grad=True)
    w = torch.randn(50, 8)  # frozen head (LoRA): no weight gradient is computed or returned
    t = torch.randint(0, 50, (9,))
    loss = chunked_linear_cross_entropy(x, w, t)
    loss.backward()
    assert x.grad is not None and w.grad is None
    with torch.no_grad():  # evaluation: value only
        assert torch.allclose(chunked_linear_cross_entropy(x, w, t), F.cross_entropy(x @ w.t(), t, reduction="sum"), atol=1e-4)


def test_liger_is_optional_and_the_chunked_loss_is_the_fallback(monkeypatch):
    from tuneloop_trainer.training import loss

    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.fused_linear_cross_entropy", None)
    assert not loss.liger_available("cuda") and loss.loss_backend("cuda") == "chunked"
    assert loss.loss_backend("cpu") == "chunked"
    x, w, t = torch.randn(5, 4), torch.randn(11, 4), torch.randint(0, 11, (5,))
    assert torch.allclose(loss.linear_cross_entropy(x, w, t), F.cross_entropy(x @ w.t(), t, reduction="sum"), atol=1e-5)


# ---------------------------------------------------------------- varlen attention

def _ref_attention(q, k, v, lengths):
    """Per-record causal attention with a dense block-diagonal mask (the reference)."""
    t = q.shape[2]
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (seg[:, None] == seg[None, :]) & torch.ones(t, t, dtype=torch.bool).tril()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("given", ["cu_seq_lens", "position_ids"])
def test_varlen_attention_never_crosses_records(given):
    from tuneloop_trainer.training.attention import backend, varlen_attention_forward

    assert backend("cpu") == "sdpa_loop"
    lengths = [5, 1, 9, 3]
    t = sum(lengths)
    q, k, v = torch.randn(1, 4, t, 8), torch.randn(1, 2, t, 8), torch.randn(1, 2, t, 8)  # grouped-query: 4 q heads, 2 kv
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    kw = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 9, "max_length_k": 9} if given == "cu_seq_lens" else {"position_ids": pos}
    module = torch.nn.Module()
    out, _ = varlen_attention_forward(module, q, k, v, None, scaling=8 ** -0.5, **kw)
    assert out.shape == (1, t, 4, 8)
    assert torch.allclose(out, _ref_attention(q, k, v, lengths), atol=1e-5)


def test_varlen_backend_prefers_flash_attn_when_installed(monkeypatch):
    import types

    from tuneloop_trainer.training import attention

    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert attention.backend("cuda") == "flash_attn"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed: PyTorch's own varlen kernel, else the loop
    assert attention.backend("cuda") in ("torch_varlen", "sdpa_loop")
    monkeypatch.setenv("TUNELOOP_VARLEN_BACKEND", "sdpa_loop")
    assert attention.backend("cuda") == "sdpa_loop"


# ---------------------------------------------------------------- packing

def test_pack_by_tokens_keeps_every_record_once_within_the_budget():
    from tuneloop_trainer.training.collate import EncodedDataset, PackedCollator, pack_by_tokens

    lens = [3, 17, 40, 8, 8, 25, 1, 60, 12, 33, 70]  # 70 > budget: a row of its own
    ds = EncodedDataset([{"input_ids": [100 * i + j for j in range(n)], "labels": [100 * i + j for j in range(n)]}
                         for i, n in enumerate(lens)])
    packed = pack_by_tokens(ds, 64, seed=3)
    assert sorted(n for row in packed.examples for n in row["lengths"]) == sorted(lens)
    assert all(sum(r["lengths"]) <= 64 or r["lengths"] == [70] for r in packed.examples)
    assert len(packed) < len(lens)
    seen = sorted(x for r in packed.examples for x in r["input_ids"])
    assert seen == sorted(x for e in ds.examples for x in e["input_ids"])
    coll = PackedCollator()
    batch = coll([packed[0]])
    lengths = packed[0]["lengths"]
    assert batch["cu_seq_lens_q"].tolist()[-1] == sum(lengths) == batch["input_ids"].shape[1]
    assert batch["max_length_q"] == max(lengths)
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert coll.attn_pairs == sum(n * (n + 1) // 2 for n in lengths)


def _ctx(spec, work):
    ctx = load_context(spec, work)
    prepare(ctx)
    return ctx


def _tiny(ctx):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.resolve(ctx.spec.base_model.path)))
    model.config.use_cache = False
    return model


def test_packed_layout_and_fused_loss_give_the_padded_loss_and_gradients(write_spec):
    """The GPU default path (packed rows + varlen attention + fused LM-head loss) against the plain padded recipe:
    same loss, same gradient for every weight — with a micro-batch of records and with pre-packed rows."""
    from tuneloop_trainer.modeling import load_tokenizer
    from tuneloop_trainer.training.attention import use_varlen_attention
    from tuneloop_trainer.training.collate import PackedCollator, PaddedCollator, load_split, pack_by_tokens
    from tuneloop_trainer.training.loss import install_fused_loss

    spec, work = write_spec(records=None)
    ctx = _ctx(spec, work)
    tok = load_tokenizer(ctx)
    ds = load_split(work / "data" / "train.jsonl", tok, 256)
    feats = [ds[i] for i in range(6)]
    n_trained = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)

    ref_model = _tiny(ctx)
    ref = ref_model(**PaddedCollator(tok.pad_token_id)(feats)).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in ref_model.named_parameters()}

    model = _tiny(ctx)
    assert use_varlen_attention(model) == "sdpa_loop"
    assert install_fused_loss(model)
    batch = PackedCollator()(feats)
    assert "attention_mask" not in batch
    out = model(**batch, num_items_in_batch=torch.tensor(n_trained))
    assert out.logits is None  # no [tokens × vocab] logits
    assert torch.allclose(out.loss, ref, atol=1e-5), (out.loss, ref)
    out.loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4), n

    from tuneloop_trainer.training.collate import EncodedDataset

    rows = pack_by_tokens(EncodedDataset(feats), 10_000)
    assert len(rows) == 1
    with torch.no_grad():
        again = model(**PackedCollator()([rows[0]]), num_items_in_batch=torch.tensor(n_trained)).loss
    assert torch.allclose(again, ref, atol=1e-5)
    # without labels the model's own forward runs (generation / evaluation code paths)
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"][:, :7])
    assert plain.logits.shape == (1, 7, model.config.vocab_size)


def _progress(work):
    return [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]


def test_packing_trains_on_cpu_with_a_token_budget(write_spec, monkeypatch):
    monkeypatch.setenv("TUNELOOP_FUSED_LOSS", "1")  # the GPU default loss, exercised on CPU
    spec, work = write_spec(hyperparameters={"maxSteps": 16, "saveSteps": 100, "learningRate": 1e-2, "evalSteps": 8,
                                             "packing": True, "maxTokensPerBatch": 96})
    summary = train(_ctx(spec, work))
    assert summary["batch_layout"] == "packed" and summary["attention"] == "sdpa_loop" and summary["loss"] == "fused_chunked"
    rows = [r for r in _progress(work) if r["loss"] is not None]
    train_loss = {r["step"]: r["loss"] for r in rows}  # one per step (evaluation rows repeat the step's training loss)
    first, last = [train_loss[s] for s in (1, 2, 3)], [train_loss[s] for s in (14, 15, 16)]
    assert sum(last) < 0.9 * sum(first), train_loss
    assert summary["eval_loss"] is not None
    last = rows[-1]
    assert last["tokens_per_second_per_gpu"] == pytest.approx(last["tokens_per_second"], rel=1e-3)
    assert last["mfu"] is None and summary["mfu"] is None  # CPU: no peak to compare against
    cfg = json.loads((work / "artifact" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"


def test_cpu_default_layout_stays_grouped(write_spec, monkeypatch):
    from tuneloop_trainer.stages.train import _fused_loss_wanted, _layout

    monkeypatch.delenv("TUNELOOP_BATCH_LAYOUT", raising=False)
    monkeypatch.delenv("TUNELOOP_FUSED_LOSS", raising=False)
    spec, work = write_spec()
    ctx = load_context(spec, work)
    assert _layout(ctx, None) == "grouped" and not _fused_loss_wanted("grouped")
    spec, work = write_spec(hyperparameters={"packing": True})
    assert _layout(load_context(spec, work), None) == "packed"


def test_full_fine_tuning_packed_saves_a_loadable_model(write_spec, monkeypatch):
    """Full weights trained with the varlen attention reload in a fresh process with the default attention."""
    import subprocess

    monkeypatch.setenv("TUNELOOP_FUSED_LOSS", "1")
    spec, work = write_spec(method={"type": "full"}, hyperparameters={"maxSteps": 2, "saveSteps": 100, "packing": True})
    summary = train(_ctx(spec, work))
    assert summary["batch_layout"] == "packed"
    cfg = json.loads((work / "artifact" / "config.json").read_text())
    assert "tuneloop_varlen" not in json.dumps(cfg)
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); print(m.config._attn_implementation)")
    out = subprocess.run([sys.executable, "-c", code, str(work / "artifact")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------- FLOPs / MFU

def test_flops_model_counts_lora_and_full(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from tuneloop_trainer.training.flops import FlopsModel, flops_model, mfu, peak_tflops

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    cfg = model.config
    emb = cfg.vocab_size * cfg.hidden_size
    matmul = sum(p.numel() for p in model.parameters() if p.dim() == 2) - emb  # untied: head counted, embedding not
    full = flops_model(model)
    assert full.trained_params == matmul and full.frozen_params == 0
    assert full.n_layers == cfg.num_hidden_layers and full.d_attn == cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    lora = flops_model(get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")))
    assert lora.frozen_params == matmul and 0 < lora.trained_params < matmul / 4
    fm = FlopsModel(frozen_params=1000, trained_params=10, n_layers=2, d_attn=8)
    assert fm.per_token(5.5) == 4 * 1000 + 6 * 10 + 12 * 2 * 8 * 5.5
    assert fm.flops(tokens=10, attn_pairs=55) == fm.per_token(5.5) * 10
    assert mfu(989e12, 1.0, 2, 989.0) == pytest.approx(0.5)
    assert mfu(1.0, 1.0, 1, None) is None
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("Some New GPU") is None


def test_progress_row_and_gauges_carry_tokens_per_gpu_and_mfu(tmp_path):
    from types import SimpleNamespace

    from tuneloop_trainer.training.callbacks import ProgressCallback
    from tuneloop_trainer.training.flops import FlopsModel
    from tuneloop_trainer.training.metrics import TrainerMetrics

    metrics = TrainerMetrics("j", "ns")
    coll = SimpleNamespace(tokens=100, attn_pairs=550)  # mean context 5.5
    fm = FlopsModel(1_000_000, 0, 2, 64)
    cb = ProgressCallback(tmp_path / "p.jsonl", metrics, flops=fm, collator=coll, world=2, peak_tflops=1e-6)
    state = SimpleNamespace(global_step=0, max_steps=10, epoch=0.0, num_input_tokens_seen=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    cb.t0 -= 2.0  # two seconds ago
    state.global_step, state.num_input_tokens_seen = 2, 400
    cb.on_log(None, state, None, logs={"loss": 1.5})
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[-1])
    assert row["tokens_per_second_per_gpu"] == pytest.approx(row["tokens_per_second"] / 2, rel=1e-2)
    expected = fm.per_token(5.5) * 400 / row_seconds(row, cb) / (2 * 1e6)
    assert row["mfu"] == pytest.approx(expected, rel=2e-2)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert "tuneloop_trainer_tokens_per_second_per_gpu{" in text and "tuneloop_trainer_mfu{" in text


def row_seconds(row, cb):
    return row["time"] - cb.t0
