"""Figures of a sweep report.

- Pareto plots: the quality metric (val bpb, lower is better; or val accuracy, higher is
  better) against each cost (tokens/s, peak memory, attention FLOPs), one point per label at
  its mean over seeds, error bars = std over seeds on both axes (a cost that does not vary,
  such as FLOPs, gets none), the front of the means marked, n-gram floors dotted.
- ``accuracy_by_distance.png`` (recall tasks): accuracy against answer distance, one line per
  label, mean ± std over seeds, chance dashed.
"""

from __future__ import annotations

import math
from pathlib import Path

AXES = {  # file stem -> (row key, axis label, higher is better)
    "pareto_tokens_per_s": ("tokens_per_s", "tokens/s (higher is better)", True),
    "pareto_peak_memory": ("peak_memory_mib", "peak memory MiB (lower is better)", False),
    "pareto_attention_flops": ("attention_flops_per_token", "attention MFLOP per token, fwd+bwd (lower is better)", False),
}
BY_DISTANCE_FIGURE = "accuracy_by_distance.png"
QUALITY_AXES = {  # metric -> (axis label, higher is better)
    "val_bpb": ("val bits per byte (lower is better)", False),
    "val_accuracy": ("val accuracy (higher is better)", True),
    "val_loss": ("val loss, nats (lower is better)", False),
}


def pareto_front(points, higher_is_better: bool, quality_higher_is_better: bool = False) -> list[int]:
    """Indices of the points (cost, quality) no other point dominates: a point dominates when it
    is better-or-equal on both (cost: higher is better if ``higher_is_better``; quality: lower is
    better unless ``quality_higher_is_better``) and is not the same point."""
    def at_least_as_good(a, b, higher):
        return a >= b if higher else a <= b

    front = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            at_least_as_good(c2, c, higher_is_better) and at_least_as_good(q2, q, quality_higher_is_better)
            and (c2, q2) != (c, q)
            for c2, q2 in points
        )
        if not dominated:
            front.append(i)
    return front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(std: float) -> float | None:
    return std if std and not math.isnan(std) and std > 0 else None


def write_pareto_plots(rows, out_dir, metric: str = "val_bpb", floors: dict[str, float] | None = None) -> list[Path]:
    """One figure per cost in AXES: ``metric`` against the cost for each row with both (rows
    from `attnlab.report.tables.group_runs`); ``floors`` (name -> value) as dotted lines."""
    plt = _pyplot()
    y_label, y_higher = QUALITY_AXES.get(metric, (metric, False))
    rows = [r for r in rows if not math.isnan(r.get(metric, math.nan)) and not r.get("reference")]
    paths = []
    for stem, (key, label, higher) in AXES.items():
        shown = [r for r in rows if not math.isnan(r.get(key, math.nan))]
        pts = [(r[key], r[metric]) for r in shown]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if pts:
            front = set(pareto_front(pts, higher, y_higher))
            for i, (row, (c, q)) in enumerate(zip(shown, pts, strict=True)):
                ax.errorbar(c, q, xerr=_bar(row.get(key + "_std", math.nan)), yerr=_bar(row.get(metric + "_std")),
                            fmt="o", color="tab:red" if i in front else "tab:blue", capsize=3, zorder=3)
                ax.annotate(row["label"], (c, q), fontsize=7, xytext=(4, 4), textcoords="offset points")
            fr = sorted(pts[i] for i in front)
            ax.plot([c for c, _ in fr], [q for _, q in fr], color="tab:red", lw=1, label="Pareto front (means)")
        for name, value in (floors or {}).items():
            ax.axhline(value, color="gray", ls=":", lw=1, label=name)
        if pts or floors:
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(y_label)
        ax.set_title("mean over seeds, bars = std over seeds", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_accuracy_by_distance(by_distance: dict[str, dict], path, chance: dict[float, str] | None = None,
                               labels=None) -> Path:
    """Accuracy against distance (log2 axis): one line per label (``labels`` order) from
    ``by_distance[label] = {distance: (mean, std, n)}``, bars = std over seeds; ``chance``
    (accuracy -> legend text) dashed."""
    plt = _pyplot()
    labels = [lab for lab in (labels or sorted(by_distance)) if lab in by_distance]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, lab in enumerate(labels):
        items = sorted(by_distance[lab].items())
        xs = [d for d, _ in items]
        ys = [m for _, (m, _, _) in items]
        errs = [s if not math.isnan(s) else 0.0 for _, (_, s, _) in items]
        ax.errorbar(xs, ys, yerr=errs, marker="o", ms=4, capsize=3, color=f"C{i % 10}", label=lab)
    for value, text in sorted((chance or {}).items()):
        ax.axhline(value, color="gray", ls="--", lw=1, label=f"chance {value:.3g} ({text})")
    distances = sorted({d for lab in labels for d in by_distance[lab]})
    if distances and distances[0] > 0:
        ax.set_xscale("log", base=2)
    if 0 < len(distances) <= 16:  # the distances themselves as ticks, written plainly
        ax.set_xticks(distances, [f"{d:g}" for d in distances])
        ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("answer distance, tokens (log2)")
    ax.set_ylabel("val accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if labels or chance:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
