"""The kernel performance targets (issues 4 and 5), checked against benchmark results.

    python -m attnlab.bench.targets RESULTS_DIR_OR_CSV [...] [--out targets.md]

Reads the ``results.csv`` files that `python -m attnlab.bench` writes (a folder is searched
for them) and prints one markdown row per (target, case) it can check, with the measured
value, the threshold and whether it is met. Every ratio comes from one ``results.csv``,
i.e. from impls timed back to back in the same run; cases a file does not hold are not
checked (the table lists what was checked, nothing is assumed).

Targets (H100, bf16, our impl ``triton``):

* dense, causal and not, D 64 / 128, N >= 4k, fwd and fwd+bwd: >= 1.0x ``flex``,
  >= 1.3x ``sdpa_flash``; stretch >= 0.85x ``sdpa_cudnn``.
* sliding window W >= 1024 at N = 16k: speedup over our causal kernel >= 80% of the ideal
  (causal pairs / window pairs), and >= 1.2x ``flex``'s sliding window.
* memory: fwd+bwd peak within 1.1x of ``sdpa_flash`` at N = 16k.
* block-sparse at N = 16k: >= 1.0x ``flex`` with the same block mask, and speedup over our
  causal dense kernel >= 80% of the ideal (dense pairs / kept pairs).
* document masking at N = 16k: >= 1.0x ``flex``'s document mask.
* content-selected blocks (issue 16, ``kind="topk_blocks"``) at N = 16k: fwd+bwd speedup over
  our causal dense kernel >= 70% of the ideal, the selection included (it runs inside every
  ``triton`` call), and the selection alone (``triton_selection``, mode fwd) <= 15% of the
  ``triton`` fwd+bwd time. The ideal is mask-exact (causal pairs / chosen pairs): at density
  1/8 of all key blocks that is about 4, not 8, against the causal kernel, which already skips
  the upper half.
* attention sinks (issue 14): a spec with ``sink=S`` at N = 16k takes <= 1.05x the time of
  the same spec without sinks; soft-capping: <= 1.10x the time without the cap, fwd+bwd.

"Speedup over causal / ideal" is ``(t_causal / t_x) / (flops_causal / flops_x)``, which is
the ratio of the two rows' mask-exact TFLOP/s.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

OURS = "triton"
SELECTION = "triton_selection"  # bench-only: the topk_blocks selection alone (config.SELECTION_IMPL)
CAUSAL_REPR = "AttentionSpec(kind='dense', causal=True)"


@dataclass(frozen=True)
class Check:
    target: str
    case: str  # spec N D mode
    value: float
    threshold: float
    higher_is_better: bool
    source: str

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold


def read_rows(path: Path) -> list[dict]:
    """The measured rows of one results.csv, numbers parsed."""
    with Path(path).open() as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    for r in rows:
        for key in ("n", "head_dim"):
            r[key] = int(r[key])
        for key in ("ms", "tflops", "flops", "peak_mib"):
            r[key] = float(r[key]) if r.get(key) else math.nan
        r["kind"] = _field(r["spec_repr"], r"kind='(\w+)'")
        window = _field(r["spec_repr"], r"window=(\d+)[,)]")
        r["window"] = int(window) if window else None
        r["documents"] = " documents" in r["spec_repr"]
        r["sink"] = int(_field(r["spec_repr"], r"sink=(\d+)") or 0)
        r["softcap"] = "softcap=" in r["spec_repr"]
    return rows


def _field(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _case(r: dict) -> str:
    return f"{r['spec']} N={r['n']} D={r['head_dim']} {r['mode']}"


def checks_of(rows: list[dict], source: str) -> list[Check]:
    """Every target check that the rows of one run allow."""
    by = {(r["impl"], r["spec_repr"], r["n"], r["head_dim"], r["dtype"], r["mode"]): r for r in rows}

    def other(r, impl=None, spec_repr=None):
        return by.get((impl or r["impl"], spec_repr or r["spec_repr"], r["n"], r["head_dim"], r["dtype"], r["mode"]))

    out: list[Check] = []

    def ratio(target, r, base, threshold):
        b = other(r, impl=base)
        if b is not None:
            out.append(Check(target, _case(r), b["ms"] / r["ms"], threshold, True, source))

    def of_ideal(target, r, threshold=0.8):
        c = other(r, spec_repr=CAUSAL_REPR)
        if c is not None:
            out.append(Check(target, _case(r), r["tflops"] / c["tflops"], threshold, True, source))

    def slower_than_plain(target, r, option_re, threshold):
        b = other(r, spec_repr=re.sub(option_re, "", r["spec_repr"]))
        if b is not None:
            out.append(Check(target, _case(r), r["ms"] / b["ms"], threshold, False, source))

    for r in rows:
        if r["impl"] != OURS:
            continue
        if r["sink"] and r["n"] >= 16384:
            slower_than_plain("sinks: <= 1.05x the time without sinks", r, r", sink=\d+", 1.05)
        if r["softcap"] and r["mode"] == "fwd_bwd":
            slower_than_plain("softcap: <= 1.10x the time without the cap (fwd+bwd)", r, r", softcap=[^,)]+", 1.10)
        if r["sink"] or r["softcap"]:
            continue
        dense_plain = r["kind"] == "dense" and not r["documents"]
        if dense_plain and r["n"] >= 4096 and r["head_dim"] in (64, 128):
            ratio("dense >= 1.0x flex", r, "flex", 1.0)
            ratio("dense >= 1.3x sdpa_flash", r, "sdpa_flash", 1.3)
            ratio("dense stretch >= 0.85x sdpa_cudnn", r, "sdpa_cudnn", 0.85)
        if dense_plain and r["n"] >= 16384 and r["mode"] == "fwd_bwd":
            b = other(r, impl="sdpa_flash")
            if b is not None and b["peak_mib"] > 0:
                out.append(Check("memory fwd+bwd <= 1.1x sdpa_flash", _case(r), r["peak_mib"] / b["peak_mib"],
                                 1.1, False, source))
        if r["kind"] == "sliding_window" and (r["window"] or 0) >= 1024 and r["n"] >= 16384:
            of_ideal("sliding window: speedup >= 80% of ideal", r)
            ratio("sliding window >= 1.2x flex", r, "flex", 1.2)
        if r["kind"] == "block_sparse" and r["n"] >= 16384:
            of_ideal("block-sparse: speedup >= 80% of ideal", r)
            ratio("block-sparse >= 1.0x flex", r, "flex", 1.0)
        if r["documents"] and r["n"] >= 16384:
            ratio("documents >= 1.0x flex", r, "flex", 1.0)
        if r["kind"] == "topk_blocks" and r["n"] >= 16384 and not r["documents"] and r["mode"] == "fwd_bwd":
            of_ideal("topk_blocks: fwd+bwd speedup >= 70% of ideal, selection included", r, 0.7)
            sel = by.get((SELECTION, r["spec_repr"], r["n"], r["head_dim"], r["dtype"], "fwd"))
            if sel is not None:
                out.append(Check("topk_blocks: selection <= 15% of fwd+bwd", _case(r), sel["ms"] / r["ms"],
                                 0.15, False, source))
    return out


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.rglob("results.csv"))
        elif p.is_file():
            found.append(p)
        else:
            raise ValueError(f"targets: {str(p)!r} is neither a results.csv nor a folder holding some")
    if not found:
        raise ValueError(f"targets: no results.csv under {', '.join(map(str, paths))}")
    return found


def markdown(checks: list[Check]) -> str:
    """A summary per target (met / checked), then every check."""
    targets = list(dict.fromkeys(c.target for c in checks))
    lines = ["| target | met | checked | worst | best |", "|---|---:|---:|---:|---:|"]
    for t in targets:
        cs = [c for c in checks if c.target == t]
        values = [c.value for c in cs]
        worst, best = (min(values), max(values)) if cs[0].higher_is_better else (max(values), min(values))
        lines.append(f"| {t} | {sum(c.met for c in cs)} | {len(cs)} | {worst:.2f} | {best:.2f} |")
    lines += ["", "| target | case | measured | needed | met | source |", "|---|---|---:|---:|---|---|"]
    for c in checks:
        need = f"{'>=' if c.higher_is_better else '<='} {c.threshold:g}"
        lines.append(f"| {c.target} | {c.case} | {c.value:.2f} | {need} | {'yes' if c.met else '**no**'} | {c.source} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.bench.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="results.csv files or folders holding them")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        files = find_results(args.paths)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = [c for f in files for c in checks_of(read_rows(f), str(f.parent))]
    text = markdown(checks)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
