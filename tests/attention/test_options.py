"""The wider contract: sinks, soft-capping, the log-sum-exp output, custom masks
(``mask_mod``), flash-attn's ``-1`` window bound and the ``bnhd`` layout, on every impl that
runs on CPU (reference, sdpa, flex forward, triton under the interpreter), against the fp64
oracle of tests/oracle.py (which evaluates ``mask_mod`` one pair at a time)."""

import pytest
import torch
from oracle import doc_ids_from_lengths, oracle_attention, oracle_mask

from attnlab.attention import (
    IMPLS,
    AttentionSpec,
    attention,
    available_impls,
    choose_impl,
    triton_impl,
)


def every_third(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx) % 3 != 1


def per_head(b, h, q_idx, kv_idx):
    return (kv_idx + h) % 2 == 0


SPECS = {
    "swa_sink": dict(kind="sliding_window", window=4, causal=True, sink=3),
    "swa_pair_sink": dict(kind="sliding_window", window=(2, 3), sink=5),  # non-causal sinks
    "dense_cap": dict(kind="dense", causal=True, softcap=1.5),
    "swa_sink_cap": dict(kind="sliding_window", window=6, causal=True, sink=2, softcap=0.8),
    "bigbird_sink": dict(kind="block_sparse", pattern="bigbird", block_size=16, causal=True, sink=20),
    "custom": dict(kind="custom", causal=True, mask_mod=every_third),
    "custom_heads_sink": dict(kind="custom", mask_mod=per_head, heads=4, sink=2),
    "custom_window_cap": dict(kind="custom", window=(5, 1), mask_mod=every_third, softcap=2.0),
    "unbounded_left": dict(kind="sliding_window", window=(-1, 2)),
}
# (B, Hq, Hkv, Nq, Nk, D): GQA, Nq != Nk both ways (empty rows when Nq > Nk and causal).
SHAPES = [(2, 4, 2, 37, 37, 16), (1, 4, 1, 29, 45, 8), (1, 4, 4, 45, 29, 24)]


def qkv(shape, seed=0):
    b, hq, hkv, n_q, n_k, d = shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, n_q, d, generator=g) * 2, torch.randn(b, hkv, n_k, d, generator=g),
            torch.randn(b, hkv, n_k, d, generator=g))


def impls_for(spec, grad):
    names = available_impls(spec, "cpu", requires_grad=grad)
    assert "reference" in names
    return names


def check(impl, spec, shape, grad, doc_ids=None, tol=2e-5):
    q, k, v = qkv(shape)
    mask = oracle_mask(spec, shape[3], shape[4], doc_ids)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = oracle_attention(q64, k64, v64, mask, softcap=spec.softcap, return_lse=True)
    qi, ki, vi = (t.clone().requires_grad_(grad) for t in (q, k, v))
    kw = dict(doc_ids=doc_ids) if doc_ids is not None else {}
    lse_ok = IMPLS[impl].lse
    if lse_ok:
        out, lse = attention(qi, ki, vi, spec, impl=impl, return_lse=True, **kw)
        finite = torch.isfinite(ref_lse)
        assert lse.shape == ref_lse.shape and torch.equal(torch.isfinite(lse), finite), "LSE -inf pattern"
        assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() <= 10 * tol
    else:
        out = attention(qi, ki, vi, spec, impl=impl, **kw)
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"{impl} out err {err}"
    if not grad:
        return
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref.backward(dout)
    out.backward(dout.float())
    for name, got, want in (("dq", qi.grad, q64.grad), ("dk", ki.grad, k64.grad), ("dv", vi.grad, v64.grad)):
        gerr = (got.double() - want).abs().max().item()
        assert gerr <= 10 * tol * max(1.0, want.abs().max().item()), f"{impl} {name} err {gerr}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(SPECS))
def test_every_cpu_impl_matches_the_oracle(name, shape):
    spec = AttentionSpec(**SPECS[name])
    for impl in impls_for(spec, grad=True):
        if impl == "triton" and shape == SHAPES[2]:
            continue  # the interpreter is slow; Nq > Nk for the kernels: tests/kernels/test_flash_sinks_softcap.py
        check(impl, spec, shape, grad=True)
    with torch.no_grad():  # flex: CPU forward only
        for impl in set(impls_for(spec, grad=False)) - set(impls_for(spec, grad=True)):
            check(impl, spec, shape, grad=False)


def test_triton_serves_every_option_under_the_interpreter():
    """The test above includes triton (the interpreter is on in tests); make sure it ran."""
    for name in SPECS:
        assert "triton" in available_impls(AttentionSpec(**SPECS[name]), "cpu", requires_grad=True), name


@pytest.mark.parametrize("name", ["swa_sink", "custom", "swa_sink_cap"])
def test_options_with_documents(name):
    spec = AttentionSpec(**SPECS[name])
    docs = torch.stack([doc_ids_from_lengths([10, 27]), doc_ids_from_lengths([20, 5, 12])])
    for impl in impls_for(spec, grad=True):
        check(impl, spec, (2, 4, 2, 37, 37, 16), grad=True, doc_ids=docs)


def test_sink_pairs_count_once_in_flops_and_the_mask():
    spec = AttentionSpec(kind="sliding_window", window=4, causal=True, sink=3)
    mask = spec.dense_mask(20, 20)
    assert torch.equal(mask, oracle_mask(spec, 20, 20))
    # rows 0-6: the window covers the sinks; later rows: 4 window keys + 3 sinks
    assert int(mask.sum()) == sum(min(i + 1, 4) + max(0, min(3, i + 1 - 4)) for i in range(20))
    assert spec.flops(batch=1, heads=1, n_q=20, n_k=20, head_dim=8) == 4 * 8 * int(mask.sum())


def test_softcap_needs_an_impl_that_caps():
    spec = AttentionSpec(kind="dense", causal=True, softcap=5.0)
    q, k, v = qkv((1, 2, 2, 8, 8, 8))
    with pytest.raises(NotImplementedError, match="soft-capping.*Impls that can: reference"):
        attention(q, k, v, spec, impl="sdpa")
    assert choose_impl(spec, "cpu") == "reference"  # auto falls back instead of failing


def test_lse_needs_an_impl_that_returns_it():
    spec = AttentionSpec(kind="dense", causal=True)
    q, k, v = qkv((1, 2, 2, 8, 8, 8))
    with pytest.raises(NotImplementedError, match="log-sum-exp.*reference"):
        attention(q, k, v, spec, impl="sdpa", return_lse=True)
    out, lse = attention(q, k, v, spec, return_lse=True)  # auto picks an impl that can
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 8)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_gradient_flows_through_the_lse(impl):
    """d(lse)/d(scores) = softmax: distillation-style losses on the LSE train."""
    spec = AttentionSpec(kind="sliding_window", window=5, causal=True, sink=2, softcap=2.0)
    shape = (1, 2, 1, 24, 24, 16)
    q, k, v = qkv(shape)
    mask = oracle_mask(spec, 24, 24)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    _, ref_lse = oracle_attention(q64, k64, v64, mask, softcap=2.0, return_lse=True)
    ref_lse.sum().backward()
    qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
    _, lse = attention(qi, ki, vi, spec, impl=impl, return_lse=True)
    lse.sum().backward()
    for got, want in ((qi.grad, q64.grad), (ki.grad, k64.grad)):
        assert (got.double() - want).abs().max().item() <= 1e-4


def test_bnhd_layout_is_the_transposed_call():
    spec = AttentionSpec(kind="sliding_window", window=6, causal=True, sink=1)
    q, k, v = qkv((2, 4, 2, 19, 19, 8))
    want, want_lse = attention(q, k, v, spec, impl="reference", return_lse=True)
    got, lse = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec, impl="reference",
                         layout="bnhd", return_lse=True)  # fmt: skip
    assert got.shape == (2, 19, 4, 8) and torch.equal(got, want.transpose(1, 2)) and torch.equal(lse, want_lse)
    with pytest.raises(ValueError, match="layout='BNHD'.*bnhd"):
        attention(q, k, v, spec, layout="BNHD")
    with pytest.raises(ValueError, match="return_lse"):
        attention(q, k, v, spec, return_lse="yes")


def test_unbounded_window_side_equals_a_window_wider_than_the_sequence():
    wide = AttentionSpec(kind="sliding_window", window=(100, 2))
    assert torch.equal(AttentionSpec(kind="sliding_window", window=(-1, 2)).dense_mask(30, 40), wide.dense_mask(30, 40))
    assert AttentionSpec(kind="sliding_window", window=(-1, -1)).dense_mask(5, 5).all()


def test_triton_declines_a_custom_mask_too_large_for_its_exact_mask(monkeypatch):
    monkeypatch.setattr(triton_impl, "MAX_CUSTOM_MASK_ELEMENTS", 100)
    triton_impl.custom_layout.cache_clear()
    spec = AttentionSpec(kind="custom", mask_mod=every_third)
    q, k, v = qkv((1, 1, 1, 16, 16, 16))
    with pytest.raises(NotImplementedError, match="kind='custom'.*flex"):
        attention(q, k, v, spec, impl="triton")
    triton_impl.custom_layout.cache_clear()


def test_custom_mask_sees_raw_indices_and_heads():
    """mask_mod gets raw row indices (not aligned positions) and, with heads=H, each head."""
    spec = AttentionSpec(kind="custom", mask_mod=lambda b, h, q, k: (q == 0) | (k == h), heads=2)
    mask = spec.dense_mask(3, 5)  # Nq != Nk: q_idx is the row 0..2
    assert mask.shape == (2, 3, 5)
    assert mask[:, 0].all() and mask[0, 1:, 0].all() and not mask[0, 1:, 1:].any() and mask[1, 1:, 1].all()
