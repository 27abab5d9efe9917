"""`python -m attnlab.distill.report <dir> [--out DIR]`: the table of distillation runs.

Finds the run dirs under ``dir`` (config.json + metrics.json, `attnlab.report.gather`),
groups runs that differ only by seed, and writes ``distill_report.md`` (mean ± std over
seeds) and ``distill_report.csv`` (one row per run): student, teacher and scratch val bpb,
the share of the scratch-to-teacher gap that distillation closed, the val bpb before
training (students initialized from the teacher), and the student / teacher ratios of
parameters, forward tokens/s and training FLOPs per token.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from attnlab.report.gather import gather_runs

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


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(statistics.stdev(values))}"


def distill_table(runs) -> str:
    by_label = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    head = ["run", *COLUMNS, "seeds", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in by_label.items():
        done = [r for r in group if r.status == "complete"]
        cells = []
        for key, fmt in COLUMNS.values():
            vals = [r.metrics[key] for r in done if isinstance(r.metrics.get(key), int | float)
                    and math.isfinite(r.metrics[key])]
            cells.append(_cell(vals, fmt))
        status = "complete" if len(done) == len(group) else f"{len(done)}/{len(group)} complete"
        seeds = ",".join(str(r.seed) for r in done)
        lines.append("| " + " | ".join([label, *cells, seeds, status]) + " |")
    failed = [f"- {r.label} ({r.path}): {r.error}" for r in runs if r.status == "failed"]
    return "\n".join(lines + (["", "Failed runs:", *failed] if failed else []))


def write_csv(runs, path: Path) -> None:
    keys = [k for k, _ in COLUMNS.values()] + ["steps", "params", "teacher_params", "tokens_per_s"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "status", "seed", "path", *keys])
        for r in runs:
            w.writerow([r.label, r.status, r.seed, str(r.path), *(r.metrics.get(k, "") for k in keys)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.distill.report", description=__doc__)
    parser.add_argument("dir", help="folder holding distillation run dirs (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write the report (default: dir)")
    args = parser.parse_args(argv)
    try:
        runs = gather_runs(args.dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    out.mkdir(parents=True, exist_ok=True)
    table = distill_table(runs)
    (out / "distill_report.md").write_text(table + "\n")
    write_csv(runs, out / "distill_report.csv")
    print(table)
    print(f"\nwrote: {out / 'distill_report.md'}, {out / 'distill_report.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
