"""Backward kernels (FlashAttention-2 recomputation, no atomics).

Three launches, each writing its outputs exactly once with plain stores, so gradients are
bitwise deterministic run to run and re-running a kernel (autotune trials) is idempotent:

1. ``_bwd_preprocess``: delta = rowsum(dO * O) - dLSE   ``[B*Hq, Nq]`` fp32.
2. ``_bwd_dkdv_kernel``: one program per (key block, batch x kv head). It keeps its K, V
   tile and dK, dV accumulators in registers and loops over the ``Hq // Hkv`` query heads
   of its GQA group and, for each, over the query blocks that can see the key block.
3. ``_bwd_dq_kernel``: one program per (query block, batch x query head), looping over the
   same key blocks as the forward.

Block-sparse (``SPARSE``): the dK/dV pass walks each query head's CSC column of its key block
(which query blocks see it), the dQ pass the CSR row, with the same loop bodies (layout.py).
Documents (``DOCS``): block ranges clipped and edge tiles masked as in the forward; the sparse
walks skip tiles of other documents (dK/dV: query rows outside the key block's documents).

With P = exp(S - LSE) recomputed from the saved LSE (S = scale * q kᵀ), in the log2 domain the
forward stores it in: ``P = exp2(q kᵀ * qk_scale - lse2)`` with ``qk_scale = scale * log2(e)`` and
``lse2 = LSE * log2(e)``, one FMA per score (the scale is folded into qk_scale, the LSE read as is):
    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dSᵀ Q.
Soft-capping (S = c tanh(scale * q kᵀ / c)) multiplies dS by 1 - tanh²; sinks widen the block
ranges like the forward (dK/dV: a key block holding sink keys is seen by every later row).
Rows with LSE = -inf (no allowed key) are read as LSE = +inf so that P = 0 there. A gradient
dLSE2 of the log2-domain LSE enters as ``delta -= dLSE2 * log2(e)`` (d lse2 / d S = log2(e) P).
Shapes: q, dO, O ``[B, Hq, Nq, D]``; k, v ``[B, Hkv, Nk, D]``; LSE, delta ``[B, Hq, Nq]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import (
    LOG2E,
    alloc,
    alloc_like,
    capped_scores,
    cdiv,
    head_dim_block,
    interpreting,
    kv_blocks_for_q_block,
    launch_fixed,
    load_tile,
    pair_mask,
    q_blocks_for_kv_block,
    screened,
    shape_window_args,
    smem_bytes,
    sparse_bounds,
    sparse_tile_start,
)
from .documents import DocumentBounds, no_documents_args
from .forward import interpret_tiles
from .layout import BlockSparseIndex, check_tiles, dense_launch_args

_LOG2E = tl.constexpr(LOG2E)
_NO_SPECIALIZE = [
    "Nq", "Nk", "window_left", "window_right", "idx_head_stride", "lay_head_stride", "lay_kb",
    "stride_docb", "NQ_KEY", "NK_KEY", "WL_KEY", "WR_KEY", "sink",
]  # fmt: skip


@triton.jit
def _bwd_preprocess(
    Out, DO, DLse, Delta,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    Hq, Nq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, HAS_DLSE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM)
    rows64 = offs_m.to(tl.int64)[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + rows64 * stride_on + offs_d[None, :]
    do_ptrs = DO + b * stride_dob + h * stride_doh + rows64 * stride_don + offs_d[None, :]
    o = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_D]
    do = tl.load(do_ptrs, mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=1)  # [BLOCK_M]
    row = pid_bh.to(tl.int64) * Nq + offs_m
    if HAS_DLSE:  # d lse2_i / d S_ij = log2(e) P_ij, so a dLSE2 term folds into delta
        delta -= tl.load(DLse + row, mask=offs_m < Nq, other=0.0) * _LOG2E
    tl.store(Delta + row, delta, mask=offs_m < Nq)


@triton.jit
def _dkdv_query_blocks(
    dk, dv,  # [BLOCK_N, BLOCK_D] fp32 accumulators
    k, v,  # [BLOCK_N, BLOCK_D] this program's key / value tile
    Q_bh, DO_bh, Lse_bh, Delta_bh,  # pointers at row 0 of one query head
    q_tile, do_tile,  # [BLOCK_M, BLOCK_D] int32 offsets of a query tile
    stride_qn, stride_don,
    offs_m, cols, offs_d,  # [BLOCK_M] 0..BLOCK_M-1, [BLOCK_N] key indices, [BLOCK_D]
    start, end,  # dense: query rows [start, end), step BLOCK_M; sparse: steps [start, end) of Idx
    Nq, Nk, window_left, window_right, qk_scale,
    Idx, Lay_h, lay_kb,  # sparse only: query-block list, int8 layout of this head, its row length
    DocStart_b, doc_lo, doc_hi,  # documents: starts of this batch row; sparse: rows to visit
    MASKED: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    SPARSE: tl.constexpr, INDEX_BLOCK: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    sink, cap_in, cap_out,  # sinks / soft-cap (the kernel's arguments)
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr,
):  # fmt: skip
    for it in range(start, end, 1 if SPARSE else BLOCK_M):
        if SPARSE:
            start_m = sparse_tile_start(Idx, it, BLOCK_M, INDEX_BLOCK)
        else:
            start_m = it
        visit = True  # static unless a sparse walk must skip other documents' rows
        if SPARSE:
            if DOCS:
                visit = (start_m < doc_hi) & (start_m + BLOCK_M > doc_lo)
        if visit:
            rows = start_m + offs_m  # [BLOCK_M] query indices
            start64 = tl.cast(start_m, tl.int64)
            q = load_tile(Q_bh + start64 * stride_qn + q_tile, rows, Nq, offs_d,
                          HEAD_DIM, BLOCK_D, MASKED, UPCAST)  # [BLOCK_M, BLOCK_D]  # fmt: skip
            do = load_tile(DO_bh + start64 * stride_don + do_tile, rows, Nq, offs_d,
                           HEAD_DIM, BLOCK_D, MASKED, UPCAST)  # fmt: skip
            if MASKED:
                lse = tl.load(Lse_bh + rows, mask=rows < Nq, other=0.0)  # [BLOCK_M]
                delta = tl.load(Delta_bh + rows, mask=rows < Nq, other=0.0)
            else:
                lse = tl.load(Lse_bh + rows)
                delta = tl.load(Delta_bh + rows)
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # log2 domain; empty rows: P = 0
            qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # [BLOCK_N, BLOCK_M] = Sᵀ/scale
            if SOFTCAP:
                s_t = capped_scores(qk_t, cap_in, cap_out)  # log2 domain
                e_t = s_t - lse[None, :]
            else:
                e_t = qk_t * qk_scale - lse[None, :]  # one FMA per score
            if MASKED:
                ok = pair_mask(rows[None, :], cols[:, None], Nq, Nk, window_left, window_right,
                               Lay_h, lay_kb, DocStart_b, sink, HAS_WL, HAS_WR, LAYOUT_MASK,
                               LAYOUT_BLOCK, DOCS, HAS_SINK, SINK_CAUSAL)  # fmt: skip
                e_t = tl.where(ok, e_t, float("-inf"))
            p_t = tl.math.exp2(e_t)  # [BLOCK_N, BLOCK_M]
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # [BLOCK_N, BLOCK_M]
            ds_t = p_t * (dp_t - delta[None, :])
            if SOFTCAP:  # d(c tanh(s / c)) / ds = 1 - tanh²
                t_t = s_t / cap_out
                ds_t = ds_t * (1.0 - t_t * t_t)
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV,
    Bounds, Idx, Lay,  # sparse only: CSC (start, mid, end) per key block, query blocks, layout
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    Hq, Hkv, Nq, Nk,
    window_left, window_right, sm_scale, qk_scale,
    sink, cap_in, cap_out,  # sinks: keys j < sink always visible; soft-cap: common.capped_scores
    idx_head_stride, lay_head_stride, lay_kb,  # sparse only (0 strides: one layout for all heads)
    DocStart, DocEnd, stride_docb,  # documents only: int32 [B or 1, Nk] (0 stride: shared ids)
    NQ_KEY, NK_KEY, WL_KEY, WR_KEY,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    SPARSE: tl.constexpr, INDEX_BLOCK: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    start_n = tl.program_id(0) * BLOCK_N
    pid_bkv = tl.program_id(1)
    b64 = (pid_bkv // Hkv).to(tl.int64)
    h_kv = pid_bkv % Hkv
    group = Hq // Hkv

    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    cols = start_n + offs_n  # [BLOCK_N] key indices
    start_n64 = tl.cast(start_n, tl.int64)
    hkv64 = h_kv.to(tl.int64)

    k_ptrs = (K + b64 * stride_kb + hkv64 * stride_kh + start_n64 * stride_kn
              + offs_n[:, None] * stride_kn + offs_d[None, :])  # fmt: skip
    v_ptrs = (V + b64 * stride_vb + hkv64 * stride_vh + start_n64 * stride_vn
              + offs_n[:, None] * stride_vn + offs_d[None, :])  # fmt: skip
    k = load_tile(k_ptrs, cols, Nk, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)  # [BLOCK_N, BLOCK_D]
    v = load_tile(v_ptrs, cols, Nk, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q_tile = offs_m[:, None] * stride_qn + offs_d[None, :]  # [BLOCK_M, BLOCK_D]
    do_tile = offs_m[:, None] * stride_don + offs_d[None, :]

    DocStart_b = DocStart + b64 * stride_docb
    DocEnd_b = DocEnd + b64 * stride_docb
    lo, mid_lo, mid_hi, hi = q_blocks_for_kv_block(
        start_n, Nq, Nk, window_left, window_right, DocStart_b, DocEnd_b,
        BLOCK_M, BLOCK_N, HAS_WL, HAS_WR, DOCS,
    )  # fmt: skip
    if HAS_SINK:  # a block holding sink keys is seen by every row (at or after it when causal)
        if start_n < sink:
            sink_lo = Nq * 0
            if SINK_CAUSAL:
                sink_lo = tl.maximum(start_n - (Nk - Nq), 0) // BLOCK_M * BLOCK_M
            lo = tl.minimum(lo, sink_lo)
            # No full run ends the window's range at its (unaligned) hi: mask all of [lo, Nq).
            no_full = mid_lo == hi
            mid_lo = tl.where(no_full, lo, mid_lo)
            mid_hi = tl.where(no_full, lo, mid_hi)
            hi = Nq + 0
    doc_lo = Nq * 0  # sparse: query rows [doc_lo, doc_hi) lie in this key block's documents
    doc_hi = Nq + 0
    if SPARSE:
        if DOCS:
            doc_lo = tl.load(DocStart_b + start_n) - (Nk - Nq)
            doc_hi = tl.load(DocEnd_b + tl.minimum(start_n + BLOCK_N, Nk) - 1) - (Nk - Nq)
    for g in range(group):  # query heads sharing this kv head: summed in registers
        h = h_kv * group + g
        h64 = h.to(tl.int64)
        Q_bh = Q + b64 * stride_qb + h64 * stride_qh
        DO_bh = DO + b64 * stride_dob + h64 * stride_doh
        row0 = (b64 * Hq + h64) * Nq  # LSE / delta are contiguous [B, Hq, Nq]
        Lay_h = Lay + h64 * lay_head_stride
        if SPARSE:  # this head's CSC column: masked query blocks, then full ones
            e0, e1, e2 = sparse_bounds(Bounds + h * idx_head_stride, start_n // INDEX_BLOCK)
            sub = INDEX_BLOCK // BLOCK_M
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, Q_bh, DO_bh, Lse + row0, Delta + row0, q_tile, do_tile,
                stride_qn, stride_don, offs_m, cols, offs_d, e0 * sub, e1 * sub,
                Nq, Nk, window_left, window_right, qk_scale, Idx, Lay_h, lay_kb,
                DocStart_b, doc_lo, doc_hi,
                True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_M, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
            dk, dv = _dkdv_query_blocks(  # full blocks: masked only with documents
                dk, dv, k, v, Q_bh, DO_bh, Lse + row0, Delta + row0, q_tile, do_tile,
                stride_qn, stride_don, offs_m, cols, offs_d, e1 * sub, e2 * sub,
                Nq, Nk, window_left, window_right, qk_scale, Idx, Lay_h, lay_kb,
                DocStart_b, doc_lo, doc_hi,
                DOCS, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_M, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
        else:  # edge blocks, full blocks (no element mask), edge blocks
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, Q_bh, DO_bh, Lse + row0, Delta + row0, q_tile, do_tile,
                stride_qn, stride_don, offs_m, cols, offs_d, lo, mid_lo,
                Nq, Nk, window_left, window_right, qk_scale, Idx, Lay_h, lay_kb,
                DocStart_b, lo, hi,
                True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_M, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, Q_bh, DO_bh, Lse + row0, Delta + row0, q_tile, do_tile,
                stride_qn, stride_don, offs_m, cols, offs_d, mid_lo, mid_hi,
                Nq, Nk, window_left, window_right, qk_scale, Idx, Lay_h, lay_kb,
                DocStart_b, lo, hi,
                False, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_M, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, Q_bh, DO_bh, Lse + row0, Delta + row0, q_tile, do_tile,
                stride_qn, stride_don, offs_m, cols, offs_d, mid_hi, hi,
                Nq, Nk, window_left, window_right, qk_scale, Idx, Lay_h, lay_kb,
                DocStart_b, lo, hi,
                True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_M, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip

    dk = dk * sm_scale
    out_mask = (cols[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = (DK + b64 * stride_dkb + hkv64 * stride_dkh + start_n64 * stride_dkn
               + offs_n[:, None] * stride_dkn + offs_d[None, :])  # fmt: skip
    dv_ptrs = (DV + b64 * stride_dvb + hkv64 * stride_dvh + start_n64 * stride_dvn
               + offs_n[:, None] * stride_dvn + offs_d[None, :])  # fmt: skip
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _dq_key_blocks(
    dq,  # [BLOCK_M, BLOCK_D] fp32 accumulator
    q, do,  # [BLOCK_M, BLOCK_D]
    lse, delta,  # [BLOCK_M]; lse in the log2 domain, +inf for empty rows
    K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
    rows, offs_n, offs_d,  # [BLOCK_M] query indices, [BLOCK_N] 0..BLOCK_N-1, [BLOCK_D]
    start, end,  # dense: keys [start, end), step BLOCK_N; sparse: steps [start, end) of Idx
    Nq, Nk, window_left, window_right, qk_scale,
    Idx, Lay_h, lay_kb,  # sparse only: key-block list, int8 layout of this head, its row length
    DocStart_b, doc_lo, doc_hi,  # documents: starts of this batch row; sparse: keys to visit
    MASKED: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    SPARSE: tl.constexpr, INDEX_BLOCK: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    sink, cap_in, cap_out,  # sinks / soft-cap (the kernel's arguments)
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr,
):  # fmt: skip
    for it in range(start, end, 1 if SPARSE else BLOCK_N):
        if SPARSE:
            start_n = sparse_tile_start(Idx, it, BLOCK_N, INDEX_BLOCK)
        else:
            start_n = it
        visit = True  # static unless a sparse walk must skip other documents' tiles
        if SPARSE:
            if DOCS:
                visit = (start_n < doc_hi) & (start_n + BLOCK_N > doc_lo)
        if visit:
            cols = start_n + offs_n  # [BLOCK_N] key indices
            start64 = tl.cast(start_n, tl.int64)
            k = load_tile(K_bh + start64 * stride_kn + k_tile, cols, Nk, offs_d,
                          HEAD_DIM, BLOCK_D, MASKED, UPCAST)  # [BLOCK_N, BLOCK_D]  # fmt: skip
            v = load_tile(V_bh + start64 * stride_vn + v_tile, cols, Nk, offs_d,
                          HEAD_DIM, BLOCK_D, MASKED, UPCAST)  # fmt: skip
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N]
            if SOFTCAP:
                sc = capped_scores(qk, cap_in, cap_out)  # log2 domain
                e = sc - lse[:, None]
            else:
                e = qk * qk_scale - lse[:, None]  # one FMA per score
            if MASKED:
                ok = pair_mask(rows[:, None], cols[None, :], Nq, Nk, window_left, window_right,
                               Lay_h, lay_kb, DocStart_b, sink, HAS_WL, HAS_WR, LAYOUT_MASK,
                               LAYOUT_BLOCK, DOCS, HAS_SINK, SINK_CAUSAL)  # fmt: skip
                e = tl.where(ok, e, float("-inf"))
            p = tl.math.exp2(e)  # [BLOCK_M, BLOCK_N]
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N]
            ds = p * (dp - delta[:, None])
            if SOFTCAP:  # d(c tanh(s / c)) / ds = 1 - tanh²
                t = sc / cap_out
                ds = ds * (1.0 - t * t)
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ,
    Bounds, Idx, Lay,  # sparse only: CSR (start, mid, end) per query block, key blocks, layout
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    Hq, Hkv, Nq, Nk,
    window_left, window_right, sm_scale, qk_scale,
    sink, cap_in, cap_out,  # sinks: keys j < sink always visible; soft-cap: common.capped_scores
    idx_head_stride, lay_head_stride, lay_kb,  # sparse only (0 strides: one layout for all heads)
    DocStart, DocEnd, stride_docb,  # documents only: int32 [B or 1, Nk] (0 stride: shared ids)
    NQ_KEY, NK_KEY, WL_KEY, WR_KEY,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    SPARSE: tl.constexpr, INDEX_BLOCK: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # heavy blocks first
    pid_bh = tl.program_id(1)
    b64 = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    h64 = h.to(tl.int64)
    hkv64 = (h // (Hq // Hkv)).to(tl.int64)
    start_m64 = tl.cast(start_m, tl.int64)

    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    rows = start_m + offs_m  # [BLOCK_M] query indices

    q_ptrs = (Q + b64 * stride_qb + h64 * stride_qh + start_m64 * stride_qn
              + offs_m[:, None] * stride_qn + offs_d[None, :])  # fmt: skip
    do_ptrs = (DO + b64 * stride_dob + h64 * stride_doh + start_m64 * stride_don
               + offs_m[:, None] * stride_don + offs_d[None, :])  # fmt: skip
    q = load_tile(q_ptrs, rows, Nq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)  # [BLOCK_M, BLOCK_D]
    do = load_tile(do_ptrs, rows, Nq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)
    row_offs = pid_bh.to(tl.int64) * Nq + rows  # LSE / delta are contiguous [B, Hq, Nq]
    lse = tl.load(Lse + row_offs, mask=rows < Nq, other=0.0)  # [BLOCK_M]
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # log2 domain; empty rows: P = 0
    delta = tl.load(Delta + row_offs, mask=rows < Nq, other=0.0)

    K_bh = K + b64 * stride_kb + hkv64 * stride_kh
    V_bh = V + b64 * stride_vb + hkv64 * stride_vh
    k_tile = offs_n[:, None] * stride_kn + offs_d[None, :]  # [BLOCK_N, BLOCK_D]
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    Lay_h = Lay + h64 * lay_head_stride
    DocStart_b = DocStart + b64 * stride_docb
    DocEnd_b = DocEnd + b64 * stride_docb

    if SPARSE:  # this query block's CSR row: masked key blocks, then full ones
        doc_lo = Nk * 0  # keys [doc_lo, doc_hi): the documents of this block's rows
        doc_hi = Nk + 0
        if DOCS:
            shift = Nk - Nq
            doc_lo = tl.load(DocStart_b + start_m + shift)
            doc_hi = tl.load(DocEnd_b + tl.minimum(start_m + BLOCK_M, Nq) - 1 + shift)
        e0, e1, e2 = sparse_bounds(Bounds + h * idx_head_stride, start_m // INDEX_BLOCK)
        sub = INDEX_BLOCK // BLOCK_N
        dq = _dq_key_blocks(
            dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
            rows, offs_n, offs_d, e0 * sub, e1 * sub, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, doc_lo, doc_hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        dq = _dq_key_blocks(  # full blocks: masked only with documents
            dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
            rows, offs_n, offs_d, e1 * sub, e2 * sub, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, doc_lo, doc_hi,
            DOCS, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST,
            DOT_PREC, SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
    else:  # edge blocks, full blocks (no element mask), edge blocks
        lo, mid_lo, mid_hi, hi = kv_blocks_for_q_block(
            start_m, Nq, Nk, window_left, window_right, DocStart_b, DocEnd_b,
            BLOCK_M, BLOCK_N, HAS_WL, HAS_WR, DOCS,
        )  # fmt: skip
        if HAS_SINK:  # sink keys left of the window's range: masked blocks [0, lo)
            sink_hi = tl.minimum((sink + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
            dq = _dq_key_blocks(
                dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
                rows, offs_n, offs_d, lo * 0, sink_hi, Nq, Nk, window_left, window_right, qk_scale,
                Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
                True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
        dq = _dq_key_blocks(
            dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
            rows, offs_n, offs_d, lo, mid_lo, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        dq = _dq_key_blocks(
            dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
            rows, offs_n, offs_d, mid_lo, mid_hi, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            False, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        dq = _dq_key_blocks(
            dq, q, do, lse, delta, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn,
            rows, offs_n, offs_d, mid_hi, hi, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip

    dq = dq * sm_scale
    dq_ptrs = (DQ + b64 * stride_dqb + h64 * stride_dqh + start_m64 * stride_dqn
               + offs_m[:, None] * stride_dqn + offs_d[None, :])  # fmt: skip
    tl.store(
        dq_ptrs,
        dq.to(DQ.dtype.element_ty),
        mask=(rows[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM),
    )


# ----------------------------------------------------------------------------- launch

# dK/dV: (BLOCK_M queries per step, BLOCK_N keys per program, num_warps, num_stages).
# dQ: (BLOCK_M queries per program, BLOCK_N keys per step, num_warps, num_stages).
# Candidates chosen from offline sm_90 compiles (ptxas -v register / spill counts); the
# fitting ones, in this order, are also the fixed (non-autotuned) path's preference.
_DKDV_CONFIGS = [
    (16, 128, 8, 3),
    (16, 128, 8, 2),
    (32, 128, 8, 1),
    (32, 128, 8, 2),
    (32, 128, 8, 3),
    (16, 64, 4, 3),
    (32, 64, 4, 3),
    (32, 32, 4, 2),
]  # 64-row query steps were screened too and spill at D = 64 and 128 (2026-12-02_regs_dkdv_steps)
_DQ_CONFIGS = [
    (128, 32, 8, 3),
    (128, 64, 8, 3),
    (128, 32, 4, 3),
    (64, 32, 4, 3),
    (64, 64, 4, 3),
    (32, 32, 4, 2),
]
# Dense 16-bit launches at these head-dim blocks use only these configs (autotuned, and in
# _DKDV_CONFIGS / _DQ_CONFIGS order on the fixed path): <= 3 each, screened with the offline sm_90
# report (experiments/kernel_bench/2026-12-02_regs_dkdv_steps): spill-free where any config is, else
# the fewest spill bytes. Other head dims, fp32 and block-sparse launches keep every fitting config.
_DKDV_SCREENED = {
    64: {(16, 128, 8, 3), (32, 128, 8, 2), (16, 64, 4, 3)},  # no spills (but 32x128x8x2 window + softcap: 4 B)
    128: {(16, 128, 8, 3), (16, 128, 8, 2), (32, 128, 8, 1)},  # 32, 4, 28 spill bytes (causal, bf16)
}
_DQ_SCREENED = {
    64: {(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3)},  # no spills
    128: {(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3)},  # no spills
}
# Block-sparse: tiles must divide the index block (16..128 tokens), so small tiles join the list.
_SPARSE_DKDV_CONFIGS = [
    (16, 128, 8, 3), (32, 128, 8, 2), (32, 128, 8, 3), (16, 64, 4, 3), (32, 64, 4, 3), (32, 32, 4, 2),
    (16, 32, 4, 2), (16, 16, 4, 2),
]  # fmt: skip
_SPARSE_DQ_CONFIGS = _DQ_CONFIGS + [(32, 16, 4, 2), (16, 16, 4, 2)]
_SMEM_LIMIT = 200 * 1024  # H100: 227 KB per block; the estimate below is rough


def _dkdv_fits(
    block_m: int, block_n: int, warps: int, stages: int, block_d: int, elem: int = 2, index_block: int = 0
) -> bool:
    acc_regs = 2 * block_n * block_d // (32 * warps)  # dK + dV fp32 registers per thread
    smem = smem_bytes(block_n, block_m, block_d, stages, elem) + block_n * block_d * elem
    return (smem <= _SMEM_LIMIT and acc_regs <= 128
            and screened((block_m, block_n, warps, stages), _DKDV_SCREENED, block_d, elem, index_block))  # fmt: skip


def _dq_fits(
    block_m: int, block_n: int, warps: int, stages: int, block_d: int, elem: int = 2, index_block: int = 0
) -> bool:
    acc_regs = block_m * block_d // (32 * warps)  # dQ fp32 registers per thread
    smem = smem_bytes(block_m, block_n, block_d, stages, elem) + block_m * block_d * elem
    return (smem <= _SMEM_LIMIT and acc_regs <= 64
            and screened((block_m, block_n, warps, stages), _DQ_SCREENED, block_d, elem, index_block))  # fmt: skip


def _divides(block_m: int, block_n: int, index_block: int) -> bool:
    """Sparse tiles split an index block exactly (index_block 0: dense, anything goes)."""
    return index_block == 0 or (index_block % block_m == 0 and index_block % block_n == 0)


def _fitting(configs, fits, block_d, elem=2, index_block=0):
    """Configs that pass ``fits`` (and divide ``index_block`` when block-sparse), in list order
    (the fixed path tries them in this order)."""
    ok = [cfg for cfg in configs if _divides(cfg[0], cfg[1], index_block)]
    return [cfg for cfg in ok if fits(*cfg, block_d, elem, index_block)] or ok[-1:]


def _make_prune(fits):
    def prune(configs, named_args, **kwargs):
        named = {**named_args, **kwargs}
        block_d, elem, g = named["BLOCK_D"], named["Q"].element_size(), named["INDEX_BLOCK"]
        meta = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
        ok = [c for c in configs if _divides(*meta(c)[:2], g)]
        return [c for c in ok if fits(*meta(c), block_d, elem, g)] or ok[-1:]

    return prune


def _autotuned(kernel, configs, fits, extra_key=()):
    key = [
        "NQ_KEY", "NK_KEY", "WL_KEY", "WR_KEY", "HEAD_DIM", "HAS_WL", "HAS_WR", "DOCS",
        "HAS_SINK", "SINK_CAUSAL", "SOFTCAP", *extra_key,
    ]  # fmt: skip
    return common.autotuned(kernel, configs, key, _make_prune(fits))


_dkdv_autotuned = _autotuned(_bwd_dkdv_kernel, _DKDV_CONFIGS, _dkdv_fits)
_dq_autotuned = _autotuned(_bwd_dq_kernel, _DQ_CONFIGS, _dq_fits)
_SPARSE_KEY = ("INDEX_BLOCK", "LAYOUT_MASK", "LAYOUT_BLOCK")
_sparse_dkdv_autotuned = _autotuned(_bwd_dkdv_kernel, _SPARSE_DKDV_CONFIGS, _dkdv_fits, _SPARSE_KEY)
_sparse_dq_autotuned = _autotuned(_bwd_dq_kernel, _SPARSE_DQ_CONFIGS, _dq_fits, _SPARSE_KEY)


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _split_ptrs(launch_args: dict) -> tuple[tuple, dict]:
    """((Bounds, Idx, Lay), the other launch arguments)."""
    rest = dict(launch_args)
    return (rest.pop("Bounds"), rest.pop("Idx"), rest.pop("Lay")), rest


# Lean launch (common.lean_launch): which of (q, k, v, do, lse, delta, dq, dk, dv) each tensor argument
# of the dK/dV and dQ kernels is; the unused sparse / document pointers are delta.
_LEAN_ROLES = {
    "Q": 0, "K": 1, "V": 2, "DO": 3, "Lse": 4, "Delta": 5, "DQ": 6, "DK": 7, "DV": 8,
    "Bounds": 5, "Idx": 5, "Lay": 5, "DocStart": 5, "DocEnd": 5,
}  # fmt: skip


def launch_args(q, k, v, do, lse, delta, dq, dk, dv, scale, window_left, window_right, sparse=None, docs=None,
                sink=0, sink_causal=False, softcap=None, interp=False):
    """(dK/dV positional args, dK/dV keyword args, dQ positional args, dQ keyword args) of the
    two backward kernels, all but BLOCK_M / BLOCK_N: what `flash_bwd` launches with, and what
    the offline register report (attnlab.bench.regs) compiles."""
    common = dict(
        sm_scale=scale,
        **shape_window_args(q, k, scale, window_left, window_right, interp, sink, sink_causal, softcap),
        **(docs.launch_args() if docs else no_documents_args(delta)),
    )  # fmt: skip
    # Index-list pointers go positionally (they follow the outputs in the kernel signature).
    dkdv_ptrs, dkdv_kw = _split_ptrs(
        sparse.launch_args(transposed=True) if sparse else dense_launch_args(delta)
    )
    dq_ptrs, dq_kw = _split_ptrs(
        sparse.launch_args(transposed=False) if sparse else dense_launch_args(delta)
    )
    tensors = (q, k, v, do)
    strides = [s for t in tensors for s in _strides3(t)]
    dkdv_args = (*tensors, lse, delta, dk, dv, *dkdv_ptrs, *strides, *_strides3(dk), *_strides3(dv))
    dq_args = (*tensors, lse, delta, dq, *dq_ptrs, *strides, *_strides3(dq))
    return dkdv_args, {**common, **dkdv_kw}, dq_args, {**common, **dq_kw}


def flash_bwd(
    do: torch.Tensor,  # [B, Hq, Nq, D], stride(-1) == 1
    q: torch.Tensor,  # [B, Hq, Nq, D]
    k: torch.Tensor,  # [B, Hkv, Nk, D]
    v: torch.Tensor,  # [B, Hkv, Nk, D]
    out: torch.Tensor,  # [B, Hq, Nq, D]
    lse: torch.Tensor,  # [B, Hq, Nq] fp32 contiguous, log2 domain (flash_fwd's lse2)
    dlse: torch.Tensor | None,  # [B, Hq, Nq] gradient of that lse2, or None
    scale: float,
    window_left: int | None,
    window_right: int | None,  # causal already folded in (window_right = 0)
    autotune: bool = True,
    configs: tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None = None,
    sparse: BlockSparseIndex | None = None,
    docs: DocumentBounds | None = None,
    sink: int = 0,
    sink_causal: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels; returns dq, dk, dv in the input dtypes.

    On CUDA: autotuned (dense / window: through the lean launch path, ``common.lean_launch``, when
    ``common.LEAN_LAUNCH``), or fixed configs when ``autotune=False``, or ``configs`` =
    (dkdv_config, dq_config), each (BLOCK_M, BLOCK_N, num_warps, num_stages), when given.
    ``sparse``: the compressed block-sparse layout the forward used (CSC for dK/dV, CSR for dQ).
    ``docs``, ``sink``, ``sink_causal``, ``softcap``: as the forward used them.
    """
    batch, hq, n_q, head_dim = q.shape
    _, hkv, n_k, _ = k.shape
    dq, dk, dv = alloc_like(q), alloc_like(k), alloc_like(v)
    if n_q == 0 or n_k == 0 or head_dim == 0 or batch * hq == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()

    block_d = head_dim_block(head_dim)
    interp = interpreting()
    delta = alloc((batch, hq, n_q), torch.float32, q.device)  # [B, Hq, Nq]
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()  # [B, Hq, Nq]
    pre_block = 64
    _bwd_preprocess[(cdiv(n_q, pre_block), batch * hq)](
        out, do, dlse if dlse is not None else delta, delta, *_strides3(out), *_strides3(do), hq, n_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_block, HAS_DLSE=dlse is not None,
    )  # fmt: skip

    dkdv_grid = lambda bm, bn: (cdiv(n_k, bn), batch * hkv)
    dq_grid = lambda bm, bn: (cdiv(n_q, bm), batch * hq)
    if autotune and configs is None and sparse is None and docs is None and common.LEAN_LAUNCH and not interp:
        key = ("bwd", q.shape, k.shape, q.stride(), k.stride(), v.stride(), do.stride(), dq.stride(), dk.stride(),
               dv.stride(), q.dtype, q.device, scale, window_left, window_right, sink, sink_causal, softcap)  # fmt: skip
        build = lambda: launch_args(q, k, v, do, lse, delta, dq, dk, dv, scale, window_left, window_right, None,
                                    None, sink, sink_causal, softcap, interp)  # fmt: skip
        tensors = (q, k, v, do, lse, delta, dq, dk, dv)
        common.lean_launch(_dkdv_autotuned, ("dkdv", *key), tensors, _LEAN_ROLES, lambda: build()[:2], dkdv_grid)
        common.lean_launch(_dq_autotuned, ("dq", *key), tensors, _LEAN_ROLES, lambda: build()[2:], dq_grid)
        return dq, dk, dv

    dkdv_args, dkdv_common, dq_args, dq_common = launch_args(
        q, k, v, do, lse, delta, dq, dk, dv, scale, window_left, window_right, sparse, docs, sink, sink_causal,
        softcap, interp,
    )  # fmt: skip
    g = sparse.index_block if sparse else 0
    if configs is not None and sparse:
        for cfg in configs:
            check_tiles(cfg[0], cfg[1], g, sparse.block_size)

    if interp:
        bm, bn = interpret_tiles("dkdv", sparse)
        _bwd_dkdv_kernel[dkdv_grid(bm, bn)](*dkdv_args, **dkdv_common, BLOCK_M=bm, BLOCK_N=bn)
        bm, bn = interpret_tiles("dq", sparse)
        _bwd_dq_kernel[dq_grid(bm, bn)](*dq_args, **dq_common, BLOCK_M=bm, BLOCK_N=bn)
    elif autotune and configs is None:
        dkdv_tuned = _sparse_dkdv_autotuned if sparse else _dkdv_autotuned
        dq_tuned = _sparse_dq_autotuned if sparse else _dq_autotuned
        dkdv_tuned[lambda meta: dkdv_grid(meta["BLOCK_M"], meta["BLOCK_N"])](
            *dkdv_args, **dkdv_common
        )
        dq_tuned[lambda meta: dq_grid(meta["BLOCK_M"], meta["BLOCK_N"])](*dq_args, **dq_common)
    else:
        elem = q.element_size()
        dkdv_list = _SPARSE_DKDV_CONFIGS if sparse else _DKDV_CONFIGS
        dq_list = _SPARSE_DQ_CONFIGS if sparse else _DQ_CONFIGS
        dkdv_cands = [configs[0]] if configs else _fitting(dkdv_list, _dkdv_fits, block_d, elem, g)
        dq_cands = [configs[1]] if configs else _fitting(dq_list, _dq_fits, block_d, elem, g)
        launch_fixed(
            _bwd_dkdv_kernel, dkdv_grid, dkdv_args, dkdv_common, dkdv_cands,
            ("dkdv", block_d, elem, configs, g, sink > 0, softcap is not None),
        )  # fmt: skip
        launch_fixed(
            _bwd_dq_kernel, dq_grid, dq_args, dq_common, dq_cands,
            ("dq", block_d, elem, configs, g, sink > 0, softcap is not None),
        )
    return dq, dk, dv
