"""Public entry points: ``flash_attention``, ``block_sparse_attention`` and their autograd.Function.

Chain: Triton kernels (forward.py, backward.py) -> launchers ``flash_fwd`` / ``flash_bwd``
-> ``FlashAttentionFunction`` -> ``flash_attention`` / ``block_sparse_attention`` (the latter
first compresses its layout, layout.py). The pure-PyTorch oracles with the same semantics are
``reference.flash_attention_reference`` and ``reference.block_sparse_reference``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backward import flash_bwd
from .common import LN2, interpreting, stride_last_one
from .documents import DocumentBounds, check_doc_ids, document_bounds
from .forward import flash_fwd
from .layout import BlockSparseIndex, build_index_fixed, check_layout, compress_layout
from .reference import check_attention_args, check_sink_softcap

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper; outputs (O ``[B, Hq, Nq, D]``, lse2 ``[B, Hq, Nq]`` fp32), both differentiable.
    lse2 is the log2-domain LSE the kernels keep (``LSE * log2(e)``); ``natural_lse`` converts it."""

    @staticmethod
    def forward(ctx, q, k, v, scale, window_left, window_right, deterministic, sparse=None, docs=None,
                extras=None):  # fmt: skip
        # extras: dict(sink=, sink_causal=, softcap=) (attention sinks, soft-capping) or None
        extras = extras or {}
        q, k, v = stride_last_one(q), stride_last_one(k), stride_last_one(v)
        out, lse = flash_fwd(
            q, k, v, scale, window_left, window_right, autotune=not deterministic, sparse=sparse,
            docs=docs, **extras,
        )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.window_left = window_left
        ctx.window_right = window_right
        ctx.deterministic = deterministic
        ctx.sparse = sparse
        ctx.docs = docs
        ctx.extras = extras
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:  # only the LSE was used downstream
            dout = torch.zeros_like(out)
        dout = stride_last_one(dout.to(q.dtype))
        dq, dk, dv = flash_bwd(
            dout,
            q,
            k,
            v,
            out,
            lse,
            dlse,
            ctx.scale,
            ctx.window_left,
            ctx.window_right,
            autotune=not ctx.deterministic,
            sparse=ctx.sparse,
            docs=ctx.docs,
            **ctx.extras,
        )
        return dq, dk, dv, None, None, None, None, None, None, None


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    scale: float | None = None,
    deterministic: bool = False,
    return_lse: bool = False,
    doc_ids: Tensor | DocumentBounds | None = None,
    sink: int = 0,
    softcap: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """FlashAttention-2 style fused attention (dense, causal, sliding window), forward and backward.

    Args:
        q: ``[B, Hq, Nq, D]`` fp16, bf16 or fp32, any strides (the head dim is copied to stride 1
            only if it is not already).
        k, v: ``[B, Hkv, Nk, D]``, same dtype and device, ``Hq % Hkv == 0`` (GQA/MQA; K/V are
            never repeated in memory). 1 <= D <= 256, any Nq, Nk.
        causal: key j allowed only if ``j <= p`` where ``p = i + Nk - Nq`` is query row i's
            bottom-right aligned position (flash-attn >= 2.1).
        window_left, window_right: int >= 0 or None (unbounded): key j allowed only if
            ``p - window_left <= j <= p + window_right``. A Mistral-style window W is
            ``window_left=W-1`` with ``causal=True``.
        scale: softmax scale, default ``1/sqrt(D)``.
        deterministic: gradients are always bitwise reproducible run to run within a process,
            because no kernel uses atomics (dK/dV and dQ are separate kernels that each write
            their tiles once). ``True`` additionally pins the launch configuration instead of
            autotuning, so results are also reproducible across processes on the same GPU model.
        return_lse: also return the natural-log row log-sum-exp ``[B, Hq, Nq]`` (fp32,
            -inf for rows with no allowed key); it is differentiable.
        doc_ids: packed sequences (documents.py): int32 / int64 ``[Nk]`` or ``[B or 1, Nk]`` on
            q's device, non-decreasing per row; key j is allowed only if it shares a document
            with query row i's position p (needs Nq <= Nk). Key blocks of other documents are
            skipped. Or a ``DocumentBounds`` from ``document_bounds(ids)``, to compute them
            once for several calls (e.g. every layer of a model).
        sink: attention sinks (StreamingLLM): keys ``j < sink`` are visible to every query
            whatever the window (``j <= p`` still holds when causal); the kernels visit the
            sink blocks plus the window's band, nothing in between.
        softcap: soft-capping (Gemma 2, flash-attn ``softcap``): scaled scores ``s`` become
            ``softcap * tanh(s / softcap)`` before masking; gradients included. None: off.

    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype (and the LSE if ``return_lse``). Rows with no allowed
        key give zeros and zero gradients, never NaN. Math is fp32-accumulated; on CUDA, fp32
        inputs use 3xTF32 tensor-core dot products (about fp32 accuracy).

    Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, for tests).
    """
    scale = check_attention_args(
        q,
        k,
        v,
        window_left=window_left,
        window_right=window_right,
        scale=scale,
        allowed_dtypes=_KERNEL_DTYPES,
    )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D must be in [1, {MAX_HEAD_DIM}], got D={head_dim}")
    _require_kernel_device(q, "flash_attention", "flash_attention_reference")
    docs = _documents(doc_ids, q, k)
    extras = _extras(sink, softcap, causal)
    # causal is the window bound j <= p, i.e. window_right = 0 (tighter than any window_right >= 0).
    eff_right = 0 if causal else window_right
    out, lse2 = FlashAttentionFunction.apply(
        q, k, v, scale, window_left, eff_right, bool(deterministic), None, docs, extras
    )
    return (out, natural_lse(lse2)) if return_lse else out


def block_sparse_attention(
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
    deterministic: bool = False,
    return_lse: bool = False,
    doc_ids: Tensor | DocumentBounds | None = None,
    sink: int = 0,
    softcap: float | None = None,
    max_blocks_per_row: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block-sparse fused attention, forward and backward: ``flash_attention`` restricted to the
    (query block, key block) pairs a layout keeps.

    Args:
        q, k, v, causal, window_left, window_right, scale, deterministic, return_lse, doc_ids,
            sink, softcap: as in ``flash_attention``; the causal / window / document rules still
            apply inside kept blocks; sink keys are visible whatever the layout.
        layout: bool ``[H, ceil(Nq / block_size), ceil(Nk / block_size)]`` with H = 1 (shared
            by all query heads) or H = Hq (one layout per query head), any device. Query block
            r covers rows ``[r * block_size, (r + 1) * block_size)`` (blocks start at row 0).
        block_size: tokens per layout block, a power of two. >= 16: kernel tiles of 16..
            block_size tokens split each block (no layout mask in the tile); 1..8: coarsened to
            16-token tiles that also apply the exact layout bit per pair.

        max_blocks_per_row: None (default): the layout is compressed once into CSR/CSC index
            lists with per-block "full" flags (layout.py) and cached per layout tensor; pass the
            same tensor again to skip that work (compressing counts the blocks: a host
            synchronisation). An int >= 1, an upper bound on the True blocks of any layout row:
            the lists get fixed lengths and are built on the layout's device each call with no
            host synchronisation and no cache (``layout.build_index_fixed``), for layouts computed
            on the device (content-selected blocks); a row above the bound trips a device-side
            assertion. Same results, bitwise.

    Rows with no allowed key give zeros and zero gradients, never NaN.
    """
    scale = check_attention_args(
        q, k, v, window_left=window_left, window_right=window_right, scale=scale,
        allowed_dtypes=_KERNEL_DTYPES,
    )  # fmt: skip
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    head_dim, hq, n_q, n_k = q.shape[-1], q.shape[1], q.shape[2], k.shape[2]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D must be in [1, {MAX_HEAD_DIM}], got D={head_dim}")
    check_layout(layout, block_size, n_q, n_k)
    if layout.shape[0] not in (1, hq):
        raise ValueError(
            f"layout has {layout.shape[0]} head layouts but q has Hq={hq} heads; use 1 or {hq}"
        )
    if max_blocks_per_row is not None and (
        isinstance(max_blocks_per_row, bool) or not isinstance(max_blocks_per_row, int) or max_blocks_per_row < 1
    ):
        raise ValueError(f"max_blocks_per_row must be None or an int >= 1, got {max_blocks_per_row!r}")
    if layout.device != q.device and max_blocks_per_row is not None:
        raise ValueError(
            f"layout is on {layout.device} but q is on {q.device}; with max_blocks_per_row the "
            "layout must be on q's device (it is compressed there without a synchronisation)"
        )
    _require_kernel_device(q, "block_sparse_attention", "block_sparse_reference")
    docs = _documents(doc_ids, q, k)
    extras = _extras(sink, softcap, causal)
    eff_right = 0 if causal else window_right
    sparse: BlockSparseIndex | None = None
    if n_q > 0 and n_k > 0 and max_blocks_per_row is not None:
        sparse = build_index_fixed(
            layout, block_size, n_q, n_k, window_left, eff_right, max_blocks_per_row,
            sink=extras["sink"], sink_causal=extras["sink_causal"],
        )  # fmt: skip
    elif n_q > 0 and n_k > 0:
        sparse = compress_layout(
            layout, block_size, n_q, n_k, window_left, eff_right, q.device,
            sink=extras["sink"], sink_causal=extras["sink_causal"],
        )  # fmt: skip
    out, lse2 = FlashAttentionFunction.apply(
        q, k, v, scale, window_left, eff_right, bool(deterministic), sparse, docs, extras
    )
    return (out, natural_lse(lse2)) if return_lse else out


def natural_lse(lse2: Tensor) -> Tensor:
    """The natural-log LSE from the kernels' log2-domain one (-inf stays -inf); differentiable,
    so a gradient of the returned LSE reaches the backward as ``dlse2 = dlse * ln 2``."""
    return lse2 * LN2


def _extras(sink: int, softcap: float | None, causal: bool) -> dict:
    """Validated sink / soft-cap arguments for the launchers."""
    sink, softcap = check_sink_softcap(sink, softcap)
    return dict(sink=sink, sink_causal=causal, softcap=softcap)


def _documents(doc_ids: Tensor | DocumentBounds | None, q: Tensor, k: Tensor) -> DocumentBounds | None:
    """Validated document bounds for the kernels, or None without documents. Precomputed
    ``DocumentBounds`` (from ``document_bounds`` of checked ids) pass with a shape check only."""
    if doc_ids is None:
        return None
    if isinstance(doc_ids, DocumentBounds):
        check_doc_ids(doc_ids.start, q.shape[0], q.shape[2], k.shape[2], q.device, values=False)
        return doc_ids
    ids = check_doc_ids(doc_ids, q.shape[0], q.shape[2], k.shape[2], q.device)
    return document_bounds(ids) if ids.shape[1] > 0 else None


def _require_kernel_device(q: Tensor, name: str, reference: str) -> None:
    if q.device.type != "cuda" and not interpreting():
        raise NotImplementedError(
            f"{name} runs Triton kernels: it needs CUDA tensors (got device {q.device}), "
            "or TRITON_INTERPRET=1 set before triton is imported to run them on CPU; "
            f"use {reference} for a pure-PyTorch path"
        )
