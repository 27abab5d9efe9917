"""`python -m attnlab.eval` end to end: bpb and bpb by position on a text run (with and
without an attention swap), recall tasks on task runs, figures, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.data import DataConfig
from attnlab.data.passkey import PasskeyConfig
from attnlab.model import ModelConfig
from attnlab.train.config import TrainConfig
from attnlab.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
QUIET = TrainConfig(steps=3, warmup_steps=1, eval_every=0, logger="jsonl", progress=False, device="cpu")


def env(cache: Path) -> dict:
    return {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ATTNLAB_CACHE": str(cache)}


def run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab.eval", *args, f"hydra.run.dir={tmp / 'hydra'}"], cwd=ROOT,
                          env=env(tmp / "cache"), capture_output=True, text=True, timeout=600)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text_run")
    data = DataConfig(context=32, batch_size=2, val_tokens=256, cache_dir=str(tmp / "cache"))
    train(ModelConfig(d_model=16, n_layers=2, n_heads=2, context=32), data, QUIET, tmp / "run")
    return tmp


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """A copy-task run trained by the training job itself."""
    tmp = tmp_path_factory.mktemp("copy_run")
    out = subprocess.run(
        [sys.executable, "-m", "attnlab.train", "model=tiny", "data=copy", "data.distances=[4,32]",
         "data.val_sequences=8", "data.batch_size=4", "train.steps=3", "train.logger=none", "train.progress=false",
         f"hydra.run.dir={tmp / 'run'}"], cwd=ROOT, env=env(tmp / "cache"), capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp / "run"


def test_bpb_and_bpb_by_position_on_a_run(text_run, tmp_path):
    base = [f"source={text_run / 'run'}", "data.context=32", "data.val_tokens=256",
            f"data.cache_dir={text_run / 'cache'}", "windows=3", "batch_size=2"]
    out = run([*base, "tasks=[bpb,bpb_by_position]", f"out={tmp_path / 'a.json'}", f"out_dir={tmp_path / 'figs'}"],
              tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "a.json").read_text())
    assert record == json.loads((tmp_path / "figs" / "eval.json").read_text())
    assert record["tasks"] == ["bpb", "bpb_by_position"] and record["attention"] == "2 x dense(causal)"
    a, pos = record["bpb"], record["bpb_by_position"]
    assert a["windows"] == 4 and a["windows_total"] == 8  # 2 batches of 2
    assert "over 4 of 8 windows" in out.stdout
    assert pos["windows"] == 4 and len(pos["bpb_by_position"]) == 32
    assert pos["val_bpb"] == pytest.approx(a["val_bpb"], rel=1e-5) and pos["bytes"] == a["bytes"]
    assert is_png(tmp_path / "figs" / "bpb_by_position.png")
    assert record["figures"] == {"bpb_by_position": str(tmp_path / "figs" / "bpb_by_position.png")}
    swa = run([*base, "+attention=swa32", f"out={tmp_path / 'b.json'}"], tmp_path)  # default tasks=[bpb]
    assert swa.returncode == 0, swa.stderr[-2000:]
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["tasks"] == ["bpb"] and b["attention"] == "2 x sliding_window(w=32,causal)"
    assert abs(b["bpb"]["val_bpb"] - a["val_bpb"]) < 1e-5  # a 32-key window over 32 tokens is dense


def test_copy_task_on_a_copy_run(copy_run, tmp_path):
    out = run([f"source={copy_run}", "tasks=[copy]", f"out_dir={tmp_path / 'a'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    section = json.loads((tmp_path / "a" / "eval.json").read_text())["copy"]
    trained = json.loads((copy_run / "metrics.json").read_text())
    assert section["mode"] == "task" and section["data"]["distances"] == [4, 32]
    assert section["val_accuracy_by_distance"] == pytest.approx(trained["val_accuracy_by_distance"])
    assert section["answers_by_distance"] == {"4": 4 * 61, "32": 4 * 33} and section["chance_accuracy"] == 1 / 32
    assert is_png(tmp_path / "a" / "copy.png")
    other = run([f"source={copy_run}", "tasks=[copy]", "task.distances=[8,16,48]", "task.val_sequences=6",
                 f"out={tmp_path / 'b.json'}"], tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    section = json.loads((tmp_path / "b.json").read_text())["copy"]
    assert set(section["val_accuracy_by_distance"]) == {"8", "16", "48"} and section["data"]["val_sequences"] == 6


def test_passkey_on_a_passkey_run_uses_its_own_task(tmp_path):
    data = PasskeyConfig(context=96, distances=(60, 70), batch_size=2, val_sequences=4)
    train(ModelConfig(d_model=16, n_layers=1, n_heads=2, context=96), data, QUIET, tmp_path / "run")
    out = run([f"source={tmp_path / 'run'}", "tasks=[passkey]", f"out_dir={tmp_path / 'out'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    section = json.loads((tmp_path / "out" / "eval.json").read_text())["passkey"]
    assert section["mode"] == "task" and set(section["val_accuracy_by_distance"]) == {"60", "70"}
    assert section["answers_by_distance"] == {"60": 10, "70": 10} and section["chance_accuracy"] == 0.1
    assert is_png(tmp_path / "out" / "passkey.png")


@pytest.mark.parametrize("args,key", [
    (["tasks=[bpb,perplexity]"], "tasks=['bpb', 'perplexity']: unknown task 'perplexity'"),
    (["windows=0"], "windows=0"),
    (["batch_size=0"], "batch_size=0"),
    (["tasks=[bpb]", "COPY"], "tasks=bpb does not fit source="),
])
def test_bad_input_is_one_line_and_exit_2(args, key, copy_run, tmp_path):
    source = f"source={copy_run}" if "COPY" in args else "source=smollm2"
    out = run([source, *(a for a in args if a != "COPY")], tmp_path)
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], out.stderr
    assert "Traceback" not in out.stderr
