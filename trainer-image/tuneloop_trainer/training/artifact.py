"""After training: the artifact (adapter or full weights + tokenizer), lineage.json, the optional merge."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract import layout
from tuneloop.contract.lineage import LineageBase, LineageDataset, LineageFile, LineageJob

from ..errors import TrainerError

if TYPE_CHECKING:
    from ..context import StageContext


def write_lineage(ctx: StageContext, run: dict[str, Any]) -> Path:
    """DIR/lineage.json (the contract's LineageFile): the job, data, base model and spec it trained from, plus `run`
    (the LineageFile fields the training measured: world_size, wall_time_seconds, tokens_seen, steps, ...)."""
    from ..modeling import library_versions, locate

    report_file = ctx.workdir / layout.DATA_REPORT_FILE
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    spec = ctx.spec
    lineage = LineageFile(
        job=LineageJob(name=ctx.name, namespace=ctx.namespace, uid=ctx.uid),
        dataset=LineageDataset(sha256=report.get("dataset_sha256"), format=spec.dataset.format,
                               counts=report.get("counts"), files=report.get("files")),
        base_model=LineageBase(source=locate(ctx).display, revision=spec.base_model.revision() or None),
        method=spec.method.wire(),
        hyperparameters=spec.hyperparameters.wire(),
        deepspeed=spec.deepspeed.wire() if spec.deepspeed else None,
        libraries=library_versions(),
        python=platform.python_version(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **run,
    )
    return lineage.write(ctx.workdir / layout.LINEAGE_FILE)


def merge_adapter(ctx: StageContext, prompts: list[list[dict[str, str]]], max_new_tokens: int = 16) -> dict[str, Any]:
    """Merge the adapter in DIR/artifact into fresh base weights, save to artifact/merged, reload and check.

    The check: the reloaded merged model and base+adapter give the same greedy tokens on up to 4
    validation prompts, and their logits agree to 1e-3.
    """
    import torch
    from peft import PeftModel

    from ..modeling import load_base

    art = ctx.artifact_dir
    out = art / "merged"
    base, tok = load_base(ctx, for_training=False)
    base = base.to("cpu").float()
    peft_model = PeftModel.from_pretrained(base, str(art)).eval()
    inputs = [tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True) for p in prompts[:4]]
    with torch.no_grad():
        ref = [(peft_model(**x).logits, peft_model.generate(**x, max_new_tokens=max_new_tokens, do_sample=False)) for x in inputs]
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    diff, same = 0.0, True
    with torch.no_grad():
        for x, (logits, gen) in zip(inputs, ref):
            diff = max(diff, (reloaded(**x).logits - logits).abs().max().item())
            same &= torch.equal(reloaded.generate(**x, max_new_tokens=max_new_tokens, do_sample=False), gen)
    check = {"prompts": len(inputs), "max_logit_diff": diff, "greedy_match": bool(same)}
    (out / "merge_check.json").write_text(json.dumps(check, indent=2))
    if not same or diff > 1e-3:
        raise TrainerError(f"merged model differs from base+adapter after reload: {check}")
    return check
