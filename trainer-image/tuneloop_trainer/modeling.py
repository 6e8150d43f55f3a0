"""Loading the base model, its tokenizer, and the tuned result — the one place every stage uses.

    from tuneloop_trainer.modeling import load_base, load_tokenizer, load_tuned
    tok = load_tokenizer(ctx)                           # prepare: token lengths with the chat template
    model, tok = load_base(ctx, for_training=True)      # train (QLoRA: 4-bit on GPU)
    model, tok = load_base(ctx)                         # evaluate: the baseline, eval mode
    model, tok = load_tuned(ctx)                        # evaluate: base + adapter, or the full weights
    model, tok = load_tuned(ctx, merged=True)           # the merged model (artifact/merged)

Sources (spec.baseModel, exactly one): huggingFace id+revision (token from env HF_TOKEN; honours
HF_HUB_OFFLINE), path (a model directory), pvc (the claim mounted at $TUNELOOP_MODEL_DIR, default
/models, plus pvc.path), gguf (a file by path or inside an installed Python distribution).
GGUF: transformers dequantizes it on load but refuses to train or save such a model, so its weights
are copied into a fresh model built from the same config and the result is cached as safetensors
under $TUNELOOP_CACHE_DIR (default ~/.cache/tuneloop) so later stages load it in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract import layout

from .errors import ConfigError
from .settings import TrainerSettings

if TYPE_CHECKING:
    from .context import StageContext

MODEL_MOUNT_ENV = layout.ENV_MODEL_DIR
CACHE_ENV = layout.ENV_CACHE_DIR


@dataclass(frozen=True)
class ModelLocation:
    """Where from_pretrained should look: a repo id or directory, plus revision / gguf file."""

    name_or_path: str
    revision: str | None = None
    gguf_file: str | None = None
    display: str = ""


def _find_gguf_in_package(package: str, file: str | None) -> Path:
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"baseModel.gguf.pythonPackage {package!r} is not installed in the trainer image")
    root = Path(list(spec.submodule_search_locations)[0])
    if file:
        p = root / file
        if not p.exists():
            raise ConfigError(f"baseModel.gguf.file {file!r} not found in package {package} ({root})")
        return p
    found = sorted(root.rglob("*.gguf"))
    if len(found) != 1:
        raise ConfigError(f"package {package} holds {len(found)} .gguf files; set baseModel.gguf.file")
    return found[0]


def locate(ctx: StageContext) -> ModelLocation:
    """Resolve spec.baseModel to a from_pretrained location. Raises ConfigError when it cannot exist here."""
    src = ctx.spec.base_model
    if src.hugging_face:
        return ModelLocation(src.hugging_face.id, src.hugging_face.revision, display=src.display_name())
    if src.path:
        p = ctx.resolve(src.path)
        if not p.exists():
            raise ConfigError(f"baseModel.path {p} does not exist")
        return ModelLocation(str(p), display=str(p))
    if src.pvc:
        p = TrainerSettings.from_env().model_dir / src.pvc.path.lstrip("/")
        if not p.exists():
            raise ConfigError(f"baseModel.pvc: {p} does not exist (claim {src.pvc.claim_name} mounted at ${MODEL_MOUNT_ENV})")
        return ModelLocation(str(p), display=src.display_name())
    if src.gguf:
        g = src.gguf
        f = ctx.resolve(g.path) if g.path else _find_gguf_in_package(g.python_package or "", g.file)  # (the API requires path or pythonPackage)
        if not f.is_file():
            raise ConfigError(f"baseModel.gguf.path {f} is not a file")
        return ModelLocation(str(f.parent), gguf_file=str(f), display=src.display_name())
    if src.s3:
        raise ConfigError(
            f"baseModel.s3 ({src.s3.uri}) is not readable by the trainer directly",
            hint="sync the model to a PVC and use baseModel.pvc",
        )
    raise ConfigError("spec.baseModel names no source")


def _hub_kwargs(ctx: StageContext, loc: ModelLocation) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": ctx.spec.base_model.trust_remote_code}
    if loc.revision:
        kw["revision"] = loc.revision
    if os.environ.get("HF_TOKEN"):
        kw["token"] = os.environ["HF_TOKEN"]
    return kw


def _wrap_load_error(loc: ModelLocation, exc: Exception) -> ConfigError:
    return ConfigError(f"cannot load base model {loc.display or loc.name_or_path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


def load_tokenizer(ctx: StageContext, location: ModelLocation | None = None):
    """The base model's tokenizer, right-padded, with a pad token (eos when the model has none)."""
    from transformers import AutoTokenizer

    loc = location or locate(ctx)
    path = loc.name_or_path
    kw = _hub_kwargs(ctx, loc)
    if loc.gguf_file:
        path, kw = str(_gguf_cache(loc)), {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(loc, exc) from None
    return _fix_tokenizer(tok)


def _fix_tokenizer(tok: Any) -> Any:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"
    return tok


def gguf_cache_dir(gguf_file: str | Path) -> Path:
    """Where the de-quantised safetensors of a GGUF file are cached (complete once it holds `.complete`)."""
    f = Path(gguf_file)
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return TrainerSettings.from_env().model_cache / "gguf" / f"{f.stem}-{key}"


def gguf_serving_dir(ctx: StageContext) -> Path | None:
    """The de-quantised safetensors directory of a GGUF base, which vLLM can serve (it cannot serve the GGUF file
    the trainer started from); None for other sources or while it has not been written (the train stage writes it)."""
    if not ctx.spec.base_model.gguf:
        return None
    try:
        loc = locate(ctx)
    except ConfigError:
        return None
    if loc.gguf_file is None:  # (a gguf base always has its file)
        return None
    out = gguf_cache_dir(loc.gguf_file)
    return out if (out / ".complete").exists() else None


def _gguf_cache(loc: ModelLocation) -> Path:
    """Dequantize a GGUF file once into a trainable, saveable safetensors model directory (cached)."""
    assert loc.gguf_file is not None, "a GGUF location names its file"
    f = Path(loc.gguf_file)
    st = f.stat()
    out = gguf_cache_dir(f)
    if (out / ".complete").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=str(f))
        loaded = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=str(f))
    except Exception as exc:  # noqa: BLE001 — gguf not installed, unsupported architecture, corrupt file
        raise _wrap_load_error(loc, exc) from None
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    fresh = AutoModelForCausalLM.from_config(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ConfigError(f"GGUF {f.name}: weights do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "tuneloop-source.json").write_text(json.dumps({"gguf": str(f), "size": st.st_size}))
    (tmp / ".complete").write_text("ok")
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_dtype(ctx: StageContext):
    """The compute dtype hyperparameters.precision asks for; CPU trains fp32 under `auto`."""
    import torch

    p = ctx.spec.hyperparameters.precision
    if p == "auto":
        if use_cuda():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if p in ("bf16", "fp16") and not use_cuda():
        # CPU autocast handles bf16; fp16 is GPU only.
        if p == "fp16":
            raise ConfigError("hyperparameters.precision fp16 needs a GPU", hint="use precision: auto or bf16 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p]


def load_dtype(ctx: StageContext, for_training: bool):
    """The dtype the base weights are loaded in (None: as stored, fp32 for the models here).

    On CUDA: the compute dtype for inference, and for LoRA training too — its base weights are frozen, so an fp32
    copy would only double their memory and add a cast before every matmul under autocast. Full fine-tuning keeps
    fp32 master weights (the Trainer's mixed precision); QLoRA's are quantized by bitsandbytes. CPU: fp32.
    """
    import torch

    if not use_cuda():
        return None
    if not for_training:
        return train_dtype(ctx)
    if ctx.spec.method.type == "lora":
        dtype = train_dtype(ctx)
        return dtype if dtype != torch.float32 else None
    return None


def _quantization_config(ctx: StageContext):
    q = ctx.spec.method.quantization
    assert q is not None, "the API requires quantization with method qlora"
    if not use_cuda():
        raise ConfigError("method qlora needs a CUDA GPU (bitsandbytes 4-bit); none is visible", hint="use method lora on CPU, or request GPUs")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError("method qlora needs bitsandbytes, which is not installed in the trainer image") from None
    import torch

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def load_base(ctx: StageContext, for_training: bool = False, *, location: ModelLocation | None = None):
    """(model, tokenizer) of spec.baseModel.

    for_training: on CUDA, LoRA's frozen base in the compute dtype (bf16/fp16), full fine-tuning in fp32 (the Trainer's
    mixed precision casts), 4-bit via bitsandbytes for method qlora (GPU only); fp32 on CPU. Otherwise the model is put in eval mode, on the GPU when one is visible.
    """
    from transformers import AutoModelForCausalLM

    loc = location or locate(ctx)
    path, kw = loc.name_or_path, _hub_kwargs(ctx, loc)
    if loc.gguf_file:
        path, kw = str(_gguf_cache(loc)), {}
    if for_training and ctx.spec.method.type == "qlora":
        kw["quantization_config"] = _quantization_config(ctx)
        kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    dtype = load_dtype(ctx, for_training)
    if dtype is not None:
        kw["dtype"] = dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(loc, exc) from None
    tok = load_tokenizer(ctx, location=ModelLocation(path, display=loc.display) if loc.gguf_file else loc)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if not for_training:
        model.eval()
        if use_cuda() and "device_map" not in kw:
            model.to("cuda")
    return model, tok


def base_serving_location(ctx: StageContext) -> tuple[str, str | None]:
    """What a serving engine (vLLM) loads for spec.baseModel: a model directory — for GGUF the de-quantised safetensors
    cache, which vLLM serves like any checkpoint — or a hub id, and its revision."""
    loc = locate(ctx)
    if loc.gguf_file:
        return str(_gguf_cache(loc)), None
    return loc.name_or_path, loc.revision


def load_tuned_tokenizer(ctx: StageContext, artifact: str | Path | None = None):
    """The tokenizer `load_tuned` returns (the artifact's own), without loading any weights."""
    from transformers import AutoTokenizer

    art = Path(artifact) if artifact else ctx.artifact_dir
    return _fix_tokenizer(AutoTokenizer.from_pretrained(str(art)))


def save_merged(model: Any, tokenizer: Any, out: str | Path) -> Path:
    """Fold a PEFT model's adapter into its weights (in place) and save the plain model with its tokenizer to `out`:
    what a serving engine without a (fast) LoRA path loads. A model without an adapter is saved as it is."""
    out = Path(out)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / "adapter_config.json").exists()


def load_tuned(ctx: StageContext, merged: bool = False, artifact: str | Path | None = None):
    """(model, tokenizer) of the training result in DIR/artifact (eval mode).

    An adapter artifact is applied on top of the base model; full weights load directly;
    merged=True loads DIR/artifact/merged (written when method.mergeAdapter is set).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    art = Path(artifact) if artifact else ctx.artifact_dir
    if merged:
        art = art / "merged"
    if not (art / "config.json").exists() and not is_adapter(art):
        raise ConfigError(f"no trained model in {art}", hint="run the train stage first")
    tok = _fix_tokenizer(AutoTokenizer.from_pretrained(str(art)))
    if is_adapter(art):
        from peft import PeftModel

        base, _ = load_base(ctx)
        model = PeftModel.from_pretrained(base, str(art))
    else:
        kw = {"dtype": train_dtype(ctx)} if use_cuda() else {}
        model = AutoModelForCausalLM.from_pretrained(str(art), **kw)
        if use_cuda():
            model.to("cuda")
    model.eval()
    return model, tok


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "peft", "accelerate", "deepspeed", "tokenizers", "tuneloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
