"""The attention contract: which query-key pairs interact, and who computes it.

    from attnlab.attention import AttentionSpec, attention, available_impls

    spec = AttentionSpec(kind="sliding_window", causal=True, window=256)
    out = attention(q, k, v, spec, impl="auto")        # q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D]
    mask = spec.dense_mask(n_q, n_k)                   # bool [H or 1, Nq, Nk], True = attend
    flops = spec.flops(batch=B, heads=Hq, n_q=N, n_k=N, head_dim=D, mode="fwd")
    available_impls(spec, "cuda", dtype=torch.bfloat16, head_dim=64)   # who can run it
    why_not("triton", spec, "cuda", dtype=torch.float64)               # why one cannot (or None)

    # packed sequences: per-batch document ids (or cu_seqlens), ANDed with the spec
    out = attention(q, k, v, spec, doc_ids=doc_ids)    # doc_ids int [B or 1, Nk], non-decreasing
    mask = spec.dense_mask(n_q, n_k, doc_ids=doc_ids)  # bool [B or 1, H or 1, Nq, Nk]
"""

from attnlab.attention.api import IMPLS, attention, available_impls, choose_impl, why_not
from attnlab.attention.spec import KINDS, PATTERNS, AttentionSpec

__all__ = ["AttentionSpec", "attention", "available_impls", "choose_impl", "why_not", "IMPLS", "KINDS", "PATTERNS"]
