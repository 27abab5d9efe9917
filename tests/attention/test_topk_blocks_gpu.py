"""GPU test of kind="topk_blocks" through impl="triton" (run by `make gpu-check`; skipped
without CUDA): the selection, the kernels' index lists and the kernels, forward and backward,
run under ``torch.cuda.set_sync_debug_mode("error")``, so any host synchronisation on the path
raises; the result matches the reference impl (fp32 math on the same bf16 inputs).

Legend: B batch, Hq / Hkv heads, N length, D head dim.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionSpec, attention

pytestmark = pytest.mark.gpu


def test_topk_blocks_triton_has_no_host_synchronisation():
    b, hq, hkv, n, d = 2, 8, 2, 2048, 128
    spec = AttentionSpec(kind="topk_blocks", block_size=64, top_k=4, causal=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, n, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    do = torch.randn_like(q)

    def run():
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = attention(qi, ki, vi, spec, impl="triton")
        out.backward(do)
        return out, qi.grad, ki.grad, vi.grad

    run()  # autotuning benchmarks (and synchronises) on the first call of each shape
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = attention(qr, kr, vr, spec, impl="reference")
    ref.backward(do)
    for name, a, want in zip(("out", "dq", "dk", "dv"), got, (ref, qr.grad, kr.grad, vr.grad)):
        err = (a.float() - want.float()).abs().max().item()
        assert err <= 2e-2 * max(1.0, want.float().abs().max().item()), (name, err)
