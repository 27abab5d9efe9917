"""Every impl x kind against the independent fp64 oracle, forward and dq/dk/dv."""

import pytest
import torch
from oracle import oracle_attention, oracle_mask

from attnlab.attention import IMPLS, AttentionSpec, attention, available_impls

SPECS = {
    "dense": dict(kind="dense"),
    "causal": dict(kind="dense", causal=True),
    "swa1": dict(kind="sliding_window", window=1, causal=True),
    "swa5": dict(kind="sliding_window", window=5, causal=True),
    "swa_bidir": dict(kind="sliding_window", window=7),
    "swa_pair": dict(kind="sliding_window", window=(5, 3)),
    "swa_pair_causal": dict(kind="sliding_window", window=(0, 7), causal=True),
    "bigbird": dict(kind="block_sparse", pattern="bigbird", block_size=16, causal=True),
    "random_heads": dict(kind="block_sparse", pattern="random", block_size=16, density=0.4, heads=4),
    "longformer_window": dict(kind="block_sparse", pattern="longformer", block_size=16, window=(20, 20)),
}
# (B, Hq, Hkv, Nq, Nk, D): awkward lengths and head dims, GQA 4:1 and MQA, Nq != Nk.
SHAPES = [
    (1, 4, 4, 1, 1, 16),
    (2, 4, 1, 63, 63, 40),
    (1, 4, 1, 113, 113, 80),
    (1, 4, 2, 257, 257, 128),
    (1, 4, 1, 63, 113, 16),
    (1, 4, 4, 113, 63, 40),
]
TORCH_IMPLS = ["reference", "sdpa"]


def make_qkv(b, hq, hkv, n_q, n_k, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n_q, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, n_k, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, n_k, d, generator=g).to(dtype)
    return q, k, v


def check_impl(impl, spec, shape, backward=True, dtype=torch.float32, tol=2e-5):
    q, k, v = make_qkv(*shape, dtype=dtype)
    mask = oracle_mask(spec, shape[3], shape[4])
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = oracle_attention(q64, k64, v64, mask)
    qi, ki, vi = (t.clone().requires_grad_(backward) for t in (q, k, v))
    out = attention(qi, ki, vi, spec, impl=impl)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "no NaN, even for rows without keys"
    err = (out.double() - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"out max err {err}"
    empty = ~mask.any(-1)  # [H or 1, Nq]
    if empty.any():
        rows = out.detach()[:, :, :][:, empty.expand(shape[1], -1)]
        assert (rows == 0).all(), "rows with no allowed key return zeros"
    if not backward:
        return
    dout = torch.randn_like(ref)
    ref.backward(dout)
    out.backward(dout.to(dtype))
    for name, got, want in (("dq", qi.grad, q64.grad), ("dk", ki.grad, k64.grad), ("dv", vi.grad, v64.grad)):
        assert torch.isfinite(got).all(), f"{name} has NaN"
        gerr = (got.double() - want).abs().max().item()
        assert gerr <= 5 * tol * max(1.0, want.abs().max().item()), f"{name} max err {gerr}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("impl", TORCH_IMPLS)
def test_torch_impls_match_oracle(impl, spec_name, shape):
    check_impl(impl, AttentionSpec(**SPECS[spec_name]), shape)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec_name", ["dense", "causal", "swa5", "swa_pair", "bigbird", "random_heads"])
def test_flex_forward_matches_oracle_on_cpu(spec_name, shape):
    check_impl("flex", AttentionSpec(**SPECS[spec_name]), shape, backward=False)


def test_flex_backward_on_cpu_raises_clearly():
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 2, 8, 8, 16))
    with pytest.raises(NotImplementedError, match="no backward on CPU.*sdpa"):
        attention(q, k, v, AttentionSpec(causal=True), impl="flex")
    assert "flex" not in available_impls(AttentionSpec(), "cpu", requires_grad=True)
    assert "flex" in available_impls(AttentionSpec(), "cpu")


TRITON_CASES = [
    ("causal", (1, 4, 1, 113, 113, 40)),
    ("swa5", (1, 4, 2, 63, 113, 16)),
    ("swa_pair", (1, 2, 2, 113, 63, 80)),
]


@pytest.mark.parametrize("spec_name,shape", TRITON_CASES)
def test_triton_impl_through_the_contract(spec_name, shape):
    spec = AttentionSpec(**SPECS[spec_name])
    if "triton" not in available_impls(spec, "cpu", requires_grad=True):
        pytest.fail("triton must be available on CPU under TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    check_impl("triton", spec, shape, tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", TORCH_IMPLS)
def test_low_precision_within_torch_own_error(impl, dtype):
    spec = AttentionSpec(kind="sliding_window", window=9, causal=True)
    shape = (1, 2, 2, 70, 70, 32)
    q, k, v = make_qkv(*shape, dtype=dtype)
    ref = oracle_attention(q, k, v, oracle_mask(spec, 70, 70))
    out = attention(q, k, v, spec, impl=impl)
    # PyTorch's own low-precision math (every op in `dtype`) sets the tolerance.
    scores = (q @ k.transpose(-1, -2)) * 32**-0.5
    scores = scores.masked_fill(~oracle_mask(spec, 70, 70)[None], float("-inf"))
    torch_lowp = torch.softmax(scores, dim=-1) @ v
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max() <= 2 * (torch_lowp.double() - ref).abs().max() + 1e-2


def test_auto_picks_a_working_impl_on_cpu():
    q, k, v = make_qkv(1, 2, 1, 20, 20, 16)
    spec = AttentionSpec(kind="sliding_window", window=4, causal=True)
    torch.testing.assert_close(attention(q, k, v, spec), attention(q, k, v, spec, impl="reference"))


def test_scale_argument():
    q, k, v = make_qkv(1, 2, 2, 9, 9, 16)
    spec = AttentionSpec()
    ref = oracle_attention(q, k, v, oracle_mask(spec, 9, 9), scale=0.3)
    for impl in TORCH_IMPLS:
        assert (attention(q, k, v, spec, impl=impl, scale=0.3).double() - ref).abs().max() < 1e-5


def test_registry_names():
    assert {"reference", "sdpa", "flex", "triton"} <= set(IMPLS)


# ----------------------------------------------------------------- errors
def test_unknown_impl_lists_the_impls_that_can():
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(NotImplementedError, match="impl='fast' is unknown.*reference.*sdpa"):
        attention(q, k, v, AttentionSpec(), impl="fast")


def test_impl_that_cannot_serve_says_why_and_who_can(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(NotImplementedError, match="triton.*CUDA.*Impls that can: reference, sdpa"):
        attention(q, k, v, AttentionSpec(), impl="triton")


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda q, k, v: (q[0], k, v), r"q must be 4-D"),
        (lambda q, k, v: (q, k[:, :, :, :4], v[:, :, :, :4]), r"head dims differ: q has D=8"),
        (lambda q, k, v: (q, k.double(), v.double()), r"dtypes differ"),
        (lambda q, k, v: (q, k, v[:, :, :3]), r"k and v shapes differ"),
        (lambda q, k, v: (q[:, :3], k[:, :2], v[:, :2]), r"Hq=3 must be a multiple of .* Hkv=2"),
        (lambda q, k, v: (q, k[:1], v[:1]), r"batch sizes differ"),
        (lambda q, k, v: (q[:, :, :0], k, v), r"q is empty"),
        (lambda q, k, v: (q.int(), k.int(), v.int()), r"dtype=torch.int32 is not supported"),
        (lambda q, k, v: (q.numpy(), k, v), r"q must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_value_error(mutate, match):
    q, k, v = make_qkv(2, 4, 2, 4, 4, 8)
    with pytest.raises(ValueError, match=match):
        attention(*mutate(q, k, v), AttentionSpec(), impl="reference")


def test_bad_scale_and_spec_type():
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="scale=-1.0 must be a positive"):
        attention(q, k, v, AttentionSpec(), scale=-1.0)
    with pytest.raises(ValueError, match="spec must be an AttentionSpec"):
        attention(q, k, v, "dense")


def test_per_head_layout_must_match_query_heads():
    spec = AttentionSpec(kind="block_sparse", pattern="random", heads=3, block_size=4)
    q, k, v = make_qkv(1, 2, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="3 per-head layouts but q has Hq=2"):
        attention(q, k, v, spec)
