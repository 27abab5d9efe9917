"""kind="topk_blocks" (content-selected key blocks, MoBA-style): the selection against a
loop oracle written from the documented rules, every CPU impl (reference, sdpa, flex forward,
triton under the interpreter) against the fp64 oracle with that selection, and the FLOP count."""

import math

import pytest
import torch
from oracle import doc_ids_from_lengths, oracle_attention, token_allowed

from attnlab.attention import AttentionSpec, attention, available_impls
from attnlab.attention.selection import select_blocks


def oracle_selection(q, k, bs, top_k, causal):
    """bool [B, Hq, Mb, Kb] from the rules, one query block at a time."""
    b_, hq, n_q, _ = q.shape
    hkv, n_k = k.shape[1], k.shape[2]
    mb, kb = math.ceil(n_q / bs), math.ceil(n_k / bs)
    out = torch.zeros(b_, hq, mb, kb, dtype=torch.bool)
    for b in range(b_):
        for h in range(hq):
            kv = h // (hq // hkv)
            kbar = [k[b, kv, j * bs:(j + 1) * bs].double().mean(0) for j in range(kb)]
            for i in range(mb):
                rows = range(i * bs, min((i + 1) * bs, n_q))
                qbar = q[b, h, rows.start:rows.stop].double().mean(0)
                p_first, p_last = rows.start + n_k - n_q, rows.stop - 1 + n_k - n_q
                cand = [j for j in range(kb) if not causal or j * bs <= p_last]
                forced = {p // bs for p in range(max(p_first, 0), min(p_last, n_k - 1) + 1)} & set(cand)
                free = sorted((j for j in cand if j not in forced), key=lambda j: (-float(qbar @ kbar[j]), j))
                for j in list(forced) + free[:max(0, top_k - len(forced))]:
                    out[b, h, i, j] = True
    return out


def oracle_topk_mask(spec, q, k, doc_ids=None):
    """bool [B, Hq, Nq, Nk]: chosen blocks and the causal rule, or sinks; and documents."""
    sel = oracle_selection(q, k, spec.block_size, spec.top_k, spec.causal)
    b_, hq, n_q, _ = q.shape
    n_k, bs = k.shape[2], spec.block_size
    mask = torch.zeros(b_, hq, n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        for j in range(n_k):
            tok = token_allowed(i, j, n_q, n_k, spec.causal, None)
            sink = j < spec.sink and (not spec.causal or j <= i + n_k - n_q)
            mask[:, :, i, j] = (sel[:, :, i // bs, j // bs] & tok) | sink
    if doc_ids is not None:
        ids = doc_ids.reshape(-1, n_k)
        same = torch.stack([ids[r][torch.arange(n_q) + n_k - n_q][:, None] == ids[r][None, :] for r in range(len(ids))])
        mask = mask & same[:, None]
    return mask


def qkv(b, hq, hkv, n_q, n_k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, n_q, d, generator=g), torch.randn(b, hkv, n_k, d, generator=g),
            torch.randn(b, hkv, n_k, d, generator=g))


# (B, Hq, Hkv, Nq, Nk, D, block_size, top_k, causal)
SELECTION_CASES = [
    (2, 4, 2, 70, 70, 16, 16, 2, True),  # N not a multiple of the block, GQA
    (1, 2, 1, 40, 90, 8, 16, 3, True),  # Nq < Nk: diagonal blocks shifted by the alignment
    (1, 2, 2, 90, 40, 8, 16, 2, True),  # Nq > Nk: first query blocks have no candidates
    (1, 2, 2, 64, 64, 8, 16, 9, True),  # top_k >= candidates: everything causal
    (1, 3, 1, 50, 50, 8, 8, 1, True),  # top_k = 1: the diagonal only
    (2, 2, 2, 48, 60, 8, 16, 2, False),  # non-causal: every block a candidate
]


@pytest.mark.parametrize("case", SELECTION_CASES, ids=lambda c: "-".join(map(str, c)))
def test_selection_follows_the_rules(case):
    b, hq, hkv, n_q, n_k, d, bs, top_k, causal = case
    q, k, _ = qkv(b, hq, hkv, n_q, n_k, d)
    spec = AttentionSpec(kind="topk_blocks", block_size=bs, top_k=top_k, causal=causal)
    assert torch.equal(select_blocks(spec, q, k), oracle_selection(q, k, bs, top_k, causal))


def test_ties_go_to_the_lower_block():
    """Identical key blocks score the same: the earliest wins."""
    q = torch.ones(1, 1, 64, 4)
    k = torch.ones(1, 1, 64, 4)
    spec = AttentionSpec(kind="topk_blocks", block_size=16, top_k=2, causal=True)
    chosen = select_blocks(spec, q, k)[0, 0]
    assert chosen[3].tolist() == [True, False, False, True]  # diagonal + block 0, not 1 or 2


SPECS = {
    "causal": dict(block_size=16, top_k=2, causal=True),
    "sinks": dict(block_size=16, top_k=2, causal=True, sink=5),
    "small_blocks": dict(block_size=8, top_k=3, causal=True),
    "bidir_cap": dict(block_size=16, top_k=2, softcap=2.0),
}


@pytest.mark.parametrize("shape", [(2, 4, 2, 70, 70, 16), (1, 2, 1, 40, 90, 8), (1, 2, 2, 90, 40, 8)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(SPECS))
def test_every_cpu_impl_matches_the_oracle(name, shape):
    spec = AttentionSpec(kind="topk_blocks", **SPECS[name])
    q, k, v = qkv(*shape)
    mask = oracle_topk_mask(spec, q, k)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = oracle_attention(q64, k64, v64, mask, softcap=spec.softcap)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref.backward(dout)
    grad_impls = available_impls(spec, "cpu", requires_grad=True)
    assert {"reference", "triton"} <= set(grad_impls)
    for impl in available_impls(spec, "cpu"):
        grad = impl in grad_impls
        qi, ki, vi = (t.clone().requires_grad_(grad) for t in (q, k, v))
        with torch.set_grad_enabled(grad):
            out = attention(qi, ki, vi, spec, impl=impl)
        assert (out.double() - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item()), impl
        if grad:
            out.backward(dout.float())
            for name_, got, want in (("dq", qi.grad, q64.grad), ("dk", ki.grad, k64.grad), ("dv", vi.grad, v64.grad)):
                assert (got.double() - want).abs().max().item() <= 2e-4 * max(1.0, want.abs().max().item()), (impl, name_)


def test_documents_apply_inside_the_chosen_blocks():
    spec = AttentionSpec(kind="topk_blocks", block_size=16, top_k=2, causal=True, sink=2)
    q, k, v = qkv(2, 4, 2, 60, 60, 8, seed=4)
    docs = torch.stack([doc_ids_from_lengths([25, 35]), doc_ids_from_lengths([10, 20, 30])])
    ref = oracle_attention(q.double(), k.double(), v.double(), oracle_topk_mask(spec, q, k, docs))
    for impl in available_impls(spec, "cpu"):
        with torch.no_grad():
            out = attention(q, k, v, spec, impl=impl, doc_ids=docs)
        assert (out.double() - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item()), impl


def test_flops_count_the_chosen_pairs():
    spec = AttentionSpec(kind="topk_blocks", block_size=16, top_k=3, causal=True)
    q, k, _ = qkv(2, 4, 2, 100, 100, 8)
    exact = spec.flops(batch=2, heads=4, n_q=100, n_k=100, head_dim=8, q=q, k=k)
    assert exact == 4 * 8 * int(oracle_topk_mask(spec, q, k).sum())
    # Nq == Nk, no sinks or documents: every selection allows as many pairs as the estimate
    assert spec.flops(batch=2, heads=4, n_q=100, n_k=100, head_dim=8) == exact
    q2, k2, _ = qkv(2, 4, 2, 100, 100, 8, seed=9)
    assert spec.flops(batch=2, heads=4, n_q=100, n_k=100, head_dim=8, q=q2, k=k2) == exact
    dense = AttentionSpec(kind="dense", causal=True).flops(batch=2, heads=4, n_q=100, n_k=100, head_dim=8)
    assert exact < dense


@pytest.mark.parametrize("kw, word", [
    (dict(kind="topk_blocks"), "top_k"), (dict(kind="topk_blocks", top_k=0), "top_k"),
    (dict(kind="topk_blocks", top_k=2, block_size=12), "block_size"),
    (dict(kind="topk_blocks", top_k=2, window=8), "window"), (dict(kind="dense", top_k=2), "top_k"),
])  # fmt: skip
def test_bad_specs_name_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        AttentionSpec(**kw)


def test_dense_mask_needs_the_data():
    spec = AttentionSpec(kind="topk_blocks", top_k=2, block_size=16)
    with pytest.raises(ValueError, match="q= and k="):
        spec.dense_mask(32, 32)


def test_causal_selection_pools_the_whole_query_block():
    """The documented caveat: a later row of a query block can change an earlier row's choice."""
    spec = AttentionSpec(kind="topk_blocks", block_size=16, top_k=2, causal=True)
    q, k, _ = qkv(1, 1, 1, 64, 64, 8, seed=2)
    base = select_blocks(spec, q, k)[0, 0, 3]
    target = next(j for j in range(3) if not base[j])  # a block row 48's choice does not hold
    changed = q.clone()
    changed[0, 0, 63] = 50 * k[0, 0, 16 * target:16 * (target + 1)].mean(0)  # only row 63 changes
    after = select_blocks(spec, changed, k)[0, 0, 3]
    assert after[target] and not torch.equal(after, base)


@pytest.mark.parametrize("sink", [0, 5])
def test_triton_path_never_reads_the_device(monkeypatch, sink):
    """impl='triton' from selection to the kernels' index lists, forward and backward, on the
    meta device: tensors there have shapes but no values, so any host synchronisation
    (``.item()``, ``.tolist()``, ``bool(tensor)``, ``nonzero``, boolean-mask indexing, a
    data-dependent shape) raises. The kernel launchers are replaced by stubs that record the
    block-sparse index they would get; its shapes follow from the sizes alone."""
    from attnlab.attention import triton_impl
    from attnlab.kernels.flash import interface

    seen = []

    def fake_fwd(q, k, v, scale, wl, wr, autotune=True, sparse=None, docs=None, **extras):
        seen.append(sparse)
        return torch.empty_like(q), torch.empty(q.shape[:3], device=q.device)

    def fake_bwd(dout, q, k, v, out, lse, dlse, scale, wl, wr, autotune=True, sparse=None, docs=None, **extras):
        seen.append(sparse)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    monkeypatch.setattr(interface, "flash_fwd", fake_fwd)
    monkeypatch.setattr(interface, "flash_bwd", fake_bwd)
    b, hq, hkv, n, d, bs, top_k = 2, 4, 2, 200, 16, 16, 3
    spec = AttentionSpec(kind="topk_blocks", block_size=bs, top_k=top_k, causal=True, sink=sink)
    q = torch.empty(b, hq, n, d, device="meta", requires_grad=True)
    k, v = (torch.empty(b, hkv, n, d, device="meta", requires_grad=True) for _ in range(2))
    out = triton_impl.triton_attention(q, k, v, spec, scale=0.25)
    out.sum().backward()
    assert out.shape == q.shape and k.grad.shape == k.shape
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0].nnz is None
    mi = ki = math.ceil(n / bs)
    row_len = top_k + math.ceil(sink / bs)  # top_k + sink blocks, G = bs
    idx = seen[0]
    assert [tuple(t.shape) for t in (idx.row_bounds, idx.row_cols, idx.col_bounds, idx.col_rows)] == [
        (b * hq, mi, 3), (b * hq * mi * row_len,), (b * hq, ki, 3), (b * hq * ki * mi,)]  # fmt: skip
    alone = triton_impl.topk_selection_index(spec, q, k)  # what the benchmark times as the selection
    assert [t.shape for t in (alone.row_bounds, alone.row_cols, alone.col_bounds, alone.col_rows)] == [
        t.shape for t in (idx.row_bounds, idx.row_cols, idx.col_bounds, idx.col_rows)]  # fmt: skip
