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
# run(q [B,Hq,Nq,D], k [B,Hkv,Nk,D], v [B,Hkv,Nk,D], spec, scale[, doc_ids=]) -> out [B,Hq,Nq,D];
# `attention()` passes doc_ids (validated int [B or 1, Nk], documents.py) only with documents.
Run = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Impl:
    name: str
    run: Run
    why_not: WhyNot
    description: str


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
