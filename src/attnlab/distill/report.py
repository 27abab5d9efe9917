"""`python -m attnlab.distill.report <dir> [--out DIR] [--students]`: the table of distillation runs.

Finds the run dirs under ``dir`` (config.json + metrics.json, `attnlab.report.gather`),
groups runs that differ only by seed, and writes ``distill_report.md`` (mean ± std over
seeds, the tables of `attnlab.report` with distillation columns) and ``distill_report.csv``
(one row per run, every scalar metric): student, teacher and scratch val bpb,
the share of the scratch-to-teacher gap that distillation closed, the val bpb before
training (students initialized from the teacher), and the student / teacher ratios of
parameters, forward tokens/s and training FLOPs per token.

``--students`` (a sweep over student sizes and attention layouts, each with
``baseline=scratch``): one row per student with its parameters and mask-exact attention
FLOPs per token (fwd + bwd, at the run's context) beside KD, scratch and teacher val bpb and
the gap closed, rows ordered by size then attention cost; and ``distill_students.png``: val
bpb against student parameters and against attention FLOPs per token, KD and scratch marked.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from attnlab.configs import from_dict
from attnlab.model import ModelConfig, flops_per_token
from attnlab.report.gather import gather_runs
from attnlab.report.tables import METRICS, group_runs, markdown_table, write_csv

COLUMNS = {  # header -> (metrics.json key, format)
    "student bpb": ("val_bpb", "{:.3f}"),
    "teacher bpb": ("teacher_val_bpb", "{:.3f}"),
    "scratch bpb": ("scratch_val_bpb", "{:.3f}"),
    "gap closed": ("gap_closed", "{:.0%}"),
    "bpb before training": ("init_val_bpb", "{:.3f}"),
    "params ratio": ("params_ratio", "{:.2f}"),
    "tokens/s ratio": ("tokens_per_s_ratio", "{:.2f}"),
    "FLOPs ratio": ("flops_ratio", "{:.2f}"),
}
STUDENT_COLUMNS = {  # --students: header -> (metrics.json key, format), the formats of the tables above
    "params": METRICS["params"],
    "attn MFLOP/token": METRICS["attn MFLOP/token"],
    "KD bpb": COLUMNS["student bpb"],
    **{k: COLUMNS[k] for k in ("scratch bpb", "teacher bpb", "gap closed")},
}
FIGURE = "distill_students.png"


def distill_table(runs) -> str:
    return markdown_table(group_runs(runs, COLUMNS), COLUMNS)


def add_attention_flops(runs) -> None:
    """Give each complete run ``attention_flops_per_token`` (training, fwd + bwd, mask-exact,
    at ``data.context``: what `attnlab.train` and, since 2026-11-26, the distill trainer record)
    computed from its config.json when its metrics lack it (older runs). Skipped for students initialized from the teacher (``distill.init=teacher``),
    whose architecture is the teacher's, not the config's ``model``."""
    for run in runs:
        if run.status != "complete" or "attention_flops_per_token" in run.metrics:
            continue
        config = json.loads((run.path / "config.json").read_text())
        if config.get("distill", {}).get("init") == "teacher" or not config.get("model", {}).get("vocab_size"):
            continue
        model = from_dict(ModelConfig, config["model"], "model")
        run.metrics["attention_flops_per_token"] = flops_per_token(model, config["data"]["context"])["attention"]


def _layout(run) -> str:
    """The student's attention layers, e.g. ``sliding_window(w=64,causal)`` (distinct specs, in order)."""
    return " + ".join(dict.fromkeys(run.metrics.get("layer_specs") or ["?"]))


def student_rows(runs) -> list[dict]:
    """`group_runs` rows over STUDENT_COLUMNS, each with its ``layout`` (attention specs), ordered
    by parameters, then attention FLOPs per token (most first), then label."""
    add_attention_flops(runs)
    rows = group_runs(runs, STUDENT_COLUMNS)
    layouts = {run.label: _layout(run) for run in runs if run.status == "complete"}
    for row in rows:
        row["layout"] = layouts.get(row["label"], "?")

    def key(row):
        params, attn = row["params"], row["attention_flops_per_token"]
        return (math.isnan(params), params, -attn if not math.isnan(attn) else 0.0, row["label"])

    return sorted(rows, key=key)


def write_students_figure(rows, path) -> Path:
    """Val bpb against student parameters (left) and attention MFLOP per token (right): one
    colour per attention layout, filled circles = KD, open squares = scratch (mean, bars = std
    over seeds), a line from each scratch student to its KD twin, the teacher dashed. On the
    left, layouts of one size (the same parameters) are spread a little apart to be seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not math.isnan(r["val_bpb"])]
    colours = {layout: f"C{i}" for i, layout in enumerate(dict.fromkeys(r["layout"] for r in rows))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels = [("params", "student parameters", True),
              ("attention_flops_per_token", "attention MFLOP per token, fwd+bwd (mask-exact)", False)]
    spread = {layout: 1 + 0.03 * (i - (len(colours) - 1) / 2) for i, layout in enumerate(colours)}
    for ax, (x_key, x_label, log_x) in zip(axes, panels, strict=True):
        for row in rows:
            colour = colours[row["layout"]]
            x = row[x_key] * (spread[row["layout"]] if log_x else 1)
            if math.isnan(x):
                continue
            kd, scratch = (row["val_bpb"], row["val_bpb_std"]), (row["scratch_val_bpb"], row["scratch_val_bpb_std"])
            ax.errorbar(x, kd[0], yerr=kd[1], fmt="o", color=colour, capsize=3, zorder=3)
            if not math.isnan(scratch[0]):
                ax.errorbar(x, scratch[0], yerr=scratch[1], fmt="s", mfc="none", color=colour, capsize=3, zorder=3)
                ax.plot([x, x], [scratch[0], kd[0]], color=colour, lw=1, alpha=0.5)
        teacher = [r["teacher_val_bpb"] for r in rows if not math.isnan(r["teacher_val_bpb"])]
        if teacher:
            ax.axhline(sum(teacher) / len(teacher), color="gray", ls="--", lw=1)
            ax.annotate(f"teacher {sum(teacher) / len(teacher):.3f}", (0.01, sum(teacher) / len(teacher)),
                        xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points", fontsize=7,
                        color="gray")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val bits per byte (lower is better)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=layout) for layout, c in colours.items()]
    handles += [plt.Line2D([], [], color="k", marker="o", ls="", label="KD"),
                plt.Line2D([], [], color="k", marker="s", mfc="none", ls="", label="scratch"),
                plt.Line2D([], [], color="gray", ls="--", label="teacher")]
    axes[0].legend(handles=handles, fontsize=7, loc="center")
    fig.suptitle("KD vs scratch students: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.distill.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="folder holding distillation run dirs (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write the report (default: dir)")
    parser.add_argument("--students", action="store_true",
                        help=f"one row per student (params, attention FLOPs, KD vs scratch bpb) and {FIGURE}")
    args = parser.parse_args(argv)
    try:
        runs = gather_runs(args.dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "distill_report.md", out / "distill_report.csv"]
    if args.students:
        rows = student_rows(runs)
        table = markdown_table(rows, STUDENT_COLUMNS)
        written.append(write_students_figure(rows, out / FIGURE))
    else:
        table = distill_table(runs)
    written[0].write_text(table + "\n")
    write_csv(runs, written[1])
    print(table)
    print("\nwrote:", ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
