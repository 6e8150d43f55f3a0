"""Stage `train`: base model → LoRA / QLoRA / full fine-tuning with the HF Trainer (+ DeepSpeed).

Reads DIR/data/{train,validation}.jsonl from `prepare`; checkpoints to DIR/checkpoints and
resumes from the newest complete one; writes DIR/artifact (adapter or full weights + tokenizer),
DIR/artifact/merged (mergeAdapter), DIR/lineage.json and DIR/progress.jsonl; rank 0 serves the
tuneloop_trainer_* gauges. Under NNODES × NPROC_PER_NODE > 1 it re-executes itself under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuneloop.contract.layout import ENV_BATCH_LAYOUT

from ..errors import ConfigError, DataError, ResourceError, TrainerError
from ..settings import TrainerSettings
from ..training import distributed as dist

if TYPE_CHECKING:
    from ..context import StageContext


class LaunchFailed(TrainerError):
    """A rank of the torchrun launch failed; carries that run's reason and exit code."""


def _relaunch(ctx: StageContext, topo: dist.Topology) -> dict[str, Any]:
    result = ctx.workdir / "result-train.json"
    result.unlink(missing_ok=True)
    code = dist.relaunch(["train", "--spec", str(ctx.spec_file), "--workdir", str(ctx.workdir)], topo)
    summary = json.loads(result.read_text()) if result.exists() else {}
    if code == 0 and summary.get("outcome") == "Succeeded":
        return {k: v for k, v in summary.items() if k not in ("stage", "outcome", "seconds")}
    err = LaunchFailed(summary.get("error") or f"torchrun exited with code {code} (see the logs of every rank)")
    err.exit_code = code or 1
    err.reason = summary.get("reason", "TrainingFailed")
    raise err


def apply_method(ctx: StageContext, model: Any) -> Any:
    """LoRA / QLoRA adapters through peft, or every weight trainable for full fine-tuning."""
    method = ctx.spec.method
    if method.type == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if method.type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.spec.hyperparameters.gradient_checkpointing)
    targets = method.lora.target_modules
    cfg = LoraConfig(
        r=method.lora.r, lora_alpha=method.lora.alpha, lora_dropout=method.lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(f"method.lora.targetModules {targets}: {exc}") from None


def optimizer_steps_per_epoch(items: int, hp: Any, rows: bool) -> int:
    """Optimizer steps in one pass over `items` training items: records take batchSize per step; token-budget rows
    (maxTokensPerBatch) are micro-batches of their own, batchSize / microBatchSize of them per step."""
    per_step = max(1, hp.batch_size // hp.micro_batch_size) if rows else hp.batch_size
    return max(1, items // per_step)


def _eval_steps(hp: Any, steps_per_epoch: int) -> int:
    if hp.eval_steps:
        return hp.eval_steps
    if hp.max_steps:
        return max(1, hp.max_steps // 10)
    return max(1, steps_per_epoch)


def training_arguments(ctx: StageContext, world: int, steps_per_epoch: int, has_eval: bool, layout: str, rows: bool = False) -> Any:
    import torch
    from transformers import TrainingArguments

    from ..modeling import train_dtype
    from ..training.dsconfig import deepspeed_config, gradient_accumulation

    hp, spec = ctx.spec.hyperparameters, ctx.spec
    accum = gradient_accumulation(hp.batch_size, hp.micro_batch_size, world)
    dtype = train_dtype(ctx)
    cuda = torch.cuda.is_available()
    ds = deepspeed_config(spec, world) if spec.deepspeed and spec.deepspeed.enabled else None
    kw: dict[str, Any] = {}
    if has_eval:
        kw.update(eval_strategy="steps", eval_steps=_eval_steps(hp, steps_per_epoch),
                  per_device_eval_batch_size=1 if rows else hp.micro_batch_size, prediction_loss_only=True)
    return TrainingArguments(
        output_dir=str(ctx.checkpoint_dir),
        # rows: maxTokensPerBatch packs records into rows of a token budget, one row per micro-batch
        per_device_train_batch_size=1 if rows else hp.micro_batch_size,
        gradient_accumulation_steps=accum,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        lr_scheduler_type=hp.scheduler,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=hp.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if hp.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=hp.save_steps,
        save_total_limit=3,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        seed=hp.seed,
        data_seed=hp.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=not cuda,
        ddp_backend="gloo" if dist.under_launcher() and not cuda else None,
        ddp_find_unused_parameters=False if world > 1 else None,
        deepspeed=ds,
        train_sampling_strategy="group_by_length" if layout == "grouped" else "random",
        dataloader_num_workers=0,
        # padded batches: count attention_mask; padding-free batches have no padding to leave out
        include_num_input_tokens_seen="all" if layout in ("flat", "packed") else "non_padding",
        **kw,
    )


LAYOUTS = ("packed", "grouped", "flat", "padded")


def _layout(ctx: StageContext, model: Any) -> str:
    """Batch layout (bench/trainer/README.md has the measurements behind the choice):
    - packed: padding-free rows + varlen attention (attention.py: no mask, attention only inside each record)
      — the default on CUDA, and wherever hyperparameters.packing or maxTokensPerBatch asks for packing;
    - grouped: length-grouped batches padded to their longest record — the default on CPU (measured faster
      there than rows, whose per-record attention loop costs more than the little padding it saves);
    - flat: padding-free rows with the model's own attention (a dense block-diagonal mask under sdpa);
    - padded: the plain recipe (random batches, full logits), kept for comparison.
    All but padded compute the LM head only where a token is trained. TUNELOOP_BATCH_LAYOUT overrides."""
    import torch

    forced = TrainerSettings.from_env().batch_layout
    if forced:
        if forced not in LAYOUTS:
            raise ConfigError(f"{ENV_BATCH_LAYOUT}={forced!r}: expected one of {', '.join(LAYOUTS)}")
        return forced
    hp = ctx.spec.hyperparameters
    if hp.packing or hp.max_tokens_per_batch:
        return "packed"
    if torch.cuda.is_available():
        from ..training.attention import backend

        # packed rows pay only with a varlen kernel (flash-attn, or torch >= 2.10's); else the per-record loop
        return "packed" if backend("cuda") != "sdpa_loop" else "grouped"
    return "grouped"


def _fused_loss_wanted(layout: str) -> bool:
    """The chunked/fused LM-head loss (loss.py): on by default on CUDA (TUNELOOP_FUSED_LOSS=0/1 overrides)."""
    import torch

    forced = TrainerSettings.from_env().fused_loss
    if forced is not None:
        return forced and layout != "padded"
    return torch.cuda.is_available() and layout != "padded"


def spec_uses_deepspeed(ctx: StageContext) -> bool:
    return bool(ctx.spec.deepspeed and ctx.spec.deepspeed.enabled)


def cpu_deepspeed() -> None:
    """DeepSpeed on CPU: the CPU accelerator with plain torch.distributed (gloo) collectives.

    DeepSpeed would otherwise JIT-compile its shared-memory allreduce op at start-up (minutes, and
    a C++ toolchain in the image) for an intra-node speed-up CPU runs do not need.
    Set TUNELOOP_DS_SHM_COMM=1 to keep it.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not TrainerSettings.from_env().ds_shm_comm:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def _oom_error(ctx: StageContext) -> ResourceError:
    hp = ctx.spec.hyperparameters
    return ResourceError(
        f"out of memory at microBatchSize {hp.micro_batch_size}, maxSeqLength {hp.max_seq_length}",
        hint="lower hyperparameters.microBatchSize (batchSize is kept by gradient accumulation), set gradientCheckpointing: true, "
        "or use deepspeed.zeroStage 3 / offload: cpu, or more memory per pod",
    )


def run(ctx: StageContext) -> dict[str, Any]:
    topo = dist.topology()
    if topo.world_size > 1 and not dist.under_launcher():
        return _relaunch(ctx, topo)
    if ctx.spec.deepspeed and ctx.spec.deepspeed.enabled and not dist.under_launcher():
        dist.single_process_env()  # DeepSpeed wants a process group even for one rank
    try:
        return _train(ctx)
    except TrainerError:
        raise
    except (RuntimeError, MemoryError) as exc:
        if _oom(exc) or isinstance(exc, MemoryError):
            raise _oom_error(ctx) from exc
        raise


@dataclass
class _Run:
    """One training run's pieces, built in order by `_load`, `_speed_up` and `_monitor`, then used by `_train`."""

    model: Any
    tok: Any
    train_ds: Any
    eval_ds: Any
    layout: str
    attention: str | None
    rows: bool  # token-budget rows (hyperparameters.maxTokensPerBatch) instead of records
    collator: Any = None
    fused: bool = False
    loss_func: Any = None
    flops: Any = None
    steps_per_epoch: int = 0
    compiled: int = 0
    compile_why: str = ""
    fused_ops: str | None = None
    undo: list[Callable[[], None]] = field(default_factory=list)  # run after training, in order
    metrics: Any = None
    progress: Any = None
    stopper: Any = None
    timer: Any = None
    callbacks: list[Any] = field(default_factory=list)


def _load(ctx: StageContext) -> _Run:
    """The base model with the method applied, the splits (packed into rows where the layout asks) and the layout."""
    import torch

    from ..modeling import load_base
    from ..training.collate import load_split, pack_by_tokens

    spec, hp = ctx.spec, ctx.spec.hyperparameters
    if not (ctx.data_dir / "train.jsonl").exists():
        raise DataError(f"{ctx.data_dir / 'train.jsonl'} does not exist", hint="run the prepare stage first")
    if spec.method.type == "qlora" and not torch.cuda.is_available():
        raise ConfigError("method qlora needs a CUDA GPU (bitsandbytes 4-bit); none is visible", hint="use method lora on CPU")

    model, tok = load_base(ctx, for_training=True)
    model.config.use_cache = False
    train_ds = load_split(ctx.data_dir / "train.jsonl", tok, hp.max_seq_length)
    eval_ds = load_split(ctx.data_dir / "validation.jsonl", tok, hp.max_seq_length)
    if len(train_ds) == 0:
        raise DataError("the training split is empty", hint="check data_report.txt from prepare")
    layout = _layout(ctx, model)
    attention = None
    if layout == "packed":
        from ..training.attention import use_varlen_attention

        attention = use_varlen_attention(model)
        if attention is None:  # a model without transformers' attention interface: rows with its own masks
            layout = "flat"
    model = apply_method(ctx, model)
    if hp.gradient_checkpointing and spec.method.type != "full":
        model.enable_input_require_grads()

    budget = hp.max_tokens_per_batch
    rows = bool(budget) and layout in ("packed", "flat")
    if rows and budget:
        train_ds = pack_by_tokens(train_ds, budget, seed=hp.seed)
        eval_ds = pack_by_tokens(eval_ds, budget, seed=hp.seed)
    return _Run(model, tok, train_ds, eval_ds, layout, attention, rows)


def _speed_up(ctx: StageContext, run: _Run) -> None:
    """The collator, the loss, Liger's fused ops or torch.compile, and peft's adapter casts for `run`'s layout."""
    import torch

    from ..modeling import train_dtype
    from ..training import kernels
    from ..training.collate import FlatCollator, PackedCollator, PaddedCollator, sparse_logits_loss
    from ..training.flops import flops_model

    spec, hp, model, layout = ctx.spec, ctx.spec.hyperparameters, run.model, run.layout
    if layout == "packed":
        run.collator = PackedCollator()
    elif layout == "flat":
        run.collator = FlatCollator()
    else:
        run.collator = PaddedCollator(run.tok.pad_token_id, sparse_logits=layout == "grouped")
    if _fused_loss_wanted(layout):
        from ..training.loss import install_fused_loss

        run.fused = install_fused_loss(model)
    run.loss_func = None if layout == "padded" or run.fused else sparse_logits_loss
    run.flops = flops_model(model)
    run.steps_per_epoch = optimizer_steps_per_epoch(len(run.train_ds), hp, run.rows)
    planned = hp.max_steps or max(1, math.ceil(hp.epochs * run.steps_per_epoch))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compile_on, run.compile_why = kernels.compile_plan(hp.compile, device=device, method=spec.method.type,
                                                       deepspeed=spec_uses_deepspeed(ctx), planned_steps=planned)
    row_tokens = hp.max_tokens_per_batch if run.rows else None
    use_ops = not compile_on and kernels.fused_ops_wanted(row_tokens)
    run.fused_ops, undo_ops = kernels.fused_ops(model, device) if use_ops else (None, lambda: None)
    if compile_on:
        kernels.compile_cache(ctx.workdir, dist.topology().node_rank)
    run.compiled = kernels.compile_layers(model) if compile_on else 0
    print(f"tuneloop train: layout {layout}, loss {_loss_name(run.fused, layout)}, fused ops {run.fused_ops or 'none'}, "
          f"compile {'on' if compile_on else 'off'} ({run.compile_why})", file=sys.stderr)
    # under mixed precision autocast picks the matmul dtype: peft's cast of each adapter input to fp32 is pure copying
    keep_casts = train_dtype(ctx) == torch.float32 or TrainerSettings.from_env().adapter_casts
    undo_casts = (lambda: None) if keep_casts else kernels.adapter_input_casts_off(model)
    run.undo = [undo_casts, undo_ops]


def _monitor(ctx: StageContext, run: _Run, started: float, world: int, main: bool) -> Any:
    """Rank 0's checkpoint clean-up and metrics endpoint; the callbacks; the checkpoint to resume from (or None)."""
    from ..training.callbacks import CheckpointMarkerCallback, EarlyStoppingCallback, ProgressCallback, TrainTimeCallback
    from ..training.checkpoints import newest_complete, remove_incomplete
    from ..training.metrics import TrainerMetrics

    hp = ctx.spec.hyperparameters
    if main:
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_incomplete(ctx.checkpoint_dir)
        if removed:
            print(f"tuneloop train: removed incomplete checkpoints {removed}", file=sys.stderr)
        run.metrics = TrainerMetrics(ctx.name, ctx.namespace)
        port = run.metrics.serve_or_warn()  # a taken port is said loudly; training goes on
        if port is not None:
            print(f"tuneloop train: metrics on :{port}/metrics", file=sys.stderr)
    run.progress = ProgressCallback(ctx.workdir / "progress.jsonl", run.metrics, ctx.on_progress, flops=run.flops,
                                    collator=run.collator, world=world)
    run.callbacks = [run.progress, CheckpointMarkerCallback()]
    if hp.early_stopping and len(run.eval_ds):
        run.stopper = EarlyStoppingCallback(hp.early_stopping.patience, hp.early_stopping.threshold)
        run.callbacks.append(run.stopper)

    resume = newest_complete(ctx.checkpoint_dir)
    run.timer = TrainTimeCallback(ctx.workdir / "train-time.json", started, resumed=resume is not None) if main else None
    if run.timer is not None:
        run.callbacks.append(run.timer)
    return resume


def _train(ctx: StageContext) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available() and spec_uses_deepspeed(ctx):
        cpu_deepspeed()
    from transformers import Trainer

    started = time.time()
    world = dist.world_size()
    main = dist.is_main()
    run = _load(ctx)
    _speed_up(ctx, run)
    args = training_arguments(ctx, world, run.steps_per_epoch, len(run.eval_ds) > 0, run.layout, rows=run.rows)
    resume = _monitor(ctx, run, started, world, main)
    trainer = Trainer(model=run.model, args=args, train_dataset=run.train_ds, eval_dataset=run.eval_ds if len(run.eval_ds) else None,
                      data_collator=run.collator, processing_class=run.tok, callbacks=run.callbacks, compute_loss_func=run.loss_func)
    if ctx.on_progress is not None:
        # An interactive front-end (local run) draws its own progress; the HF Trainer's raw log dicts would
        # interleave with its bars. Pods keep them: they are what `kubectl logs` shows.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    try:
        out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final_eval = trainer.evaluate() if len(run.eval_ds) else {}
    finally:
        for undo in run.undo:
            undo()
        if run.metrics:
            run.metrics.close()

    trainer.save_model(str(ctx.artifact_dir))
    summary = _summary(ctx, run, trainer, out, final_eval, resume, world)
    if main:
        _finish(ctx, run, trainer, summary, started)
    return summary


def _summary(ctx: StageContext, run: _Run, trainer: Any, out: Any, final_eval: dict[str, Any], resume: Any, world: int) -> dict[str, Any]:
    """The train stage's summary (result.json, the termination message)."""
    from ..training import kernels

    attention = run.attention or str(getattr(getattr(kernels.inner_model(run.model), "config", None), "_attn_implementation", "") or "")
    return {
        "steps": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        "train_loss": round(out.training_loss, 6),
        "final_loss": run.progress.last["loss"],
        "eval_loss": final_eval.get("eval_loss"),
        "stopped_early_at": run.stopper.stopped_at if run.stopper else None,
        "artifact": str(ctx.artifact_dir),
        "world_size": world,
        "batch_layout": run.layout,
        "attention": attention,
        "loss": _loss_name(run.fused, run.layout),
        "compiled_layers": run.compiled,
        "compile": run.compile_why,
        "fused_ops": run.fused_ops,
        "tokens_per_second_per_gpu": run.progress.last_rates.get("tokens_per_second_per_gpu"),
        "mfu": run.progress.last_rates.get("mfu"),
    }


def _finish(ctx: StageContext, run: _Run, trainer: Any, summary: dict[str, Any], started: float) -> None:
    """Rank 0: the tokenizer next to the artifact, the optional merge, the training time and lineage.json."""
    spec = ctx.spec
    run.tok.save_pretrained(str(ctx.artifact_dir))
    tokens = trainer.state.num_input_tokens_seen
    if spec.method.merge_adapter and spec.method.type != "full":
        prompts = [r.get("messages", [])[:-1] for r in _read_jsonl(ctx.data_dir / "validation.jsonl", 4)
                   or _read_jsonl(ctx.data_dir / "train.jsonl", 4) if "messages" in r]
        summary["merge_check"] = _merge(ctx, prompts or [[{"role": "user", "content": "hello"}]])
        summary["merged"] = str(ctx.artifact_dir / "merged")
    summary["train_seconds"] = run.timer.total() if run.timer else round(time.time() - started, 1)  # all runs of this job
    lineage = write_lineage_for(ctx, summary, tokens, summary["train_seconds"])
    summary["lineage"] = str(lineage)


def _loss_name(fused: bool, layout: str) -> str:
    import torch

    if not fused:
        return "full_logits" if layout == "padded" else "sparse_logits"
    from ..training.loss import loss_backend

    return "fused_" + loss_backend("cuda" if torch.cuda.is_available() else "cpu")


def _merge(ctx: StageContext, prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    from ..training.artifact import merge_adapter

    return merge_adapter(ctx, prompts)


def write_lineage_for(ctx: StageContext, summary: dict[str, Any], tokens: int, wall: float):
    from ..training.artifact import write_lineage

    return write_lineage(ctx, {
        "world_size": summary["world_size"],
        "wall_time_seconds": round(wall, 1),
        "tokens_seen": tokens,
        "steps": summary["steps"],
        "resumed_from_step": summary["resumed_from_step"],
        "train_loss": summary["train_loss"],
        "eval_loss": summary["eval_loss"],
        "batch_layout": summary["batch_layout"],
    })


def _read_jsonl(path, n: int) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    out.append(json.loads(line))
                if len(out) >= n:
                    break
    return out
