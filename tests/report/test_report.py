"""`attnlab.report`: gathering runs (complete, partial, failed), tables, Pareto plots, a real sweep."""

import csv
import json
import subprocess
import sys

import pytest

from attnlab.report import gather_runs, group_runs, markdown_table
from attnlab.report.__main__ import main as report_main
from attnlab.report.plots import pareto_front


def make_run(root, name, overrides, metrics=None, error=None, seed=0):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "config.json").write_text(json.dumps({"train": {"seed": seed}, "model": {}}))
    if metrics is not None:
        (d / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if error is not None:
        (d / "error.txt").write_text(error)
    return d


def metrics(bpb, tok_s, mem=100.0, flops=1e6):
    return {"status": "complete", "val_bpb": bpb, "val_loss": bpb * 0.69, "tokens_per_s": tok_s,
            "peak_memory_mib": mem, "attention_flops_per_token": flops, "params": 1000}


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
