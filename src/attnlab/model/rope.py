"""Rotary position embeddings (RoPE), rotate-half convention (HF Llama / GPT-NeoX).

Channel ``c < D/2`` of a head is paired with channel ``c + D/2``; the pair at position ``p``
is rotated by the angle ``p * base**(-2c / D)``. This is the layout HF Llama checkpoints
use (Meta's original code pairs adjacent channels, and HF's converter permutes q/k weights
to this layout; GGUF files keep Meta's layout, so a GGUF loader must un-permute q/k).

Legend: N positions, D head dim.
"""

from __future__ import annotations

import torch


def rope_cache(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each fp32 ``[N, D]`` for positions ``0 .. N-1``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), inv_freq)  # (N, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (N, D): channel c and c + D/2 share an angle
    return angles.cos().float(), angles.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim (halves of size D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., D/2) each
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, N, D]`` by the angles of ``cos, sin [N, D]`` (one row per position).
    Math in x's dtype, like HF Llama (the tables are cast to it)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (N, D), broadcast over (B, H)
    return x * cos + rotate_half(x) * sin
