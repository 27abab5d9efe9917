"""LoRA (Hu et al., 2021): low-rank adapters on the Transformer's projections.

    added = apply_lora(model, targets=["q_proj", "v_proj"], rank=8, alpha=16)
    ...train only the adapters (``attnlab.train.trainable``: ``train.trainable=lora``)...
    merge_lora(model)          # back to plain nn.Linear weights: W + (alpha / rank) B A

A targeted ``nn.Linear`` (weight ``W [out, in]``) becomes a `LoRALinear`, a subclass of
``nn.Linear`` that keeps ``W`` under its own name and adds ``lora_A [r, in]`` (Kaiming-uniform,
as in the paper and peft) and ``lora_B [out, r]`` (zeros, so that at step 0 the adapted model
computes exactly what the base model does)::

    y = x W^T + scaling * (x A^T) B^T,   scaling = alpha / rank

State-dict keys: ``layers.0.self_attn.q_proj.weight`` stays where it was (a base checkpoint
loads into an adapted model and back), plus ``...q_proj.lora_A``, ``...q_proj.lora_B`` and
``...q_proj.lora_scaling`` (a 0-d buffer, so a state dict merges without its config:
`merge_lora_state`).

Targets are the projection names of `attnlab.model.transformer` (`TARGETS`): attention
``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and MLP ``gate_proj``, ``up_proj``, ``down_proj``.
This is our own small module: peft is not a dependency (it is not installed here and cannot
be), and a LoRA linear is twenty lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS
ADAPTER_SUFFIXES = (".lora_A", ".lora_B", ".lora_scaling")


class LoRALinear(nn.Linear):
    """``nn.Linear`` (no bias) plus a rank-``rank`` update ``scaling * B A``; ``B = 0`` at init."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        if base.bias is not None:
            raise ValueError("LoRALinear: the Transformer's projections have no bias; this Linear has one")
        nn.Module.__init__(self)  # keep base's own weight Parameter (no new allocation)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in)
        self.register_parameter("bias", None)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_scaling", torch.tensor(alpha / rank, dtype=torch.float32))

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., in) -> (..., r) -> (..., out)
        return F.linear(x, self.weight) + update * self.lora_scaling.to(update.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B A`` [out, in], in fp32."""
        return self.lora_scaling * (self.lora_B.float() @ self.lora_A.float())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={float(self.lora_scaling):g}"


def check_lora_args(targets: Sequence[str], rank: int, alpha: float) -> None:
    """ValueError naming the argument when a value is not allowed."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be an int >= 1")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0 (scaling = alpha / rank)")
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(f"targets={targets!r} must be a non-empty list of projection names: {', '.join(TARGETS)}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"targets={list(targets)!r}: {unknown} are not projections of the Transformer; "
                         f"allowed: {', '.join(TARGETS)}")


def apply_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> list[str]:
    """Replace every ``nn.Linear`` named one of ``targets`` (e.g. ``q_proj``) by a `LoRALinear`
    in place; returns the qualified names of the adapted modules. The model computes exactly
    what it did (``B = 0``). Does not change ``requires_grad`` (see ``attnlab.train.trainable``)."""
    check_lora_args(targets, rank, alpha)
    added = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and type(child) is nn.Linear:
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                added.append(f"{name}.{child_name}" if name else child_name)
    if not added:
        raise ValueError(f"targets={list(targets)!r}: no nn.Linear of the model has one of these names")
    return added


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every `LoRALinear` into a plain ``nn.Linear`` with ``W + scaling * B A`` (in place;
    returns ``model``). The merged model's logits equal the adapted model's within fp32
    rounding; its state dict has the base model's keys only."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                weight = child.weight
                weight.copy_((weight.float() + child.delta_weight()).to(weight.dtype))
                plain = nn.Linear(child.in_features, child.out_features, bias=False, device=weight.device,
                                  dtype=weight.dtype)
                plain.weight = weight
                setattr(module, child_name, plain)
    return model


def has_lora(state: dict) -> bool:
    return any(k.endswith(ADAPTER_SUFFIXES) for k in state)


def merge_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with adapters (``<p>.weight``, ``<p>.lora_A``, ``<p>.lora_B``,
    ``<p>.lora_scaling``) -> one with merged ``<p>.weight`` and no adapter keys (what
    `merge_lora` gives, without building the model). A state dict without adapters is
    returned as it is."""
    if not has_lora(state):
        return state
    out = {k: v for k, v in state.items() if not k.endswith(ADAPTER_SUFFIXES)}
    prefixes = {k.removesuffix(".lora_A") for k in state if k.endswith(".lora_A")}
    for p in sorted(prefixes):
        parts = [f"{p}.weight", f"{p}.lora_A", f"{p}.lora_B", f"{p}.lora_scaling"]
        missing = [k for k in parts if k not in state]
        if missing:
            raise ValueError(f"LoRA adapter {p!r} is incomplete: {', '.join(missing)} missing")
        w, a, b, s = (state[k] for k in parts)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise ValueError(f"LoRA adapter {p!r}: shapes weight {tuple(w.shape)}, lora_A {tuple(a.shape)}, "
                             f"lora_B {tuple(b.shape)} do not fit (weight [out, in], A [r, in], B [out, r])")
        out[f"{p}.weight"] = (w.float() + s.float() * (b.float() @ a.float())).to(w.dtype)
    stray = [k for k in state if k.endswith(ADAPTER_SUFFIXES) and k.rsplit(".", 1)[0] not in prefixes]
    if stray:
        raise ValueError(f"LoRA keys without lora_A: {', '.join(sorted(stray)[:3])}")
    return out
