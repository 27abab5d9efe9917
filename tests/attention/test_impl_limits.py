"""What each impl says it can serve matches what it can run: `why_not` sees the dtype, the
head dim and the device, so ``impl="auto"`` never picks an impl that would fail.

`why_not` and `choose_impl` are pure functions of (spec, device, requires_grad, dtype, head
dim): the CUDA cases run on CPU with ``device="cuda"`` given as a name."""

import pytest
import torch

from attnlab.attention import (
    AttentionSpec,
    attention,
    available_impls,
    choose_impl,
    triton_impl,
    why_not,
)
from attnlab.attention.torch_impls import FLEX_CUDA_DTYPES, FLEX_CUDA_MIN_HEAD_DIM

SPECS = [
    AttentionSpec(causal=True),
    AttentionSpec(kind="sliding_window", causal=True, window=8),
    AttentionSpec(kind="block_sparse", pattern="local", block_size=16, local_blocks=1),
]


def test_the_triton_limits_are_the_kernels():
    from attnlab.kernels.flash import interface

    assert triton_impl.TRITON_DTYPES == interface._KERNEL_DTYPES
    assert triton_impl.MAX_HEAD_DIM == interface.MAX_HEAD_DIM


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_triton_refuses_fp64_and_wide_heads_naming_them(spec):
    reason = why_not("triton", spec, "cuda", dtype=torch.float64, head_dim=64)
    assert reason is not None and "dtype=float64" in reason and "float32" in reason
    reason = why_not("triton", spec, "cuda", dtype=torch.float16, head_dim=257)
    assert reason is not None and "head dim" in reason and "D=257" in reason and "256" in reason
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for d in (1, 40, 256):
            assert why_not("triton", spec, "cuda", dtype=dtype, head_dim=d) is None
    assert why_not("triton", spec, "cuda") is None  # nothing known about the inputs: not refused


def test_flex_on_cuda_refuses_what_compiled_flex_cannot_run():
    spec = SPECS[1]
    assert "dtype=float64" in why_not("flex", spec, "cuda", dtype=torch.float64, head_dim=64)
    assert f"D >= {FLEX_CUDA_MIN_HEAD_DIM}" in why_not("flex", spec, "cuda", dtype=torch.float16, head_dim=8)
    for dtype in FLEX_CUDA_DTYPES:
        assert why_not("flex", spec, "cuda", dtype=dtype, head_dim=16) is None
        assert why_not("flex", spec, "cuda", dtype=dtype, head_dim=512) is None
    # On CPU it runs eagerly: any dtype and head dim, forward only.
    assert why_not("flex", spec, "cpu", dtype=torch.float64, head_dim=8) is None
    assert "no backward" in why_not("flex", spec, "cpu", requires_grad=True)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_auto_on_cuda_falls_back_instead_of_failing(spec):
    assert choose_impl(spec, "cuda", dtype=torch.bfloat16, head_dim=64) == "triton"
    assert choose_impl(spec, "cuda", dtype=torch.float32, head_dim=257) == "flex"  # flex takes D > 256
    assert choose_impl(spec, "cuda", dtype=torch.float64, head_dim=64) == "sdpa"  # neither triton nor flex
    assert choose_impl(spec, "cuda", dtype=torch.float64, head_dim=300) == "sdpa"
    assert available_impls(spec, "cuda", dtype=torch.float64, head_dim=64) == ["reference", "sdpa"]
    assert choose_impl(spec, "cpu", dtype=torch.float64, head_dim=300) == "sdpa"


def test_auto_on_cuda_skips_bf16_on_a_pre_ampere_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    spec = SPECS[0]
    reason = why_not("triton", spec, "cuda", dtype=torch.bfloat16, head_dim=64)
    assert "bfloat16" in reason and "sm_75" in reason
    assert choose_impl(spec, "cuda", dtype=torch.bfloat16, head_dim=64) == "sdpa"
    assert choose_impl(spec, "cuda", dtype=torch.float16, head_dim=64) == "triton"


def test_attention_refuses_fp64_for_triton_before_running_a_kernel():
    q = torch.randn(1, 2, 8, 16, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"impl='triton'.*float64.*dtype=float64.*Impls that can: reference"):
        attention(q, q, q, SPECS[0], impl="triton")
    q = torch.randn(1, 1, 4, 257)
    with pytest.raises(NotImplementedError, match=r"head dim D=257.*D in \[1, 256\]"):
        attention(q, q, q, SPECS[0], impl="triton")


def test_flex_on_cpu_runs_under_no_grad_with_inputs_that_require_grad():
    spec = SPECS[1]
    q, k, v = (torch.randn(1, 2, 24, 16, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        out = attention(q, k, v, spec, impl="flex")
        ref = attention(q, k, v, spec, impl="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(attention(q, k, v, spec, impl="flex"), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="no backward on CPU"):  # with grad: still refused
        attention(q, k, v, spec, impl="flex")
