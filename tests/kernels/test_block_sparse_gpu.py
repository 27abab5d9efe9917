"""GPU tests of block-sparse attention at realistic sizes (run by `make gpu-check`; skipped
without CUDA). N = 4096, layout blocks 64 / 128 (and coarsened 8), bigbird and random layouts
at about 25% density, bf16 / fp16.

Tolerance as in flash-attn's tests: |kernel - ref| <= 2 |torch in the same low precision - ref|
+ a few ULPs, with ref computed in fp32 from the same low-precision inputs.
Legend: B batch, Hq / Hkv heads, N length, D head dim, bs layout block.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import block_sparse_attention, compress_layout
from attnlab.kernels.flash.backward import _SPARSE_DKDV_CONFIGS, _SPARSE_DQ_CONFIGS, flash_bwd
from attnlab.kernels.flash.forward import _SPARSE_FWD_CONFIGS, flash_fwd
from kernel_testing import check, reference_and_lowp

from attnlab.attention import AttentionSpec, attention

pytestmark = pytest.mark.gpu



def token_mask(lay, bs, n, causal, wl, device):
    """bool [H, N, N]: layout expanded to tokens AND the causal / left-window rules (Nq = Nk)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    ok = torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        ok &= j <= i
    if wl is not None:
        ok &= j >= i - wl
    lay = lay.to(device)
    return ok & lay.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :n, :n]


def inputs(b, hq, hkv, n, d, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, hq, n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(b, hkv, n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(b, hkv, n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    do = torch.randn(b, hq, n, d, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, do


def bigbird_25(bs, n, causal, heads):
    """bigbird with about 25% of the blocks of a row (before causality)."""
    kb = n // bs
    return AttentionSpec(
        kind="block_sparse", pattern="bigbird", block_size=bs, causal=causal, local_blocks=2,
        global_blocks=1, random_blocks=kb // 4 - 4, heads=heads,
    )  # fmt: skip


def random_25(bs, causal, heads):
    return AttentionSpec(
        kind="block_sparse",
        pattern="random",
        block_size=bs,
        causal=causal,
        density=0.25,
        heads=heads,
    )


# (spec, B, Hq, Hkv, N, D, dtype, window_left)
GPU_CASES = [
    (bigbird_25(64, 4096, True, 8), 1, 8, 2, 4096, 64, torch.bfloat16, None),
    (bigbird_25(128, 4096, False, None), 1, 4, 4, 4096, 128, torch.bfloat16, None),
    (random_25(64, False, 4), 1, 4, 1, 4096, 64, torch.bfloat16, None),
    (random_25(128, True, None), 2, 4, 2, 4096, 128, torch.float16, 1000),
    (random_25(8, True, None), 1, 2, 2, 2048, 64, torch.bfloat16, None),  # coarsened to 16
    (random_25(64, False, None), 1, 2, 2, 3000, 96, torch.bfloat16, None),  # ragged N, D = 96
]


def _run_case(case, deterministic):
    spec, b, hq, hkv, n, d, dtype, wl = case
    q, k, v, do = inputs(b, hq, hkv, n, d, dtype)
    lay = spec.block_layout(n, n).cuda()
    out = block_sparse_attention(
        q,
        k,
        v,
        lay,
        spec.block_size,
        causal=spec.causal,
        window_left=wl,
        deterministic=deterministic,
    )
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    allowed = token_mask(lay, spec.block_size, n, spec.causal, wl, "cuda")
    return got, reference_and_lowp(q, k, v, do, allowed), allowed


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0].name}-{c[4]}-D{c[5]}-{c[6]}")
def test_gpu_block_sparse_matches_reference(case):
    got, (ref, lowp), allowed = _run_case(case, deterministic=True)
    check(got, ref, lowp)
    empty = ~allowed.any(-1)  # [H, N]
    if empty.any():
        assert torch.all(got[0][:, empty.expand(got[0].shape[1], -1)] == 0)


def test_gpu_block_sparse_autotuned():
    got, (ref, lowp), _ = _run_case(GPU_CASES[0], deterministic=False)
    check(got, ref, lowp)


def test_gpu_every_sparse_config_is_correct():
    """Each config whose tiles divide the layout block, launched directly, gives a correct result."""
    spec, b, hq, hkv, n, d, dtype, wl = GPU_CASES[2]
    q, k, v, do = inputs(b, hq, hkv, n, d, dtype, seed=1)
    lay = spec.block_layout(n, n).cuda()
    ref, lowp = reference_and_lowp(q, k, v, do, token_mask(lay, 64, n, False, None, "cuda"))
    sparse = compress_layout(lay, 64, n, n, None, None, "cuda")
    scale = 1 / math.sqrt(d)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = flash_fwd(q, k, v, scale, None, None, autotune=False, sparse=sparse)
    divides = lambda cfg: 64 % cfg[0] == 0 and 64 % cfg[1] == 0
    for cfg in filter(divides, _SPARSE_FWD_CONFIGS):
        o, _ = flash_fwd(q, k, v, scale, None, None, config=cfg, sparse=sparse)
        check([o], ref[:1], lowp[:1], names=(f"out {cfg}",))
    dkdv0, dq0 = (
        next(filter(divides, _SPARSE_DKDV_CONFIGS)),
        next(filter(divides, _SPARSE_DQ_CONFIGS)),
    )
    for cfg in filter(divides, _SPARSE_DKDV_CONFIGS):
        _, dk, dv = flash_bwd(
            do, q, k, v, out, lse, None, scale, None, None, configs=(cfg, dq0), sparse=sparse
        )
        check([dk, dv], ref[2:], lowp[2:], names=(f"dk {cfg}", f"dv {cfg}"))
    for cfg in filter(divides, _SPARSE_DQ_CONFIGS):
        dq, _, _ = flash_bwd(
            do, q, k, v, out, lse, None, scale, None, None, configs=(dkdv0, cfg), sparse=sparse
        )
        check([dq], ref[1:2], lowp[1:2], names=(f"dq {cfg}",))


def test_gpu_block_sparse_deterministic_bitwise():
    runs = [_run_case(GPU_CASES[0], deterministic=True)[0] for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_gpu_contract_block_sparse_through_triton():
    spec = bigbird_25(64, 2048, True, None)
    q, k, v, do = inputs(1, 4, 2, 2048, 64, torch.bfloat16, seed=2)
    out = attention(q, k, v, spec, impl="triton")
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    allowed = spec.dense_mask(2048, 2048, device="cuda")
    check(got, *reference_and_lowp(q, k, v, do, allowed))
