"""CPU tests of kernels/flash (Triton interpreter): forward, LSE and every gradient against an
independent fp64 masked-softmax oracle, on awkward shapes, with NaN-poisoned outputs.

Legend: B batch, Hq / Hkv query / key-value heads, Nq / Nk lengths, D head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from attnlab.kernels.flash import (
    common,
    document_bounds,
    flash_attention,
    flash_attention_mask,
    flash_attention_reference,
)
from attnlab.kernels.flash.backward import (
    _DKDV_CONFIGS,
    _DQ_CONFIGS,
    _dkdv_fits,
    _dq_fits,
    _fitting,
)
from attnlab.kernels.flash.common import kv_blocks_for_q_block, q_blocks_for_kv_block
from attnlab.kernels.flash.forward import _fwd_fits, fixed_fwd_configs
from kernel_testing import DEVICE, KERNEL_MARKS
from oracle import cycled, doc_ids_from_lengths

pytestmark = KERNEL_MARKS



# ----------------------------------------------------------------------------- oracle


def oracle_mask(n_q, n_k, causal, window_left, window_right):
    """bool [Nq, Nk] written from the documented semantics, independently of the package."""
    allowed = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        p = i + n_k - n_q
        for j in range(n_k):
            ok = True
            if window_left is not None and j < p - window_left:
                ok = False
            if window_right is not None and j > p + window_right:
                ok = False
            if causal and j > p:
                ok = False
            allowed[i, j] = ok
    return allowed


def oracle_attention(q, k, v, allowed, scale, dtype=torch.float64):
    """Masked softmax attention in `dtype`; rows with no allowed key give 0 with zero grads.

    q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D], allowed [Nq, Nk]. Returns out [B, Hq, Nq, D], lse [B, Hq, Nq].
    """
    hq, hkv = q.shape[1], k.shape[1]
    head_of = torch.arange(hq) // (hq // hkv)  # kv head of each query head
    q_, k_, v_ = q.to(dtype), k.to(dtype)[:, head_of], v.to(dtype)[:, head_of]
    allowed = allowed.to(q.device)
    has_key = allowed.any(-1)  # [Nq]
    s = (q_ @ k_.transpose(-1, -2)) * scale  # [B, Hq, Nq, Nk]
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(has_key[:, None], s, torch.zeros((), dtype=dtype, device=q.device))
    probs = torch.softmax(s, dim=-1) * has_key[:, None].to(dtype)
    out = probs @ v_
    lse = torch.where(
        has_key,
        torch.logsumexp(s.float() if dtype != torch.float64 else s, -1),
        torch.tensor(float("-inf"), device=q.device),
    )
    return out, lse


def assert_close(name, got, want, rtol, atol):
    """Norm-relative and max-abs comparison; atol is per element."""
    assert not torch.isnan(got).any(), f"{name}: NaN in kernel output"
    g, w = got.double(), want.double()
    err = (g - w).norm().item()
    bound = rtol * w.norm().item() + atol * math.sqrt(max(w.numel(), 1))
    assert err <= bound, f"{name}: |diff|={err:.3e} > {bound:.3e} (|ref|={w.norm().item():.3e})"
    max_err = (g - w).abs().max().item() if w.numel() else 0.0
    max_bound = 10 * rtol * max(w.abs().max().item() if w.numel() else 0.0, 1.0) + 10 * atol
    assert max_err <= max_bound, f"{name}: max|diff|={max_err:.3e} > {max_bound:.3e}"


def make_inputs(b, hq, hkv, n_q, n_k, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n_q, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(b, hkv, n_k, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    v = torch.randn(b, hkv, n_k, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    do = torch.randn(b, hq, n_q, d, generator=gen).to(DEVICE, dtype)
    return q, k, v, do


def run_kernel(q, k, v, do, **kw):
    out, lse = flash_attention(q, k, v, return_lse=True, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out, lse, dq, dk, dv


def run_oracle(q, k, v, do, causal, window_left, window_right, dtype=torch.float64):
    allowed = oracle_mask(q.shape[2], k.shape[2], causal, window_left, window_right)
    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = oracle_attention(qq, kk, vv, allowed, 1.0 / math.sqrt(q.shape[-1]), dtype)
    dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), do.to(dtype))
    return out, lse, dq, dk, dv


# ----------------------------------------------------------------------------- fp32 sweep

# (B, Hq, Hkv, Nq, Nk, D, causal, window_left, window_right): a covering set, not a product.
FP32_CASES = [
    (1, 2, 2, 1, 1, 16, False, None, None),  # N = 1
    (2, 2, 2, 63, 63, 40, True, None, None),
    (1, 4, 1, 113, 113, 80, False, None, None),  # MQA, dense
    (1, 2, 2, 257, 257, 128, True, None, None),  # causal: diagonal + interior blocks
    (1, 2, 2, 113, 113, 16, True, 0, None),  # Mistral window of 1: only the diagonal
    (1, 2, 1, 257, 257, 40, True, 256, None),  # window_left = N - 1 == causal
    (1, 2, 2, 63, 63, 80, False, 100, None),  # window larger than N
    (1, 8, 2, 113, 113, 64, False, 5, 3),  # GQA 4:1, two-sided window
    (1, 2, 2, 257, 257, 16, False, 0, 7),  # look-ahead only window
    (1, 2, 2, 63, 113, 40, True, None, None),  # Nq < Nk causal
    (1, 2, 2, 113, 63, 80, True, None, None),  # Nq > Nk causal: empty top rows
    (1, 4, 2, 113, 63, 16, False, 3, 10),  # Nq > Nk window, some empty rows
    (2, 2, 1, 63, 257, 128, False, 20, 0),  # window with right edge 0
    (1, 2, 2, 257, 113, 16, True, 40, None),  # causal + window, Nq > Nk
]


def _case_id(c):
    b, hq, hkv, nq, nk, d, causal, wl, wr = c
    return f"B{b}-H{hq}:{hkv}-N{nq}x{nk}-D{d}-{'causal' if causal else 'full'}-w{wl},{wr}"


@pytest.mark.parametrize("case", FP32_CASES, ids=_case_id)
def test_fp32_matches_oracle(case):
    b, hq, hkv, n_q, n_k, d, causal, wl, wr = case
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d, torch.float32)
    got = run_kernel(q, k, v, do, causal=causal, window_left=wl, window_right=wr)
    want = run_oracle(q, k, v, do, causal, wl, wr)
    out, lse = got[0], got[1]
    assert out.dtype == torch.float32 and out.shape == (b, hq, n_q, d)
    assert lse.dtype == torch.float32 and lse.shape == (b, hq, n_q)
    assert torch.equal(torch.isinf(lse), torch.isinf(want[1])), "LSE -inf pattern differs"
    finite = torch.isfinite(want[1])
    assert_close("lse", lse[finite], want[1][finite], 1e-5, 1e-5)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        if name != "lse":
            assert_close(name, g, w, 1e-5, 1e-6)


# Small tiles with BLOCK_M != BLOCK_N exercise the edge / interior block split of windows.
SMALL_BLOCK_CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, causal, wl, wr), {kernel: (BLOCK_M, BLOCK_N)}
    (
        (1, 2, 2, 113, 113, 16, True, None, None),
        {"fwd": (16, 32), "dkdv": (16, 32), "dq": (32, 16)},
    ),
    ((1, 2, 1, 113, 97, 16, False, 20, 9), {"fwd": (32, 16), "dkdv": (32, 16), "dq": (16, 32)}),
    ((1, 2, 2, 100, 130, 16, True, 37, None), {"fwd": (16, 16), "dkdv": (16, 32), "dq": (32, 16)}),
    ((1, 2, 2, 130, 70, 16, False, None, 12), {"fwd": (32, 16), "dkdv": (32, 16), "dq": (16, 16)}),
]


@pytest.mark.parametrize(
    "case,blocks", SMALL_BLOCK_CASES, ids=[_case_id(c) for c, _ in SMALL_BLOCK_CASES]
)
def test_small_blocks_match_oracle(case, blocks, monkeypatch):
    monkeypatch.setattr(common, "INTERPRET_BLOCKS", dict(blocks))
    b, hq, hkv, n_q, n_k, d, causal, wl, wr = case
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d, torch.float32, seed=1)
    got = run_kernel(q, k, v, do, causal=causal, window_left=wl, window_right=wr)
    want = run_oracle(q, k, v, do, causal, wl, wr)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        if name != "lse":
            assert_close(name, g, w, 1e-5, 1e-6)


# ----------------------------------------------------------------------------- low precision

LOWP_CASES = [
    ((1, 2, 2, 113, 113, 64, True, None, None), torch.bfloat16),
    ((1, 4, 1, 63, 113, 40, False, 5, 3), torch.bfloat16),
    ((1, 2, 2, 113, 63, 16, True, None, None), torch.bfloat16),  # empty rows
    ((1, 2, 2, 63, 63, 80, False, None, None), torch.float16),
]


@pytest.mark.parametrize(
    "case,dtype", LOWP_CASES, ids=[f"{_case_id(c)}-{d}" for c, d in LOWP_CASES]
)
def test_low_precision_within_torch_error(case, dtype):
    """flash-attn rule: |kernel - ref| <= 2 |torch in low precision - ref| + atol (ref in fp64)."""
    b, hq, hkv, n_q, n_k, d, causal, wl, wr = case
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d, dtype, seed=2)
    got = run_kernel(q, k, v, do, causal=causal, window_left=wl, window_right=wr)
    want = run_oracle(q, k, v, do, causal, wl, wr)
    lowp = run_oracle(q, k, v, do, causal, wl, wr, dtype=dtype)
    for name, g, w, t in zip(("out", "lse", "dq", "dk", "dv"), got, want, lowp, strict=True):
        if name == "lse":
            continue
        assert g.dtype == dtype, f"{name} dtype {g.dtype}"
        assert not torch.isnan(g).any(), f"{name}: NaN"
        g, w, t = g.double(), w.double(), t.double()
        atol = 1e-3
        assert (g - w).abs().max() <= 2 * (t - w).abs().max() + atol, name
        assert (g - w).norm() <= 2 * (t - w).norm() + atol * math.sqrt(w.numel()), name


# ----------------------------------------------------------------------------- edge semantics


def test_empty_rows_give_zeros_and_zero_grads():
    # Nq > Nk causal: rows i < Nq - Nk sit at negative positions and see no key.
    n_q, n_k = 113, 63
    q, k, v, do = make_inputs(1, 2, 2, n_q, n_k, 40, torch.float32, seed=3)
    out, lse, dq, dk, dv = run_kernel(q, k, v, do, causal=True)
    empty = n_q - n_k
    assert torch.all(out[:, :, :empty] == 0)
    assert torch.all(lse[:, :, :empty] == float("-inf"))
    assert torch.all(dq[:, :, :empty] == 0)
    assert torch.isfinite(lse[:, :, empty:]).all()
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()


def test_window_excluding_every_key():
    # Nk keys all lie left of the window of rows whose positions are >= Nk + window_right... use a
    # look-ahead window over a shorter key sequence: rows at p > Nk - 1 see nothing with wl = 0.
    q, k, v, do = make_inputs(1, 2, 1, 40, 40, 16, torch.float32, seed=4)
    k2, v2 = k[:, :, :10].detach().requires_grad_(), v[:, :, :10].detach().requires_grad_()
    out, lse, dq, dk, dv = run_kernel(q, k2, v2, do, window_left=0, window_right=0)
    want = run_oracle(q, k2, v2, do, False, 0, 0)
    assert torch.all(out[:, :, :30] == 0) and torch.all(lse[:, :, :30] == float("-inf"))
    for name, g, w in zip(
        ("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), want, strict=True
    ):
        if name != "lse":
            assert_close(name, g, w, 1e-5, 1e-6)


def test_zero_length_keys():
    q, k, v, do = make_inputs(1, 2, 2, 7, 0, 16, torch.float32)
    out, lse, dq, dk, dv = run_kernel(q, k, v, do, causal=True)
    assert torch.all(out == 0) and torch.all(lse == float("-inf")) and torch.all(dq == 0)
    assert dk.shape == k.shape and dv.shape == v.shape


def test_lse_gradient_matches_oracle():
    q, k, v, do = make_inputs(1, 2, 1, 63, 113, 40, torch.float32, seed=5)
    gen = torch.Generator().manual_seed(6)
    dlse = torch.randn(1, 2, 63, generator=gen).to(DEVICE)
    out, lse = flash_attention(q, k, v, window_left=30, window_right=4, return_lse=True)
    loss = (out * do).sum() + (lse * dlse).sum()
    got = torch.autograd.grad(loss, (q, k, v))
    allowed = oracle_mask(63, 113, False, 30, 4)
    qq, kk, vv = (t.detach().double().requires_grad_() for t in (q, k, v))
    o_ref, lse_ref = oracle_attention(qq, kk, vv, allowed, 1 / math.sqrt(40))
    loss_ref = (o_ref * do.double()).sum() + (lse_ref * dlse.double()).sum()
    want = torch.autograd.grad(loss_ref, (qq, kk, vv))
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, g, w, 1e-5, 1e-6)
    # Only the LSE used: dO is None inside the backward.
    _, lse = flash_attention(q, k, v, window_left=30, window_right=4, return_lse=True)
    (g_q,) = torch.autograd.grad((lse * dlse).sum(), (q,))
    _, lse_ref = oracle_attention(qq, kk, vv, allowed, 1 / math.sqrt(40))
    (w_q,) = torch.autograd.grad((lse_ref * dlse.double()).sum(), (qq,))
    assert_close("dq(lse only)", g_q, w_q, 1e-5, 1e-6)


def test_deterministic_backward_is_bitwise_stable():
    q, k, v, do = make_inputs(1, 4, 2, 113, 113, 40, torch.float32, seed=7)
    runs = [
        run_kernel(q, k, v, do, causal=True, window_left=50, deterministic=True) for _ in range(3)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_strided_inputs_bshd_layout():
    """q/k/v as transposes of [B, N, H, D] buffers: no copies needed, same results."""
    b, hq, hkv, n, d = 2, 4, 2, 63, 40
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(b, n, hq, d, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    k = torch.randn(b, n, hkv, d, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    v = torch.randn(b, n, hkv, d, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    do = torch.randn(b, hq, n, d, generator=gen).to(DEVICE)
    got = run_kernel(q, k, v, do, causal=True)
    want = run_oracle(q, k, v, do, True, None, None)
    assert got[0].stride() == q.stride(), "output keeps q's [B, N, H, D] memory layout"
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        if name != "lse":
            assert_close(name, g, w, 1e-5, 1e-6)


def test_custom_scale_and_return_type():
    q, k, v, do = make_inputs(1, 2, 2, 63, 63, 16, torch.float32, seed=9)
    out = flash_attention(q, k, v, scale=0.3)
    assert isinstance(out, torch.Tensor)
    want = flash_attention_reference(q.double(), k.double(), v.double(), scale=0.3)
    assert_close("out", out, want, 1e-5, 1e-6)


# ----------------------------------------------------------------------------- reference, ranges


@pytest.mark.parametrize(
    "causal,wl,wr,n_q,n_k", [(True, None, None, 9, 13), (False, 2, 3, 13, 9), (True, 4, 1, 11, 11)]
)
def test_reference_matches_oracle(causal, wl, wr, n_q, n_k):
    assert torch.equal(
        flash_attention_mask(n_q, n_k, causal=causal, window_left=wl, window_right=wr),
        oracle_mask(n_q, n_k, causal, wl, wr),
    )
    q, k, v, do = make_inputs(1, 4, 2, n_q, n_k, 8, torch.float64)
    out, lse = flash_attention_reference(
        q, k, v, causal=causal, window_left=wl, window_right=wr, return_lse=True
    )
    grads = torch.autograd.grad(out, (q, k, v), do)
    want = run_oracle(q, k, v, do, causal, wl, wr)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want, strict=True):
        assert torch.equal(torch.isinf(g), torch.isinf(w)), name
        assert torch.allclose(g[torch.isfinite(w)], w[torch.isfinite(w)], atol=1e-12), name


@triton.jit
def _ranges_kernel(
    Out,
    Nq,
    Nk,
    wl,
    wr,
    DocStart,
    DocEnd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    BY_QUERY: tl.constexpr,
    DOCS: tl.constexpr,
):
    pid = tl.program_id(0)
    if BY_QUERY:
        lo, mid_lo, mid_hi, hi = kv_blocks_for_q_block(
            pid * BLOCK_M, Nq, Nk, wl, wr, DocStart, DocEnd, BLOCK_M, BLOCK_N, HAS_WL, HAS_WR, DOCS
        )
    else:
        lo, mid_lo, mid_hi, hi = q_blocks_for_kv_block(
            pid * BLOCK_N, Nq, Nk, wl, wr, DocStart, DocEnd, BLOCK_M, BLOCK_N, HAS_WL, HAS_WR, DOCS
        )
    tl.store(Out + pid * 4 + 0, lo)
    tl.store(Out + pid * 4 + 1, mid_lo)
    tl.store(Out + pid * 4 + 2, mid_hi)
    tl.store(Out + pid * 4 + 3, hi)


RANGE_SHAPES = [
    (100, 100, None, 0, 16, 32),
    (100, 130, 37, 0, 32, 16),
    (130, 70, None, 12, 16, 16),
    (97, 113, 20, 9, 32, 16),
    (64, 64, 0, 0, 16, 16),
    (50, 90, 5, None, 16, 32),
    (90, 50, None, None, 32, 16),
]
DOC_LENS = {"nodocs": None, "docs_a": (1, 5, 30, 64), "docs_b": (16, 16, 3)}


@pytest.mark.parametrize(
    "n_q,n_k,wl,wr,bm,bn,doc_lens",
    [
        pytest.param(*shape, lens, id=f"{'-'.join(map(str, shape))}-{name}")
        for shape in RANGE_SHAPES
        for name, lens in DOC_LENS.items()
        if lens is None or shape[0] <= shape[1]  # documents need Nq <= Nk
    ],
)
def test_block_ranges_cover_exactly_the_mask(n_q, n_k, wl, wr, bm, bn, doc_lens):
    """Visited blocks hold every allowed pair; blocks outside hold none; 'full' blocks are all
    allowed. With documents (lengths cycled to fill Nk) the ranges are clipped to them."""
    allowed = oracle_mask(n_q, n_k, False, wl, wr)
    flags = dict(HAS_WL=wl is not None, HAS_WR=wr is not None, DOCS=doc_lens is not None)
    starts = ends = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    if doc_lens is not None:
        ids = doc_ids_from_lengths(cycled(doc_lens, n_k))
        allowed &= ids[n_k - n_q :, None] == ids[None, :]
        bounds = document_bounds(ids[None].to(DEVICE))
        starts, ends = bounds.start, bounds.end
    for by_query in (True, False):
        n_prog = triton.cdiv(n_q if by_query else n_k, bm if by_query else bn)
        out = torch.full((n_prog, 4), -7, dtype=torch.int32, device=DEVICE)
        _ranges_kernel[(n_prog,)](
            out, n_q, n_k, wl or 0, wr or 0, starts, ends, BLOCK_M=bm, BLOCK_N=bn,
            BY_QUERY=by_query, **flags,
        )
        step, inner = (bn, n_k) if by_query else (bm, n_q)
        for pid, (lo, mid_lo, mid_hi, hi) in enumerate(out.cpu().tolist()):
            tile = (
                allowed[pid * bm : (pid + 1) * bm]
                if by_query
                else allowed[:, pid * bn : (pid + 1) * bn].T
            )
            assert lo % step == 0 and lo <= mid_lo <= max(mid_hi, mid_lo) and mid_hi <= max(hi, lo)
            assert (mid_lo % step == 0 or mid_lo == hi) and (mid_hi % step == 0 or mid_hi == mid_lo)
            visited = torch.zeros(inner, dtype=torch.bool)
            visited[lo : max(hi, lo)] = True
            assert not tile[:, ~visited].any(), f"pid {pid}: allowed pairs outside [{lo}, {hi})"
            if doc_lens is not None and by_query:  # clipped to the rows' documents
                p_first, p_last = pid * bm + n_k - n_q, min((pid + 1) * bm, n_q) - 1 + n_k - n_q
                first_doc = (ids == ids[p_first]).nonzero()
                assert lo >= int(first_doc[0]) // bn * bn
                assert hi <= int((ids == ids[p_last]).nonzero()[-1]) + 1
            if doc_lens is not None and not by_query:
                k_first, k_last = pid * bn, min((pid + 1) * bn, n_k) - 1
                assert lo >= max(int((ids == ids[k_first]).nonzero()[0]) - (n_k - n_q), 0) // bm * bm
                assert hi <= int((ids == ids[k_last]).nonzero()[-1]) + 1 - (n_k - n_q)
            if mid_hi > mid_lo:
                assert tile[:, mid_lo:mid_hi].all(), (
                    f"pid {pid}: full run [{mid_lo}, {mid_hi}) has masked pairs"
                )


@pytest.mark.parametrize("elem", [2, 4])
def test_launch_configs_exist_for_every_head_dim(elem):
    for d in (16, 32, 64, 128, 256):
        assert all(_fwd_fits(*cfg, d, elem) for cfg in fixed_fwd_configs(d, elem))
        assert all(
            _dkdv_fits(*cfg, d, elem) for cfg in _fitting(_DKDV_CONFIGS, _dkdv_fits, d, elem)
        )
        assert all(_dq_fits(*cfg, d, elem) for cfg in _fitting(_DQ_CONFIGS, _dq_fits, d, elem))


# ----------------------------------------------------------------------------- validation


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((_t(2, 3, 4), _t(2, 3, 4), _t(2, 3, 4)), {}, "rank 4"),
        ((_t(1, 3, 4, 16), _t(1, 2, 4, 16), _t(1, 2, 4, 16)), {}, "multiple of key/value heads"),
        ((_t(1, 2, 4, 16), _t(1, 2, 4, 16, dtype=torch.float16), _t(1, 2, 4, 16)), {}, "dtype"),
        ((_t(1, 2, 4, 16), _t(1, 2, 4, 32), _t(1, 2, 4, 32)), {}, "head dim D mismatch"),
        ((_t(1, 2, 4, 16), _t(1, 2, 4, 16), _t(1, 2, 5, 16)), {}, "same shape"),
        ((_t(1, 2, 4, 300), _t(1, 2, 4, 300), _t(1, 2, 4, 300)), {}, "head dim D must be in"),
        ((_t(1, 2, 4, 16, dtype=torch.float64),) * 3, {}, "dtype"),
        ((_t(1, 2, 4, 16),) * 3, {"window_left": -1}, "window_left"),
        ((_t(1, 2, 4, 16),) * 3, {"window_right": 2.5}, "window_right"),
        ((_t(1, 2, 4, 16),) * 3, {"scale": 0.0}, "scale"),
    ],
)
def test_invalid_inputs_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*args, **kwargs)


def test_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 1, 4, 16)
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        flash_attention(x, x, x)


def test_autotuning_times_configs_briefly(monkeypatch):
    """Every autotuned kernel times its configs with the short settings of `common` (not
    Triton's 25 + 100 ms per config) and asks Triton to keep the winners on disk."""
    from attnlab.kernels.flash import backward, common, forward

    tuned = [forward._fwd_kernel_autotuned, forward._sparse_fwd_kernel_autotuned, backward._dkdv_autotuned,
             backward._dq_autotuned, backward._sparse_dkdv_autotuned, backward._sparse_dq_autotuned]
    for kernel in tuned:
        assert kernel.do_bench is common.autotune_bench
        assert "DOCS" in kernel.keys and "HEAD_DIM" in kernel.keys
    seen = {}
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: seen.update(kw) or [1.0, 0.9, 1.1])
    assert common.autotune_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.9, 1.1]
    assert seen == {"warmup": common.AUTOTUNE_WARMUP_MS, "rep": common.AUTOTUNE_REP_MS, "quantiles": (0.5, 0.2, 0.8)}
    assert common.AUTOTUNE_WARMUP_MS + common.AUTOTUNE_REP_MS < 25 + 100


def test_host_next_power_of_2_matches_triton():
    from attnlab.kernels.flash.common import next_power_of_2

    for n in [*range(1, 300), 1000, 1024, 1025, 16383, 16384, 16385, 2**31 - 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
