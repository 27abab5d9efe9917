"""`triton` impl: attnlab's own kernels (`attnlab.kernels`), on CUDA or under the interpreter."""

from __future__ import annotations

import os

from attnlab.attention.registry import Impl, register

TRITON_KINDS = ("dense", "sliding_window")


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_attention(q, k, v, spec, scale: float):
    """Dense and sliding-window attention through `attnlab.kernels.flash`."""
    from attnlab.kernels.flash import flash_attention

    left, right = spec.window_bounds()
    return flash_attention(q, k, v, causal=spec.causal, window_left=left, window_right=right, scale=scale)


def _why_not(spec, device, requires_grad):
    if spec.kind not in TRITON_KINDS:
        return f"the triton kernels serve kinds {', '.join(TRITON_KINDS)}, not {spec.kind!r} yet"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_on():
        return None
    return f"triton needs a CUDA device, or TRITON_INTERPRET=1 on CPU (got device {device.type})"


register(
    Impl(
        name="triton",
        run=triton_attention,
        why_not=_why_not,
        description="attnlab's Triton FlashAttention-2 style kernels (fwd + bwd)",
    )
)
