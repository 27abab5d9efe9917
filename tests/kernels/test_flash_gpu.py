"""GPU tests of kernels/flash at realistic sizes (run by `make gpu-check`; skipped without CUDA).

Tolerance as in flash-attn's tests: |kernel - ref| <= 2 |torch in the same low precision - ref|
+ a few ULPs, with ref computed in fp32 from the same low-precision inputs.
Legend: B batch, Hq / Hkv heads, Nq / Nk lengths, D head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import common, flash_attention
from attnlab.kernels.flash.backward import _DKDV_CONFIGS, _DQ_CONFIGS, flash_bwd
from attnlab.kernels.flash.forward import _FWD_CONFIGS, flash_fwd
from kernel_testing import check

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "_POISON_OUTPUTS", True)


def window_mask(n_q, n_k, causal, wl, wr, device):
    """bool [Nq, Nk] from the documented semantics (bottom-right aligned positions)."""
    p = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)  # [Nq, 1]
    j = torch.arange(n_k, device=device)[None, :]  # [1, Nk]
    ok = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if wl is not None:
        ok &= j >= p - wl
    if wr is not None:
        ok &= j <= p + wr
    if causal:
        ok &= j <= p
    return ok


def torch_attention(q, k, v, allowed, dtype):
    """Masked softmax attention computed by PyTorch in `dtype` (empty rows -> 0, zero grads)."""
    group = q.shape[1] // k.shape[1]
    q_, k_, v_ = (
        q.to(dtype),
        k.to(dtype).repeat_interleave(group, 1),
        v.to(dtype).repeat_interleave(group, 1),
    )
    has_key = allowed.any(-1)  # [Nq]
    s = (q_ @ k_.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, Hq, Nq, Nk]
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(has_key[:, None], s, torch.zeros((), dtype=dtype, device=q.device))
    probs = torch.softmax(s, dim=-1) * has_key[:, None].to(dtype)
    return probs @ v_


def reference_and_lowp(q, k, v, do, allowed):
    """(fp32 reference, PyTorch-in-q.dtype) outputs and grads: lists [out, dq, dk, dv]."""
    results = []
    for dtype in (torch.float32, q.dtype):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = torch_attention(qq, kk, vv, allowed, dtype)
        grads = torch.autograd.grad(out, (qq, kk, vv), do.to(dtype))
        results.append([out, *grads])
    return results


def inputs(b, hq, hkv, n_q, n_k, d, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, hq, n_q, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(b, hkv, n_k, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(b, hkv, n_k, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    do = torch.randn(b, hq, n_q, d, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, do


# (B, Hq, Hkv, Nq, Nk, D, dtype, causal, window_left, window_right)
GPU_CASES = [
    (2, 4, 4, 1024, 1024, 64, torch.bfloat16, True, None, None),
    (1, 8, 2, 2048, 2048, 128, torch.bfloat16, True, 255, None),  # GQA 4:1, Mistral window 256
    (2, 4, 4, 1024, 1024, 128, torch.float16, False, None, None),
    (1, 4, 1, 1000, 1500, 64, torch.bfloat16, False, 256, 256),  # MQA, ragged lengths
    (1, 4, 2, 2048, 2048, 64, torch.float16, True, 255, None),
    (1, 2, 2, 1024, 1024, 256, torch.bfloat16, True, None, None),
    (1, 2, 2, 777, 777, 96, torch.float16, True, None, None),
    (1, 2, 2, 1, 1, 80, torch.bfloat16, False, None, None),
    (1, 2, 2, 1100, 600, 40, torch.float32, True, None, None),  # empty rows, exact fp32 dots
]


@pytest.mark.parametrize(
    "case", GPU_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c)
)
def test_gpu_fixed_config_matches_reference(case):
    b, hq, hkv, n_q, n_k, d, dtype, causal, wl, wr = case
    q, k, v, do = inputs(b, hq, hkv, n_q, n_k, d, dtype)
    out, lse = flash_attention(
        q, k, v, causal=causal, window_left=wl, window_right=wr, deterministic=True, return_lse=True
    )
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    allowed = window_mask(n_q, n_k, causal, wl, wr, "cuda")
    ref, lowp = reference_and_lowp(q, k, v, do, allowed)
    if dtype == torch.float32:
        for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref, strict=True):
            assert (g - r).abs().max() <= 1e-4 * max(r.abs().max().item(), 1.0), name
    else:
        check(got, ref, lowp)
    empty = ~allowed.any(-1)
    assert torch.all(lse[:, :, empty] == float("-inf")) and torch.isfinite(lse[:, :, ~empty]).all()
    assert torch.all(out[:, :, empty] == 0) and torch.all(got[1][:, :, empty] == 0)


AUTOTUNE_CASE = (1, 8, 2, 1024, 1024, 64, torch.bfloat16, True, 255, None)


def test_gpu_autotuned_path_matches_reference():
    b, hq, hkv, n_q, n_k, d, dtype, causal, wl, wr = AUTOTUNE_CASE
    q, k, v, do = inputs(b, hq, hkv, n_q, n_k, d, dtype, seed=1)
    out = flash_attention(q, k, v, causal=causal, window_left=wl, window_right=wr)
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    ref, lowp = reference_and_lowp(q, k, v, do, window_mask(n_q, n_k, causal, wl, wr, "cuda"))
    check(got, ref, lowp)


def test_gpu_every_config_is_correct():
    """Each autotune candidate, launched directly, gives a correct result (no tile left unwritten)."""
    b, hq, hkv, n_q, n_k, d, dtype, causal, wl, wr = AUTOTUNE_CASE
    q, k, v, do = inputs(b, hq, hkv, n_q, n_k, d, dtype, seed=2)
    ref, lowp = reference_and_lowp(q, k, v, do, window_mask(n_q, n_k, causal, wl, wr, "cuda"))
    scale = 1 / math.sqrt(d)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = flash_fwd(q, k, v, scale, wl, 0, autotune=False)
    for cfg in _FWD_CONFIGS:
        o, _ = flash_fwd(q, k, v, scale, wl, 0, config=cfg)
        check([o], ref[:1], lowp[:1], names=(f"out {cfg}",))
    for cfg in _DKDV_CONFIGS:
        dq, dk, dv = flash_bwd(
            do, q, k, v, out, lse, None, scale, wl, 0, configs=(cfg, _DQ_CONFIGS[0])
        )
        check([dk, dv], ref[2:], lowp[2:], names=(f"dk {cfg}", f"dv {cfg}"))
    for cfg in _DQ_CONFIGS:
        dq, dk, dv = flash_bwd(
            do, q, k, v, out, lse, None, scale, wl, 0, configs=(_DKDV_CONFIGS[0], cfg)
        )
        check([dq], ref[1:2], lowp[1:2], names=(f"dq {cfg}",))


def test_gpu_deterministic_bitwise():
    q, k, v, do = inputs(*GPU_CASES[1][:7], seed=3)
    runs = []
    for _ in range(3):
        out = flash_attention(q, k, v, causal=True, window_left=255, deterministic=True)
        runs.append([out, *torch.autograd.grad(out, (q, k, v), do)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_gpu_int64_offsets():
    """A batch stride past 2**31 elements: offsets must be computed in int64."""
    n, d = 256, 64
    big = torch.randn(2**31 + n * d, device="cuda", dtype=torch.bfloat16)
    x = big.as_strided((2, 1, n, d), (2**31, n * d, d, 1))  # batch 1 starts at element 2**31
    q, k, v = (x.detach().requires_grad_() for _ in range(3))  # three leaves sharing `big`
    out = flash_attention(q, k, v, causal=True, deterministic=True)
    (dq,) = torch.autograd.grad(out.float().square().sum(), (q,))
    x1 = x[1:].contiguous().requires_grad_()
    out1 = flash_attention(x1, x1.detach(), x1.detach(), causal=True, deterministic=True)
    (dq1,) = torch.autograd.grad(out1.float().square().sum(), (x1,))
    assert torch.equal(out[1:], out1)
    assert torch.allclose(dq[1:].float(), dq1.float(), atol=1e-2, rtol=1e-2)
    del big
