"""Group runs by label (mean ± std over seeds) and write the CSV / markdown table."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict

METRICS = {  # column -> (metrics.json key, format)
    "val_bpb": ("val_bpb", "{:.3f}"),
    "val_loss": ("val_loss", "{:.3f}"),
    "tokens/s": ("tokens_per_s", "{:,.0f}"),
    "peak MiB": ("peak_memory_mib", "{:,.0f}"),
    "attn MFLOP/token": ("attention_flops_per_token", "{:.3g}"),
    "params": ("params", "{:,.0f}"),
}
SCALE = {"attention_flops_per_token": 1e-6}


def group_runs(runs, columns: dict = METRICS) -> list[dict]:
    """One row per label: counts by status, the seeds of its complete runs, and the mean/std
    of each column's metric over complete runs (non-numeric or non-finite values skipped)."""
    by_label = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    rows = []
    for label, group in by_label.items():
        done = [r for r in group if r.status == "complete"]
        row = {"label": label, "runs": len(group), "complete": len(done),
               "partial": sum(r.status == "partial" for r in group),
               "failed": sum(r.status == "failed" for r in group),
               "seeds": ",".join(str(r.seed) for r in done),
               "errors": "; ".join(r.error for r in group if r.error)}
        for key, _ in columns.values():
            vals = [v * SCALE.get(key, 1) for r in done
                    if isinstance(v := r.metrics.get(key), int | float) and math.isfinite(v)]
            row[key] = statistics.fmean(vals) if vals else math.nan
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else math.nan)
        rows.append(row)
    first = next(iter(columns.values()))[0]
    return sorted(rows, key=lambda r: (math.isnan(r[first]), r[first]))


def write_csv(runs, path) -> None:
    fixed = ["label", "status", "seed", "path", "error"]
    keys = sorted({k for r in runs for k, v in r.metrics.items() if not isinstance(v, list | dict)} - set(fixed))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*fixed, *keys])
        for r in runs:
            w.writerow([r.label, r.status, r.seed, str(r.path), r.error, *(r.metrics.get(k, "") for k in keys)])


def _cell(row, key, fmt) -> str:
    mean = row[key]
    if math.isnan(mean):
        return "-"
    std = row[key + "_std"]
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if row["complete"] > 1 else "")


def markdown_table(rows, columns: dict = METRICS) -> str:
    head = ["run", *columns, "seeds", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        status = "complete" if row["complete"] == row["runs"] else (
            f"{row['complete']} complete, {row['partial']} partial, {row['failed']} failed")
        cells = [row["label"], *(_cell(row, k, fmt) for k, fmt in columns.values()), row["seeds"] or "-", status]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"- {row['label']}: {row['errors']}" for row in rows if row["errors"]]
    return "\n".join(lines + (["", "Failed runs:", *errors] if errors else []))
