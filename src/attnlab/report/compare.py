"""The sweep report: rows against a named baseline with seed-paired confidence intervals.

DESIGN.md ("Results that hold"): experiments run >= 3 seeds and compare against a named
baseline with paired confidence intervals; a difference whose interval crosses 0 is "not
significant"; a language model worse than the 5-gram floor on the same windows makes no
attention claim. So the report

- picks the quality metric from what the runs have (``val_bpb`` for language-model sweeps,
  ``val_accuracy`` for recall-task sweeps) unless one is named;
- gives every row ``Δ vs <baseline>``: run − baseline over the seeds both have, mean and t
  interval (`attnlab.report.stats.paired_difference`), "not significant" when it crosses 0;
- keeps rows in an order that ranks nothing (baseline first, then ascending attention FLOPs per
  token, ties by label) and says so under the table;
- marks rows with fewer than ``MIN_SEEDS`` complete seeds, and (language models) rows worse
  than the 5-gram floor (`attnlab.report.floor`);
- for recall tasks, adds accuracy by distance (mean ± std over seeds) and the chance level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnlab.report.floor import ORDERS, SUB_FLOOR_NOTE, floor_references, reference_rows, sub_floor
from attnlab.report.stats import PairedDifference, paired_difference
from attnlab.report.tables import (
    METRICS,
    ORDER_TEXT,
    TASK_METRICS,
    TASK_NAMES,
    accuracy_by_distance,
    by_distance_table,
    failures,
    group_runs,
    markdown_table,
)

MIN_SEEDS = 3
DEFAULT_BASELINE = "attention=dense"


@dataclass(frozen=True)
class Quality:
    key: str
    higher_is_better: bool
    unit: str  # as in "worse than dense by 0.41 accuracy"
    axis: str  # plot axis label


QUALITY = {
    "val_bpb": Quality("val_bpb", False, "bpb", "val bits per byte (lower is better)"),
    "val_accuracy": Quality("val_accuracy", True, "accuracy", "val accuracy (higher is better)"),
    "val_loss": Quality("val_loss", False, "val loss", "val loss, nats (lower is better)"),
}


def _has(runs, key: str) -> bool:
    return any(isinstance(r.metrics.get(key), int | float) for r in runs if r.status == "complete")


def is_task_sweep(runs) -> bool:
    """Any run on a recall task (config.json ``data.name`` copy / mqar / passkey), or runs that
    report ``val_accuracy`` and no ``val_bpb``."""
    on_task = any(isinstance(d := r.config.get("data"), dict) and d.get("name") in TASK_NAMES for r in runs)
    return on_task or (_has(runs, "val_accuracy") and not _has(runs, "val_bpb"))


def choose_metric(runs, metric: str | None = None) -> str:
    """``metric`` if given (one of QUALITY), else val_bpb for LM sweeps, val_accuracy for task sweeps."""
    if metric is not None:
        if metric not in QUALITY:
            raise ValueError(f"--metric {metric!r} is not allowed: one of {', '.join(QUALITY)}")
        return metric
    return "val_accuracy" if is_task_sweep(runs) else "val_bpb"


def columns_for(metric: str, task: bool) -> dict:
    """The table columns (header -> (metrics key, format)), the quality metric's first."""
    columns = dict(TASK_METRICS if task else METRICS)
    header = next((h for h, (k, _) in columns.items() if k == metric), metric)
    first = {header: columns.pop(header, (metric, "{:.3f}"))}
    return {**first, **columns}


def resolve_baseline(labels, query: str) -> str:
    """The label equal to ``query``, else the one label containing it; ValueError naming the
    option, the value and the labels otherwise."""
    labels = list(labels)
    if query in labels:
        return query
    matches = [lab for lab in labels if query in lab]
    if len(matches) == 1:
        return matches[0]
    allowed = "; ".join(repr(lab) for lab in labels)
    found = "no run label" if not matches else f"{len(matches)} run labels ({'; '.join(map(repr, matches))})"
    raise ValueError(f"--baseline {query!r} matches {found}; allowed: a label or a part of exactly one: {allowed}")


def default_baseline(labels) -> tuple[str | None, str]:
    """(the one label containing ``attention=dense``, "") or (None, why there is none)."""
    matches = [lab for lab in labels if DEFAULT_BASELINE in lab]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, f"no label contains {DEFAULT_BASELINE}"
    return None, f"{len(matches)} labels contain {DEFAULT_BASELINE}"


def chance_accuracy(config: dict) -> tuple[float, str] | None:
    """(chance accuracy, how it was worked out) from config.json ``data``, or None without a
    vocabulary size. MQAR answers are values, half the vocabulary (attnlab.data.recall)."""
    data = config.get("data") if isinstance(config, dict) else None
    vocab = data.get("vocab_size") if isinstance(data, dict) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1 or data.get("name") not in TASK_NAMES:
        return None
    if data["name"] == "mqar" and vocab >= 2:
        values = vocab - vocab // 2
        return 1.0 / values, f"1/{values}: mqar answers are the {values} value tokens of data.vocab_size={vocab}"
    return 1.0 / vocab, f"1/{vocab}: data.vocab_size={vocab}"


@dataclass
class Report:
    """Everything `python -m attnlab.report` writes, computed once."""

    metric: Quality
    task: bool
    columns: dict
    rows: list[dict]  # one per label, in report order (baseline first)
    references: list[dict]  # n-gram floor rows (LM sweeps)
    baseline: str | None
    confidence: float
    notes: list[str] = field(default_factory=list)  # one-line notes: what was skipped and why
    by_distance: dict = field(default_factory=dict)  # label -> {distance: (mean, std, n)}
    chance: dict = field(default_factory=dict)  # chance accuracy -> (how, labels)
    markdown: str = ""


def _ci_header(confidence: float) -> str:
    return f"{confidence * 100:g}% CI"


def _sentence(label: str, baseline: str, d: PairedDifference, quality: Quality) -> str:
    better = (d.mean > 0) == quality.higher_is_better
    low, high = (d.low, d.high) if d.mean > 0 else (-d.high, -d.low)
    return (f"- {label} is {'better' if better else 'worse'} than {baseline} by {abs(d.mean):.3f} {quality.unit} "
            f"({_ci_header(d.confidence)} [{low:.3f}, {high:.3f}], {d.n} paired seeds).")


def _compare(rows, baseline: str | None, quality: Quality, confidence: float, flagged: dict) -> list[str]:
    """Fill each row's ``delta`` / ``delta_text``; the lines that state the outcome (``flagged``:
    label -> k of the rows worse than the k-gram floor, said again beside their outcome)."""
    key = quality.key
    if baseline is None:
        return []
    base = next(r for r in rows if r["label"] == baseline)
    plain, unclear, no_interval = [], [], []
    for row in rows:
        if row is base:
            row["delta"], row["delta_text"] = None, "baseline"
            continue
        d = paired_difference(row["by_seed"].get(key, {}), base["by_seed"].get(key, {}), confidence)
        row["delta"], row["delta_text"] = d, d.describe()
        if d.significant:
            sentence = _sentence(row["label"], baseline, d, quality)
            if row["label"] in flagged or baseline in flagged:
                worse = [lab for lab in (row["label"], baseline) if lab in flagged]
                sentence += f" But {' and '.join(worse)} {'is' if len(worse) == 1 else 'are'} worse than the " \
                            f"{flagged[worse[0]]}-gram floor: no attention claim."
            plain.append(sentence)
        elif d.n >= 2:
            unclear.append(row["label"])
        else:
            no_interval.append(f"{row['label']} ({d.n} in common)")
    lines = plain
    if unclear:
        lines.append(f"- Cannot be told apart from {baseline} (the {_ci_header(confidence)} of the difference "
                     f"crosses 0): {', '.join(unclear)}.")
    if no_interval:
        lines.append(f"- No interval (fewer than 2 seeds in common with {baseline}): {', '.join(no_interval)}.")
    return lines


def build_report(runs, metric: str | None = None, baseline: str | None = None, confidence: float = 0.95,
                 floor: bool = True, floor_orders=ORDERS) -> Report:
    """The report of ``runs`` (`attnlab.report.gather.gather_runs`). ``baseline``: a label or a
    unique part of one (ValueError otherwise); None = the one label containing attention=dense,
    if exactly one does. ``floor``: add the n-gram floor rows (language-model sweeps only)."""
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ValueError(f"--confidence {confidence!r} is not allowed: a number strictly between 0 and 1")
    task = is_task_sweep(runs)
    quality = QUALITY[choose_metric(runs, metric)]
    columns = columns_for(quality.key, task)
    rows = group_runs(runs, columns)
    labels = [r["label"] for r in rows]
    notes = []
    if baseline is not None:
        baseline = resolve_baseline(labels, baseline)
    else:
        baseline, why = default_baseline(labels)
        if baseline is None:
            notes.append(f"No baseline ({why}): rows are not compared; name one with --baseline LABEL.")
    if baseline is not None:
        rows.sort(key=lambda r: r["label"] != baseline)  # stable: the rest keep the cost order
    if not _has(runs, quality.key):
        notes.append(f"No complete run reports {quality.key}.")

    refs, references = [], []
    if floor and not task and quality.key == "val_bpb":
        refs, floor_notes = floor_references(runs, floor_orders)
        notes += floor_notes
        references = reference_rows(refs, "val_bpb")
    flagged = sub_floor(rows, refs, "val_bpb")

    for row in rows:
        n = row["n_seeds"] = row.get(quality.key + "_n", 0)
        marks = []
        if n == 0:
            marks.append("no complete seed")
        elif n < MIN_SEEDS:
            marks.append(f"n={n} seed{'s' if n > 1 else ''}: below the {MIN_SEEDS} the design asks for")
        if row["duplicate_seeds"]:
            marks.append(f"seed {','.join(map(str, row['duplicate_seeds']))} run twice: pairs use the last")
        if row["label"] in flagged:
            marks.append(SUB_FLOOR_NOTE.format(k=flagged[row["label"]]))
        row["notes"] = "; ".join(marks)
    outcome = _compare(rows, baseline, quality, confidence, flagged)

    report = Report(quality, task, columns, rows, references, baseline, confidence, notes)
    if task:
        report.by_distance = accuracy_by_distance(runs)
        for run in runs:
            if (chance := chance_accuracy(run.config)) is not None:
                report.chance.setdefault(chance[0], (chance[1], set()))[1].add(run.label)
    report.markdown = _markdown(report, outcome, refs, flagged)
    return report


def _markdown(report: Report, outcome: list[str], refs, flagged: dict) -> str:
    quality, baseline = report.metric, report.baseline
    extra = {f"Δ vs {baseline} ({_ci_header(report.confidence)})": "delta_text"} if baseline else {}
    table = markdown_table(report.rows + report.references, report.columns, extra=extra, end={"notes": "notes"},
                           list_failures=False)
    first = "the baseline first, then " if baseline else ""
    last = "; n-gram floor rows last" if report.references else ""
    lines = [table, "", f"Row order: {first}{ORDER_TEXT}{last}. The order is not a ranking.",
             f"Quality: {quality.key} ({'higher' if quality.higher_is_better else 'lower'} is better), "
             "mean ± std over complete seeds."]
    if baseline:
        lines += ["", f"Against {baseline}: Δ = run − {baseline} in {quality.key}, paired by seed (the seeds "
                  f"both have), mean [{_ci_header(report.confidence)}, Student t]; \"not significant\" when "
                  "the interval crosses 0.", *outcome]
    thin = [f"{r['label']} (n={r['n_seeds']})" for r in report.rows if 0 < r["n_seeds"] < MIN_SEEDS]
    if thin:
        lines += ["", f"Below the {MIN_SEEDS} seeds the design asks for: {', '.join(thin)}."]
    if refs:
        floors = "; ".join(", ".join(f"{k}-gram {v:.3f}" for k, v in sorted(ref.bpb.items()))
                           + (f" ({ref.name})" if ref.name else "") for ref in refs)
        lines += ["", f"n-gram floor (attnlab.data.ngram, on the runs' own validation windows): {floors} bpb."]
        k = max(k for ref in refs for k in ref.bpb) if any(ref.bpb for ref in refs) else 5
        lines.append(f"Worse than the {k}-gram floor, no attention claim: {', '.join(sorted(flagged))}." if flagged
                     else f"Every row with a val_bpb beats the {k}-gram floor.")
    if report.notes:
        lines += ["", *(f"Note: {n}" for n in report.notes)]
    if report.by_distance:
        order = [r["label"] for r in report.rows]
        lines += ["", "Accuracy by distance (val_accuracy_by_distance; mean ± std over complete seeds; d in "
                  "tokens: copy exact, other tasks power-of-two buckets b <= d < 2b):", "",
                  by_distance_table(report.by_distance, order)]
        if report.chance:
            lines.append("")  # a line right under a table would be read as one more row
        for chance, (how, labels) in sorted(report.chance.items()):
            who = "" if len(report.chance) == 1 else ": " + ", ".join(sorted(labels))
            lines.append(f"Chance: {chance:.3f} ({how}){who}.")
    errors = failures(report.rows)
    if errors:
        lines += ["", "Failed runs:", *errors]
    return "\n".join(lines)
