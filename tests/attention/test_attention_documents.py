"""Document masking (packed sequences) through the contract: the spec's ground truth against
the independent oracle, every impl x kind with per-batch document ids (forward and
dq/dk/dv), empty rows, cu_seqlens, FLOPs and the validation errors."""

import pytest
import torch
from attnlab.kernels.flash import common
from oracle import cycled, doc_ids_from_lengths, oracle_attention, oracle_mask

from attnlab.attention import AttentionSpec, attention

SPECS = {
    "dense": dict(kind="dense"),
    "causal": dict(kind="dense", causal=True),
    "swa": dict(kind="sliding_window", window=9, causal=True),
    "swa_pair": dict(kind="sliding_window", window=(6, 3)),
    "bigbird": dict(kind="block_sparse", pattern="bigbird", block_size=16, causal=True),
    "random_heads": dict(kind="block_sparse", pattern="random", block_size=32, density=0.5, heads=4),
}
# Document lengths per batch row (cycled to fill N): singletons, short and long documents,
# boundaries on the 64-token interpreter tile edge (64, 64) and off it.
DOCS = {
    "mixed": [(1, 5, 30), (64, 13, 2)],
    "tile_edge": [(64,), (3, 61, 7)],
}
# (B, Hq, Hkv, Nq, Nk, D): awkward lengths, GQA / MQA, Nq < Nk.
SHAPES = [
    (2, 4, 2, 63, 63, 40),
    (2, 4, 1, 113, 113, 16),
    (1, 4, 2, 200, 200, 32),
    (2, 4, 4, 40, 113, 16),
]


def make_doc_ids(rows, n_k, batch, dtype=torch.int64):
    """[B, Nk] (one row per batch row, different per row when `rows` differ), or [Nk] for B == 1."""
    ids = torch.stack([doc_ids_from_lengths(cycled(rows[b % len(rows)], n_k), dtype) for b in range(batch)])
    return ids[0] if batch == 1 else ids


def make_qkv(b, hq, hkv, n_q, n_k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g) for h, n in ((hq, n_q), (hkv, n_k), (hkv, n_k)))


def check_docs(impl, spec, shape, doc_ids, backward=True, tol=2e-5, **doc_kw):
    """Compare `attention(..., doc_ids)` with the fp64 oracle: output, empty rows, gradients."""
    q, k, v = make_qkv(*shape)
    mask = oracle_mask(spec, shape[3], shape[4], doc_ids)  # [B or 1, H or 1, Nq, Nk]
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = oracle_attention(q64, k64, v64, mask)
    qi, ki, vi = (t.clone().requires_grad_(backward) for t in (q, k, v))
    out = attention(qi, ki, vi, spec, impl=impl, **(doc_kw or {"doc_ids": doc_ids}))
    assert out.shape == q.shape and torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"out max err {err}"
    empty = ~mask.any(-1).expand(shape[0], shape[1], -1)  # [B, Hq, Nq]
    assert (out.detach()[empty] == 0).all(), "rows with no allowed key return zeros"
    if not backward:
        return
    dout = torch.randn_like(ref)
    ref.backward(dout)
    out.backward(dout.float())
    for name, got, want in (("dq", qi.grad, q64.grad), ("dk", ki.grad, k64.grad), ("dv", vi.grad, v64.grad)):
        assert torch.isfinite(got).all(), f"{name} has NaN"
        gerr = (got.double() - want).abs().max().item()
        assert gerr <= 5 * tol * max(1.0, want.abs().max().item()), f"{name} max err {gerr}"
    assert (qi.grad[empty] == 0).all(), "empty rows get zero dq"


# ----------------------------------------------------------------- the spec's ground truth
def test_hand_written_causal_documents():
    ids = torch.tensor([0, 0, 1, 1, 1])
    m = AttentionSpec(causal=True).dense_mask(5, 5, doc_ids=ids)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert m.shape == (1, 1, 5, 5) and torch.equal(m[0, 0], expected)


def test_fewer_queries_take_the_ids_of_the_last_positions():
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    m = AttentionSpec().dense_mask(3, 6, doc_ids=ids)[0, 0]  # queries at positions 3, 4, 5
    assert torch.equal(m, torch.tensor([[0, 0, 1, 1, 1, 0]] * 2 + [[0, 0, 0, 0, 0, 1]], dtype=torch.bool))


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 17), (9, 23)])
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_dense_mask_matches_oracle_and_shape_rule(spec_name, n_q, n_k):
    spec = AttentionSpec(**SPECS[spec_name])
    ids = make_doc_ids([(1, 5, 3), (4, 4, 20)], n_k, batch=2)
    mask = spec.dense_mask(n_q, n_k, doc_ids=ids)
    assert mask.shape == (2, spec.num_heads(), n_q, n_k)
    assert torch.equal(mask, oracle_mask(spec, n_q, n_k, ids))
    shared = spec.dense_mask(n_q, n_k, doc_ids=ids[1])  # [Nk]: one row for every batch row
    assert shared.shape == (1, spec.num_heads(), n_q, n_k) and torch.equal(shared[0], mask[1])
    # one document everywhere is the spec's own mask
    one = spec.dense_mask(n_q, n_k, doc_ids=torch.zeros(n_k, dtype=torch.int32))
    assert torch.equal(one[0], spec.dense_mask(n_q, n_k))


def test_cu_seqlens_equal_doc_ids():
    spec = AttentionSpec(kind="sliding_window", window=4, causal=True)
    cu = torch.tensor([0, 1, 6, 36, 40], dtype=torch.int32)
    ids = doc_ids_from_lengths([1, 5, 30, 4])
    assert torch.equal(spec.dense_mask(40, 40, cu_seqlens=cu), spec.dense_mask(40, 40, doc_ids=ids))
    rows = [cu, torch.tensor([0, 40])]
    per_row = spec.dense_mask(40, 40, cu_seqlens=rows)
    assert per_row.shape == (2, 1, 40, 40) and torch.equal(per_row[1, 0], spec.dense_mask(40, 40)[0])


@pytest.mark.parametrize("spec_name", ["causal", "swa_pair", "random_heads"])
def test_flops_equal_pair_count(spec_name):
    spec = AttentionSpec(**SPECS[spec_name])
    n, heads, d = 70, 4, 16
    ids = make_doc_ids(DOCS["mixed"], n, batch=2)
    pairs = int(oracle_mask(spec, n, n, ids).expand(2, heads, n, n).sum())
    assert spec.flops(batch=2, heads=heads, n_q=n, n_k=n, head_dim=d, doc_ids=ids) == 4 * d * pairs
    assert spec.flops(2, heads, n, n, d, mode="fwd_bwd", doc_ids=ids) * 2 == 7 * 4 * d * pairs
    shared = spec.flops(batch=3, heads=heads, n_q=n, n_k=n, head_dim=d, doc_ids=ids[0])
    assert shared == 3 * 4 * d * int(oracle_mask(spec, n, n, ids[0]).expand(1, heads, n, n).sum())
    assert spec.allowed_pairs(n, n, doc_ids=ids).shape == (2, spec.num_heads())
    with pytest.raises(ValueError, match=r"flops\(batch=3\) does not match the 2 rows of doc_ids"):
        spec.flops(batch=3, heads=heads, n_q=n, n_k=n, head_dim=d, doc_ids=ids)


# ----------------------------------------------------------------- every impl
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_torch_impls_with_documents(impl, spec_name, shape):
    ids = make_doc_ids(DOCS["mixed"], shape[4], shape[0])
    check_docs(impl, AttentionSpec(**SPECS[spec_name]), shape, ids)


@pytest.mark.parametrize("spec_name,shape", [
    ("dense", SHAPES[0]), ("causal", SHAPES[1]), ("swa", SHAPES[2]), ("swa_pair", SHAPES[3]),
    ("bigbird", SHAPES[1]), ("random_heads", SHAPES[0]),
])  # fmt: skip
def test_flex_forward_with_documents_on_cpu(spec_name, shape):
    ids = make_doc_ids(DOCS["tile_edge"], shape[4], shape[0])
    check_docs("flex", AttentionSpec(**SPECS[spec_name]), shape, ids, backward=False)


TRITON_CASES = [
    ("dense", SHAPES[0], "mixed"),
    ("causal", SHAPES[1], "tile_edge"),
    ("causal", SHAPES[3], "mixed"),  # Nq < Nk
    ("swa", SHAPES[2], "mixed"),
    ("swa_pair", SHAPES[1], "mixed"),
    ("bigbird", SHAPES[0], "mixed"),  # 16-token tiles (slow in the interpreter): a short case
    ("random_heads", SHAPES[1], "tile_edge"),
]


@pytest.mark.parametrize("spec_name,shape,docs", TRITON_CASES)
def test_triton_with_documents(spec_name, shape, docs, monkeypatch):
    monkeypatch.setattr(common, "_POISON_OUTPUTS", True)  # an unwritten tile fails as NaN
    ids = make_doc_ids(DOCS[docs], shape[4], shape[0], dtype=torch.int32)
    check_docs("triton", AttentionSpec(**SPECS[spec_name]), shape, ids, tol=1e-4)


EMPTY_LAYOUT = torch.tensor([[[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]], dtype=torch.bool)


@pytest.mark.parametrize("impl", ["reference", "sdpa", "flex", "triton"])
def test_rows_without_keys_give_zeros(impl, monkeypatch):
    """A layout that keeps only key block 0 for query block 1: rows 16..31 whose document
    starts at or after key 16 see no key at all."""
    monkeypatch.setattr(common, "_POISON_OUTPUTS", True)
    spec = AttentionSpec(kind="block_sparse", layout=EMPTY_LAYOUT, block_size=16, causal=True)
    ids = make_doc_ids([(16, 48), (20, 44)], 64, batch=2, dtype=torch.int32)
    mask = oracle_mask(spec, 64, 64, ids)
    assert (~mask.any(-1)).sum() > 10, "the case must have empty rows"
    check_docs(impl, spec, (2, 2, 1, 64, 64, 16), ids, backward=impl != "flex", tol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_cu_seqlens_per_row_through_attention(impl):
    spec = AttentionSpec(kind="sliding_window", window=20, causal=True)
    rows = [torch.tensor([0, 1, 6, 63], dtype=torch.int32), torch.tensor([0, 63])]  # int32 and int64
    ids = torch.stack([doc_ids_from_lengths([1, 5, 57]), doc_ids_from_lengths([63])])
    check_docs(impl, spec, (2, 2, 1, 63, 63, 16), ids, tol=1e-4, cu_seqlens=rows)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(doc_ids=torch.zeros(8)), ["doc_ids.dtype=torch.float32", "int32", "int64"]),
        (dict(doc_ids=torch.zeros(2, 1, 8, dtype=torch.int64)), ["doc_ids", "(2, 1, 8)", "[B or 1, Nk]"]),
        (dict(doc_ids=torch.zeros(7, dtype=torch.int64)), ["doc_ids", "(7,)", "Nk=8"]),
        (dict(doc_ids=torch.zeros(3, 8, dtype=torch.int64)), ["doc_ids has 3 rows", "1 or B=2"]),
        (dict(doc_ids=torch.tensor([0, 0, 1, 1, 0, 2, 2, 2])), ["non-decreasing", "from 1 at position 3 to 0"]),
        (dict(doc_ids=[0, 0, 1, 1, 1, 1, 1, 1]), ["doc_ids=list", "torch.Tensor"]),
        (dict(cu_seqlens=torch.tensor([1, 4, 8])), ["cu_seqlens=[1, 4, 8]", "start at 0"]),
        (dict(cu_seqlens=torch.tensor([0, 4, 7])), ["cu_seqlens=[0, 4, 7]", "end at Nk=8"]),
        (dict(cu_seqlens=torch.tensor([0, 4, 4, 8])), ["cu_seqlens=[0, 4, 4, 8]", "strictly increasing"]),
        (dict(cu_seqlens=torch.tensor([0.0, 8.0])), ["cu_seqlens.dtype=torch.float32", "int32"]),
        (dict(cu_seqlens=torch.tensor([8])), ["cu_seqlens", "(1,)", "num_docs + 1"]),
        (dict(cu_seqlens=[torch.tensor([0, 8])] * 3), ["list of 3 tensors", "B=2"]),
        (dict(cu_seqlens=[torch.tensor([0, 8]), torch.tensor([0, 9])]), ["cu_seqlens[1]=[0, 9]", "Nk=8"]),
        (dict(doc_ids=torch.zeros(8, dtype=torch.int64), cu_seqlens=torch.tensor([0, 8])), ["not both"]),
    ],
)
def test_bad_documents_raise_value_error(kw, words):
    q, k, v = make_qkv(2, 2, 2, 8, 8, 8)
    with pytest.raises(ValueError) as err:
        attention(q, k, v, AttentionSpec(causal=True), impl="reference", **kw)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_more_queries_than_keys_with_documents_raises():
    q, _, _ = make_qkv(1, 2, 2, 9, 9, 8)
    _, k, v = make_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match=r"n_q <= n_k, got n_q=9, n_k=4"):
        attention(q, k, v, AttentionSpec(), doc_ids=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"n_q <= n_k"):
        AttentionSpec().dense_mask(9, 4, doc_ids=torch.zeros(4, dtype=torch.int64))


def test_inference_mode_and_in_place_edits():
    """Doc ids made under inference_mode (no version counter) work; an in-place edit of a
    tensor seen before is checked again (the validation cache keys on the version)."""
    q, k, v = make_qkv(1, 2, 2, 8, 8, 8)
    spec = AttentionSpec(causal=True)
    with torch.inference_mode():
        ids = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
        for impl in ("sdpa", "flex", "triton"):
            assert torch.isfinite(attention(q, k, v, spec, impl=impl, doc_ids=ids)).all()
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    attention(q, k, v, spec, impl="sdpa", doc_ids=ids)
    ids[2] = 5
    with pytest.raises(ValueError, match="non-decreasing"):
        attention(q, k, v, spec, impl="sdpa", doc_ids=ids)


def test_one_cu_seqlens_tensor_gives_one_doc_ids_tensor():
    """Layers given the same cu_seqlens share one doc-ids tensor (so the impls' block-mask caches
    hit); an in-place edit is seen and checked again."""
    from attnlab.attention.documents import resolve_documents

    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    first = resolve_documents(cu_seqlens=cu, n_q=8, n_k=8)
    assert resolve_documents(cu_seqlens=cu, n_q=8, n_k=8) is first
    assert first.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    cu[1] = 5
    assert resolve_documents(cu_seqlens=cu, n_q=8, n_k=8).tolist() == [[0] * 5 + [1] * 3]
    cu[1] = 9
    with pytest.raises(ValueError, match="cu_seqlens"):
        resolve_documents(cu_seqlens=cu, n_q=8, n_k=8)
    other = resolve_documents(cu_seqlens=torch.tensor([0, 3, 8]), n_q=8, n_k=8)
    assert other is not first and other.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]


def test_flex_builds_one_document_block_mask_per_cu_seqlens_tensor(monkeypatch):
    """A model passes the same cu_seqlens to every layer: FlexAttention's document block mask
    is built once for it, not once per call."""
    from attnlab.attention import torch_impls

    builds = []
    real = torch_impls._mask_mod

    def counting(*args, **kw):
        builds.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(torch_impls, "_mask_mod", counting)
    q, k, v = make_qkv(1, 2, 2, 32, 32, 8)
    spec = AttentionSpec(causal=True)
    cu = torch.tensor([0, 9, 32])
    outs = [attention(q, k, v, spec, impl="flex", cu_seqlens=cu) for _ in range(3)]
    assert len(builds) == 1
    attention(q, k, v, spec, impl="flex", cu_seqlens=torch.tensor([0, 9, 32]))  # another tensor: built again
    assert len(builds) == 2
    assert all(torch.equal(o, outs[0]) for o in outs)
