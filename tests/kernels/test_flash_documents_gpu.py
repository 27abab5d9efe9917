"""GPU tests of document masks (packed sequences) at realistic sizes (run by `make gpu-check`;
skipped without CUDA): dense / causal / sliding-window / block-sparse with per-batch document
ids through the contract (autotuned) and every fixed launch config of the dense path.

Tolerance as in flash-attn's tests: |kernel - ref| <= 2 |torch in the same low precision - ref|
+ a few ULPs, ref in fp32 from the same low-precision inputs, the mask from `spec.dense_mask`.
Legend: B batch, Hq / Hkv heads, N length, D head dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import document_bounds
from attnlab.kernels.flash.backward import _DKDV_CONFIGS, _DQ_CONFIGS, flash_bwd
from attnlab.kernels.flash.forward import _FWD_CONFIGS, flash_fwd
from kernel_testing import check, reference_and_lowp

from attnlab.attention import AttentionSpec, attention

pytestmark = pytest.mark.gpu



def packed_doc_ids(n, lengths, batch):
    """int32 [B, N]: row b cycles through `lengths` shifted by b (different boundaries per row)."""
    rows = []
    for b in range(batch):
        ids, doc, i = [], 0, b
        while len(ids) < n:
            ids += [doc] * lengths[i % len(lengths)]
            doc, i = doc + 1, i + 1
        rows.append(ids[:n])
    return torch.tensor(rows, dtype=torch.int32, device="cuda")


def inputs(b, hq, hkv, n, d, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
        for h in (hq, hkv, hkv)
    )
    return q, k, v, torch.randn(b, hq, n, d, device="cuda", dtype=dtype, generator=gen)


# (spec, B, Hq, Hkv, N, D, dtype, document lengths)
GPU_CASES = [
    (AttentionSpec(causal=True), 2, 4, 2, 2048, 64, torch.bfloat16, (1, 100, 700, 64, 1183)),
    (AttentionSpec(), 2, 4, 4, 1000, 128, torch.float16, (128, 3, 500)),
    (AttentionSpec(kind="sliding_window", window=256, causal=True), 2, 8, 2, 2048, 64, torch.bfloat16, (900, 37)),
    (AttentionSpec(kind="block_sparse", pattern="bigbird", block_size=64, causal=True), 2, 4, 2, 2048, 64,
     torch.bfloat16, (300, 1, 1000)),
]  # fmt: skip


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c[0].name}-N{c[4]}-D{c[5]}")
def test_gpu_documents_through_the_contract(case):
    spec, b, hq, hkv, n, d, dtype, lengths = case
    q, k, v, do = inputs(b, hq, hkv, n, d, dtype)
    ids = packed_doc_ids(n, lengths, b)
    out = attention(q, k, v, spec, impl="triton", doc_ids=ids)
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    check(got, *reference_and_lowp(q, k, v, do, spec.dense_mask(n, n, doc_ids=ids)))


def test_gpu_documents_every_config_is_correct():
    """Each dense-path launch config, launched directly with documents, gives a correct result."""
    spec, b, hq, hkv, n, d, dtype, lengths = GPU_CASES[0]
    q, k, v, do = inputs(b, hq, hkv, n, d, dtype, seed=1)
    ids = packed_doc_ids(n, lengths, b)
    ref, lowp = reference_and_lowp(q, k, v, do, spec.dense_mask(n, n, doc_ids=ids))
    docs, scale = document_bounds(ids), 1 / math.sqrt(d)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = flash_fwd(q, k, v, scale, None, 0, autotune=False, docs=docs)
    for cfg in _FWD_CONFIGS:
        o, _ = flash_fwd(q, k, v, scale, None, 0, config=cfg, docs=docs)
        check([o], ref[:1], lowp[:1], names=(f"out {cfg}",))
    for cfg in _DKDV_CONFIGS:
        _, dk, dv = flash_bwd(do, q, k, v, out, lse, None, scale, None, 0, configs=(cfg, _DQ_CONFIGS[0]), docs=docs)
        check([dk, dv], ref[2:], lowp[2:], names=(f"dk {cfg}", f"dv {cfg}"))
    for cfg in _DQ_CONFIGS:
        dq, _, _ = flash_bwd(do, q, k, v, out, lse, None, scale, None, 0, configs=(_DKDV_CONFIGS[0], cfg), docs=docs)
        check([dq], ref[1:2], lowp[1:2], names=(f"dq {cfg}",))
