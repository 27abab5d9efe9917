"""Pure-PyTorch reference for the flash kernels: the oracle beside the Triton code.

Shapes (legend used in every file of this package):
    B   batch               Hq  query heads       Hkv  key/value heads (Hq % Hkv == 0)
    Nq  query length        Nk  key length        D    head dim

Mask semantics (bottom-right aligned, as flash-attn >= 2.1): query row ``i`` sits at
position ``p = i + Nk - Nq``; key ``j`` is allowed iff

    (window_left  is None or j >= p - window_left)  and
    (window_right is None or j <= p + window_right) and
    (not causal or j <= p)                           and  0 <= j < Nk,

or, with ``sink=S > 0`` (attention sinks, StreamingLLM), ``j < S and (not causal or j <= p)``
whatever the window (block-sparse: whatever the layout too). With ``softcap=c`` the scaled
scores become ``c * tanh(s / c)`` before masking (Gemma 2, flash-attn ``softcap``).

With ``doc_ids`` (packed sequences, documents.py) key j must also share a document with
position p. A query row with no allowed key returns zeros, LSE = -inf, and zero gradients.
"""

from __future__ import annotations

import math

import torch
from einops import repeat
from torch import Tensor

from .documents import document_mask

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_attention_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window_left: int | None,
    window_right: int | None,
    scale: float | None,
    allowed_dtypes: tuple[torch.dtype, ...] = _FLOAT_DTYPES,
) -> float:
    """Validate shapes, dtypes and window arguments; return the resolved softmax scale.

    Raises ``ValueError`` naming the offending argument, its value and what is allowed.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have rank 4 [B, H, N, D], got rank {t.dim()} with shape {tuple(t.shape)}"
            )
        if t.dtype not in allowed_dtypes:
            raise ValueError(
                f"{name}.dtype is {t.dtype}; allowed: {', '.join(str(d) for d in allowed_dtypes)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}"
        )
    batch, hq, _, d = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape [B, Hkv, Nk, D], got k={tuple(k.shape)}, v={tuple(v.shape)}"
        )
    if k.shape[0] != batch:
        raise ValueError(f"batch size mismatch: q has B={batch}, k/v have B={k.shape[0]}")
    if k.shape[3] != d:
        raise ValueError(f"head dim D mismatch: q has D={d}, k/v have D={k.shape[3]}")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"query heads Hq={hq} must be a multiple of key/value heads Hkv={hkv} (GQA/MQA)"
        )
    for name, w in (("window_left", window_left), ("window_right", window_right)):
        if w is None:
            continue
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"{name} must be an int >= 0 or None (unbounded), got {w!r}")
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    if not _positive_finite(scale):
        raise ValueError(f"scale must be a finite float > 0 or None (= 1/sqrt(D)), got {scale!r}")
    return float(scale)


def _positive_finite(x) -> bool:
    """A real number (not a bool) that is finite and > 0."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_sink_softcap(sink: int, softcap: float | None) -> tuple[int, float | None]:
    """Validate ``sink`` (int >= 0) and ``softcap`` (finite float > 0 or None); return them."""
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be an int >= 0 (keys j < sink are always visible), got {sink!r}")
    if softcap is None:
        return sink, None
    if not _positive_finite(softcap):
        raise ValueError(f"softcap must be a finite float > 0 or None (no capping), got {softcap!r}")
    return sink, float(softcap)


def sink_mask(n_q: int, n_k: int, sink: int, causal: bool, device=None) -> Tensor:
    """Bool ``[Nq, Nk]``: the sink pairs, ``j < sink`` and (causal) ``j <= p``."""
    pos_q = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    key = torch.arange(n_k, device=device)[None, :]
    allowed = (key < sink).expand(n_q, n_k)
    return allowed & (key <= pos_q) if causal else allowed.clone()


def flash_attention_mask(
    n_q: int,
    n_k: int,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    device: torch.device | str | None = None,
    sink: int = 0,
) -> Tensor:
    """Bool mask ``[Nq, Nk]``, True = query row i may attend to key j (semantics above)."""
    pos_q = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)  # [Nq, 1] aligned positions
    key = torch.arange(n_k, device=device)[None, :]  # [1, Nk]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device)  # [Nq, Nk]
    if window_left is not None:
        allowed &= key >= pos_q - window_left
    if window_right is not None:
        allowed &= key <= pos_q + window_right
    if causal:
        allowed &= key <= pos_q
    if sink:
        allowed |= sink_mask(n_q, n_k, sink, causal, device)
    return allowed


def flash_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    doc_ids: Tensor | None = None,
    sink: int = 0,
    softcap: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scale, masked) v in plain PyTorch; differentiable.

    Args:
        q: ``[B, Hq, Nq, D]``.
        k, v: ``[B, Hkv, Nk, D]`` with ``Hq % Hkv == 0`` (repeated here; the kernel never does).
        causal, window_left, window_right: the mask (module docstring).
        scale: softmax scale, default ``1/sqrt(D)``.
        return_lse: also return the natural-log row LSE ``[B, Hq, Nq]`` (fp32/fp64).
        doc_ids: ``[Nk]`` or ``[B or 1, Nk]`` document ids (as ``flash_attention``), or None.
        sink: keys ``j < sink`` are always visible (causality still applies).
        softcap: scores become ``softcap * tanh(s / softcap)`` (None: no capping).

    Math runs in fp32 (fp64 if the inputs are fp64). Returns ``[B, Hq, Nq, D]`` in q's
    dtype. Rows with no allowed key give zeros and LSE = -inf, with finite (zero) gradients.
    """
    scale = check_attention_args(
        q, k, v, window_left=window_left, window_right=window_right, scale=scale
    )
    sink, softcap = check_sink_softcap(sink, softcap)
    allowed = flash_attention_mask(
        q.shape[2], k.shape[2], causal=causal, window_left=window_left,
        window_right=window_right, device=q.device, sink=sink,
    )[None]  # fmt: skip
    if doc_ids is not None:
        allowed = allowed[None] & document_mask(doc_ids.to(q.device), q.shape[2], k.shape[2])[:, None]
    return masked_attention_reference(q, k, v, allowed, scale, return_lse, softcap)


def block_sparse_mask(
    layout: Tensor,
    block_size: int,
    n_q: int,
    n_k: int,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    device: torch.device | str | None = None,
    sink: int = 0,
) -> Tensor:
    """Bool mask ``[H, Nq, Nk]``: the window/causal mask AND the block layout
    ``[H, ceil(Nq / bs), ceil(Nk / bs)]`` expanded to tokens, OR the sink pairs."""
    token = flash_attention_mask(
        n_q, n_k, causal=causal, window_left=window_left, window_right=window_right, device=device
    )  # [Nq, Nk]
    lay = layout.to(device=token.device, dtype=torch.bool)
    rows = torch.arange(n_q, device=token.device) // block_size
    cols = torch.arange(n_k, device=token.device) // block_size
    allowed = token[None] & lay[:, rows][:, :, cols]  # [H, Nq, Nk]
    if sink:
        allowed = allowed | sink_mask(n_q, n_k, sink, causal, token.device)[None]
    return allowed


def block_sparse_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Tensor,
    block_size: int,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    doc_ids: Tensor | None = None,
    sink: int = 0,
    softcap: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``flash_attention_reference`` restricted by a block layout bool ``[H or 1, Mb, Kb]``
    (H = Hq for per-head layouts): the oracle of ``block_sparse_attention`` (documents, sinks
    and soft-capping too)."""
    scale = check_attention_args(
        q, k, v, window_left=window_left, window_right=window_right, scale=scale
    )
    sink, softcap = check_sink_softcap(sink, softcap)
    allowed = block_sparse_mask(
        layout, block_size, q.shape[2], k.shape[2], causal=causal, window_left=window_left,
        window_right=window_right, device=q.device, sink=sink,
    )  # fmt: skip
    if doc_ids is not None:
        allowed = allowed[None] & document_mask(doc_ids.to(q.device), q.shape[2], k.shape[2])[:, None]
    return masked_attention_reference(q, k, v, allowed, scale, return_lse, softcap)


def masked_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float, return_lse: bool = False,
    softcap: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scale masked by ``allowed`` bool [H or 1, Nq, Nk] (or [B or 1, H or 1, Nq,
    Nk]) v; fp32 math (fp64 for fp64 inputs); empty rows give zeros, LSE = -inf and zero
    gradients. ``softcap=c``: scores ``c * tanh(s / c)`` before masking."""
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    q_c = q.to(compute_dtype)  # [B, Hq, Nq, D]
    k_c = repeat(k.to(compute_dtype), "b h n d -> b (h g) n d", g=group)  # [B, Hq, Nk, D]
    v_c = repeat(v.to(compute_dtype), "b h n d -> b (h g) n d", g=group)  # [B, Hq, Nk, D]
    n_k = k.shape[2]

    scores = torch.einsum("bhid,bhjd->bhij", q_c, k_c) * scale  # [B, Hq, Nq, Nk]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # Softmax written out so that empty rows give 0 (not NaN) in value *and* gradient.
    row_max = (
        scores.amax(dim=-1, keepdim=True).detach()
        if n_k > 0
        else scores.new_zeros(scores.shape[:-1] + (1,))
    )  # [B, Hq, Nq, 1]
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # [B, Hq, Nq, Nk], 0 where masked
    denom = weights.sum(dim=-1, keepdim=True)  # [B, Hq, Nq, 1]
    nonempty = denom > 0
    probs = weights / torch.where(nonempty, denom, torch.ones_like(denom))
    out = torch.einsum("bhij,bhjd->bhid", probs, v_c).to(q.dtype)  # [B, Hq, Nq, D]
    if not return_lse:
        return out
    lse = torch.where(
        nonempty,
        row_max + torch.log(torch.where(nonempty, denom, torch.ones_like(denom))),
        float("-inf"),
    ).squeeze(-1)  # [B, Hq, Nq]
    return out, lse
