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
bpb against student parameters and against attention FLOPs per token, KD and scratch marked,
the n-gram floor dotted.

DESIGN.md ("Results that hold"), as `python -m attnlab.report` does it, with its code
(`attnlab.report.stats.paired_difference`, `attnlab.report.floor`):

- a second table of seed-paired differences with their 95% t intervals, "not significant"
  when the interval crosses 0: KD student − its own scratch twin (same run, so the same
  student, init and batches), and every row against the named baseline ``--baseline
  KEY=VALUE``: the row whose overrides are its own with ``KEY=VALUE`` (default with
  ``--students``: ``attention=dense``, the dense student of the same size; KD against KD,
  scratch against scratch). Without ``--students`` also student − teacher and student − its
  bpb before training (students initialized from the teacher);
- the n-gram floor of the runs' own validation windows (3- and 5-gram rows, the figure's
  dotted lines; ``--no-floor`` skips it), and a note on every row whose KD (student) or
  scratch bpb is worse than the 5-gram: it makes no attention claim; the teacher likewise;
- a note on rows with fewer than 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from attnlab.configs import from_dict
from attnlab.model import ModelConfig, flops_per_token
from attnlab.report.compare import MIN_SEEDS
from attnlab.report.floor import ORDERS, SUB_FLOOR_NOTE, floor_references, reference_rows, sub_floor
from attnlab.report.gather import gather_runs
from attnlab.report.stats import paired_difference
from attnlab.report.tables import METRICS, failures, group_runs, markdown_table, write_csv

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
CONFIDENCE = 0.95
STUDENTS_BASELINE = "attention=dense"  # --students: each student against the dense one of its size
CI = f"{CONFIDENCE * 100:g}% CI"


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


# ---------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class Comparison:
    """One column of the paired-difference table: ``a − b`` per seed, ``b`` from the same row
    (``against="self"``) or from the row's baseline (``against="baseline"``)."""

    header: str
    a: str  # metrics key of the row
    b: str  # metrics key of the row itself or of its baseline row
    against: str  # "self" | "baseline"


def _overrides(label: str) -> dict | None:
    """``{"attention": "dense", "model.d_model": "32"}`` from a label of ``KEY=VALUE`` tokens, or
    None when a token is not one (a label made from the model, not from overrides)."""
    pairs = [token.split("=", 1) for token in label.split()]
    if not pairs or any(len(p) != 2 for p in pairs):
        return None
    return dict(pairs)


def parse_baseline(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE); ValueError naming the option otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip() or " " in text.strip():
        raise ValueError(f"--baseline {text!r} is not allowed: one override KEY=VALUE, e.g. {STUDENTS_BASELINE}")
    return key.strip(), value.strip()


def baseline_labels(rows, baseline: str) -> dict[str, str | None]:
    """label -> the label of its baseline row: its own overrides with ``KEY=VALUE`` (itself when it
    already has them; None when it lacks KEY or no row has those overrides)."""
    key, value = parse_baseline(baseline)
    by_overrides = {}
    for row in rows:
        if (o := _overrides(row["label"])) is not None:
            by_overrides.setdefault(frozenset(o.items()), row["label"])
    found = {}
    for row in rows:
        o = _overrides(row["label"])
        if o is None or key not in o:
            found[row["label"]] = None
            continue
        found[row["label"]] = by_overrides.get(frozenset({**o, key: value}.items()))
    return found


def comparisons(rows, students: bool, baseline: str | None) -> list[Comparison]:
    """The columns of the paired-difference table that some row can fill."""
    def has(key):
        return any(not math.isnan(row.get(key, math.nan)) for row in rows)

    if students:
        cols = [Comparison("KD − scratch", "val_bpb", "scratch_val_bpb", "self")]
        if baseline:
            cols += [Comparison(f"KD: Δ vs {baseline}", "val_bpb", "val_bpb", "baseline"),
                     Comparison(f"scratch: Δ vs {baseline}", "scratch_val_bpb", "scratch_val_bpb", "baseline")]
    else:
        cols = [Comparison("student − teacher", "val_bpb", "teacher_val_bpb", "self"),
                Comparison("student − scratch", "val_bpb", "scratch_val_bpb", "self"),
                Comparison("student − before training", "val_bpb", "init_val_bpb", "self")]
        if baseline:
            cols += [Comparison(f"student: Δ vs {baseline}", "val_bpb", "val_bpb", "baseline"),
                     Comparison(f"scratch: Δ vs {baseline}", "scratch_val_bpb", "scratch_val_bpb", "baseline")]
    return [c for c in cols if has(c.a) and has(c.b)]


def paired_table(rows, cols: list[Comparison], baselines: dict) -> tuple[str, list[str]]:
    """(the markdown table of the paired differences, one summary line per column). Each row's
    ``paired[header]`` gets its PairedDifference (None: the baseline itself or no baseline)."""
    by_label = {row["label"]: row for row in rows}
    lines = ["| run | " + " | ".join(f"{c.header} ({CI})" for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    summary = {c.header: {"lower": [], "higher": [], "unclear": [], "none": []} for c in cols}
    for row in rows:
        row["paired"], cells = {}, []
        for c in cols:
            other = row if c.against == "self" else by_label.get(baselines.get(row["label"]) or "")
            if other is None:
                row["paired"][c.header] = None
                cells.append("no baseline row")
                continue
            if other is row and c.against == "baseline":
                row["paired"][c.header] = None
                cells.append("baseline")
                continue
            d = paired_difference(row["by_seed"].get(c.a, {}), other["by_seed"].get(c.b, {}), CONFIDENCE)
            row["paired"][c.header] = d
            if d.n == 0:
                cells.append("-")
                continue
            cells.append(d.describe())
            bucket = "none" if d.n < 2 else ("unclear" if not d.significant else
                                              "lower" if d.mean < 0 else "higher")
            summary[c.header][bucket].append(row["label"])
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    text = []
    for c in cols:
        s = summary[c.header]
        parts = [f"lower bpb (interval below 0) for {len(s['lower'])}",
                 f"higher (interval above 0) for {len(s['higher'])}",
                 f"not significant for {len(s['unclear'])}"]
        if s["none"]:
            parts.append(f"no interval (< 2 paired seeds) for {len(s['none'])}")
        line = f"- {c.header}: {', '.join(parts)}."
        for bucket, name in (("lower", "Lower"), ("higher", "Higher"), ("unclear", "Not significant")):
            if s[bucket]:
                line += f" {name}: {'; '.join(s[bucket])}."
        text.append(line)
    return "\n".join(lines), text


# ---------------------------------------------------------------- n-gram floor and notes


def floor_lines(runs, rows, students: bool, floor: bool) -> tuple[list, list[dict], list[str]]:
    """(the floor references, their table rows, the lines under the tables); fills each row's
    ``notes``: fewer than MIN_SEEDS seeds, KD / student or scratch bpb worse than the highest-order
    floor of its data (`attnlab.report.floor.sub_floor`)."""
    refs, lines = [], []
    if floor:
        refs, notes = floor_references(runs, ORDERS)
        lines += [f"Note: {n}" for n in notes]
    who = {"val_bpb": "KD" if students else "student", "scratch_val_bpb": "scratch"}
    flagged = {key: sub_floor(rows, refs, key) for key in who}
    for row in rows:
        marks = []
        n = row.get("val_bpb_n", 0)
        if n == 0:
            marks.append("no complete seed")
        elif n < MIN_SEEDS:
            marks.append(f"n={n} seed{'s' if n > 1 else ''}: below the {MIN_SEEDS} the design asks for")
        worse = [key for key, f in flagged.items() if row["label"] in f]
        if worse:
            marks.append(f"{' and '.join(who[key] for key in worse)} "
                         + SUB_FLOOR_NOTE.format(k=flagged[worse[0]][row["label"]]))
        row["notes"] = "; ".join(marks)
    if refs:
        floors = "; ".join(", ".join(f"{k}-gram {v:.3f}" for k, v in sorted(ref.bpb.items()))
                           + (f" ({ref.name})" if ref.name else "") for ref in refs)
        lines.append(f"n-gram floor (attnlab.data.ngram, interpolated Witten-Bell, on the runs' own validation "
                     f"windows): {floors} bpb. A model worse than the 5-gram makes no attention claim.")
        k = max((k for ref in refs for k in ref.bpb), default=5)
        worse = []
        for key, f in flagged.items():
            having = [r["label"] for r in rows if not math.isnan(r.get(key, math.nan))]
            if f and len(f) == len(having):
                worse.append(f"{who[key]} of every row ({len(f)})")
            elif f:
                worse.append(f"{who[key]} of {', '.join(lab for lab in having if lab in f)}")
        lines.append(f"Worse than the {k}-gram floor, no attention claim: {'; '.join(worse)}." if worse
                     else f"Every {' and '.join(who[key] for key in who if any(r['by_seed'].get(key) for r in rows))}"
                          f" mean beats the {k}-gram floor.")
        teacher = [r["teacher_val_bpb"] for r in rows if not math.isnan(r.get("teacher_val_bpb", math.nan))]
        if teacher and len(refs) == 1 and refs[0].bpb:
            t, floor_k = sum(teacher) / len(teacher), refs[0].bpb[k]
            lines.append(f"Teacher: val bpb {t:.3f}, {'better' if t < floor_k else 'worse'} than the {k}-gram "
                         f"({floor_k:.3f}) by {abs(t - floor_k):.3f}"
                         + ("." if t < floor_k else ": no attention claim for the teacher either."))
    elif floor:
        lines.append("n-gram floor: not computed (see the note above): no row is checked against it.")
    return refs, reference_rows(refs, "val_bpb"), lines


def distill_report(runs, students: bool = False, baseline: str | None = None, floor: bool = True) -> dict:
    """Everything the report writes: ``rows`` (one per label), ``references`` (floor rows),
    ``markdown`` (the table, the paired differences, the floor lines). ``baseline``: KEY=VALUE
    (None: ``attention=dense`` with ``students``, no baseline otherwise)."""
    if students:
        rows, columns = student_rows(runs), STUDENT_COLUMNS
        baseline = baseline or STUDENTS_BASELINE
    else:
        rows, columns = group_runs(runs, COLUMNS), COLUMNS
    for row in rows:  # seeds in numeric order (the runs come in folder order: 10 before 2)
        row["seeds"] = ",".join(sorted(row["seeds"].split(","), key=lambda x: (len(x), x))) if row["seeds"] else ""
    baselines = baseline_labels(rows, baseline) if baseline else {}
    refs, references, lines = floor_lines(runs, rows, students, floor)
    table = markdown_table(rows + references, columns, end={"notes": "notes"}, list_failures=False)
    cols = comparisons(rows, students, baseline)
    parts = [table, "", "Mean ± std over complete seeds" + ("; n-gram floor rows last (status reference)."
                                                              if references else ".")]
    if cols:
        paired, summary = paired_table(rows, cols, baselines)
        base = (f" The baseline of a row is the row whose overrides are its own with {baseline}"
                + (" (the dense student of the same size)" if students and baseline == STUDENTS_BASELINE else "")
                + ".") if baseline else ""
        twin = "; a KD student and its scratch twin share student, init and batches" if students else ""
        parts += ["", f"Paired differences in val bpb (negative = lower bpb, better): a − b over the seeds both have "
                      f"(paired by seed{twin}), mean [{CI}, Student t]; \"not significant\" when the interval "
                      f"crosses 0.{base}", "", paired, "", *summary]
        if baseline and not any(v not in (None, k) for k, v in baselines.items()):
            parts += ["", f"Note: no row has a baseline row ({baseline}) other than itself."]
    thin = [f"{r['label']} (n={r.get('val_bpb_n', 0)})" for r in rows if 0 < r.get("val_bpb_n", 0) < MIN_SEEDS]
    if thin:
        parts += ["", f"Below the {MIN_SEEDS} seeds the design asks for: {', '.join(thin)}."]
    if lines:
        parts += ["", *lines]
    if errors := failures(rows):
        parts += ["", "Failed runs:", *errors]
    return {"rows": rows, "references": references, "refs": refs, "markdown": "\n".join(parts)}


def write_students_figure(rows, path, floors: dict[str, float] | None = None) -> Path:
    """Val bpb against student parameters (left) and attention MFLOP per token (right): one
    colour per attention layout, filled circles = KD, open squares = scratch (mean, bars = std
    over seeds), a line from each scratch student to its KD twin, the teacher dashed, ``floors``
    (name -> bpb, e.g. the n-gram floor rows) dotted. On the left, layouts of one size (the same
    parameters) are spread a little apart to be seen."""
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
        for name, bpb in sorted((floors or {}).items(), key=lambda kv: kv[1]):
            ax.axhline(bpb, color="k", ls=":", lw=1)
            ax.annotate(f"{name} {bpb:.3f}", (0.99, bpb), xycoords=("axes fraction", "data"), xytext=(0, 3),
                        textcoords="offset points", fontsize=7, ha="right")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val bits per byte (lower is better)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=layout) for layout, c in colours.items()]
    handles += [plt.Line2D([], [], color="k", marker="o", ls="", label="KD"),
                plt.Line2D([], [], color="k", marker="s", mfc="none", ls="", label="scratch"),
                plt.Line2D([], [], color="gray", ls="--", label="teacher")]
    if floors:
        handles.append(plt.Line2D([], [], color="k", ls=":", label="n-gram floor"))
    axes[0].legend(handles=handles, fontsize=7, loc="center")
    n = max((int(r.get("val_bpb_n", 0)) for r in rows), default=0)
    fig.suptitle(f"KD vs scratch students: mean ± std over seeds (n = {n})", fontsize=10)
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
    parser.add_argument("--baseline", default=None, metavar="KEY=VALUE",
                        help="each row is compared (paired by seed) with the row whose overrides are its own "
                             f"with KEY=VALUE (default with --students: {STUDENTS_BASELINE}; none otherwise)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the n-gram floor (attnlab.data.ngram) rows and checks")
    args = parser.parse_args(argv)
    try:
        if args.baseline is not None:
            parse_baseline(args.baseline)
        runs = gather_runs(args.dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "distill_report.md", out / "distill_report.csv"]
    report = distill_report(runs, students=args.students, baseline=args.baseline, floor=not args.no_floor)
    if args.students:
        floors = {r["label"].removeprefix("n-gram floor, "): r["val_bpb"] for r in report["references"]}
        written.append(write_students_figure(report["rows"], out / FIGURE, floors))
    written[0].write_text(report["markdown"] + "\n")
    write_csv(runs, written[1])
    print(report["markdown"])
    print("\nwrote:", ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
