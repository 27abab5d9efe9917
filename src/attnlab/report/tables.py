"""Group runs by label (mean ± std over seeds, and each seed's value for paired comparisons)
and write the CSV / markdown tables.

Rows come in an order that carries no quality claim: ascending attention FLOPs per token,
ties (and rows without FLOPs, last) by label. `attnlab.report.compare` puts the baseline first.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict

from attnlab.report.stats import mean, std

METRICS = {  # column -> (metrics.json key, format): language-model sweeps
    "val_bpb": ("val_bpb", "{:.3f}"),
    "val_loss": ("val_loss", "{:.3f}"),
    "tokens/s": ("tokens_per_s", "{:,.0f}"),
    "peak MiB": ("peak_memory_mib", "{:,.0f}"),
    "attn MFLOP/token": ("attention_flops_per_token", "{:.3g}"),
    "params": ("params", "{:,.0f}"),
}
TASK_METRICS = {  # recall-task sweeps (data.name copy / mqar / passkey): no val_bpb
    "val_accuracy": ("val_accuracy", "{:.3f}"),
    "val_loss": ("val_loss", "{:.3f}"),
    **{k: v for k, v in METRICS.items() if k not in ("val_bpb", "val_loss")},
}
SCALE = {"attention_flops_per_token": 1e-6}
ORDER_KEY = "attention_flops_per_token"
ORDER_TEXT = "ascending attention MFLOP per token, ties by label"
BY_DISTANCE = "val_accuracy_by_distance"
TASK_NAMES = ("copy", "mqar", "passkey")  # attnlab.data.config.TASKS, not imported: attnlab.data pulls in torch


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def group_runs(runs, columns: dict = METRICS) -> list[dict]:
    """One row per label: counts by status, the seeds of its complete runs, the mean/std of each
    column's metric over complete runs (non-numeric or non-finite values skipped; std 0 for one
    value), ``<key>_n`` (distinct seeds with a value) and ``by_seed[key] = {seed: value}`` for
    paired comparisons. Ordered by ascending
    attention FLOPs per token (rows without, last), then label: no quality ranking."""
    by_label = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    rows = []
    for label, group in by_label.items():
        done = [r for r in group if r.status == "complete"]
        seeds = [r.seed for r in done]
        row = {"label": label, "runs": len(group), "complete": len(done),
               "partial": sum(r.status == "partial" for r in group),
               "failed": sum(r.status == "failed" for r in group),
               "seeds": ",".join(str(s) for s in seeds),
               "duplicate_seeds": sorted({s for s in seeds if s is not None and seeds.count(s) > 1}),
               "errors": "; ".join(r.error for r in group if r.error), "by_seed": {}}
        keys = {key for key, _ in columns.values()} | {ORDER_KEY}
        for key in keys:
            pairs = [(r.seed, r.metrics[key] * SCALE.get(key, 1)) for r in done if _number(r.metrics.get(key))]
            vals = [v for _, v in pairs]
            row[key] = mean(vals)
            row[key + "_std"] = std(vals) if len(vals) > 1 else (0.0 if vals else math.nan)
            row["by_seed"][key] = {s: v for s, v in pairs if s is not None}
            row[key + "_n"] = len(row["by_seed"][key]) + sum(s is None for s, _ in pairs)  # distinct seeds
        rows.append(row)
    return sorted(rows, key=order_key)


def order_key(row) -> tuple:
    cost = row.get(ORDER_KEY, math.nan)
    return (math.isnan(cost), 0.0 if math.isnan(cost) else cost, row["label"])


def write_csv(runs, path) -> None:
    """One line per run; a metric that is a dict of numbers (``val_accuracy_by_distance``) becomes
    one column per entry, ``key[entry]``."""
    fixed = ["label", "status", "seed", "path", "error"]

    def flat(metrics: dict) -> dict:
        out = {}
        for k, v in metrics.items():
            if isinstance(v, dict):
                out.update({f"{k}[{sub}]": x for sub, x in v.items() if not isinstance(x, list | dict)})
            elif not isinstance(v, list):
                out[k] = v
        return out

    def sort_key(k: str):  # numeric entries in numeric order: [8] before [16]
        base, _, sub = k.partition("[")
        sub = sub.rstrip("]")
        return (base, not sub.lstrip("-").isdigit(), int(sub) if sub.lstrip("-").isdigit() else 0, sub)

    flats = [flat(r.metrics) for r in runs]
    keys = sorted({k for f in flats for k in f} - set(fixed), key=sort_key)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*fixed, *keys])
        for r, values in zip(runs, flats, strict=True):
            w.writerow([r.label, r.status, r.seed, str(r.path), r.error, *(values.get(k, "") for k in keys)])


def _cell(row, key, fmt) -> str:
    mean_ = row.get(key, math.nan)
    if math.isnan(mean_):
        return "-"
    std_ = row[key + "_std"]
    return fmt.format(mean_) + (f" ± {fmt.format(std_)}" if row["complete"] > 1 else "")


def status_text(row) -> str:
    if "status_text" in row:
        return row["status_text"]
    if row["complete"] == row["runs"]:
        return "complete"
    return f"{row['complete']} complete, {row['partial']} partial, {row['failed']} failed"


def failures(rows) -> list[str]:
    """``- label: errors`` for every row with a failed run."""
    return [f"- {row['label']}: {row['errors']}" for row in rows if row.get("errors")]


def markdown_table(rows, columns: dict = METRICS, extra: dict | None = None, end: dict | None = None,
                   list_failures: bool = True) -> str:
    """The table of ``rows``: run, the metric columns (mean ± std over complete seeds), seeds,
    status. ``extra`` (header -> row key of a ready string) goes right after the first metric
    column, ``end`` after status. Failed runs are listed under the table unless ``list_failures``
    is False."""
    extra, end = extra or {}, end or {}
    headers = list(columns)
    head = ["run", *headers[:1], *extra, *headers[1:], "seeds", "status", *end]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        metric_cells = [_cell(row, k, fmt) for k, fmt in columns.values()]
        cells = [row["label"], *metric_cells[:1], *(row.get(k, "") for k in extra.values()), *metric_cells[1:],
                 row["seeds"] or "-", status_text(row), *(row.get(k, "") for k in end.values())]
        lines.append("| " + " | ".join(cells) + " |")
    errors = failures(rows) if list_failures else []
    return "\n".join(lines + (["", "Failed runs:", *errors] if errors else []))


def _distance(key) -> int | float | None:
    try:
        d = float(key)
    except (TypeError, ValueError):
        return None
    return int(d) if d.is_integer() else d


def accuracy_by_distance(runs, key: str = BY_DISTANCE) -> dict[str, dict]:
    """label -> {distance: (mean, std, n seeds)} over the complete runs' ``metrics[key]``
    (str(distance) -> accuracy); std is nan for one seed. Labels without the metric are left out."""
    values = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_distance = run.metrics.get(key) if run.status == "complete" else None
        if not isinstance(by_distance, dict):
            continue
        for d, acc in by_distance.items():
            if (dist := _distance(d)) is not None and _number(acc):
                values[run.label][dist].append(acc)
    return {label: {d: (mean(v), std(v), len(v)) for d, v in sorted(per.items())} for label, per in values.items()}


def by_distance_table(by_distance: dict[str, dict], labels=None, fmt: str = "{:.3f}") -> str:
    """Markdown: one row per label (in ``labels`` order, default sorted), one column per distance,
    cells ``mean ± std`` over seeds (``mean`` alone for one seed, ``-`` where missing)."""
    labels = [lab for lab in (labels or sorted(by_distance)) if lab in by_distance]
    distances = sorted({d for lab in labels for d in by_distance[lab]})
    lines = ["| run | " + " | ".join(f"d={d}" for d in distances) + " | seeds |",
             "|" + "---|" * (len(distances) + 2)]
    for lab in labels:
        cells = []
        for d in distances:
            if d not in by_distance[lab]:
                cells.append("-")
                continue
            m, s, n = by_distance[lab][d]
            cells.append(fmt.format(m) + (f" ± {fmt.format(s)}" if n > 1 else ""))
        n_max = max(n for _, _, n in by_distance[lab].values())
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {n_max} |")
    return "\n".join(lines)
