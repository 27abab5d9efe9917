"""The shared transformer: a Llama-compatible decoder with a per-layer `AttentionSpec`.

    x = embed_tokens(idx)
    for each layer:  x = x + drop(self_attn(input_layernorm(x)))       # RoPE, GQA, spec mask
                     x = x + drop(mlp(post_attention_layernorm(x)))    # SwiGLU
    logits = lm_head(norm(x))

Parameter names mirror HF `LlamaForCausalLM` (SmolLM2) without its ``model.`` prefix:
``embed_tokens``, ``layers.{i}.self_attn.{q,k,v,o}_proj``, ``layers.{i}.mlp.{gate,up,down}_proj``,
``layers.{i}.input_layernorm``, ``layers.{i}.post_attention_layernorm``, ``norm``, ``lm_head``
(`hf_name_map` gives the full mapping). Linear layers have no bias, as in Llama.

`Attention.forward` is the only place where the model meets kernels
(`attnlab.attention.attention`, GQA native: k/v are never repeated here).

Packed documents: ``forward(idx, targets, doc_ids=...)`` with int ``doc_ids [B, N]``
(non-decreasing per row) keeps every layer's attention inside each document; RoPE is
relative, so a document's logits do not depend on where it sits in the row.

Legend: B batch, N sequence length, C d_model, Hq / Hkv query / key-value heads,
Dh head dim, F SwiGLU width, V vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import AttentionSpec, attention
from attnlab.model.config import ModelConfig
from attnlab.model.nsa import NSAAttention, NSASpec
from attnlab.model.rope import apply_rope, rope_cache

INIT_STD = 0.02


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in fp32 like HF's LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with RoPE and GQA; which pairs interact is `spec`'s business."""

    def __init__(self, cfg: ModelConfig, spec: AttentionSpec):
        super().__init__()
        self.spec, self.impl = spec, cfg.attn_impl
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, _ = x.shape  # (B, N, C)
        q = self.q_proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, N, Dh)
        k = self.k_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, N, Dh)
        v = self.v_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, N, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attention(q, k, v, self.spec, impl=self.impl, doc_ids=doc_ids)  # (B, Hq, N, Dh)
        y = y.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim)  # (B, N, Hq*Dh)
        return self.o_proj(y)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"spec={self.spec.name}, impl={self.impl}"


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, N, F) -> (B, N, C)


class Block(nn.Module):
    """Pre-norm residual block (HF ``LlamaDecoderLayer``)."""

    def __init__(self, cfg: ModelConfig, spec: AttentionSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = NSAAttention(cfg, spec) if isinstance(spec, NSASpec) else Attention(cfg, spec)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, doc_ids))  # (B, N, C)
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))  # (B, N, C)


class Transformer(nn.Module):
    """Llama-compatible decoder (or bidirectional encoder when ``cfg.objective == "mlm"``).

    ``forward(idx [B, N] int, targets [B, N] int | None, doc_ids [B, N] int | None)
    -> (logits [B, N, V], loss | None)``; the loss is the mean cross-entropy over targets
    != -100. ``N <= cfg.context``. ``doc_ids`` (packed documents, int32 / int64, moved to
    idx's device) restricts attention to each token's document.

    Init (nanoGPT / GPT-2): every Linear and the embedding ~ N(0, 0.02); the projections
    that write into the residual stream (``o_proj``, ``down_proj``) ~ N(0, 0.02 / sqrt(2 L));
    RMSNorm weights 1. With ``tie_embeddings`` the ``lm_head.weight`` *is*
    ``embed_tokens.weight`` (one tensor; both names appear in the state dict, as in HF).
    An mlm model's embedding has a ``[MASK]`` row (id ``vocab_size``); an untied head has
    only V rows, a tied one computes V + 1 logits and drops the mask's.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg._need_vocab("Transformer")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.embed_rows, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, spec) for spec in cfg.layer_specs())
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        head_rows = cfg.embed_rows if cfg.tie_embeddings else cfg.vocab_size
        self.lm_head = nn.Linear(cfg.d_model, head_rows, bias=False)
        cos, sin = rope_cache(cfg.context, cfg.head_dim, cfg.rope_base)  # (context, Dh) each
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * cfg.n_layers)
        for block in self.layers:
            nn.init.normal_(block.self_attn.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down_proj.weight, mean=0.0, std=residual_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @classmethod
    def from_hf(cls, path, attn_impl: str = "auto", context: int | None = None,
                dtype: torch.dtype = torch.float32) -> Transformer:
        """A Hugging Face Llama directory (``config.json`` + ``model.safetensors``, e.g. one
        `python -m attnlab.export` wrote) as a Transformer in eval mode, with the per-layer
        attention specs its config records (``attnlab_attention``; else dense causal).
        ``context``: RoPE table length (default ``min(max_position_embeddings, 8192)``).
        See `attnlab.pretrained.hf_dir` (needs the ``safetensors`` package)."""
        from attnlab.pretrained.hf_dir import load_hf

        return load_hf(path, attn_impl=attn_impl, context=context, dtype=dtype).model

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None):
        if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(f"idx must be an integer tensor [B, N], got {idx.dtype} of shape {tuple(idx.shape)}")
        B, N = idx.shape
        if N < 1 or N > self.config.context:
            raise ValueError(
                f"sequence length N={N} must be in [1, model.context={self.config.context}]; "
                "crop the input or build the model with a longer context"
            )
        if doc_ids is not None:
            if not isinstance(doc_ids, torch.Tensor) or doc_ids.shape != idx.shape:
                shown = tuple(doc_ids.shape) if isinstance(doc_ids, torch.Tensor) else type(doc_ids).__name__
                raise ValueError(f"doc_ids must be an int tensor shaped like idx {tuple(idx.shape)}, got {shown}")
            doc_ids = doc_ids.to(idx.device)  # (B, N); validated by attention()
        x = self.embed_tokens(idx)  # (B, N, C)
        cos, sin = self.rope_cos[:N], self.rope_sin[:N]  # (N, Dh) each
        for block in self.layers:
            x = block(x, cos, sin, doc_ids)  # (B, N, C)
        logits = self.lm_head(self.norm(x))  # (B, N, V) or (B, N, V+1) for tied mlm
        if logits.shape[-1] != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # drop the [MASK] logit: (B, N, V)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        loss = F.cross_entropy(
            logits.reshape(B * N, -1).float(), targets.reshape(B * N), ignore_index=-100
        )  # logits (B*N, V), targets (B*N,)
        return logits, loss


# ---------------------------------------------------------------------- helpers
def to_hf_name(name: str) -> str:
    """Our state-dict key -> HF ``LlamaForCausalLM`` key (``layers.0.mlp.up_proj.weight`` ->
    ``model.layers.0.mlp.up_proj.weight``; ``lm_head.weight`` stays)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def from_hf_name(name: str) -> str:
    """HF ``LlamaForCausalLM`` key -> ours (the inverse of `to_hf_name`)."""
    return name.removeprefix("model.")


def hf_name_map(model: Transformer) -> dict[str, str]:
    """``{our state-dict key: HF LlamaForCausalLM key}`` for every tensor in the state dict."""
    return {name: to_hf_name(name) for name in model.state_dict()}


def num_params(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameters, a tied tensor counted once. ``non_embedding=True`` leaves out the
    vocabulary matrices (``embed_tokens`` and ``lm_head``, tied or not): the transformer
    body, Kaplan et al. (2020)'s N."""
    params = {id(p): p for p in model.parameters()}
    if non_embedding:
        for name in ("embed_tokens", "lm_head"):
            sub = getattr(model, name, None)
            if sub is not None:
                params.pop(id(sub.weight), None)
    return sum(p.numel() for p in params.values())
