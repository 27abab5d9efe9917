"""`python -m attnlab.report <sweep_dir> [--out DIR] [--baseline LABEL] [--metric M]
[--confidence C] [--no-floor]`: gather a sweep's runs into report.csv (every run), report.md
(mean ± std over seeds, each row's seed-paired difference against the baseline with its
confidence interval, status marked, n-gram floor rows for language models, accuracy by
distance for recall tasks), Pareto plots and, for recall tasks, accuracy_by_distance.png.

Rows are not ranked by quality: the baseline comes first, then ascending attention FLOPs.
Read the Δ column and the lines under the table; "not significant" means the interval
crosses 0 and the row cannot be told apart from the baseline.

A run dir whose files cannot be read (a truncated or malformed config.json or metrics.json) is
a failed row naming the file and why; the report goes on. Bad arguments print one line
``error: ...`` and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnlab.errors import ArgumentParser, UserInputError, print_error
from attnlab.report.compare import QUALITY, build_report
from attnlab.report.gather import gather_runs
from attnlab.report.plots import BY_DISTANCE_FIGURE, write_accuracy_by_distance, write_pareto_plots
from attnlab.report.tables import write_csv


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m attnlab.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="folder holding run dirs (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--baseline", default=None, metavar="LABEL",
                        help="the row the others are compared with: a label or a part of exactly one "
                             "(default: the one label containing attention=dense, if exactly one does)")
    parser.add_argument("--metric", default=None, choices=sorted(QUALITY),
                        help="quality metric (default: val_bpb, or val_accuracy for recall-task sweeps)")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the paired intervals (default 0.95)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the n-gram floor rows (attnlab.data.ngram) of language-model sweeps")
    args = parser.parse_args(argv)
    out = Path(args.out or args.sweep_dir)
    try:
        runs = gather_runs(args.sweep_dir)
        report = build_report(runs, args.metric, args.baseline, args.confidence, floor=not args.no_floor)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_csv(runs, out / "report.csv")
            (out / "report.md").write_text(report.markdown + "\n")
        except OSError as err:
            raise UserInputError(f"--out {out}: cannot write the report there ({err.strerror or err})") from err
    except (ValueError, TypeError) as err:
        print_error(err)
        return 2
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    floors = {r["label"]: r["val_bpb"] for r in report.references}
    plots = write_pareto_plots(report.rows, out, report.metric.key, floors)
    if report.task and report.by_distance:
        chance = {value: how.split(":")[0] for value, (how, _) in report.chance.items()}
        plots.append(write_accuracy_by_distance(report.by_distance, out / BY_DISTANCE_FIGURE, chance,
                                                [r["label"] for r in report.rows]))
    print(report.markdown)
    print("\nwrote:", ", ".join(str(p) for p in [out / "report.csv", out / "report.md", *plots]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
