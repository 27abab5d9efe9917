"""Public entry point: ``flash_attention`` and its autograd.Function.

Chain: Triton kernels (forward.py, backward.py) -> launchers ``flash_fwd`` / ``flash_bwd``
-> ``FlashAttentionFunction`` -> ``flash_attention``. The pure-PyTorch oracle with the
same semantics is ``reference.flash_attention_reference``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backward import flash_bwd
from .common import interpreting, stride_last_one
from .forward import flash_fwd
from .reference import check_attention_args

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper; outputs (O ``[B, Hq, Nq, D]``, LSE ``[B, Hq, Nq]`` fp32), both differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, scale, window_left, window_right, deterministic):
        q, k, v = stride_last_one(q), stride_last_one(k), stride_last_one(v)
        out, lse = flash_fwd(q, k, v, scale, window_left, window_right, autotune=not deterministic)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.window_left = window_left
        ctx.window_right = window_right
        ctx.deterministic = deterministic
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:  # only the LSE was used downstream
            dout = torch.zeros_like(out)
        dout = stride_last_one(dout.to(q.dtype))
        dq, dk, dv = flash_bwd(
            dout,
            q,
            k,
            v,
            out,
            lse,
            dlse,
            ctx.scale,
            ctx.window_left,
            ctx.window_right,
            autotune=not ctx.deterministic,
        )
        return dq, dk, dv, None, None, None, None


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window_left: int | None = None,
    window_right: int | None = None,
    scale: float | None = None,
    deterministic: bool = False,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """FlashAttention-2 style fused attention (dense, causal, sliding window), forward and backward.

    Args:
        q: ``[B, Hq, Nq, D]`` fp16, bf16 or fp32, any strides (the head dim is copied to stride 1
            only if it is not already).
        k, v: ``[B, Hkv, Nk, D]``, same dtype and device, ``Hq % Hkv == 0`` (GQA/MQA; K/V are
            never repeated in memory). 1 <= D <= 256, any Nq, Nk.
        causal: key j allowed only if ``j <= p`` where ``p = i + Nk - Nq`` is query row i's
            bottom-right aligned position (flash-attn >= 2.1).
        window_left, window_right: int >= 0 or None (unbounded): key j allowed only if
            ``p - window_left <= j <= p + window_right``. A Mistral-style window W is
            ``window_left=W-1`` with ``causal=True``.
        scale: softmax scale, default ``1/sqrt(D)``.
        deterministic: gradients are always bitwise reproducible run to run within a process,
            because no kernel uses atomics (dK/dV and dQ are separate kernels that each write
            their tiles once). ``True`` additionally pins the launch configuration instead of
            autotuning, so results are also reproducible across processes on the same GPU model.
        return_lse: also return the natural-log row log-sum-exp ``[B, Hq, Nq]`` (fp32,
            -inf for rows with no allowed key); it is differentiable.

    Returns:
        O ``[B, Hq, Nq, D]`` in q's dtype (and the LSE if ``return_lse``). Rows with no allowed
        key give zeros and zero gradients, never NaN. Math is fp32-accumulated; on CUDA, fp32
        inputs use 3xTF32 tensor-core dot products (about fp32 accuracy).

    Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, for tests).
    """
    scale = check_attention_args(
        q,
        k,
        v,
        window_left=window_left,
        window_right=window_right,
        scale=scale,
        allowed_dtypes=_KERNEL_DTYPES,
    )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D must be in [1, {MAX_HEAD_DIM}], got D={head_dim}")
    if q.device.type != "cuda" and not interpreting():
        raise NotImplementedError(
            f"flash_attention runs Triton kernels: it needs CUDA tensors (got device {q.device}), "
            "or TRITON_INTERPRET=1 set before triton is imported to run them on CPU; "
            "use flash_attention_reference for a pure-PyTorch path"
        )
    # causal is the window bound j <= p, i.e. window_right = 0 (tighter than any window_right >= 0).
    eff_right = 0 if causal else window_right
    out, lse = FlashAttentionFunction.apply(
        q, k, v, scale, window_left, eff_right, bool(deterministic)
    )
    return (out, lse) if return_lse else out
