"""The impl registry: adding an implementation is one `Impl` entry in `IMPLS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# why_not(spec, device, requires_grad, dtype=None, head_dim=None) -> None when the impl can
# serve it, else the reason (one clause, naming the value and what the impl allows). dtype
# and head_dim are those of q; None = not known yet (e.g. listing impls for a spec alone):
# only what is known is checked.
WhyNot = Callable[..., str | None]
# run(q [B,Hq,Nq,D], k [B,Hkv,Nk,D], v [B,Hkv,Nk,D], spec, scale[, doc_ids=][, return_lse=True])
# -> out [B,Hq,Nq,D], or (out, lse [B,Hq,Nq] fp32) with return_lse. `attention()` passes doc_ids
# (validated int [B or 1, Nk], documents.py) only with documents, return_lse only when asked
# (and only to impls with lse=True).
Run = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Impl:
    name: str
    run: Run
    why_not: WhyNot
    description: str
    lse: bool = False  # can return the log-sum-exp (attention(..., return_lse=True))
    lse_grad: bool = False  # ... and differentiate through it


IMPLS: dict[str, Impl] = {}


def register(impl: Impl) -> Impl:
    IMPLS[impl.name] = impl
    return impl


# Helpers for why_not functions.
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError, ValueError):  # no such device: attention() will say so
        return None


def why_not_bf16(device: torch.device, dtype, who: str) -> str | None:
    """bfloat16 tensor cores (and Triton's bf16 dot) need compute capability >= 8.0."""
    cap = _cuda_capability(device) if dtype == torch.bfloat16 else None
    if cap is not None and cap < (8, 0):
        return f"{who} needs compute capability >= 8.0 for dtype=bfloat16 (this GPU is sm_{cap[0]}{cap[1]})"
    return None
