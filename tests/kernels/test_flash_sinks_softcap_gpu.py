"""GPU tests of sinks and soft-capping in kernels/flash at realistic sizes (run by `make
gpu-check`; skipped without CUDA). Tolerance as in test_flash_gpu.py: the kernel's error to an
fp32 reference within twice PyTorch's own error in the same low precision, plus a few ULPs.
The logic is tested on CPU under the interpreter (test_flash_sinks_softcap.py)."""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import common, flash_attention
from kernel_testing import check

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "_POISON_OUTPUTS", True)


def allowed_mask(n, window_left, sink, device):
    """bool [N, N]: causal window of window_left + 1 keys, or a key j < sink (j <= i)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    ok = (j <= i) & (j >= i - window_left) if window_left is not None else j <= i
    return ok | ((j < sink) & (j <= i))


def torch_results(q, k, v, do, allowed, softcap, dtype):
    qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    s = qq @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    out = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vv
    return [out, *torch.autograd.grad(out, (qq, kk, vv), do.to(dtype))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window_left, sink, softcap", [(255, 4, None), (None, 0, 30.0), (1023, 4, 30.0), (127, 200, None)])
def test_sinks_and_softcap_on_gpu(dtype, window_left, sink, softcap):
    n, d = 2048, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, 4, n, d, device="cuda", generator=gen, dtype=dtype) for _ in range(4))
    q = (q * 2).requires_grad_()  # large scores: the cap matters
    k, v = k.requires_grad_(), v.requires_grad_()
    out = flash_attention(q, k, v, causal=True, window_left=window_left, sink=sink, softcap=softcap)
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    allowed = allowed_mask(n, window_left, sink, "cuda")
    ref = torch_results(q, k, v, do, allowed, softcap, torch.float32)
    lowp = torch_results(q, k, v, do, allowed, softcap, dtype)
    check(got, ref, lowp)
