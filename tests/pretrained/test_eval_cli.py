"""`python -m attnlab.eval` on an attnlab run (with and without an attention swap)."""

import json
import subprocess
import sys
from pathlib import Path

from attnlab.data import DataConfig
from attnlab.model import ModelConfig
from attnlab.train.config import TrainConfig
from attnlab.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_eval_cli_scores_a_bounded_number_of_windows(tmp_path):
    data = DataConfig(context=32, batch_size=2, val_tokens=256, cache_dir=str(tmp_path / "cache"))
    train(ModelConfig(d_model=16, n_layers=2, n_heads=2, context=32), data,
          TrainConfig(steps=3, warmup_steps=1, eval_every=0, logger="jsonl", progress=False, device="cpu"),
          tmp_path / "run")
    base = [sys.executable, "-m", "attnlab.eval", f"source={tmp_path / 'run'}", "data.context=32", "data.val_tokens=256",
            f"data.cache_dir={tmp_path / 'cache'}", "windows=3", "batch_size=2", f"hydra.run.dir={tmp_path / 'eval'}"]
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*base, f"out={tmp_path / 'a.json'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["windows"] == 4 and a["windows_total"] == 8 and a["attention"] == "2 x dense(causal)"  # 2 batches of 2
    assert "over 4 of 8 windows" in out.stdout
    swa = subprocess.run([*base, "+attention=swa32", f"out={tmp_path / 'b.json'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert swa.returncode == 0, swa.stderr[-2000:]
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["attention"] == "2 x sliding_window(w=32,causal)"
    assert abs(b["val_bpb"] - a["val_bpb"]) < 1e-5  # a 32-key window over 32 tokens is dense
