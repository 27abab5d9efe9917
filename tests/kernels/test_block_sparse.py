"""CPU tests of block-sparse attention in kernels/flash (Triton interpreter): forward, LSE and
every gradient against an independent fp64 masked softmax (its mask built here from the layout
expansion and the token rules), the CSR/CSC compression on hand-made layouts, errors, and the
contract path ``attention(..., impl="triton")`` for every pattern. Outputs are NaN-poisoned.

Legend: B batch, Hq / Hkv query / key-value heads, Nq / Nk lengths, D head dim, bs layout block,
Mb / Kb layout blocks, G index block (kernel tiles split it).
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import (
    block_sparse_attention,
    block_sparse_mask,
    block_sparse_reference,
    common,
    compress_layout,
    layout,
)
from kernel_testing import DEVICE, KERNEL_MARKS
from oracle import oracle_attention as contract_oracle
from oracle import oracle_mask as contract_mask

from attnlab.attention import AttentionSpec, attention, available_impls

pytestmark = KERNEL_MARKS



# ----------------------------------------------------------------------------- oracle


def oracle_mask(lay, bs, n_q, n_k, causal, wl, wr):
    """bool [H, Nq, Nk]: per row, the key interval the token rules allow, AND the row's layout
    blocks repeated bs times (written independently of the package)."""
    heads = lay.shape[0]
    allowed = torch.zeros(heads, n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        p = i + n_k - n_q
        lo = 0 if wl is None else max(0, p - wl)
        hi = n_k - 1 if wr is None else min(n_k - 1, p + wr)
        if causal:
            hi = min(hi, p)
        if lo > hi:
            continue
        for h in range(heads):
            keys = lay[h, i // bs].repeat_interleave(bs)[:n_k]  # [Nk]
            allowed[h, i, lo : hi + 1] = keys[lo : hi + 1]
    return allowed


def oracle(q, k, v, do, allowed, dtype=torch.float64):
    """Masked softmax attention in `dtype` with allowed [H, Nq, Nk]; empty rows give 0 and zero
    grads. Returns out, lse, dq, dk, dv."""
    hq, hkv = q.shape[1], k.shape[1]
    head_of = torch.arange(hq) // (hq // hkv)
    qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    allowed = allowed.to(q.device)
    has_key = allowed.any(-1)  # [H, Nq]
    s = (qq @ kk[:, head_of].transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, Hq, Nq, Nk]
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(has_key[..., None], s, torch.zeros((), dtype=dtype))
    out = (torch.softmax(s, dim=-1) * has_key[..., None]) @ vv[:, head_of]
    lse = torch.where(has_key, torch.logsumexp(s, -1), float("-inf"))
    grads = torch.autograd.grad(out, (qq, kk, vv), do.to(dtype))
    return out.detach(), lse.detach(), *grads


def assert_close(name, got, want, rtol=1e-5, atol=1e-6):
    assert not torch.isnan(got).any(), f"{name}: NaN in kernel output"
    g, w = got.double(), want.double()
    err = (g - w).norm().item()
    bound = rtol * w.norm().item() + atol * math.sqrt(max(w.numel(), 1))
    assert err <= bound, f"{name}: |diff|={err:.3e} > {bound:.3e}"
    max_err = (g - w).abs().max().item() if w.numel() else 0.0
    assert max_err <= 10 * rtol * max(w.abs().max().item(), 1.0) + 10 * atol, (
        f"{name}: {max_err:.3e}"
    )


def make_inputs(b, hq, hkv, n_q, n_k, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(b, h, n, d, generator=gen).to(DEVICE, dtype).requires_grad_()
        for h, n in ((hq, n_q), (hkv, n_k), (hkv, n_k))
    )
    do = torch.randn(b, hq, n_q, d, generator=gen).to(DEVICE, dtype)
    return q, k, v, do


def run_kernel(q, k, v, do, lay, bs, **kw):
    out, lse = block_sparse_attention(q, k, v, lay, bs, return_lse=True, **kw)
    return out, lse, *torch.autograd.grad(out, (q, k, v), do)


def random_layout(heads, n_q, n_k, bs, density, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(heads, -(-n_q // bs), -(-n_k // bs), generator=gen) < density


def pattern_layout(pattern, n_q, n_k, bs, causal, **params):
    spec = AttentionSpec(
        kind="block_sparse", pattern=pattern, block_size=bs, causal=causal, **params
    )
    return spec.block_layout(n_q, n_k)


# ----------------------------------------------------------------------------- fp32 sweep

# (B, Hq, Hkv, Nq, Nk, D, bs, layout, causal, wl, wr): a covering set, not a product. Layouts are
# pattern layouts (as the contract makes them) or random ones; H = 1 shared, H = Hq per head.
CASES = [
    (1, 2, 1, 113, 113, 40, 16, ("local", {}), True, None, None),
    (1, 4, 1, 200, 200, 64, 32, ("strided", {}), False, None, None),  # GQA 4:1
    (1, 2, 2, 113, 113, 16, 16, ("bigbird", {"heads": 2}), True, None, None),  # per head
    (1, 2, 1, 200, 200, 32, 32, ("longformer", {}), False, 20, 20),  # window cuts blocks
    (1, 4, 2, 256, 256, 16, 64, ("random", {"heads": 4, "density": 0.4}), True, 100, None),
    (2, 2, 2, 63, 113, 80, 16, (0.5, 1), True, None, None),  # Nq < Nk
    (1, 2, 2, 113, 63, 40, 32, (0.6, 2), True, None, None),  # Nq > Nk: empty rows
    (1, 3, 1, 70, 70, 16, 4, (0.3, 3), False, 10, 3),  # bs < 16: coarsened, MQA, per head
    (1, 2, 2, 100, 100, 96, 8, ("bigbird", {"random_blocks": 3}), True, None, None),
    (1, 2, 1, 200, 150, 16, 128, (0.7, 2), False, 60, 0),  # G = 128 split into 64-tiles
    (1, 2, 2, 65, 65, 256, 16, (0.5, 2), False, None, None),  # D = 256
    (1, 1, 1, 1, 1, 16, 16, (1.0, 1), True, None, None),  # N = 1
]


def _case_id(c):
    b, hq, hkv, n_q, n_k, d, bs, (src, params), causal, wl, wr = c
    name = src if isinstance(src, str) else f"rand{src}"
    heads = params if isinstance(params, int) else params.get("heads", 1)
    return f"{name}-H{heads}-bs{bs}-B{b}-{hq}:{hkv}-N{n_q}x{n_k}-D{d}-c{int(causal)}-w{wl},{wr}"


def _layout_for(case):
    b, hq, hkv, n_q, n_k, d, bs, (src, params), causal, wl, wr = case
    if isinstance(src, str):
        return pattern_layout(src, n_q, n_k, bs, causal, **params)
    heads = hq if params > 1 else 1
    return random_layout(heads, n_q, n_k, bs, src, seed=hq * 7 + n_q)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fp32_matches_oracle(case):
    b, hq, hkv, n_q, n_k, d, bs, _, causal, wl, wr = case
    lay = _layout_for(case)
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d)
    got = run_kernel(q, k, v, do, lay, bs, causal=causal, window_left=wl, window_right=wr)
    allowed = oracle_mask(lay, bs, n_q, n_k, causal, wl, wr)
    want = oracle(q, k, v, do, allowed)
    assert got[0].shape == q.shape and got[1].shape == (b, hq, n_q)
    assert torch.equal(torch.isinf(got[1]), torch.isinf(want[1])), "LSE -inf pattern differs"
    finite = torch.isfinite(want[1])
    assert_close("lse", got[1][finite], want[1][finite])
    for name, g, w in zip(
        ("out", "dq", "dk", "dv"), got[:1] + got[2:], want[:1] + want[2:], strict=True
    ):
        assert_close(name, g, w)


# Tiles smaller than the index block, with BLOCK_M != BLOCK_N; and coarsening by 4 (G = 64, bs = 16).
SUB_TILE_CASES = [
    (64, {"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 64)}, 16, True, None, None),
    (32, {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}, 16, False, 7, 40),
    (16, None, 64, True, 50, None),
]


@pytest.mark.parametrize("bs,tiles,min_index_block,causal,wl,wr", SUB_TILE_CASES)
def test_sub_tiles_and_coarsening(bs, tiles, min_index_block, causal, wl, wr, monkeypatch):
    monkeypatch.setattr(common, "INTERPRET_SPARSE_BLOCKS", tiles)
    monkeypatch.setattr(layout, "MIN_INDEX_BLOCK", min_index_block)
    n_q, n_k = 150, 130
    lay = random_layout(2, n_q, n_k, bs, 0.7, seed=bs)
    q, k, v, do = make_inputs(1, 2, 1, n_q, n_k, 16, seed=1)
    got = run_kernel(q, k, v, do, lay, bs, causal=causal, window_left=wl, window_right=wr)
    want = oracle(q, k, v, do, oracle_mask(lay, bs, n_q, n_k, causal, wl, wr))
    for name, g, w in zip(
        ("out", "dq", "dk", "dv"), got[:1] + got[2:], want[:1] + want[2:], strict=True
    ):
        assert_close(name, g, w)


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize(
    "dtype,pattern,causal,wl",
    [(torch.bfloat16, "bigbird", True, None), (torch.float16, "random", False, 40)],
)
def test_low_precision_within_torch_error(dtype, pattern, causal, wl):
    """|kernel - ref| <= 2 |PyTorch in dtype - ref| + atol (ref in fp64, flash-attn's rule)."""
    n = 128
    lay = pattern_layout(pattern, n, n, 32, causal, heads=2)
    q, k, v, do = make_inputs(1, 2, 2, n, n, 64, dtype, seed=2)
    allowed = oracle_mask(lay, 32, n, n, causal, wl, None)
    got = run_kernel(q, k, v, do, lay, 32, causal=causal, window_left=wl)
    want, lowp = oracle(q, k, v, do, allowed), oracle(q, k, v, do, allowed, dtype)
    for i, name in ((0, "out"), (2, "dq"), (3, "dk"), (4, "dv")):
        g, w, t = got[i].double(), want[i].double(), lowp[i].double()
        assert got[i].dtype == dtype and not torch.isnan(g).any(), name
        assert (g - w).abs().max() <= 2 * (t - w).abs().max() + 1e-3, name
        assert (g - w).norm() <= 2 * (t - w).norm() + 1e-3 * math.sqrt(w.numel()), name


# ----------------------------------------------------------------------------- edge semantics


def test_empty_rows_and_unseen_keys_give_zeros():
    n, bs = 96, 32
    lay = torch.tensor([[[True, False, False], [False, False, False], [True, False, True]]])
    q, k, v, do = make_inputs(1, 2, 1, n, n, 16, seed=3)
    out, lse, dq, dk, dv = run_kernel(q, k, v, do, lay, bs)
    assert torch.all(out[:, :, 32:64] == 0) and torch.all(lse[:, :, 32:64] == float("-inf"))
    assert torch.all(dq[:, :, 32:64] == 0)
    assert torch.all(dk[:, :, 32:64] == 0) and torch.all(dv[:, :, 32:64] == 0)  # key block 1 unseen
    want = oracle(q, k, v, do, oracle_mask(lay, bs, n, n, False, None, None))
    for name, g, w in zip(
        ("out", "dq", "dk", "dv"), (out, dq, dk, dv), want[:1] + want[2:], strict=True
    ):
        assert_close(name, g, w)
    # A layout that keeps nothing: every output and gradient is exactly zero.
    none = torch.zeros(1, 3, 3, dtype=torch.bool)
    out, lse, dq, dk, dv = run_kernel(q, k, v, do, none, bs, causal=True)
    assert all(torch.all(t == 0) for t in (out, dq, dk, dv)) and torch.all(lse == float("-inf"))


def test_deterministic_is_bitwise_stable():
    lay = pattern_layout("bigbird", 113, 113, 16, True, heads=2)
    q, k, v, do = make_inputs(1, 2, 1, 113, 113, 32, seed=4)
    runs = [run_kernel(q, k, v, do, lay, 16, causal=True, deterministic=True) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_reference_matches_oracle():
    lay = random_layout(2, 40, 50, 8, 0.5, seed=5)
    q, k, v, do = make_inputs(1, 2, 1, 40, 50, 8, torch.float64)
    mask = block_sparse_mask(lay, 8, 40, 50, causal=True, window_left=9)
    assert torch.equal(mask, oracle_mask(lay, 8, 40, 50, True, 9, None))
    out = block_sparse_reference(q, k, v, lay, 8, causal=True, window_left=9)
    want = oracle(q, k, v, do, mask)
    assert torch.allclose(out, want[0], atol=1e-12)


def test_zero_length_keys_and_cpu_without_interpreter(monkeypatch):
    q, k, v, do = make_inputs(1, 2, 2, 7, 0, 16)
    out, lse, dq, dk, dv = run_kernel(q, k, v, do, torch.ones(1, 1, 0, dtype=torch.bool), 16)
    assert torch.all(out == 0) and torch.all(lse == float("-inf")) and torch.all(dq == 0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 1, 4, 16)
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET.*block_sparse_reference"):
        block_sparse_attention(x, x, x, torch.ones(1, 1, 1, dtype=torch.bool), 16)


# ----------------------------------------------------------------------------- compression


def test_csr_csc_of_a_hand_made_layout():
    """bs = 16 = G, Nq = Nk = 48, causal: the diagonal blocks are masked, blocks below are full,
    blocks above are dropped even though the layout keeps them."""
    lay = torch.tensor([[[1, 1, 0], [0, 1, 1], [1, 1, 1]]], dtype=torch.bool)  # [1, 3, 3]
    idx = layout.build_index(lay, 16, 48, 48, None, 0)
    assert (idx.index_block, idx.heads, idx.nnz, idx.n_full, idx.fine_layout) == (16, 1, 5, 2, None)
    # rows: 0 -> masked [0]; 1 -> masked [1]; 2 -> masked [2], full [0, 1]
    assert idx.row_bounds.tolist() == [[[0, 1, 1], [1, 2, 2], [2, 3, 5]]]
    assert idx.row_cols.tolist() == [0, 1, 2, 0, 1]
    # columns: 0 -> masked [0], full [2]; 1 -> masked [1], full [2]; 2 -> masked [2]
    assert idx.col_bounds.tolist() == [[[0, 1, 2], [2, 3, 4], [4, 5, 5]]]
    assert idx.col_rows.tolist() == [0, 2, 1, 2, 2]


def test_compression_ragged_window_coarsened_and_per_head():
    # Ragged ends (N = 40: the last 16-block holds 8 tokens) are never full.
    lay = torch.ones(1, 3, 3, dtype=torch.bool)
    idx = layout.build_index(lay, 16, 40, 40, None, None)
    assert idx.nnz == 9 and idx.n_full == 4  # blocks (0..1) x (0..1)
    # A window (left 20, right 0) drops far-left blocks and masks its edges.
    idx = layout.build_index(torch.ones(1, 4, 4, dtype=torch.bool), 16, 64, 64, 20, 0)
    assert idx.row_cols[: idx.nnz].tolist() == [0, 0, 1, 0, 1, 2, 1, 2, 3]  # row 3: masked 1,2,3
    assert idx.row_bounds[0, 3].tolist() == [6, 9, 9] and idx.n_full == 0
    # bs = 4 < 16: one index block covers 4 x 4 layout blocks; any -> visited, all -> full.
    fine = torch.zeros(2, 8, 8, dtype=torch.bool)
    fine[0, :4, :4] = True  # head 0: index block (0, 0) fully kept
    fine[1, 5, 2] = True  # head 1: one layout block inside index block (1, 0)
    idx = layout.build_index(fine, 4, 32, 32, None, None)
    assert idx.index_block == 16 and idx.fine_layout.dtype == torch.int8
    assert idx.row_bounds.tolist() == [[[0, 0, 1], [1, 1, 1]], [[1, 1, 1], [1, 2, 2]]]
    assert idx.row_cols[:2].tolist() == [0, 0] and idx.n_full == 1
    assert idx.col_bounds.tolist() == [[[0, 0, 1], [1, 1, 1]], [[1, 2, 2], [2, 2, 2]]]


def test_compression_is_cached_per_layout_tensor():
    layout.clear_cache()
    lay = random_layout(1, 64, 64, 16, 0.5, seed=6)
    first = compress_layout(lay, 16, 64, 64, None, 0)
    assert compress_layout(lay, 16, 64, 64, None, 0) is first
    assert compress_layout(lay, 16, 64, 64, 10, 0) is not first  # another window
    assert compress_layout(lay.clone(), 16, 64, 64, None, 0) is not first  # another tensor
    lay[0, 0, 0] = not bool(lay[0, 0, 0])  # in-place edit bumps the version
    assert compress_layout(lay, 16, 64, 64, None, 0) is not first


# ----------------------------------------------------------------------------- errors


def test_unsupported_block_and_tile_sizes_raise(monkeypatch):
    q, k, v, _ = make_inputs(1, 2, 2, 96, 96, 16)
    with pytest.raises(
        ValueError, match=r"block_size=24 is not supported.*power of two.*1, 2, 4, 8"
    ):
        block_sparse_attention(q, k, v, torch.ones(1, 4, 4, dtype=torch.bool), 24)
    monkeypatch.setattr(common, "INTERPRET_SPARSE_BLOCKS", {"fwd": (64, 64)})
    with pytest.raises(
        ValueError, match=r"BLOCK_M=64 .*block_size=32.*divide the index block G=32"
    ):
        block_sparse_attention(q, k, v, torch.ones(1, 3, 3, dtype=torch.bool), 32)


@pytest.mark.parametrize(
    "lay,match",
    [
        (
            torch.ones(1, 3, 4, dtype=torch.bool),
            r"shape \(1, 3, 4\) but Nq=96, Nk=96 .* \[H or 1, 3, 3\]",
        ),
        (torch.ones(1, 3, 3), r"must be a bool tensor"),
        (torch.ones(3, 3, 3, dtype=torch.bool), r"3 head layouts but q has Hq=2"),
        (torch.ones(3, 3, dtype=torch.bool), r"\[H or 1, Mb, Kb\]"),
    ],
)
def test_bad_layouts_raise_value_error(lay, match):
    q, k, v, _ = make_inputs(1, 2, 2, 96, 96, 16)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, lay, 32)


# ----------------------------------------------------------------------------- the contract

# Every pattern (and explicit / per-head layouts) through attention(..., impl="triton"),
# against tests/oracle.py (the contract's rules written pair by pair).
CONTRACT_CASES = [
    (dict(pattern="local", block_size=16, causal=True, window=20), (1, 2, 1, 100, 100, 16)),
    (dict(pattern="strided", block_size=16, stride=3), (1, 4, 1, 113, 113, 32)),
    (dict(pattern="longformer", block_size=32, window=(40, 40)), (1, 2, 2, 150, 150, 16)),
    (dict(pattern="bigbird", block_size=4, causal=True, heads=2), (1, 2, 1, 60, 60, 16)),
    (
        dict(pattern="random", block_size=32, density=0.3, heads=4, causal=True),
        (1, 4, 2, 63, 130, 16),
    ),
    ("explicit", (1, 2, 2, 90, 70, 40)),
]


@pytest.mark.parametrize("params,shape", CONTRACT_CASES, ids=lambda x: str(x)[:40])
def test_contract_every_pattern_through_triton(params, shape):
    b, hq, hkv, n_q, n_k, d = shape
    if params == "explicit":  # per-head explicit layout with causal rows empty at the top
        spec = AttentionSpec(
            kind="block_sparse",
            block_size=16,
            causal=True,
            layout=random_layout(hq, n_q, n_k, 16, 0.5, 7),
        )
    else:
        spec = AttentionSpec(kind="block_sparse", **params)
    assert "triton" in available_impls(spec, "cpu", requires_grad=True)
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d, seed=8)
    out = attention(q, k, v, spec, impl="triton")
    grads = torch.autograd.grad(out, (q, k, v), do)
    mask = contract_mask(spec, n_q, n_k)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = contract_oracle(q64, k64, v64, mask)
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    for name, g, w in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *want), strict=True):
        assert_close(name, g, w)
