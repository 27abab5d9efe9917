"""`python -m attnlab.distill.report <dir> [--out DIR]`: the table of distillation runs.

Finds the run dirs under ``dir`` (config.json + metrics.json, `attnlab.report.gather`),
groups runs that differ only by seed, and writes ``distill_report.md`` (mean ± std over
seeds, the tables of `attnlab.report` with distillation columns) and ``distill_report.csv``
(one row per run, every scalar metric): student, teacher and scratch val bpb,
the share of the scratch-to-teacher gap that distillation closed, the val bpb before
training (students initialized from the teacher), and the student / teacher ratios of
parameters, forward tokens/s and training FLOPs per token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnlab.report.gather import gather_runs
from attnlab.report.tables import group_runs, markdown_table, write_csv

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


def distill_table(runs) -> str:
    return markdown_table(group_runs(runs, COLUMNS), COLUMNS)


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
