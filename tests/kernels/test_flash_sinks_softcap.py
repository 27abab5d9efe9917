"""Attention sinks and soft-capping in kernels/flash (Triton interpreter on CPU): forward, LSE
and every gradient against an fp64 oracle written from the documented rules (loops, not the
package's masks), on windows, causal / non-causal, Nq != Nk, GQA, block-sparse layouts and
documents, with NaN-poisoned outputs (tests/kernels/conftest.py).

Legend: B batch, Hq / Hkv query / key-value heads, Nq / Nk lengths, D head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import (
    block_sparse_attention,
    block_sparse_reference,
    common,
    flash_attention,
    flash_attention_reference,
)
from attnlab.kernels.flash.layout import build_index
from kernel_testing import DEVICE, KERNEL_MARKS
from oracle import doc_ids_from_lengths

pytestmark = KERNEL_MARKS


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    """32-token tiles: several key blocks per row, so the sink run, the window's edge and
    full runs all occur at small N."""
    monkeypatch.setattr(common, "INTERPRET_BLOCKS", {"fwd": (32, 32), "dkdv": (32, 32), "dq": (32, 32)})


def oracle_allowed(n_q, n_k, *, causal, wl=None, wr=None, sink=0, layout=None, bs=None, docs=None):
    """bool [Nq, Nk] from the rules: (window and causal and layout) or (j < sink and causal);
    and same document."""
    allowed = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        p = i + n_k - n_q
        for j in range(n_k):
            causal_ok = not causal or j <= p
            rule = causal_ok and (wl is None or j >= p - wl) and (wr is None or j <= p + wr)
            if layout is not None:
                rule = rule and bool(layout[0, i // bs, j // bs])
            ok = rule or (j < sink and causal_ok)
            if docs is not None:
                ok = ok and docs[p] == docs[j]
            allowed[i, j] = ok
    return allowed


def oracle(q, k, v, do, allowed, softcap=None, dlse=None):
    """fp64 masked softmax with optional soft-cap; returns out, lse, dq, dk, dv."""
    group = q.shape[1] // k.shape[1]
    qq, kk, vv = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = qq @ kk.repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    has_key = allowed.any(-1)  # [Nq]
    s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key[:, None], 0.0)
    out = torch.softmax(s, -1) * has_key[:, None] @ vv.repeat_interleave(group, 1)
    lse = torch.where(has_key, torch.logsumexp(s, -1), torch.tensor(float("-inf"), dtype=s.dtype))
    loss = (out * do.double()).sum()
    if dlse is not None:
        loss = loss + (torch.where(has_key, lse, 0.0) * dlse.double()).sum()
    return (out, lse, *torch.autograd.grad(loss, (qq, kk, vv)))


def inputs(b, hq, hkv, n_q, n_k, d, seed=0, scale_q=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, hq, n_q, d, generator=gen) * scale_q).to(DEVICE).requires_grad_()
    k = torch.randn(b, hkv, n_k, d, generator=gen).to(DEVICE).requires_grad_()
    v = torch.randn(b, hkv, n_k, d, generator=gen).to(DEVICE).requires_grad_()
    do = torch.randn(b, hq, n_q, d, generator=gen).to(DEVICE)
    return q, k, v, do


def compare(got, want, tol=2e-4):
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        assert not torch.isnan(g).any(), f"{name}: NaN"
        g, w = g.double().cpu(), w.double().cpu()
        finite = torch.isfinite(w)
        assert torch.equal(torch.isfinite(g), finite), f"{name}: -inf pattern differs"
        err = (g[finite] - w[finite]).abs().max().item() if finite.any() else 0.0
        assert err <= tol * max(1.0, w[finite].abs().max().item()), f"{name}: max|diff| {err:.3e}"


def run(fn, q, k, v, do, dlse=None, **kw):
    out, lse = fn(q, k, v, return_lse=True, **kw)
    loss = (out * do).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0) * dlse).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


# (Hq, Hkv, Nq, Nk, D, causal, window_left, window_right, sink, softcap)
CASES = [
    (2, 1, 160, 160, 24, True, 31, None, 5, None),  # Mistral window + 5 sinks: sink run below lo
    (2, 2, 160, 160, 16, True, 31, None, 40, None),  # sinks span two tiles, overlap the band
    (4, 2, 100, 150, 16, False, 20, 10, 40, None),  # two-sided window, Nq < Nk, non-causal sinks
    (2, 2, 150, 100, 16, True, 10, None, 3, None),  # Nq > Nk: top rows empty, sinks stay causal
    (2, 2, 96, 96, 16, True, None, None, 0, 5.0),  # causal + soft-cap
    (2, 1, 130, 130, 40, True, 40, None, 4, 2.0),  # window + sinks + soft-cap, GQA
    (2, 2, 70, 90, 16, False, None, None, 0, 1.0),  # dense non-causal, tight cap
    (2, 2, 160, 160, 16, True, 0, None, 100, None),  # window of 1 + 100 sinks (> one tile)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[2]}x{c[3]}-c{int(c[5])}-w{c[6]},{c[7]}-s{c[8]}-cap{c[9]}")
def test_flash_sinks_and_softcap_match_the_oracle(case):
    hq, hkv, n_q, n_k, d, causal, wl, wr, sink, cap = case
    q, k, v, do = inputs(1, hq, hkv, n_q, n_k, d, scale_q=3.0 if cap else 1.0)
    allowed = oracle_allowed(n_q, n_k, causal=causal, wl=wl, wr=wr, sink=sink)
    kw = dict(causal=causal, window_left=wl, window_right=wr, sink=sink, softcap=cap)
    compare(run(flash_attention, q, k, v, do, **kw), oracle(q, k, v, do, allowed, cap))
    compare(run(flash_attention_reference, q, k, v, do, **kw), oracle(q, k, v, do, allowed, cap), 1e-5)


def test_softcap_gradient_through_the_lse():
    """d LSE flows through the cap: dlse gives the same gradients as the oracle."""
    q, k, v, do = inputs(1, 2, 2, 64, 80, 16, seed=3, scale_q=3.0)
    dlse = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    allowed = oracle_allowed(64, 80, causal=True, wl=20, sink=6)
    kw = dict(causal=True, window_left=20, sink=6, softcap=3.0)
    compare(run(flash_attention, q, k, v, do, dlse, **kw), oracle(q, k, v, do, allowed, 3.0, dlse))


def test_softcap_changes_the_result():
    """The cap is applied (a test of the comparison itself): capped != uncapped at large scores."""
    q, k, v, _ = inputs(1, 2, 2, 64, 64, 16, scale_q=4.0)
    assert not torch.allclose(flash_attention(q, k, v, softcap=1.0), flash_attention(q, k, v), atol=1e-3)


@pytest.mark.parametrize("block_size, sink", [(32, 40), (32, 64), (8, 5), (64, 3)])
def test_block_sparse_sinks_match_the_oracle(block_size, sink):
    """Sinks are visible whatever the layout: sink blocks off the layout are visited, and a
    partly-sink block opens only its sink keys (exact layout bits in masked tiles)."""
    n = 192
    mb = -(-n // block_size)
    gen = torch.Generator().manual_seed(7)
    layout = (torch.rand(1, mb, mb, generator=gen) < 0.3) | torch.eye(mb, dtype=torch.bool)[None]
    layout[0, :, 0] = False  # the first key block is not in the layout: only sinks open it
    q, k, v, do = inputs(1, 2, 1, n, n, 16, seed=5)
    allowed = oracle_allowed(n, n, causal=True, sink=sink, layout=layout, bs=block_size)
    got = run(block_sparse_attention, q, k, v, do, layout=layout.to(DEVICE), block_size=block_size,
              causal=True, sink=sink)  # fmt: skip
    compare(got, oracle(q, k, v, do, allowed))
    ref = run(block_sparse_reference, q, k, v, do, layout=layout, block_size=block_size, causal=True, sink=sink)
    compare(ref, oracle(q, k, v, do, allowed), 1e-5)


def test_block_sparse_index_visits_sink_blocks_only_where_needed():
    """The compressed layout gains the sink columns (causal: only at or after them) and marks
    whole sink blocks full; a sink that is a multiple of the index block needs no in-tile layout."""
    layout = torch.eye(4, dtype=torch.bool)[None]
    index = build_index(layout, 32, 128, 128, None, 0, sink=32, sink_causal=True)
    rows = [index.row_cols[s:e].tolist() for s, _, e in index.row_bounds[0].tolist()]
    assert rows == [[0], [1, 0], [2, 0], [3, 0]]  # masked diagonal first, then the full sink block
    assert index.fine_layout is None
    assert build_index(layout, 32, 128, 128, None, 0, sink=20, sink_causal=True).fine_layout is not None


def test_sinks_with_documents():
    """Documents still apply: sink keys outside the query's document stay masked."""
    n = 128
    docs = doc_ids_from_lengths([50, 78])
    q, k, v, do = inputs(1, 2, 2, n, n, 16, seed=11)
    allowed = oracle_allowed(n, n, causal=True, wl=15, sink=8, docs=docs.tolist())
    got = run(flash_attention, q, k, v, do, causal=True, window_left=15, sink=8, doc_ids=docs.to(DEVICE))
    compare(got, oracle(q, k, v, do, allowed))


@pytest.mark.parametrize("kw, field", [
    (dict(sink=-1), "sink"), (dict(sink=2.0), "sink"), (dict(sink=True), "sink"),
    (dict(softcap=0.0), "softcap"), (dict(softcap=float("nan")), "softcap"), (dict(softcap="5"), "softcap"),
])  # fmt: skip
def test_bad_sink_and_softcap_are_refused(kw, field):
    q, k, v, _ = inputs(1, 1, 1, 8, 8, 16)
    for fn in (flash_attention, flash_attention_reference):
        with pytest.raises(ValueError, match=field):
            fn(q, k, v, **kw)
