"""`python -m attnlab.report <sweep_dir> [--out DIR]`: gather a sweep's runs into
report.csv (every run), report.md (mean ± std over seeds, status marked) and Pareto plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnlab.report.gather import gather_runs
from attnlab.report.plots import write_pareto_plots
from attnlab.report.tables import group_runs, markdown_table, write_csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.report", description=__doc__)
    parser.add_argument("sweep_dir", help="folder holding run dirs (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        runs = gather_runs(args.sweep_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = group_runs(runs)
    table = markdown_table(rows)
    write_csv(runs, out / "report.csv")
    (out / "report.md").write_text(table + "\n")
    plots = write_pareto_plots(rows, out)
    print(table)
    print("\nwrote:", ", ".join(str(p) for p in [out / "report.csv", out / "report.md", *plots]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
