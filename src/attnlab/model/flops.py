"""Training FLOPs per token and model FLOPs utilisation (MFU).

Convention (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's `estimate_mfu`): one token
of training (forward + backward) costs

* ``matmul = 6 * P_mm``: P_mm = weights used in matrix multiplies, i.e. every block's
  q/k/v/o and gate/up/down projections plus the ``lm_head`` (the embedding lookup is not a
  matmul; norms are negligible and left out). 2 FLOPs per multiply-add forward, twice that
  backward (grads of inputs and of weights).
* ``attention``: the QK^T and PV products, mask-exact: ``sum over layers of
  spec.flops(batch=1, heads=n_heads, n_q=N, n_k=N, head_dim, mode="fwd_bwd") / N``, where
  ``spec.flops`` counts ``4 * head_dim`` per allowed (q, k) pair forward and 3.5x that for
  forward + backward (the backward recomputes QK^T, as flash kernels do). PaLM's and
  nanoGPT's ``12 * L * C * N`` (dense, full square, 3x) becomes the count of the actual
  mask: a causal dense model costs ``7 * L * C * (N + 1)``, a sliding window far less.

``total = matmul + attention``. MFU = tokens/s * total / peak FLOP/s.

Packed documents (``doc_ids``): attention stays inside each document, so only the pairs
within a document count; ``flops_per_token(cfg, N, doc_ids=ids)`` averages over the rows
of ``ids`` (e.g. one training batch).
"""

from __future__ import annotations

from attnlab.model.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights in matrix multiplies per token: block projections plus the lm_head."""
    c, dh = cfg.d_model, cfg.head_dim
    attn = c * cfg.n_heads * dh * 2 + c * cfg.kv_heads * dh * 2  # q, o and k, v
    mlp = 3 * c * cfg.ffn_dim  # gate, up, down
    head_rows = cfg.embed_rows if cfg.tie_embeddings else cfg.vocab_size  # as built by Transformer
    return cfg.n_layers * (attn + mlp) + head_rows * c


def flops_per_token(cfg: ModelConfig, seq_len: int, doc_ids=None) -> dict:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`; with
    ``doc_ids`` (int ``[B, seq_len]`` or ``[seq_len]``, packed documents) the attention part
    counts only pairs inside a document, averaged over the B rows.

    Returns ``{"matmul", "attention", "total", "attention_per_layer"}``: the first three are
    FLOPs per token (attention may be fractional), the last a list of each layer's attention
    FLOPs per token. See the module docstring for the convention.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"flops_per_token(seq_len={seq_len!r}) must be a positive int")
    if seq_len > cfg.context:
        raise ValueError(f"flops_per_token(seq_len={seq_len}) exceeds model.context={cfg.context}")
    cfg._need_vocab("flops_per_token")
    rows = 1 if doc_ids is None or doc_ids.dim() == 1 else doc_ids.shape[0]
    per_spec = {}
    per_layer = []
    for spec in cfg.layer_specs():
        if spec not in per_spec:
            per_spec[spec] = spec.flops(
                batch=rows, heads=cfg.n_heads, n_q=seq_len, n_k=seq_len, head_dim=cfg.head_dim, mode="fwd_bwd",
                doc_ids=doc_ids,
            ) / (rows * seq_len)
        per_layer.append(per_spec[spec])
    matmul = 6 * matmul_params(cfg)
    attn = sum(per_layer)
    return {"matmul": matmul, "attention": attn, "total": matmul + attn, "attention_per_layer": per_layer}


def mfu(tokens_per_s: float, flops_per_token: float | dict, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak.
    `flops_per_token` is a number or the dict of `flops_per_token` (its ``total``)."""
    fpt = flops_per_token["total"] if isinstance(flops_per_token, dict) else flops_per_token
    if peak_flops <= 0:
        raise ValueError(f"mfu(peak_flops={peak_flops!r}) must be > 0")
    return tokens_per_s * fpt / peak_flops
