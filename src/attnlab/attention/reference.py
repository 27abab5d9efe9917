"""`reference` impl: plain PyTorch, fp32 math (fp64 for fp64 inputs), any device. The oracle."""

from __future__ import annotations

import torch

from attnlab.attention.registry import Impl, register


def reference_attention(q, k, v, spec, scale: float, doc_ids=None, return_lse: bool = False):
    """softmax(Q K^T * scale [soft-capped] masked by spec.dense_mask) V; rows with no allowed
    key -> 0 (LSE -inf).

    q [B, Hq, Nq, D], k / v [B, Hkv, Nk, D], doc_ids [B or 1, Nk] or None -> [B, Hq, Nq, D]
    in q's dtype, and with ``return_lse`` the natural-log LSE [B, Hq, Nq] fp32 (fp64 for fp64).
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, hq, n_q, _ = q.shape
    group = hq // k.shape[1]
    k_ = k.to(compute).repeat_interleave(group, dim=1)  # [B, Hq, Nk, D]
    v_ = v.to(compute).repeat_interleave(group, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(compute), k_) * scale  # [B, Hq, Nq, Nk]
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    if spec.kind == "topk_blocks":  # blocks chosen from q and k: [B, Hq, Nq, Nk]
        mask = spec.selected_mask(q, k, doc_ids)
    elif doc_ids is None:
        mask = spec.dense_mask(n_q, k.shape[2], device=q.device)[None]  # [1, H or 1, Nq, Nk]
    else:
        mask = spec.dense_mask(n_q, k.shape[2], device=q.device, doc_ids=doc_ids)  # [B or 1, H or 1, Nq, Nk]
    scores = scores.masked_fill(~mask, float("-inf"))
    has_key = mask.any(dim=-1, keepdim=True)  # [B or 1, H or 1, Nq, 1]
    # Empty rows: softmax of all -inf is NaN; give them finite scores, then zero the output
    # (multiplying by 0 also zeroes their gradients).
    finite = scores.masked_fill(~has_key, 0.0)
    probs = torch.softmax(finite, dim=-1) * has_key
    out = torch.einsum("bhqk,bhkd->bhqd", probs, v_).to(q.dtype)
    if not return_lse:
        return out
    lse = torch.logsumexp(finite, dim=-1).masked_fill(~has_key[..., 0], float("-inf"))
    return out, lse.expand(b, hq, n_q)


register(
    Impl(
        name="reference",
        run=reference_attention,
        why_not=lambda spec, device, requires_grad, dtype=None, head_dim=None: None,
        description="plain PyTorch, fp32 math, materializes the N x N scores (oracle)",
        lse=True,
        lse_grad=True,
    )
)
