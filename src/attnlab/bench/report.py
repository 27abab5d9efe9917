"""Benchmark outputs from `BenchRow`s: results.csv, a markdown table, plot.png, env.json."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from attnlab.bench.harness import BenchRow

CSV_COLUMNS = (
    "impl", "spec", "n", "head_dim", "dtype", "mode", "batch", "heads", "kv_heads", "device",
    "status", "ms", "tflops", "peak_mib", "flops",
)  # then speedup_vs_<baseline>..., spec_repr, reason


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_csv(rows: Sequence[BenchRow], path: Path, baselines: Sequence[str]) -> Path:
    """Every row, measured or skipped; NaN is written as an empty cell."""
    path = Path(path)
    header = [*CSV_COLUMNS, *(f"speedup_vs_{b}" for b in baselines), "spec_repr", "reason"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            values = [getattr(r, c) for c in CSV_COLUMNS]
            values += [r.speedups.get(b, math.nan) for b in baselines]
            values += [r.spec_repr, r.reason]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in values])
    return path


def markdown(rows: Sequence[BenchRow], baselines: Sequence[str], env: dict | None = None) -> str:
    """A markdown table of the measured rows, then the skipped cases grouped by reason."""
    lines = []
    if env is not None:
        lines += [
            f"Device: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
            f"triton {env.get('triton')}, git {str(env.get('git_commit'))[:10]}, {env.get('date')}",
            "",
        ]
    if rows:
        r0 = rows[0]
        lines += [f"B={r0.batch}, Hq={r0.heads}, Hkv={r0.kv_heads}. ms = median per call; TFLOP/s mask-exact; "
                  "speedup vs X = time(X) / time(impl).", ""]
    header = ["impl", "spec", "N", "D", "dtype", "mode", "ms", "TFLOP/s", "peak MiB", *(f"vs {b}" for b in baselines)]
    numeric = {"N", "D", "ms", "TFLOP/s", "peak MiB"}
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join("---:" if h in numeric or h.startswith("vs ") else "---" for h in header) + "|"]
    for r in _table_order(rows):
        if r.ok:
            cells = [r.impl, r.spec, str(r.n), str(r.head_dim), r.dtype, r.mode, _fmt(r.ms, ".3f"),
                     _fmt(r.tflops, ".3g"), _fmt(r.peak_mib, ".1f"),
                     *(_fmt(r.speedups.get(b, math.nan), ".2f") for b in baselines)]
            lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in rows if not r.ok]
    lines += ["", f"Skipped ({len(skipped)} of {len(rows)} cases):" if skipped else "Skipped: none."]
    groups: dict[tuple, list[BenchRow]] = defaultdict(list)
    for r in skipped:
        groups[(r.impl, r.spec, r.dtype, r.mode, r.reason)].append(r)
    for (impl, spec, dtype, mode, reason), members in groups.items():
        ns = ",".join(str(n) for n in dict.fromkeys(m.n for m in members))
        ds = ",".join(str(d) for d in dict.fromkeys(m.head_dim for m in members))
        lines.append(f"- {impl} · {spec} · {dtype} · {mode} · N={ns} D={ds}: {reason}")
    return "\n".join(lines) + "\n"


def _table_order(rows: Sequence[BenchRow]) -> list[BenchRow]:
    """Run order regrouped by spec then mode, so one mode's N sweep reads top to bottom."""
    spec_idx = {s: i for i, s in enumerate(dict.fromkeys(r.spec for r in rows))}
    mode_idx = {m: i for i, m in enumerate(dict.fromkeys(r.mode for r in rows))}
    return sorted(rows, key=lambda r: (spec_idx[r.spec], mode_idx[r.mode]))


def write_plot(rows: Sequence[BenchRow], path: Path) -> Path | None:
    """TFLOP/s vs N, one line per impl (and D / dtype when several), one panel per spec x mode.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend).
    Returns None when no row was measured.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r.ok]
    if not ok:
        return None
    specs = list(dict.fromkeys(r.spec for r in rows))
    modes = list(dict.fromkeys(r.mode for r in rows))
    impls = list(dict.fromkeys(r.impl for r in rows))
    variants = list(dict.fromkeys((r.head_dim, r.dtype) for r in rows))
    colors = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "x"]

    fig = Figure(figsize=(4.2 * len(modes) + 1.8, 3.2 * len(specs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), len(modes), squeeze=False, sharex=True)
    handles = {}
    for i, spec in enumerate(specs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            ax.set_title(f"{spec} · {mode}", fontsize=10)
            for impl in impls:
                for vi, (d, dtype) in enumerate(variants):
                    pts = sorted((r.n, r.tflops) for r in ok
                                 if (r.spec, r.mode, r.impl, r.head_dim, r.dtype) == (spec, mode, impl, d, dtype))
                    if not pts:
                        continue
                    label = impl if len(variants) == 1 else f"{impl} D={d} {dtype}"
                    (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[impl],
                                      linestyle=styles[vi % len(styles)], marker=markers[vi % len(markers)],
                                      markersize=4, label=label)
                    handles.setdefault(label, line)
            ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            if i == len(specs) - 1:
                ax.set_xlabel("sequence length N")
            if j == 0:
                ax.set_ylabel("TFLOP/s (mask-exact)")
    r0 = rows[0]
    fig.suptitle(f"{r0.device} · B={r0.batch} Hq={r0.heads} Hkv={r0.kv_heads}"
                 + ("" if len(variants) > 1 else f" · D={r0.head_dim} {r0.dtype}"), fontsize=11)
    seq_lens = sorted({r.n for r in rows})
    for ax in axes[-1]:
        ax.set_xticks(seq_lens, [str(n) for n in seq_lens], fontsize=8)
    try:  # "outside" legends need matplotlib >= 3.7
        fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8)
    except ValueError:
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8)
    fig.savefig(path, dpi=120)
    return Path(path)


def write_env(env: dict, path: Path) -> Path:
    Path(path).write_text(json.dumps(env, indent=2) + "\n")
    return Path(path)
