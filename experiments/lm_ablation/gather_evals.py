"""Gather the per-run evaluations of an lm_ablation sweep (``<run>/eval/eval.json`` from
``python -m attnlab.eval tasks=[bpb_by_position,passkey]``) into tables and a figure:

    python experiments/lm_ablation/gather_evals.py <sweep dir> <out dir>

writes ``<out>/position.md`` (bits per byte in power-of-two buckets of token position, mean ±
std over seeds, per layout), ``<out>/passkey.md`` (zero-shot passkey exact match by distance,
prompts pooled over seeds) and ``<out>/bpb_by_position.png``. Runs are labelled as the sweep
report labels them (``attnlab.report.gather_runs``).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from attnlab.report import gather_runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def load(sweep: Path) -> dict[str, list[dict]]:
    """label -> the eval.json records of its complete runs."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for run in gather_runs(sweep):
        path = run.path / "eval" / "eval.json"
        if run.status == "complete" and path.exists():
            by_label[run.label].append(json.loads(path.read_text()))
    return dict(by_label)


def position_table(by_label: dict[str, list[dict]]) -> str:
    spans = next(([tuple(b["positions"]) for b in r["bpb_by_position"]["buckets"]]
                  for records in by_label.values() for r in records), [])
    head = ["run", *(f"pos {a}-{b}" for a, b in spans), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, records in by_label.items():
        cells = [_mean_std([r["bpb_by_position"]["buckets"][i]["bpb"] for r in records]) for i in range(len(spans))]
        lines.append("| " + " | ".join([label, *cells, str(len(records))]) + " |")
    return "\n".join(lines)


def passkey_table(by_label: dict[str, list[dict]]) -> str:
    distances = sorted({int(d) for records in by_label.values() for r in records
                        for d in r["passkey"]["accuracy_by_distance"]})
    head = ["run", *(f"d={d}" for d in distances), "prompts per distance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, records in by_label.items():
        prompts = [p for r in records for p in r["passkey"]["prompts"]]
        cells, counts = [], set()
        for d in distances:
            at = [p["correct"] for p in prompts if p["distance"] == d]
            counts.add(len(at))
            cells.append(f"{sum(at)}/{len(at)}" if at else "-")
        lines.append("| " + " | ".join([label, *cells, ",".join(map(str, sorted(counts)))]) + " |")
    return "\n".join(lines)


def plot(by_label: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in by_label.items():
        curves = np.array([[np.nan if v is None else v for v in r["bpb_by_position"]["bpb_by_position"]]
                           for r in records], dtype=float)  # (seeds, positions)
        mean = np.nanmean(curves, axis=0)
        ax.plot(np.arange(1, len(mean) + 1), mean, lw=1, label=f"{label} ({len(records)} seeds)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (tokens seen)")
    ax.set_ylabel("val bits per byte (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gather_evals.py <sweep dir> <out dir>", file=sys.stderr)
        return 2
    sweep, out = Path(argv[0]), Path(argv[1])
    by_label = load(sweep)
    if not by_label:
        print(f"error: no complete run under {sweep} has eval/eval.json", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "position.md").write_text(position_table(by_label) + "\n")
    plot(by_label, out / "bpb_by_position.png")
    tables = [position_table(by_label)]
    if all("passkey" in r for records in by_label.values() for r in records):  # evaluated with passkey
        tables.append(passkey_table(by_label))
        (out / "passkey.md").write_text(tables[-1] + "\n")
    print(*tables, sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
