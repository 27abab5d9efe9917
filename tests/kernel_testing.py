"""Device, marks and the GPU tests' reference for the Triton kernel tests (CUDA, or CPU under
TRITON_INTERPRET=1)."""

import math

import pytest
import torch
from attnlab.kernels.flash import common

KERNEL_MARKS = [
    pytest.mark.skipif(
        not (torch.cuda.is_available() or common.interpreting()),
        reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU machines)",
    ),
    # Triton 3.6's interpreter converts 1-element loop bounds with a deprecated numpy call.
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]
DEVICE = "cuda" if torch.cuda.is_available() and not common.interpreting() else "cpu"


def reference_and_lowp(q, k, v, do, allowed):
    """(fp32 reference, PyTorch-in-q.dtype) [out, dq, dk, dv] of masked attention; ``allowed``
    broadcasts against the scores [B, Hq, Nq, Nk] (e.g. [H, N, N] or [B, H or 1, N, N]); rows
    without an allowed key give 0."""
    results = []
    group = q.shape[1] // k.shape[1]
    has_key = allowed.any(-1, keepdim=True)
    for dtype in (torch.float32, q.dtype):
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        s = (qq @ kk.repeat_interleave(group, 1).transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
        out = (torch.softmax(s, -1) * has_key) @ vv.repeat_interleave(group, 1)
        results.append([out, *torch.autograd.grad(out, (qq, kk, vv), do.to(dtype))])
        del s
    return results


def check(got, ref, lowp, names=("out", "dq", "dk", "dv")):
    """Low-precision kernel results: error to the fp32 reference within twice PyTorch's own
    low-precision error (plus a few ulps), and no NaN (STYLE.md)."""
    for name, g, r, t in zip(names, got, ref, lowp, strict=True):
        assert not torch.isnan(g).any(), f"{name}: NaN"
        g, r, t = g.float(), r.float(), t.float()
        ulps = 2 * (r + 0.3 - 0.3 - r).abs().max().item() + 1e-4
        err, torch_err = (g - r).abs().max().item(), (t - r).abs().max().item()
        assert err <= 2 * torch_err + ulps, f"{name}: max|diff| {err:.3e} > 2 * {torch_err:.3e} + {ulps:.1e}"
