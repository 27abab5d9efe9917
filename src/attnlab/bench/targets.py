"""The kernel performance targets (issues 4 and 5), checked against benchmark results.

    python -m attnlab.bench.targets RESULTS_DIR_OR_CSV [...] [--out targets.md]

Reads the ``results.csv`` files that `python -m attnlab.bench` writes, the
``host_overhead.csv`` of `attnlab.bench.host_overhead` and the ``e2e.csv`` of
`attnlab.bench.e2e` (a folder is searched for all three) and prints a summary with every
target as ``met``, ``not met`` or ``not measured``, then one row per (target, case) it could
check, with the measured value, the threshold and whether it is met. Every ratio comes from
one file, i.e. from impls timed back to back in the same run; cases a file does not hold are
not checked (nothing is assumed).

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
* N = 1k (issue 17), dense fwd+bwd: >= 0.8x ``sdpa_flash``, from the grid's N = 1024 rows
  and from host_overhead.csv's time per call (eager and CUDA-graph rows are separate cases).
* end-to-end training at N >= 16k (issue 17, e2e.csv): tokens/s >= 1.1x the ``sdpa`` model
  with dense causal attention, >= 1.7x with sliding window 1024.

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
RESULT_FILES = ("results.csv", "host_overhead.csv", "e2e.csv")
DENSE_FLEX, DENSE_FLASH, DENSE_CUDNN = "dense >= 1.0x flex", "dense >= 1.3x sdpa_flash", "dense stretch >= 0.85x sdpa_cudnn"
MEMORY = "memory fwd+bwd <= 1.1x sdpa_flash"
SWA_IDEAL, SWA_FLEX = "sliding window: speedup >= 80% of ideal", "sliding window >= 1.2x flex"
SPARSE_IDEAL, SPARSE_FLEX = "block-sparse: speedup >= 80% of ideal", "block-sparse >= 1.0x flex"
DOCS_FLEX = "documents >= 1.0x flex"
SINKS, SOFTCAP = "sinks: <= 1.05x the time without sinks", "softcap: <= 1.10x the time without the cap (fwd+bwd)"
SHORT = "N=1k fwd+bwd >= 0.8x sdpa_flash"
E2E_DENSE, E2E_SWA = "end-to-end dense: tokens/s >= 1.1x sdpa", "end-to-end window 1024: tokens/s >= 1.7x sdpa"
# Every target, in the order of the summary; one without a check is reported "not measured".
TARGETS = (DENSE_FLEX, DENSE_FLASH, DENSE_CUDNN, MEMORY, SWA_IDEAL, SWA_FLEX, SPARSE_IDEAL, SPARSE_FLEX, DOCS_FLEX,
           SINKS, SOFTCAP, SHORT, E2E_DENSE, E2E_SWA)


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
            slower_than_plain(SINKS, r, r", sink=\d+", 1.05)
        if r["softcap"] and r["mode"] == "fwd_bwd":
            slower_than_plain(SOFTCAP, r, r", softcap=[^,)]+", 1.10)
        if r["sink"] or r["softcap"]:
            continue
        dense_plain = r["kind"] == "dense" and not r["documents"]
        if dense_plain and r["n"] >= 4096 and r["head_dim"] in (64, 128):
            ratio(DENSE_FLEX, r, "flex", 1.0)
            ratio(DENSE_FLASH, r, "sdpa_flash", 1.3)
            ratio(DENSE_CUDNN, r, "sdpa_cudnn", 0.85)
        if dense_plain and r["n"] == 1024 and r["mode"] == "fwd_bwd":
            ratio(SHORT, r, "sdpa_flash", 0.8)
        if dense_plain and r["n"] >= 16384 and r["mode"] == "fwd_bwd":
            b = other(r, impl="sdpa_flash")
            if b is not None and b["peak_mib"] > 0:
                out.append(Check(MEMORY, _case(r), r["peak_mib"] / b["peak_mib"],
                                 1.1, False, source))
        if r["kind"] == "sliding_window" and (r["window"] or 0) >= 1024 and r["n"] >= 16384:
            of_ideal(SWA_IDEAL, r)
            ratio(SWA_FLEX, r, "flex", 1.2)
        if r["kind"] == "block_sparse" and r["n"] >= 16384:
            of_ideal(SPARSE_IDEAL, r)
            ratio(SPARSE_FLEX, r, "flex", 1.0)
        if r["documents"] and r["n"] >= 16384:
            ratio(DOCS_FLEX, r, "flex", 1.0)
        if r["kind"] == "topk_blocks" and r["n"] >= 16384 and not r["documents"] and r["mode"] == "fwd_bwd":
            of_ideal("topk_blocks: fwd+bwd speedup >= 70% of ideal, selection included", r, 0.7)
            sel = by.get((SELECTION, r["spec_repr"], r["n"], r["head_dim"], r["dtype"], "fwd"))
            if sel is not None:
                out.append(Check("topk_blocks: selection <= 15% of fwd+bwd", _case(r), sel["ms"] / r["ms"],
                                 0.15, False, source))
    return out


def _read_ok(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [r for r in csv.DictReader(f) if r.get("status") == "ok"]


def host_checks(path: Path, source: str) -> list[Check]:
    """N = 1k: sdpa_flash's wall time per fwd+bwd call over ours, per head dim, eager or graphs."""
    rows = [r for r in _read_ok(path) if int(r["n"]) == 1024]
    wall = {(r["impl"], r["head_dim"], r["graphs"]): float(r["wall_us"]) for r in rows}
    out = []
    for (impl, d, graphs), ours in wall.items():
        base = wall.get(("sdpa_flash", d, graphs))
        if impl == OURS and base is not None:
            case = f"per call N=1024 D={d} {'CUDA graph' if graphs == 'yes' else 'eager'}"
            out.append(Check(SHORT, case, base / ours, 0.8, True, source))
    return out


def e2e_checks(path: Path, source: str) -> list[Check]:
    """Training tokens/s of our kernels over the sdpa model at N >= 16k: dense and window 1024."""
    rows = [r for r in _read_ok(path) if int(r["seq_len"]) >= 16384]
    tps = {(r["attention"], r["impl"], r["seq_len"], r["batch"]): float(r["tokens_per_s"]) for r in rows}
    out = []
    for (attention, impl, n, batch), ours in tps.items():
        base = tps.get((attention, "sdpa", n, batch))
        target = {"dense": (E2E_DENSE, 1.1), "swa1024": (E2E_SWA, 1.7)}.get(attention)
        if impl == OURS and base is not None and target is not None:
            out.append(Check(target[0], f"{attention} N={n} batch {batch}", ours / base, target[1], True, source))
    return out


def checks_of_file(path: Path) -> list[Check]:
    """The checks one result file allows, by its name (`RESULT_FILES`)."""
    source = str(path.parent)
    if path.name == "host_overhead.csv":
        return host_checks(path, source)
    if path.name == "e2e.csv":
        return e2e_checks(path, source)
    return checks_of(read_rows(path), source)


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for name in RESULT_FILES for f in p.rglob(name))
        elif p.is_file():
            found.append(p)
        else:
            raise ValueError(f"targets: {str(p)!r} is neither a result file nor a folder holding some")
    if not found:
        raise ValueError(f"targets: no {', '.join(RESULT_FILES)} under {', '.join(map(str, paths))}")
    return found


def markdown(checks: list[Check]) -> str:
    """A summary of every target (met / not met / not measured), then every check."""
    targets = list(dict.fromkeys([*TARGETS, *(c.target for c in checks)]))
    lines = ["| target | status | met | checked | worst | best |", "|---|---|---:|---:|---:|---:|"]
    for t in targets:
        cs = [c for c in checks if c.target == t]
        if not cs:
            lines.append(f"| {t} | not measured | 0 | 0 | - | - |")
            continue
        values = [c.value for c in cs]
        worst, best = (min(values), max(values)) if cs[0].higher_is_better else (max(values), min(values))
        met = sum(c.met for c in cs)
        status = "met" if met == len(cs) else "**not met**"
        lines.append(f"| {t} | {status} | {met} | {len(cs)} | {worst:.2f} | {best:.2f} |")
    lines += ["", "| target | case | measured | needed | met | source |", "|---|---|---:|---:|---|---|"]
    for c in checks:
        need = f"{'>=' if c.higher_is_better else '<='} {c.threshold:g}"
        lines.append(f"| {c.target} | {c.case} | {c.value:.2f} | {need} | {'yes' if c.met else '**no**'} | {c.source} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.bench.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="result files (results.csv, host_overhead.csv, e2e.csv) or folders")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        files = find_results(args.paths)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = [c for f in files for c in checks_of_file(f)]
    text = markdown(checks)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
