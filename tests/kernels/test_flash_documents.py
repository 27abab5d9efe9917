"""CPU tests of document masks (packed sequences) in kernels/flash (Triton interpreter):
forward, LSE and every gradient against an fp64 oracle whose mask is written here pair by
pair, with small tiles so document boundaries fall inside, on and across tile edges; the
clipping itself (keys of other documents are never read); the per-token bounds; errors.
Outputs are NaN-poisoned.

Legend: B batch, Hq / Hkv heads, Nq / Nk lengths, D head dim, bs layout block.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import (
    block_sparse_attention,
    common,
    document_bounds,
    document_mask,
    flash_attention,
    flash_attention_reference,
)
from kernel_testing import DEVICE, KERNEL_MARKS
from oracle import cycled, doc_ids_from_lengths

pytestmark = KERNEL_MARKS



def oracle_allowed(ids, n_q, n_k, causal, wl, wr, layout=None, bs=None):
    """bool [B, H, Nq, Nk], pair by pair: window / causal, layout block, same document."""
    rows = ids.tolist()
    heads = 1 if layout is None else layout.shape[0]
    allowed = torch.zeros(len(rows), heads, n_q, n_k, dtype=torch.bool)
    for b, row in enumerate(rows):
        for h in range(heads):
            for i in range(n_q):
                p = i + n_k - n_q
                for j in range(n_k):
                    ok = row[p] == row[j] and not (causal and j > p)
                    ok = ok and (wl is None or j >= p - wl) and (wr is None or j <= p + wr)
                    ok = ok and (layout is None or bool(layout[h, i // bs, j // bs]))
                    allowed[b, h, i, j] = ok
    return allowed


def oracle(q, k, v, do, allowed):
    """fp64 masked softmax; empty rows give 0 and LSE -inf. Returns out, lse, dq, dk, dv."""
    group = q.shape[1] // k.shape[1]
    qq, kk, vv = (t.detach().double().requires_grad_() for t in (q, k, v))
    has_key = allowed.any(-1)  # [B, H, Nq]
    s = (qq @ kk.repeat_interleave(group, 1).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = torch.where(has_key[..., None], s.masked_fill(~allowed, float("-inf")), 0.0)
    out = (torch.softmax(s, -1) * has_key[..., None]) @ vv.repeat_interleave(group, 1)
    lse = torch.where(has_key, torch.logsumexp(s, -1), float("-inf"))
    return out.detach(), lse.detach(), *torch.autograd.grad(out, (qq, kk, vv), do.double())


def assert_close(name, got, want, rtol=1e-5, atol=1e-6):
    assert not torch.isnan(got).any(), f"{name}: NaN in kernel output"
    err = (got.double() - want).abs().max().item()
    assert err <= 10 * rtol * max(want.abs().max().item(), 1.0) + 10 * atol, f"{name}: {err:.3e}"


def make_inputs(b, hq, hkv, n_q, n_k, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(b, h, n, d, generator=gen).to(DEVICE).requires_grad_()
        for h, n in ((hq, n_q), (hkv, n_k), (hkv, n_k))
    )
    return q, k, v, torch.randn(b, hq, n_q, d, generator=gen).to(DEVICE)


def ids_for(rows, n_k, batch):
    return torch.stack([doc_ids_from_lengths(cycled(rows[b % len(rows)], n_k)) for b in range(batch)])


def compare(got, want, lse_too=True):
    out, lse = got[:2]
    assert torch.equal(torch.isinf(lse), torch.isinf(want[1])), "LSE -inf pattern differs"
    finite = torch.isfinite(want[1])
    if lse_too:
        assert_close("lse", lse[finite], want[1][finite])
    for name, g, w in zip(("out", "dq", "dk", "dv"), (out, *got[2:]), (want[0], *want[2:]), strict=True):
        assert_close(name, g, w)


# (B, Hq, Hkv, Nq, Nk, D, causal, wl, wr, document lengths per row, {kernel: tiles})
CASES = [
    (2, 2, 1, 113, 113, 16, True, None, None, [(1, 5, 30), (16, 32, 7)],
     {"fwd": (16, 32), "dkdv": (16, 32), "dq": (32, 16)}),
    (1, 2, 2, 100, 100, 40, False, None, None, [(32, 16, 1, 15, 36)],
     {"fwd": (32, 16), "dkdv": (32, 16), "dq": (16, 32)}),
    (2, 4, 2, 90, 130, 16, True, 20, None, [(64, 3, 63), (40,)],  # Nq < Nk, GQA
     {"fwd": (16, 16), "dkdv": (16, 32), "dq": (32, 16)}),
    (1, 2, 1, 97, 97, 16, False, 9, 4, [(5, 30)], {"fwd": (32, 16), "dkdv": (32, 16), "dq": (16, 16)}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[3]}x{c[4]}-c{int(c[6])}-w{c[7]},{c[8]}")
def test_flash_with_documents_matches_oracle(case, monkeypatch):
    b, hq, hkv, n_q, n_k, d, causal, wl, wr, doc_rows, tiles = case
    monkeypatch.setattr(common, "INTERPRET_BLOCKS", dict(tiles))
    ids = ids_for(doc_rows, n_k, b)
    q, k, v, do = make_inputs(b, hq, hkv, n_q, n_k, d)
    out, lse = flash_attention(q, k, v, causal=causal, window_left=wl, window_right=wr,
                               doc_ids=ids.to(DEVICE, torch.int32), return_lse=True)  # fmt: skip
    got = (out, lse, *torch.autograd.grad(out, (q, k, v), do))
    compare(got, oracle(q, k, v, do, oracle_allowed(ids, n_q, n_k, causal, wl, wr)))
    ref = flash_attention_reference(q, k, v, causal=causal, window_left=wl, window_right=wr, doc_ids=ids)
    assert_close("package reference", ref.detach(), got[0].double())


@pytest.mark.parametrize("bs,tiles", [(16, None), (64, {"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 16)})])
def test_block_sparse_with_documents_matches_oracle(bs, tiles, monkeypatch):
    monkeypatch.setattr(common, "INTERPRET_SPARSE_BLOCKS", tiles)
    b, hq, hkv, n = 2, 2, 1, 130
    gen = torch.Generator().manual_seed(bs)
    layout = torch.rand(hq, -(-n // bs), -(-n // bs), generator=gen) < 0.6  # per head
    ids = ids_for([(1, 5, 30, 64), (70, 60)], n, b)
    q, k, v, do = make_inputs(b, hq, hkv, n, n, 16, seed=1)
    out, lse = block_sparse_attention(q, k, v, layout, bs, causal=True, doc_ids=ids.to(DEVICE), return_lse=True)
    got = (out, lse, *torch.autograd.grad(out, (q, k, v), do))
    compare(got, oracle(q, k, v, do, oracle_allowed(ids, n, n, True, None, None, layout, bs)))


@pytest.mark.parametrize("sparse", [False, True])
def test_keys_of_other_documents_are_never_read(sparse, monkeypatch):
    """Nq < Nk: every query lies in the last document, so key tiles 0..63 (another document)
    must be skipped; NaN there would leak into the outputs (0 * NaN) if any were read."""
    monkeypatch.setattr(common, "INTERPRET_BLOCKS", {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)})
    n_q, n_k = 48, 128
    ids = torch.tensor([0] * 64 + [1] * 64)
    q, k, v, do = make_inputs(1, 2, 1, n_q, n_k, 16, seed=2)
    want = oracle(q, k, v, do, oracle_allowed(ids[None], n_q, n_k, False, None, None))
    k2, v2 = (t.detach().clone() for t in (k, v))
    k2[:, :, :64], v2[:, :, :64] = float("nan"), float("nan")
    k2.requires_grad_(), v2.requires_grad_()
    if sparse:
        layout = torch.ones(1, 3, 8, dtype=torch.bool)
        out, lse = block_sparse_attention(q, k2, v2, layout, 16, doc_ids=ids.to(DEVICE), return_lse=True)
    else:
        out, lse = flash_attention(q, k2, v2, doc_ids=ids.to(DEVICE), return_lse=True)
    got = (out, lse, *torch.autograd.grad(out, (q, k2, v2), do))
    compare(got, want)
    assert (got[3][:, :, :64] == 0).all() and (got[4][:, :, :64] == 0).all()


def test_rows_without_keys_and_lse():
    """A layout keeping only key block 0 for query block 1: rows 16..31 of a document that
    starts at 20 see nothing: zeros, LSE -inf, zero gradients."""
    layout = torch.tensor([[[1, 0, 0], [1, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    ids = torch.tensor([0] * 20 + [1] * 28)
    q, k, v, do = make_inputs(1, 2, 2, 48, 48, 16, seed=3)
    out, lse = block_sparse_attention(q, k, v, layout, 16, doc_ids=ids.to(DEVICE), return_lse=True)
    got = (out, lse, *torch.autograd.grad(out, (q, k, v), do))
    want = oracle(q, k, v, do, oracle_allowed(ids[None], 48, 48, False, None, None, layout, 16))
    compare(got, want)
    assert (lse[:, :, 20:32] == float("-inf")).all() and (out[:, :, 20:32] == 0).all()
    assert (got[2][:, :, 20:32] == 0).all()


def test_bounds_and_mask_by_hand():
    ids = torch.tensor([[3, 3, 5, 7, 7, 7], [0, 0, 0, 0, 0, 0]])
    bounds = document_bounds(ids)
    assert bounds.start.dtype == bounds.end.dtype == torch.int32
    assert bounds.start.tolist() == [[0, 0, 2, 3, 3, 3], [0] * 6]
    assert bounds.end.tolist() == [[2, 2, 3, 6, 6, 6], [6] * 6]
    mask = document_mask(ids, 2, 6)  # queries at positions 4, 5
    assert mask.shape == (2, 2, 6) and mask[0, 0].tolist() == [False] * 3 + [True] * 3 and mask[1].all()


def test_precomputed_bounds_give_the_same_result():
    ids = ids_for([(7, 20, 36)], 63, 1).to(DEVICE)
    q, k, v, _ = make_inputs(1, 2, 2, 63, 63, 16, seed=4)
    a = flash_attention(q, k, v, causal=True, doc_ids=ids)
    b = flash_attention(q, k, v, causal=True, doc_ids=document_bounds(ids))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "doc_ids,n_q,match",
    [
        (torch.zeros(16), 16, r"doc_ids.dtype is torch.float32; allowed: torch.int32, torch.int64"),
        (torch.zeros(3, 16, dtype=torch.int64), 16, r"shape \(3, 16\); allowed: \[Nk\] or \[B or 1, Nk\]"),
        (torch.zeros(15, dtype=torch.int64), 16, r"Nk=16"),
        (torch.tensor([0] * 8 + [1] * 4 + [0] * 4), 16, r"non-decreasing"),
        (torch.zeros(16, dtype=torch.int64), 20, r"Nq <= Nk.*Nq=20, Nk=16"),
        ([0] * 16, 16, r"torch.Tensor, got list"),
    ],
)
def test_bad_doc_ids_raise_value_error(doc_ids, n_q, match):
    q, k, v, _ = make_inputs(2, 2, 2, n_q, 16, 16)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, doc_ids=doc_ids)
