"""Sweeps: rerun skips completed runs and keeps runs of another config, launchers (joblib, submitit_local, SLURM preset), Optuna."""

import json
import subprocess
import sys

import hydra
import pytest
import yaml

from attnlab.paths import CONF_DIR
from attnlab.report import gather_runs

TINY = ["model=tiny", "train.steps=2", "train.eval_every=0", "train.logger=none", "train.progress=false",
        "data.batch_size=2", "data.val_tokens=128"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "attnlab-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def train(*args):
    out = subprocess.run([sys.executable, "-m", "attnlab.train", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_rerun_skips_completed_runs_and_redoes_changed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", "attention=dense,swa", *TINY, f"hydra.sweep.dir={sweep}")
    first = {r.path.name: json.loads((r.path / "metrics.json").read_text()) for r in gather_runs(sweep)}
    again = train("-m", "attention=dense,swa", *TINY, f"hydra.sweep.dir={sweep}")
    assert again.stdout.count("skip:") == 2
    assert {r.path.name: json.loads((r.path / "metrics.json").read_text()) for r in gather_runs(sweep)} == first
    # Another config into the same dirs: each run is kept as it is, the error names the key.
    changed = train("-m", "attention=dense,swa", *TINY, "train.lr=2e-3", f"hydra.sweep.dir={sweep}")
    assert changed.stdout.count("skip:") == 0, "a different config is not skipped"
    assert changed.stderr.count("of another config (train.lr: 0.001 -> 0.002)") == 2, changed.stderr[-2000:]
    assert {r.path.name: json.loads((r.path / "metrics.json").read_text()) for r in gather_runs(sweep)} == first
    forced = train("-m", "attention=dense,swa", *TINY, "train.lr=2e-3", "resume=force", f"hydra.sweep.dir={sweep}")
    assert forced.stdout.count("skip:") == 0
    assert all(r.status == "complete" and r.config["train"]["lr"] == 2e-3 for r in gather_runs(sweep))


def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    train("-m", "hydra/launcher=submitit_local", "attention=dense,bigbird", *TINY, f"hydra.sweep.dir={sweep}")
    assert sorted(r.status for r in gather_runs(sweep)) == ["complete", "complete"]


def test_optuna_search_minimises_val_bpb(tmp_path):
    sweep = tmp_path / "optuna"
    train("hparams_search=optuna_bpb", "hydra.sweeper.n_trials=2", *TINY, f"hydra.sweep.dir={sweep}")
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    runs = gather_runs(sweep)
    assert len(runs) == 2 and result["best_value"] == min(r.metrics["val_bpb"] for r in runs)
    assert set(result["best_params"]) == {"train.lr", "model.dropout", "attention"}


def test_slurm_preset_composes():
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240


def test_demo_sweep_and_report_run_tiny(tmp_path):
    """make demo's sweep (experiment=attention_ablation), cut to 2 layouts x 2 steps, then its
    report: paired intervals against dense, accuracy by distance (table and figure)."""
    sweep = tmp_path / "demo"
    train("experiment=attention_ablation", "attention=dense,swa16", "train.seed=0,1", "train.steps=2",
          "data.val_sequences=8", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={sweep}")
    out = subprocess.run([sys.executable, "-m", "attnlab.report", str(sweep)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (sweep / "report.md").read_text()
    assert "Δ vs attention=dense (95% CI)" in report and "| run | d=8 | d=16 | d=32 | d=64 |" in report
    assert "n=2 seeds: below the 3" in report and (sweep / "accuracy_by_distance.png").exists()
    assert sorted(r.status for r in gather_runs(sweep)) == ["complete"] * 4


def test_lm_ablation_script_runs_tiny(tmp_path):
    """experiments/lm_ablation/run.sh end to end on a tiny sweep: train, loss by position and
    passkey on each checkpoint, the report with the n-gram floor, the gathered evaluations."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "SWEEP": str(tmp_path / "lm"), "OUT": str(tmp_path / "out"),
           "EXTRA": "train.steps=2 data.val_tokens=512 train.seed=0 attention=dense,swa32 hydra.launcher.n_jobs=1",
           "WINDOWS": "2", "PASSKEY_SAMPLES": "1", "PASSKEY_DISTANCES": "[64]", "WANDB_MODE": "disabled"}
    out = subprocess.run(["bash", str(root / "experiments/lm_ablation/run.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "n-gram floor, 5-gram" in report and "no attention claim" in report
    assert "| attention=swa32 |" in (tmp_path / "out" / "position.md").read_text()
    assert "d=64" in (tmp_path / "out" / "passkey.md").read_text()
