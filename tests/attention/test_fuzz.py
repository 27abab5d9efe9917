"""Property tests of `attention()`: random valid specs, shapes and dtypes match the fp64
oracle (forward and dq/dk/dv); random invalid inputs raise a ValueError that names the
problem (never a crash, a hang or a silent broadcast)."""

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import oracle_attention, oracle_mask

from attnlab.attention import AttentionSpec, attention

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EACH = settings(FUZZ, max_examples=15)  # per parametrized case
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}  # relative to max(1, |ref|max)
SIZE = st.integers(1, 40)


@st.composite
def shapes(draw):
    """(B, Hq, Hkv, Nq, Nk, D): GQA ratios 1-3, Nq != Nk allowed (bottom-right aligned)."""
    hkv, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return draw(st.integers(1, 2)), hkv * group, hkv, draw(SIZE), draw(SIZE), draw(st.sampled_from([8, 16, 24, 32]))


@st.composite
def windows(draw):
    if draw(st.booleans()):
        return draw(st.integers(1, 45))
    return draw(st.integers(0, 45)), draw(st.integers(0, 45))


@st.composite
def specs(draw, hq: int, n_q: int, n_k: int) -> AttentionSpec:
    kind = draw(st.sampled_from(["dense", "sliding_window", "block_sparse"]))
    causal = draw(st.booleans())
    if kind == "dense":
        return AttentionSpec(kind="dense", causal=causal)
    if kind == "sliding_window":
        return AttentionSpec(kind="sliding_window", causal=causal, window=draw(windows()))
    bs = draw(st.sampled_from([1, 2, 4, 8, 16]))
    window = draw(st.none() | windows())
    if draw(st.booleans()):  # explicit layout, shared or per head
        heads = draw(st.sampled_from([1, hq]))
        mb, kb = math.ceil(n_q / bs), math.ceil(n_k / bs)
        bits = draw(st.lists(st.booleans(), min_size=heads * mb * kb, max_size=heads * mb * kb))
        layout = torch.tensor(bits, dtype=torch.bool).reshape(heads, mb, kb)
        return AttentionSpec(kind="block_sparse", causal=causal, window=window, block_size=bs, layout=layout)
    pattern = draw(st.sampled_from(["local", "strided", "longformer", "bigbird", "random"]))
    params = {"local_blocks": st.integers(1, 4), "stride": st.integers(1, 4), "global_blocks": st.integers(0, 2),
              "random_blocks": st.integers(0, 3), "density": st.floats(0.05, 1.0),
              "heads": st.sampled_from([None, hq])}
    uses = {"local": ["local_blocks"], "strided": ["local_blocks", "stride"],
            "longformer": ["local_blocks", "global_blocks"],
            "bigbird": ["local_blocks", "global_blocks", "random_blocks", "heads"], "random": ["density", "heads"]}
    kwargs = {name: draw(params[name]) for name in uses[pattern]}
    return AttentionSpec(kind="block_sparse", causal=causal, window=window, block_size=bs, pattern=pattern,
                         seed=draw(st.integers(0, 2**31 - 1)), **kwargs)


def qkv(shape, dtype, seed):
    b, hq, hkv, n_q, n_k, d = shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, n_q, d, generator=g, dtype=dtype), torch.randn(b, hkv, n_k, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, n_k, d, generator=g, dtype=dtype))


@FUZZ
@given(data=st.data(), shape=shapes(), dtype=st.sampled_from([torch.float32, torch.float64]),
       impl=st.sampled_from(["reference", "sdpa"]), seed=st.integers(0, 2**16))
def test_valid_inputs_match_the_oracle(data, shape, dtype, impl, seed):
    b, hq, hkv, n_q, n_k, d = shape
    spec = data.draw(specs(hq, n_q, n_k))
    if data.draw(st.booleans()):  # a custom mask instead, ANDed with the causal / window rules
        stride = data.draw(st.integers(1, 4))
        spec = AttentionSpec(kind="custom", causal=spec.causal, window=spec.window if spec.kind == "sliding_window" else None,
                             mask_mod=lambda b_, h_, q_, k_: (q_ + k_) % stride != 1)  # fmt: skip
    extras = dict(sink=data.draw(st.sampled_from([0, 0, 1, 3, 9])))
    if impl == "reference":  # sdpa has no soft-capping
        extras["softcap"] = data.draw(st.sampled_from([None, 0.7, 3.0]))
    spec = dataclasses.replace(spec, **extras)
    scale = data.draw(st.none() | st.floats(0.05, 2.0))
    q, k, v = (t.requires_grad_() for t in qkv(shape, dtype, seed))
    out = attention(q, k, v, spec, impl=impl, scale=scale)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out).all()

    mask = oracle_mask(spec, n_q, n_k)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = oracle_attention(q64, k64, v64, mask, scale, spec.softcap)
    tol = TOL[dtype] * max(1.0, ref.abs().max().item())
    assert (out.double() - ref).abs().max().item() <= tol, f"{impl} {spec} {shape} {dtype}"
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref.backward(dout)
    out.backward(dout.to(dtype))
    for name, got, want in (("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)):
        gtol = 10 * TOL[dtype] * max(1.0, want.abs().max().item())
        assert (got.double() - want).abs().max().item() <= gtol, f"{name}: {impl} {spec} {shape} {dtype}"


# ---------------------------------------------------------------------- invalid inputs
def _rank(q, k, v, spec, draw):
    which = draw(st.sampled_from(["q", "k", "v"]))
    extra = draw(st.booleans())
    t = {"q": q, "k": k, "v": v}
    t[which] = t[which][None] if extra else t[which][0]
    return (t["q"], t["k"], t["v"], spec, {}), "4-D"


def _heads(q, k, v, spec, draw):
    hkv = draw(st.integers(2, 4))
    hq = draw(st.integers(1, 8).filter(lambda h: h % hkv))
    b, _, n, d = q.shape
    return (torch.randn(b, hq, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d), spec, {}), "multiple"


def _dtype(q, k, v, spec, draw):
    which = draw(st.sampled_from(["k", "v"]))
    other = draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16]))
    t = {"k": k, "v": v}
    t[which] = t[which].to(other)
    return (q, t["k"], t["v"], spec, {}), "dtypes differ"


def _int_dtype(q, k, v, spec, draw):
    bad = draw(st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex64]))
    return (q.to(bad), k.to(bad), v.to(bad), spec, {}), "not supported"


def _device(q, k, v, spec, draw):
    which = draw(st.sampled_from(["q", "k", "v"]))
    t = {"q": q, "k": k, "v": v}
    t[which] = t[which].to("meta")  # stands in for a second device
    return (t["q"], t["k"], t["v"], spec, {}), "devices differ"


def _empty(q, k, v, spec, draw):
    which, dim = draw(st.sampled_from(["q", "k", "v"])), draw(st.integers(0, 3))
    t = {"q": q, "k": k, "v": v}
    t[which] = t[which].narrow(dim, 0, 0)
    return (t["q"], t["k"], t["v"], spec, {}), "empty"


def _broadcast(q, k, v, spec, draw):
    # A size-1 batch, head dim or length that PyTorch would broadcast.
    case = draw(st.sampled_from(["batch", "head_dim", "kv_len"]))
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    if case == "batch":
        return (torch.randn(b + 1, hq, n, d), k, v, spec, {}), "batch sizes differ"
    if case == "head_dim":
        return (q, torch.randn(b, hkv, n, d + 1), torch.randn(b, hkv, n, d + 1), spec, {}), "head dims differ"
    return (q, k, torch.randn(b, hkv, n + 1, d), spec, {}), "k and v shapes differ"


def _spec_heads(q, k, v, spec, draw):
    hq = q.shape[1]
    heads = draw(st.integers(2, 6).filter(lambda h: h != hq))
    n = q.shape[2]
    layout = torch.ones(heads, math.ceil(n / 4), math.ceil(n / 4), dtype=torch.bool)
    return (q, k, v, AttentionSpec(kind="block_sparse", block_size=4, layout=layout), {}), "per-head layouts"


def _layout_size(q, k, v, spec, draw):
    n = q.shape[2]
    mb = math.ceil(n / 4) + draw(st.integers(1, 3))
    layout = torch.ones(1, mb, mb, dtype=torch.bool)
    return (q, k, v, AttentionSpec(kind="block_sparse", block_size=4, layout=layout), {}), "layout has shape"


def _scale(q, k, v, spec, draw):
    bad = draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), True, "0.5"]))
    return (q, k, v, spec, {"scale": bad}), "scale"


def _not_a_spec(q, k, v, spec, draw):
    return (q, k, v, draw(st.sampled_from([{"kind": "dense"}, "dense", None])), {}), "AttentionSpec"


def _not_a_tensor(q, k, v, spec, draw):
    return (q.tolist(), k, v, spec, {}), "torch.Tensor"


def _bad_impl_type(q, k, v, spec, draw):
    return (q, k, v, spec, {"impl": draw(st.sampled_from([["sdpa"], 3, None]))}), "impl"


def _sparse_layout(q, k, v, spec, draw):
    return (q.to_sparse(), k, v, spec, {}), "strided"


CORRUPTIONS = [_rank, _heads, _dtype, _int_dtype, _device, _empty, _broadcast, _spec_heads, _layout_size, _scale,
               _not_a_spec, _not_a_tensor, _bad_impl_type, _sparse_layout]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
@EACH
@given(data=st.data(), impl=st.sampled_from(["reference", "sdpa", "auto"]))
def test_invalid_inputs_raise_value_error_naming_the_problem(data, corrupt, impl):
    b, hkv, group, n, d = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)),
                           data.draw(SIZE), data.draw(st.sampled_from([8, 16])))
    q, k, v = qkv((b, hkv * group, hkv, n, n, d), torch.float32, 0)
    spec = AttentionSpec(kind="sliding_window", causal=True, window=data.draw(st.integers(1, 8)))
    (q, k, v, spec, kwargs), words = corrupt(q, k, v, spec, data.draw)
    kwargs.setdefault("impl", impl)
    with pytest.raises(ValueError, match=words):
        attention(q, k, v, spec, **kwargs)


_SPEC_ERRORS = [
    (dict(kind="sliding_window", window=st.integers(-5, 0)), "window"),
    (dict(kind="sliding_window", window=st.tuples(st.integers(-5, -2), st.integers(-1, 5))), "window"),
    (dict(kind="sliding_window", window=st.tuples(st.integers(-1, 5), st.integers(-9, -2))), "window"),
    (dict(kind="sliding_window", window=st.floats(allow_nan=True)), "window"),
    (dict(kind="sliding_window", window=st.none()), "window"),
    (dict(kind="dense", window=st.integers(1, 5)), "window"),
    (dict(kind=st.text(max_size=8).filter(lambda s: s not in ("dense", "sliding_window", "block_sparse", "custom"))),
     "kind"),
    (dict(kind="dense", sink=st.sampled_from([-1, -7, 1.5, True, "4", None])), "sink"),
    (dict(kind="dense", softcap=st.sampled_from([0, 0.0, -1.0, float("nan"), float("inf"), True, "5"])), "softcap"),
    (dict(kind="custom", mask_mod=st.sampled_from([None, 3, "q >= k"])), "mask_mod"),
    (dict(kind="dense", mask_mod=st.just(lambda b, h, q, k: q >= k)), "mask_mod"),
    (dict(kind="custom", mask_mod=st.sampled_from([lambda q, k: q >= k, lambda b, h, q, k: (q - k).float(),
                                                   lambda b, h, q, k: 1 / 0, lambda b, h, q, k: True])), "mask_mod"),
    (dict(kind="dense", causal=st.sampled_from([1, "yes", None])), "causal"),
    (dict(kind="block_sparse", pattern="local", block_size=st.sampled_from([0, 3, 6, -4, 12])), "block_size"),
    (dict(kind="block_sparse", pattern="random", density=st.sampled_from([0.0, -0.5, 1.5, float("nan")])), "density"),
    (dict(kind="block_sparse", pattern=st.sampled_from(["diagonal", "", None])), "pattern"),
    (dict(kind="block_sparse", pattern="local", local_blocks=st.integers(-3, 0)), "local_blocks"),
    (dict(kind="block_sparse", pattern="local", stride=st.integers(1, 3)), "stride"),
    # A float layout (e.g. holding NaN) is not a layout: bool only.
    (dict(kind="block_sparse", block_size=4,
          layout=st.sampled_from([torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2),
                                  torch.ones(2, 2, dtype=torch.bool), torch.ones(0, 2, 2, dtype=torch.bool)])), "layout"),
]


@pytest.mark.parametrize("fields,word", _SPEC_ERRORS, ids=[f"{w}{i}" for i, (_, w) in enumerate(_SPEC_ERRORS)])
@EACH
@given(data=st.data())
def test_invalid_specs_raise_value_error_naming_the_field(data, fields, word):
    kwargs = {name: data.draw(val) if isinstance(val, st.SearchStrategy) else val for name, val in fields.items()}
    with pytest.raises(ValueError, match=f"AttentionSpec.*{word}|{word}.*AttentionSpec"):
        AttentionSpec(**kwargs)


def test_layout_on_another_device_without_data_is_a_value_error():
    with pytest.raises(ValueError, match="layout"):
        AttentionSpec(kind="block_sparse", block_size=4, layout=torch.ones(1, 2, 2, dtype=torch.bool, device="meta"))
