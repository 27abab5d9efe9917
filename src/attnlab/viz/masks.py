"""Draw an `AttentionSpec`: its block layout and its token mask, one panel pair per distinct
head mask. Matplotlib's object API with the Agg canvas (no pyplot, no global backend).

Legend: H heads (1 when every head shares the mask), N sequence length (Nq = Nk = N),
Mb = Kb = ceil(N / block_size) layout blocks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.attention.spec import AttentionSpec


def distinct_heads(mask: torch.Tensor) -> list[list[int]]:
    """Group the heads of a bool mask [H, ...] by equal content: [[0, 2], [1], ...] in order."""
    groups: list[list[int]] = []
    for h in range(mask.shape[0]):
        for group in groups:
            if torch.equal(mask[group[0]], mask[h]):
                group.append(h)
                break
        else:
            groups.append([h])
    return groups


def _heads_label(heads: list[int], total: int) -> str:
    if total == 1:
        return "all heads"
    if len(heads) > 4:
        return f"{len(heads)} heads ({heads[0]}, {heads[1]}, ...)"
    return (
        "head " + ", ".join(map(str, heads))
        if len(heads) == 1
        else "heads " + ", ".join(map(str, heads))
    )


def plot_spec(spec: AttentionSpec, n: int, out: str | Path, max_panels: int = 8, q=None, k=None) -> Path:
    """Write a PNG of `spec` at sequence length `n` (Nq = Nk = n) to `out`; returns the path.

    Block-sparse specs get two rows: the block layout ``[Mb, Kb]`` (kept blocks dark) and the
    token mask ``[N, N]`` (the ground truth, `spec.dense_mask`: layout AND causal/window),
    one column per distinct head mask (at most `max_panels`). Other kinds get the token mask.
    kind="topk_blocks" draws the blocks selected for ``q`` [1, H, n, D] and ``k`` [1, Hkv, n, D]
    (the first batch row, one panel per distinct head).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int (the sequence length)")
    if spec.kind == "topk_blocks":
        if q is None or k is None:
            raise ValueError("plot_spec: kind='topk_blocks' selects from the data; give q= and k=")
        mask = spec.dense_mask(n, n, q=q, k=k)[0].cpu()  # [H, N, N] of the first batch row
    else:
        mask = spec.dense_mask(n, n)  # [H or 1, N, N]
    groups = distinct_heads(mask)[:max_panels]
    block = spec.kind == "block_sparse"
    layout = spec.block_layout(n, n) if block else None  # [H or 1, Mb, Kb]
    rows = 2 if block else 1

    fig = Figure(
        figsize=(max(3.2 * len(groups), 4.8) + 0.4, 3.3 * rows + 0.5), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(groups), squeeze=False)
    for col, heads in enumerate(groups):
        h = heads[0]
        density = mask[h].double().mean().item()
        label = _heads_label(heads, mask.shape[0])
        if block:
            lay = layout[min(h, layout.shape[0] - 1)]
            ax = axes[0][col]
            ax.imshow(lay.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(
                f"layout {tuple(lay.shape)}, {lay.double().mean().item():.0%} kept\n{label}",
                fontsize=9,
            )
            ax.set_xlabel("key block")
            ax.set_ylabel("query block")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax = axes[rows - 1][col]
        ax.imshow(mask[h].numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"token mask, {density:.1%} of pairs\n{label}", fontsize=9)
        ax.set_xlabel("key j")
        ax.set_ylabel("query i")
    fig.suptitle(f"{spec.name}  N={n}", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
