"""Figures of `python -m attnlab.eval` (matplotlib, Agg): loss by position, accuracy by distance.
Each is drawn from the task's JSON section, which is written beside it."""

from __future__ import annotations

from pathlib import Path


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    from attnlab.data.cache import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def plot_bpb_by_position(section: dict, path: Path, title: str) -> Path:
    """Bits per byte against position (log x): each position faint, power-of-two buckets bold."""
    fig, ax = _figure()
    values = section["bpb_by_position"]
    xs = [p + 1 for p, v in enumerate(values) if v is not None]
    ax.plot(xs, [v for v in values if v is not None], color="tab:blue", alpha=0.3, lw=0.8, label="each position")
    buckets = [b for b in section["buckets"] if b["bpb"] is not None]
    centres = [(b["positions"][0] * b["positions"][1]) ** 0.5 for b in buckets]  # geometric centre
    ax.plot(centres, [b["bpb"] for b in buckets], "o-", color="tab:blue", lw=2,
            label="positions [2^k, 2^(k+1))")
    ax.axhline(section["val_bpb"], color="gray", ls="--", lw=1, label=f"all positions: {section['val_bpb']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position (tokens seen)")
    ax.set_ylabel("bits per byte")
    ax.set_title(f"{title}: {section['windows']} windows of {section['context']} tokens", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_by_distance(section: dict, path: Path, title: str) -> Path:
    """Accuracy against distance (log x), with 95% intervals where the section has them and
    the chance level."""
    fig, ax = _figure()
    acc = section.get("accuracy_by_distance") or section["val_accuracy_by_distance"]
    xs = [int(d) for d in acc]
    ys = [acc[d] for d in acc]
    ci = section.get("ci95_by_distance")
    if ci:
        lower = [max(0.0, ys[i] - ci[d][0]) for i, d in enumerate(acc)]  # max: float error at 0 and 1
        upper = [max(0.0, ci[d][1] - ys[i]) for i, d in enumerate(acc)]
        ax.errorbar(xs, ys, yerr=[lower, upper], fmt="o-", capsize=3, color="tab:red", label="exact match, 95% CI")
    else:
        ax.plot(xs, ys, "o-", color="tab:red", label="answer accuracy")
    ax.axhline(section["chance_accuracy"], color="gray", ls="--", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("distance (tokens)")
    ax.set_ylabel("accuracy")
    n = (f"{section['samples']} prompts per distance, {section['prompt_tokens']} tokens each"
         if section.get("mode") == "zero_shot"
         else f"{section.get('val_answers')} answers")
    ax.set_title(f"{title} ({n})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
