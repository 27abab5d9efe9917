"""The impl registry: adding an implementation is one `Impl` entry in `IMPLS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnlab.attention.spec import AttentionSpec

# why_not(spec, device, requires_grad) -> None when the impl can serve it, else the reason.
WhyNot = Callable[[AttentionSpec, torch.device, bool], str | None]
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
