"""Pareto plots: val bpb against cost (tokens/s, peak memory, attention FLOPs), front marked."""

from __future__ import annotations

import math
from pathlib import Path

AXES = {  # file stem -> (row key, axis label, higher is better)
    "pareto_tokens_per_s": ("tokens_per_s", "tokens/s (higher is better)", True),
    "pareto_peak_memory": ("peak_memory_mib", "peak memory MiB (lower is better)", False),
    "pareto_attention_flops": ("attention_flops_per_token", "attention MFLOP per token, fwd+bwd (lower is better)", False),
}


def pareto_front(points, higher_is_better: bool) -> list[int]:
    """Indices of points not dominated in (cost, bpb): better-or-equal cost and lower bpb."""
    front = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            (c2 >= c if higher_is_better else c2 <= c) and q2 <= q and (c2, q2) != (c, q)
            for c2, q2 in points
        )
        if not dominated:
            front.append(i)
    return front


def write_pareto_plots(rows, out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not math.isnan(r["val_bpb"])]
    paths = []
    for stem, (key, label, higher) in AXES.items():
        pts = [(r[key], r["val_bpb"]) for r in rows if not math.isnan(r[key])]
        names = [r["label"] for r in rows if not math.isnan(r[key])]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if pts:
            front = set(pareto_front(pts, higher))
            for i, ((c, q), name) in enumerate(zip(pts, names, strict=True)):
                ax.scatter(c, q, color="tab:red" if i in front else "tab:blue", zorder=3)
                ax.annotate(name, (c, q), fontsize=7, xytext=(4, 4), textcoords="offset points")
            fr = sorted(pts[i] for i in front)
            ax.plot([c for c, _ in fr], [q for _, q in fr], color="tab:red", lw=1, label="Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("val bits per byte (lower is better)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
