"""Block-sparse layouts generated from a named pattern.

A layout is bool ``[H or 1, Mb, Kb]``: True = query block r computes key block c. Query
block rows are aligned bottom-right like token rows: ``r' = r + Kb - Mb``. All sizes are
in blocks. Random parts use ``torch.Generator().manual_seed(seed)``: same spec, same layout.

| pattern    | blocks kept                                                        | parameters                     |
|------------|--------------------------------------------------------------------|--------------------------------|
| local      | band ``|r' - c| < local_blocks``                                   | local_blocks                   |
| strided    | band + every ``stride``-th block back (Sparse Transformer)         | local_blocks, stride           |
| longformer | band + global blocks (first g rows see all, all see first g cols)  | local_blocks, global_blocks    |
| bigbird    | longformer + ``random_blocks`` random key blocks per query block   | + random_blocks, seed, heads   |
| random     | each block kept with probability ``density``, diagonal always kept | density, seed, heads           |

With ``causal=True`` random blocks are drawn only among blocks at or left of the
diagonal (the others would be masked anyway).
"""

from __future__ import annotations

import functools

import torch

PATTERNS = ("local", "strided", "bigbird", "longformer", "random")
RANDOM_PATTERNS = ("bigbird", "random")
PARAMS = ("local_blocks", "stride", "global_blocks", "random_blocks", "density", "heads")
USES = {
    "local": ("local_blocks",),
    "strided": ("local_blocks", "stride"),
    "longformer": ("local_blocks", "global_blocks"),
    "bigbird": ("local_blocks", "global_blocks", "random_blocks", "heads"),
    "random": ("density", "heads"),
}
DEFAULTS = {"local_blocks": 2, "stride": 4, "global_blocks": 1, "random_blocks": 2, "density": 0.25}


def check_params(spec) -> tuple[str, ...]:
    """Validate a pattern spec in place (fills defaults); returns the parameters it uses."""
    if spec.pattern not in PATTERNS:
        raise ValueError(f"AttentionSpec.pattern={spec.pattern!r} is unknown; allowed: {', '.join(PATTERNS)}")
    used = USES[spec.pattern]
    for name in PARAMS:
        val = getattr(spec, name)
        if name not in used:
            if val is not None:
                raise ValueError(
                    f"AttentionSpec.{name}={val!r} is not a parameter of pattern={spec.pattern!r}; "
                    f"it takes: {', '.join(used)}"
                )
            continue
        if val is None and name in DEFAULTS:
            val = DEFAULTS[name]
            object.__setattr__(spec, name, val)
        if val is None:
            continue
        if name == "density":
            if isinstance(val, bool) or not isinstance(val, int | float) or not 0.0 < val <= 1.0:
                raise ValueError(f"AttentionSpec.density={val!r} must be a number in (0, 1]")
        else:
            low = 0 if name in ("global_blocks", "random_blocks") else 1
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"AttentionSpec.{name}={val!r} must be an int >= {low}")
    return used


def make_layout(spec, n_q_blocks: int, n_k_blocks: int) -> torch.Tensor:
    """bool [H or 1, Mb, Kb] for a pattern spec (cached per spec and size)."""
    return _make_layout(spec, n_q_blocks, n_k_blocks).clone()


@functools.lru_cache(maxsize=64)
def _make_layout(spec, mb: int, kb: int) -> torch.Tensor:
    r = torch.arange(mb)[:, None] + (kb - mb)  # aligned block rows, [Mb, 1]
    c = torch.arange(kb)[None, :]  # [1, Kb]
    below = c <= r if spec.causal else torch.ones(mb, kb, dtype=torch.bool)
    p = spec.pattern
    if p == "random":
        return _random_blocks(spec, below, lambda g: torch.rand(mb, kb, generator=g) < spec.density) | (r == c)
    band = (r - c).abs() < spec.local_blocks
    if p == "local":
        return band[None]
    if p == "strided":
        return (band | (((r - c) % spec.stride == 0) & below))[None]
    g = spec.global_blocks
    glob = (c < g) | (torch.arange(mb)[:, None] < g)
    base = (band | glob)[None]
    if p == "longformer":
        return base

    # bigbird: random_blocks extra key blocks per query block, among those still free.
    def draw(gen):
        free = below & ~base[0]
        scores = torch.rand(mb, kb, generator=gen).masked_fill(~free, -1.0)
        k = min(spec.random_blocks, kb)
        top = scores.topk(k, dim=1).indices if k > 0 else torch.empty(mb, 0, dtype=torch.long)
        pick = torch.zeros(mb, kb, dtype=torch.bool).scatter_(1, top, True)
        return pick & free

    return base | _random_blocks(spec, below, draw)


def _random_blocks(spec, below: torch.Tensor, draw) -> torch.Tensor:
    gen = torch.Generator().manual_seed(spec.seed)
    heads = spec.heads or 1
    return torch.stack([draw(gen) & below for _ in range(heads)])
