"""The export stage: output.exports written from the trained model and each checked against it (CPU).

    python -m tuneloop_trainer export --spec FILE --workdir DIR

For each listed format: `merged` (the adapter folded into the base, safetensors: DIR/exports/merged/), `gguf-f16` and
`gguf-q8_0` (one GGUF file each, DIR/exports/gguf-*/model.gguf, converted from the merged weights by
`training.gguf_export`). Then the equivalence check (`evaluation.equivalence`): the source (the tuned model as the
evaluation loaded it) and every export answer the evaluation's test items greedily on the same backend (transformers
on this machine; a GGUF file is loaded by transformers' GGUF reader, de-quantised, with the tokenizer stored in the
file), and the gate of each export (`minAgreement`, `maxDrop`) decides whether it is registered. DIR/exports.json holds
every record with sizes and speeds; the summary (the termination message in a pod) holds what the operator registers.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract import layout

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..context import StageContext

BACKEND = "transformers"


def _log(message: str) -> None:
    print(f"tuneloop export: {message}", file=sys.stderr, flush=True)


def size_bytes(path: Path) -> int:
    """Bytes of the weights on disk: a file, or a directory's weight files (safetensors / bin / gguf)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".gguf"))


def _fmt(e: Any) -> str:
    return e.format if isinstance(e.format, str) else e.format.value


def write_merged(ctx: StageContext, out: Path) -> Path:
    """The tuned model as one plain safetensors model directory (the adapter merged; full weights saved again)."""
    from ..modeling import load_tuned, save_merged

    model, tok = load_tuned(ctx)
    if out.exists():
        shutil.rmtree(out)
    save_merged(model.to("cpu"), tok, out)
    del model
    gc.collect()
    return out


def write_gguf(merged: Path, out_file: Path, quantization: str, name: str, pre_tokenizer: str | None = None) -> dict[str, Any]:
    from ..training.gguf_export import export_gguf

    return export_gguf(merged, out_file, quantization, name=name, pre_tokenizer=pre_tokenizer)


def base_pre_tokenizer(ctx: StageContext) -> str | None:
    """The base's llama.cpp pre-tokenizer when the base was a GGUF file (the quickstart's: smollm)."""
    from ..modeling import locate
    from ..training.gguf_export import pre_tokenizer_of

    loc = locate(ctx)
    return pre_tokenizer_of(loc.gguf_file) if loc.gguf_file else None


def load_export(fmt: str, path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of an export, each from the export alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt.startswith("gguf-"):
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return model.eval(), tok


def answer(ctx: StageContext, model: Any, tok: Any, conversations: list[list[dict[str, str]]]) -> tuple[list[str], dict[str, Any]]:
    """Greedy answers on the test prompts (the evaluation's prompts, limits and batch size) and their speed."""
    from ..evaluation.generate import chat_prompt, generate

    ev = ctx.spec.evaluation
    generate(model, tok, [chat_prompt(tok, [{"role": "user", "content": "hi"}])], batch_size=1, max_new_tokens=2)  # untimed warm-up
    gen = generate(model, tok, [chat_prompt(tok, c) for c in conversations], batch_size=ev.batch_size,
                   max_new_tokens=ev.max_new_tokens, decoding="greedy", seed=ctx.spec.hyperparameters.seed)
    return gen.texts, gen.stats()


# long: the scratch merged copy's lifetime (the try/finally that removes it) spans writing, loading and comparing each
# export; split, the cleanup would be spread over several functions
def run(ctx: StageContext) -> dict[str, Any]:
    from ..evaluation.equivalence import compare
    from ..evaluation.inputs import exports_fingerprint, load_test_split
    from ..modeling import load_tuned
    from .evaluate import wanted_metrics

    exports = list(ctx.spec.output.exports or [])
    wd = layout.WorkDir(ctx.workdir)
    fingerprint = exports_fingerprint(ctx)
    if not exports:
        wd.exports_file.write_text(json.dumps({"exports": [], "inputsFingerprint": fingerprint}, indent=2))
        return {"exports": [], "message": "no output.exports"}
    if ctx.spec.dataset.test is None and ctx.spec.dataset.split.test <= 0:
        raise ConfigError("output.exports needs test data to check each export against its source: set dataset.split.test > 0 or dataset.test")
    ev = ctx.spec.evaluation
    records = [r for r in load_test_split(ctx.data_dir, ev.max_samples) if "messages" in r]
    conversations = [r["messages"][:-1] for r in records]
    references = [r["messages"][-1]["content"] for r in records]
    wanted = wanted_metrics(ev)
    started = time.perf_counter()

    model, tok = load_tuned(ctx)
    source_texts, source_gen = answer(ctx, model, tok, conversations)
    del model, tok
    gc.collect()
    source_size = size_bytes(ctx.artifact_dir) if not (ctx.artifact_dir / "adapter_config.json").exists() else None

    formats = [_fmt(e) for e in exports]
    merged = wd.exports / "merged"
    scratch = "merged" not in formats
    if scratch:
        merged = wd.exports / ".merged-for-gguf"
    write_merged(ctx, merged)
    if source_size is None:
        source_size = size_bytes(merged)  # an adapter's source is base + adapter: its merged weights are what it weighs
    out: list[dict[str, Any]] = []
    try:
        for e in exports:
            fmt = _fmt(e)
            path = ctx.workdir / layout.export_path(fmt)
            t0 = time.perf_counter()
            written: dict[str, Any] = {}
            if fmt.startswith("gguf-"):
                written = write_gguf(merged, path, fmt.removeprefix("gguf-"), name=ctx.name, pre_tokenizer=base_pre_tokenizer(ctx))
            _log(f"{fmt}: written to {path} ({size_bytes(path)} bytes)")
            model, tok = load_export(fmt, path)
            texts, gen = answer(ctx, model, tok, conversations)
            del model, tok
            gc.collect()
            record = compare(source_texts, texts, references, schema=ev.json_schema, min_agreement=e.min_agreement, max_drop=e.max_drop,
                             metrics=wanted)
            record.update(backend=BACKEND, tokensPerSecond=gen.get("tokensPerSecond"), sourceTokensPerSecond=source_gen.get("tokensPerSecond"),
                          sourceSizeBytes=source_size)
            record = {k: v for k, v in record.items() if v is not None}
            _log(f"{fmt}: {record['reason']}")
            out.append({"format": fmt, "path": layout.export_path(fmt), "sizeBytes": size_bytes(path), "equivalence": record,
                        "seconds": round(time.perf_counter() - t0, 2), "generation": gen, "answers": texts,
                        **({"tensorTypes": written["tensorTypes"], "preTokenizer": written["preTokenizer"]} if written else {})})
    finally:
        if scratch:
            shutil.rmtree(merged, ignore_errors=True)
    doc = {"exports": out, "source": {"generation": source_gen, "answers": source_texts, "sizeBytes": source_size},
           "backend": BACKEND, "testItems": len(records), "seconds": round(time.perf_counter() - started, 2),
           "inputsFingerprint": fingerprint}
    wd.exports_file.write_text(json.dumps(doc, indent=2, default=str))
    return summary(doc)


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What the operator registers from: per export its format, size and equivalence record (no answers)."""
    return {"exports": [{k: e[k] for k in ("format", "sizeBytes", "equivalence") if k in e} for e in doc.get("exports", [])]}
