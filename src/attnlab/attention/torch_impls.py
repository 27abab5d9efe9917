"""PyTorch's own kernels as impls (the baselines): `sdpa` and `flex`."""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from attnlab.attention.registry import Impl, register


@functools.lru_cache(maxsize=16)
def _mask_and_rows(spec, n_q: int, n_k: int, device: torch.device):
    """(mask [H or 1, Nq, Nk] with empty rows opened up, has_key [H or 1, Nq, 1]).

    No data-dependent Python branch here, so models using it compile with fullgraph=True."""
    mask = spec.dense_mask(n_q, n_k, device=device)
    has_key = mask.any(dim=-1, keepdim=True)
    return mask | ~has_key, has_key


def _needs_mask(spec, n_q: int, n_k: int) -> bool:
    return not (spec.kind == "dense" and (not spec.causal or n_q == n_k))


def sdpa_attention(q, k, v, spec, scale: float) -> torch.Tensor:
    """`F.scaled_dot_product_attention`: `is_causal` when the spec is plain causal with
    Nq == Nk (SDPA aligns causal top-left), else a bool mask from `spec.dense_mask`.
    SDPA returns NaN for a row with no allowed key; such rows are opened up to avoid the
    NaN and then multiplied by 0, which also zeroes their gradients."""
    n_q, n_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if not _needs_mask(spec, n_q, n_k):
        return F.scaled_dot_product_attention(q, k, v, is_causal=spec.causal, scale=scale, enable_gqa=gqa)
    mask, has_key = _mask_and_rows(spec, n_q, n_k, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], scale=scale, enable_gqa=gqa)
    return out * has_key[None].to(out.dtype)


def _mask_mod(spec, n_q: int, n_k: int, device):
    left, right = spec.window_bounds()
    offset = n_k - n_q
    layout = None
    if spec.kind == "block_sparse":
        layout = spec.block_layout(n_q, n_k).to(device)
        bs = spec.block_size
        per_head = layout.shape[0] > 1

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + offset
        ok = kv_idx >= 0
        if left is not None:
            ok = ok & (kv_idx >= p - left)
        if right is not None:
            ok = ok & (kv_idx <= p + right)
        if spec.causal:
            ok = ok & (kv_idx <= p)
        if layout is not None:
            ok = ok & layout[h if per_head else 0, q_idx // bs, kv_idx // bs]
        return ok

    return mask_mod


@functools.lru_cache(maxsize=16)
def _block_mask(spec, n_q: int, n_k: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    heads = spec.num_heads()
    return create_block_mask(
        _mask_mod(spec, n_q, n_k, device), B=None, H=heads if heads > 1 else None,
        Q_LEN=n_q, KV_LEN=n_k, device=device,
    )


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q, k, v, spec, scale: float) -> torch.Tensor:
    """FlexAttention with a block mask built from the spec (compiled on CUDA, eager on CPU)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            "impl='flex' has no backward on CPU (PyTorch's FlexAttention supports CPU forward "
            "only); use impl='sdpa' or 'reference' for gradients on CPU"
        )
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    block_mask = _block_mask(spec, q.shape[2], k.shape[2], q.device)
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, **kwargs)
    with warnings.catch_warnings():  # eager flex warns that it is unfused: expected on CPU
        warnings.simplefilter("ignore", UserWarning)
        return eager_flex(q, k, v, **kwargs)


def _flex_why_not(spec, device, requires_grad):
    if device.type == "cpu" and requires_grad:
        return "FlexAttention has no backward on CPU (forward only there)"
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on cpu and cuda, not {device.type}"
    return None


register(
    Impl(
        name="sdpa",
        run=sdpa_attention,
        why_not=lambda spec, device, requires_grad: None,
        description="torch scaled_dot_product_attention (is_causal or a bool mask)",
    )
)
register(
    Impl(
        name="flex",
        run=flex_attention,
        why_not=_flex_why_not,
        description="torch FlexAttention with a block mask (compiled on CUDA; CPU forward only)",
    )
)
