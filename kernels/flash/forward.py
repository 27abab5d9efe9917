"""Forward kernel: online-softmax attention over the key blocks a query block can see.

One program per (query block, batch x query head). It visits only the key blocks that
intersect the rows' windows (common.kv_blocks_for_q_block), in three runs: masked edge
blocks, unmasked full blocks, masked edge blocks. With ``SPARSE`` (block-sparse layouts) the same
loop body walks the query block's CSR row instead (layout.py): its masked blocks, then its
full blocks, each index block split into BLOCK_N-key tiles. Scores go through exp2 with log2(e)
folded into the scale; tl.dot accumulates in fp32. Writes O ``[B, Hq, Nq, D]`` (q's
dtype) and the row LSE in the log2 domain of those scores, ``lse2 = LSE * log2(e)``
``[B, Hq, Nq]`` (fp32, -inf for empty rows): the backward recomputes ``P = exp2(qk * qk_scale -
lse2)`` with one FMA per score, and the public functions (interface.py) convert it back to the
natural-log LSE (``lse2 * ln 2``) only where they return it.

Documents (``DOCS``, documents.py): the dense / window key range is clipped to the rows'
documents (common.kv_blocks_for_q_block) and edge tiles compare document starts. The sparse
walk skips tiles outside ``[doc_lo, doc_hi)`` (the rows' documents) with a runtime branch and,
with documents, masks its full blocks too (a full layout block may still cross a boundary).

Shapes: q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]``; query head h reads kv head
``h // (Hq // Hkv)`` (GQA/MQA without repeating K/V).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import (
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
    screened,
    shape_window_args,
    smem_bytes,
    sparse_bounds,
    sparse_tile_start,
)
from .documents import DocumentBounds, no_documents_args
from .layout import BlockSparseIndex, check_tiles, dense_launch_args

_NO_SPECIALIZE = [
    "Nq", "Nk", "window_left", "window_right", "idx_head_stride", "lay_head_stride", "lay_kb",
    "stride_docb", "NQ_KEY", "NK_KEY", "WL_KEY", "WR_KEY", "sink",
]  # fmt: skip


@triton.jit
def _fwd_key_blocks(
    acc,  # [BLOCK_M, BLOCK_D] fp32 running numerator
    l_i,  # [BLOCK_M] fp32 running denominator
    m_i,  # [BLOCK_M] fp32 running max of scores (log2 domain)
    q,  # [BLOCK_M, BLOCK_D]
    K_bh, V_bh,  # pointers at k[b, h_kv, 0, 0], v[b, h_kv, 0, 0]
    k_tile, v_tile,  # [BLOCK_N, BLOCK_D] int32 offsets of a key / value tile
    stride_kn, stride_vn,
    offs_m, offs_n, offs_d,  # [BLOCK_M] query indices, [BLOCK_N] 0..BLOCK_N-1, [BLOCK_D]
    start, end,  # dense: keys [start, end), step BLOCK_N; sparse: steps [start, end) of Idx
    Nq, Nk, window_left, window_right,
    qk_scale,  # softmax scale * log2(e)
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
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N] fp32
            if MASKED:
                ok = pair_mask(offs_m[:, None], cols[None, :], Nq, Nk, window_left, window_right,
                               Lay_h, lay_kb, DocStart_b, sink, HAS_WL, HAS_WR, LAYOUT_MASK,
                               LAYOUT_BLOCK, DOCS, HAS_SINK, SINK_CAUSAL)  # fmt: skip
                if SOFTCAP:
                    qk = tl.where(ok, capped_scores(qk, cap_in, cap_out), float("-inf"))
                else:
                    qk = tl.where(ok, qk * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                # A row with no allowed key so far keeps m = -inf; subtract 0 instead (p = 0).
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(qk - m_use[:, None])
            elif SOFTCAP:
                qk = capped_scores(qk, cap_in, cap_out)
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                m_use = m_new
                p = tl.math.exp2(qk - m_new[:, None])
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                m_use = m_new
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # one FMA per score
            alpha = tl.math.exp2(m_i - m_use)  # [BLOCK_M] rescale of the old partial sums
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            v = load_tile(V_bh + start64 * stride_vn + v_tile, cols, Nk, offs_d,
                          HEAD_DIM, BLOCK_D, MASKED, UPCAST)  # [BLOCK_N, BLOCK_D]  # fmt: skip
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _fwd_kernel(
    Q, K, V, Out, Lse,
    Bounds, Idx, Lay,  # sparse only: CSR (start, mid, end) per query block, key blocks, layout
    DocStart, DocEnd,  # documents only: int32 [B or 1, Nk] document start / end of each token
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    Hq, Hkv, Nq, Nk,
    window_left, window_right, qk_scale,
    sink, cap_in, cap_out,  # sinks: keys j < sink always visible; soft-cap: common.capped_scores
    idx_head_stride, lay_head_stride, lay_kb,  # sparse only (0 strides: one layout for all heads)
    stride_docb,  # documents only (0: one row of ids for every batch row)
    NQ_KEY, NK_KEY, WL_KEY, WR_KEY,  # autotune keys only (bucketed lengths / windows)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    SPARSE: tl.constexpr, INDEX_BLOCK: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Heaviest query blocks (last rows under causal masks) are launched first.
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    pid_bh = tl.program_id(1)
    b64 = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    h64 = h.to(tl.int64)
    hkv64 = (h // (Hq // Hkv)).to(tl.int64)
    start_m64 = tl.cast(start_m, tl.int64)

    offs_m = start_m + tl.arange(0, BLOCK_M)  # [BLOCK_M] query indices
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q_tile = tl.arange(0, BLOCK_M)[:, None] * stride_qn + offs_d[None, :]  # [BLOCK_M, BLOCK_D]
    k_tile = offs_n[:, None] * stride_kn + offs_d[None, :]  # [BLOCK_N, BLOCK_D]
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]
    K_bh = K + b64 * stride_kb + hkv64 * stride_kh
    V_bh = V + b64 * stride_vb + hkv64 * stride_vh

    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh + start_m64 * stride_qn + q_tile
    q = load_tile(q_ptrs, offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True, UPCAST)  # [BLOCK_M, BLOCK_D]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    Lay_h = Lay + h64 * lay_head_stride
    DocStart_b = DocStart + b64 * stride_docb
    DocEnd_b = DocEnd + b64 * stride_docb

    if SPARSE:
        # Key blocks of this query block's CSR row: masked ones, then full ones (no element
        # mask unless documents), each INDEX_BLOCK keys walked in BLOCK_N tiles.
        doc_lo = Nk * 0  # keys [doc_lo, doc_hi): the documents of this block's rows
        doc_hi = Nk + 0
        if DOCS:
            shift = Nk - Nq
            doc_lo = tl.load(DocStart_b + start_m + shift)
            doc_hi = tl.load(DocEnd_b + tl.minimum(start_m + BLOCK_M, Nq) - 1 + shift)
        e0, e1, e2 = sparse_bounds(Bounds + h * idx_head_stride, start_m // INDEX_BLOCK)
        sub = INDEX_BLOCK // BLOCK_N
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
            offs_d, e0 * sub, e1 * sub, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, doc_lo, doc_hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
            offs_d, e1 * sub, e2 * sub, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, doc_lo, doc_hi,
            DOCS, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST,
            DOT_PREC, SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
    else:
        lo, mid_lo, mid_hi, hi = kv_blocks_for_q_block(
            start_m, Nq, Nk, window_left, window_right, DocStart_b, DocEnd_b,
            BLOCK_M, BLOCK_N, HAS_WL, HAS_WR, DOCS,
        )  # fmt: skip
        if HAS_SINK:  # sink keys left of the window's range: masked blocks [0, lo)
            sink_hi = tl.minimum((sink + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
            acc, l_i, m_i = _fwd_key_blocks(
                acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
                offs_d, lo * 0, sink_hi, Nq, Nk, window_left, window_right, qk_scale,
                Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
                True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
                SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
                sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
            )  # fmt: skip
        # Edge blocks below the full run (left window edge, document start).
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
            offs_d, lo, mid_lo, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        # Full blocks: no element mask.
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
            offs_d, mid_lo, mid_hi, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            False, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST,
            DOT_PREC, SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip
        # Edge blocks above it (diagonal / right window edge / document end / ragged keys).
        acc, l_i, m_i = _fwd_key_blocks(
            acc, l_i, m_i, q, K_bh, V_bh, k_tile, v_tile, stride_kn, stride_vn, offs_m, offs_n,
            offs_d, mid_hi, hi, Nq, Nk, window_left, window_right, qk_scale,
            Idx, Lay_h, lay_kb, DocStart_b, lo, hi,
            True, HAS_WL, HAS_WR, HEAD_DIM, BLOCK_D, BLOCK_N, UPCAST, DOT_PREC,
            SPARSE, INDEX_BLOCK, LAYOUT_MASK, LAYOUT_BLOCK, DOCS,
            sink, cap_in, cap_out, HAS_SINK, SINK_CAUSAL, SOFTCAP,
        )  # fmt: skip

    empty = l_i == 0.0  # rows with no allowed key: O = 0, LSE = -inf
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))  # log2-domain LSE

    o_ptrs = (Out + b64 * stride_ob + h64 * stride_oh + start_m64 * stride_on
              + tl.arange(0, BLOCK_M)[:, None] * stride_on + offs_d[None, :])  # fmt: skip
    o_mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    tl.store(Lse + pid_bh.to(tl.int64) * Nq + offs_m, lse2, mask=offs_m < Nq)


# ----------------------------------------------------------------------------- launch

# (BLOCK_M, BLOCK_N, num_warps, num_stages), chosen from offline sm_90 compiles (ptxas -v
# register / spill counts). The fitting ones, in this order, are the fixed path's preference.
_FWD_CONFIGS = [
    (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3),
    (64, 32, 4, 4), (64, 32, 4, 2),
    (64, 32, 8, 2), (64, 64, 8, 2),  # for D > 128
]  # fmt: skip
# Block-sparse: tiles must divide the index block (16..128 tokens), so small tiles join the list.
_SPARSE_FWD_CONFIGS = _FWD_CONFIGS + [(32, 32, 4, 2), (32, 16, 4, 2), (16, 16, 4, 2)]
# Dense 16-bit launches at these head-dim blocks use only these configs (autotuned, and in
# _FWD_CONFIGS order on the fixed path): <= 3 each, screened with the offline sm_90 report
# (experiments/kernel_bench/2026-12-02_regs_dkdv_steps). Other head dims, fp32 and block-sparse
# launches keep every fitting config.
_FWD_SCREENED = {
    64: {(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)},  # no spills
    128: {(128, 64, 8, 3), (64, 32, 4, 4), (64, 64, 8, 2)},  # no spills ((64, 64, 4, 3) spills 12 B)
}
_SMEM_LIMIT = 200 * 1024  # H100: 227 KB per block; the estimate below is rough


def _fwd_fits(
    block_m: int, block_n: int, warps: int, stages: int, block_d: int, elem: int = 2, index_block: int = 0
) -> bool:
    acc_regs = block_m * block_d // (32 * warps)  # fp32 accumulator registers per thread
    return (smem_bytes(block_m, block_n, block_d, stages, elem) <= _SMEM_LIMIT and acc_regs <= 64
            and screened((block_m, block_n, warps, stages), _FWD_SCREENED, block_d, elem, index_block))  # fmt: skip


def _divides(block_m: int, block_n: int, index_block: int) -> bool:
    """Sparse tiles split an index block exactly (index_block 0: dense, anything goes)."""
    return index_block == 0 or (index_block % block_m == 0 and index_block % block_n == 0)


def _fwd_prune(configs, named_args, **kwargs):
    named = {**named_args, **kwargs}
    block_d, elem, g = named["BLOCK_D"], named["Q"].element_size(), named["INDEX_BLOCK"]
    meta = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
    ok = [c for c in configs if _divides(*meta(c)[:2], g)]
    return [c for c in ok if _fwd_fits(*meta(c), block_d, elem, g)] or ok[-1:]


def fixed_fwd_configs(
    block_d: int, elem: int = 2, index_block: int = 0
) -> list[tuple[int, int, int, int]]:
    """Configs for the non-autotuned path (deterministic mode), in order of preference;
    ``index_block`` > 0 (block-sparse) keeps only tiles that divide it."""
    configs = _SPARSE_FWD_CONFIGS if index_block else _FWD_CONFIGS
    ok = [cfg for cfg in configs if _divides(cfg[0], cfg[1], index_block)]
    return [cfg for cfg in ok if _fwd_fits(*cfg, block_d, elem, index_block)] or ok[-1:]


def _autotuned(configs, extra_key=()):
    key = [
        "NQ_KEY", "NK_KEY", "WL_KEY", "WR_KEY", "HEAD_DIM", "HAS_WL", "HAS_WR", "DOCS",
        "HAS_SINK", "SINK_CAUSAL", "SOFTCAP", *extra_key,
    ]  # fmt: skip
    return common.autotuned(_fwd_kernel, configs, key, _fwd_prune)


_fwd_kernel_autotuned = _autotuned(_FWD_CONFIGS)
_SPARSE_KEY = ("INDEX_BLOCK", "LAYOUT_MASK", "LAYOUT_BLOCK")
_sparse_fwd_kernel_autotuned = _autotuned(_SPARSE_FWD_CONFIGS, _SPARSE_KEY)


# Lean launch (common.lean_launch): which of (q, k, v, out, lse) each tensor argument is; the
# unused sparse / document pointers are the LSE buffer (dense_launch_args, no_documents_args).
_LEAN_ROLES = {"Q": 0, "K": 1, "V": 2, "Out": 3, "Lse": 4, "Bounds": 4, "Idx": 4, "Lay": 4, "DocStart": 4, "DocEnd": 4}


def launch_args(q, k, v, out, lse, scale, window_left, window_right, sparse=None, docs=None, sink=0,
                sink_causal=False, softcap=None, interp=False) -> dict:
    """The forward kernel's keyword arguments (all but BLOCK_M / BLOCK_N): what `flash_fwd`
    launches with, and what the offline register report (attnlab.bench.regs) compiles."""
    args = dict(
        Q=q, K=k, V=v, Out=out, Lse=lse,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_ob=out.stride(0), stride_oh=out.stride(1), stride_on=out.stride(2),
        **shape_window_args(q, k, scale, window_left, window_right, interp, sink, sink_causal, softcap),
    )  # fmt: skip
    args.update(sparse.launch_args(transposed=False) if sparse else dense_launch_args(lse))
    args.update(docs.launch_args() if docs else no_documents_args(lse))
    return args


def flash_fwd(
    q: torch.Tensor,  # [B, Hq, Nq, D], stride(-1) == 1
    k: torch.Tensor,  # [B, Hkv, Nk, D], stride(-1) == 1
    v: torch.Tensor,  # [B, Hkv, Nk, D], stride(-1) == 1
    scale: float,
    window_left: int | None,
    window_right: int | None,  # causal already folded in (window_right = 0)
    autotune: bool = True,
    config: tuple[int, int, int, int] | None = None,
    sparse: BlockSparseIndex | None = None,
    docs: DocumentBounds | None = None,
    sink: int = 0,
    sink_causal: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; returns O ``[B, Hq, Nq, D]`` (q.dtype) and the log2-domain LSE
    ``lse2 = LSE * log2(e)`` ``[B, Hq, Nq]`` fp32 (-inf for empty rows), as ``flash_bwd`` takes it.

    On CUDA: autotuned over ``_FWD_CONFIGS`` (dense / window: through the lean launch path,
    ``common.lean_launch``, when ``common.LEAN_LAUNCH``), or the fixed config when ``autotune=False``, or
    ``config`` = (BLOCK_M, BLOCK_N, num_warps, num_stages) when given (tests, benchmarks).
    ``sparse``: a compressed block-sparse layout (layout.py) built for these lengths and this
    window; its query blocks replace the window's key range. ``docs``: document bounds
    (documents.py) of a packed batch, Nq <= Nk. ``sink``: keys j < sink are always visible
    (j <= p too when ``sink_causal``); a sparse index must have been built with the same sink.
    ``softcap``: scores ``softcap * tanh(s / softcap)``.
    """
    batch, hq, n_q, head_dim = q.shape
    _, hkv, n_k, _ = k.shape
    out = alloc_like(q)  # [B, Hq, Nq, D]
    lse = alloc((batch, hq, n_q), torch.float32, q.device)  # [B, Hq, Nq]
    if lse.numel() == 0:
        return out, lse
    if n_k == 0 or head_dim == 0:  # nothing to attend to: every row is empty
        return out.zero_(), lse.fill_(float("-inf"))

    interp = interpreting()
    grid = lambda bm, bn: (cdiv(n_q, bm), batch * hq)
    if autotune and config is None and sparse is None and docs is None and common.LEAN_LAUNCH and not interp:
        key = ("fwd", q.shape, k.shape, q.stride(), k.stride(), v.stride(), out.stride(), q.dtype, q.device,
               scale, window_left, window_right, sink, sink_causal, softcap)  # fmt: skip
        build = lambda: ((), launch_args(q, k, v, out, lse, scale, window_left, window_right, None, None, sink,
                                         sink_causal, softcap, interp))  # fmt: skip
        common.lean_launch(_fwd_kernel_autotuned, key, (q, k, v, out, lse), _LEAN_ROLES, build, grid)
        return out, lse

    block_d = head_dim_block(head_dim)
    args = launch_args(q, k, v, out, lse, scale, window_left, window_right, sparse, docs, sink, sink_causal,
                       softcap, interp)  # fmt: skip
    g = sparse.index_block if sparse else 0
    if config is not None and sparse:
        check_tiles(config[0], config[1], g, sparse.block_size)
    if interp:
        block_m, block_n = interpret_tiles("fwd", sparse)
        _fwd_kernel[grid(block_m, block_n)](**args, BLOCK_M=block_m, BLOCK_N=block_n)
    elif autotune and config is None:
        tuned = _sparse_fwd_kernel_autotuned if sparse else _fwd_kernel_autotuned
        tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](**args)
    else:
        candidates = [config] if config else fixed_fwd_configs(block_d, q.element_size(), g)
        launch_fixed(
            _fwd_kernel, grid, (), args, candidates,
            ("fwd", block_d, q.element_size(), config, g, sink > 0, softcap is not None),
        )
    return out, lse


def interpret_tiles(kernel: str, sparse: BlockSparseIndex | None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) under the interpreter: ``INTERPRET_BLOCKS`` for dense / window;
    for block-sparse ``INTERPRET_SPARSE_BLOCKS`` when set, else min(64, index block)."""
    if sparse is None:
        return common.INTERPRET_BLOCKS[kernel]
    g = sparse.index_block
    tiles = (common.INTERPRET_SPARSE_BLOCKS or {}).get(kernel, (min(64, g), min(64, g)))
    check_tiles(*tiles, g, sparse.block_size)
    return tiles
