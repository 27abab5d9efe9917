"""The shared transformer (Llama-compatible, per-layer attention spec) and its helpers.

    from attnlab.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                      context=128, attention={"swa": {"kind": "sliding_window", "window": 64},
                                              "dense": {"kind": "dense"}},
                      layer_pattern=["swa", "swa", "swa", "dense"])
    model = Transformer(cfg)
    logits, loss = model(idx, targets)                # idx, targets [B, N]; logits [B, N, V]
    flops_per_token(cfg, seq_len=128)["total"]        # training FLOPs per token, mask-exact
    generate(model, idx, max_new_tokens=100, top_k=40)
    inputs, targets = mask_tokens(idx, cfg, generator=g)   # mlm objective (BERT 80/10/10)

Presets: ``conf/model/{tiny,small,base}.yaml``; attention layouts: ``conf/attention/*.yaml``.
"""

from attnlab.model.config import OBJECTIVES, ModelConfig, default_ffn_dim
from attnlab.model.flops import flops_per_token, matmul_params, mfu
from attnlab.model.generate import generate
from attnlab.model.mlm import IGNORE_INDEX, mask_tokens
from attnlab.model.rope import apply_rope, rope_cache, rotate_half
from attnlab.model.transformer import (
    MLP,
    Attention,
    Block,
    RMSNorm,
    Transformer,
    from_hf_name,
    hf_name_map,
    num_params,
    to_hf_name,
)

__all__ = [
    "ModelConfig",
    "Transformer",
    "OBJECTIVES",
    "default_ffn_dim",
    "flops_per_token",
    "matmul_params",
    "mfu",
    "generate",
    "mask_tokens",
    "IGNORE_INDEX",
    "apply_rope",
    "rope_cache",
    "rotate_half",
    "Attention",
    "Block",
    "MLP",
    "RMSNorm",
    "hf_name_map",
    "to_hf_name",
    "from_hf_name",
    "num_params",
]
