"""A Hugging Face Llama-family model directory → one GGUF file (f32 / f16 / q8_0), with the `gguf` package only.

The layout is llama.cpp's (`convert_hf_to_gguf.py`): tensor names from `gguf.get_tensor_name_map`, the q/k
projections permuted from Hugging Face's rotate-half layout to GGUF's interleaved one, norms kept f32, the
tokenizer as a byte-level BPE (`tokenizer.ggml.model = gpt2`) with its merges, special ids and chat template.
q8_0 is quantised in numpy by `gguf.quants` (the reference implementation of llama.cpp's block format). q4_k
is not offered: the `gguf` package can read Q4_K but has no writer for it (only llama.cpp's C `llama-quantize`).

Only the architectures whose tensors this mapping covers are exported (`SUPPORTED`); anything else is refused
with a ConfigError before a byte is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SUPPORTED = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
QUANTIZATIONS = ("f32", "f16", "q8_0")


def _rope_theta(cfg: dict[str, Any]) -> float:
    if "rope_theta" in cfg:
        return float(cfg["rope_theta"])
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10000.0))


def _permute(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """Hugging Face's rotate-half q/k rows → GGUF's interleaved pairs (llama.cpp's `LlamaModel.permute`)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(name: str, data: Any, quantization: str) -> Any:
    import gguf

    if data.ndim < 2 or name.endswith("_norm.weight") or quantization == "f32":
        return gguf.GGMLQuantizationType.F32
    if quantization == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _file_type(quantization: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization]


def pre_tokenizer_of(gguf_file: str | Path) -> str | None:
    """`tokenizer.ggml.pre` of a GGUF file (the base a model was trained from), e.g. smollm: llama.cpp picks its
    pre-tokenizer regex by this name, which only llama.cpp's converter can work out from a Hugging Face tokenizer."""
    import gguf

    field = gguf.GGUFReader(str(gguf_file)).fields.get("tokenizer.ggml.pre")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode()


def _add_tokenizer(writer: Any, model_dir: Path, pre: str) -> None:
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tok.get_vocab()
    size = max(vocab.values()) + 1
    by_id = {i: t for t, i in vocab.items()}
    special = set(tok.all_special_ids)
    added = {i for i in getattr(tok, "added_tokens_decoder", {})}
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.CONTROL if i in special or i in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(str(model_dir), load_merges=True, n_vocab=size)
    special_vocab.add_to_gguf(writer)


# long: a flat sequence of GGUF header fields in llama.cpp's order, then the one loop over the tensors
def export_gguf(model_dir: str | Path, out_file: str | Path, quantization: str = "f16", *, name: str = "",
                pre_tokenizer: str | None = None) -> dict[str, Any]:
    """Write `model_dir` (a merged or full safetensors model) as one GGUF file; returns what was written.
    `pre_tokenizer`: llama.cpp's pre-tokenizer name (from the base's GGUF when it was one), else "default"."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"GGUF quantization {quantization!r} is not supported (one of {', '.join(QUANTIZATIONS)})")
    model_dir, out_file = Path(model_dir), Path(out_file)
    cfg = json.loads((model_dir / "config.json").read_text())
    archs = cfg.get("architectures") or []
    arch = next((SUPPORTED[a] for a in archs if a in SUPPORTED), None)
    if arch is None:
        raise ConfigError(f"GGUF export supports {', '.join(sorted(SUPPORTED))}; {model_dir} is {', '.join(archs) or 'unknown'}")
    n_layers = int(cfg["num_hidden_layers"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_name(name or model_dir.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(_file_type(quantization))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, model_dir, pre_tokenizer or "default")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{model_dir} holds no .safetensors weights to export")
    counts: dict[str, int] = {}
    tied = bool(cfg.get("tie_word_embeddings"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue
                new = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise ConfigError(f"GGUF export: no GGUF name for tensor {key!r} of {model_dir}")
                data = st.get_tensor(key).to(torch.float32).numpy()
                if key.endswith("q_proj.weight"):
                    data = _permute(data, n_head, n_head)
                elif key.endswith("k_proj.weight"):
                    data = _permute(data, n_head, n_kv)
                qtype = _tensor_type(new, data, quantization)
                if qtype == gguf.GGMLQuantizationType.F32:
                    writer.add_tensor(new, data.astype(np.float32))
                elif qtype == gguf.GGMLQuantizationType.F16:
                    writer.add_tensor(new, data.astype(np.float16))
                else:
                    writer.add_tensor(new, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": str(out_file), "quantization": quantization, "tensorTypes": counts, "sizeBytes": out_file.stat().st_size,
            "preTokenizer": pre_tokenizer or "default"}
