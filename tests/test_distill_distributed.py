"""Distillation under torchrun on CPU (gloo, 2 processes), as training is tested in
tests/train/test_distributed.py: DDP takes the same steps as one process on the same global
batch; FSDP2 (offline top-k logits built by both ranks, scratch baseline) trains like one
process and resumes from its `torch.distributed.checkpoint` folder.

Tolerance: as training's. Each rank's losses are means over its rows, logged as float64 sums
of the ranks' shares, and gradients are averaged by an all-reduce, so one process and two
agree to float32 rounding, not bitwise (measured over 6 steps: logged numbers within 2e-7
relative, parameters within 3e-6 absolute).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from attnlab.data import DataConfig
from attnlab.distill.__main__ import configs_from, main
from attnlab.distill.trainer import distill
from attnlab.model import ModelConfig
from attnlab.paths import CONF_DIR
from attnlab.pretrained import load_pretrained
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.logger import read_jsonl
from attnlab.train.loop import train

# A 2-layer d16 student of a 4-layer d32 teacher, 6 steps of 5 rows (2 + 3 over the ranks: uneven
# shares, so per-rank loss weights matter) of 32 bytes, eval at 3 and 6.
STUDENT = ["model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.context=32",
           "data.batch_size=5", "data.val_tokens=256", "train.steps=6", "train.eval_every=3", "train.log_every=1",
           "train.warmup_steps=1", "train.progress=false", "train.device=cpu", "train.logger=jsonl",
           "distill.throughput_batches=0"]
LOGGED = [("train", 1), ("train", 2), ("train", 3), ("eval", 3), ("train", 4), ("train", 5), ("train", 6), ("eval", 6)]
KEYS = ("train_loss", "soft_loss", "hard_loss", "grad_norm", "lr", "val_loss")
RTOL = 1e-5


@pytest.fixture(scope="module")
def teacher_args(tmp_path_factory):
    """``teacher=<run dir> data.cache_dir=<cache>``: a tiny dense teacher trained for 10 steps."""
    cache, run = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("teacher")
    train(ModelConfig(d_model=32, n_layers=4, n_heads=2, n_kv_heads=1, context=32),
          DataConfig(context=32, batch_size=4, val_tokens=256, cache_dir=str(cache)),
          TrainConfig(steps=10, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_every=0, ckpt_every=0, logger="jsonl",
                      progress=False, device="cpu"), run)
    return [f"teacher={run}", f"data.cache_dir={cache}"]


def torchrun_distill(args, run_dir):
    """`torchrun --nproc_per_node=2 -m attnlab.distill *args` into ``run_dir``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "attnlab.distill", *args, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    done = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def distill_one_process(args, run_dir) -> dict:
    """The same config (composed from conf/distill.yaml with ``args``) in this process."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("distill", overrides=args)
    model_cfg, data_cfg, distill_cfg, train_cfg = configs_from(cfg)
    return distill(model_cfg, data_cfg, distill_cfg, train_cfg, run_dir, teacher=str(cfg.teacher),
                   baseline=str(cfg.baseline))


def assert_same_steps(want_dir, got_dir, keys):
    """Logged once per step (rank 0 alone), and every logged number within RTOL."""
    want, got = read_jsonl(want_dir / "metrics.jsonl"), read_jsonl(got_dir / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want] == LOGGED
    for key in keys:
        pairs = [(g[key], w[key]) for g, w in zip(got, want, strict=True) if key in w]
        assert pairs, key
        torch.testing.assert_close(torch.tensor([g for g, _ in pairs]), torch.tensor([w for _, w in pairs]),
                                   rtol=RTOL, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def assert_close_params(got: dict, want: dict):
    # Adam divides by sqrt(v): rounding in near-zero gradients moves a parameter by up to ~1%
    # of a step (lr 3e-3); measured max |diff| 3e-6 after 6 steps.
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=3e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_ddp_distillation_equals_one_process(tmp_path, teacher_args):
    # Hard labels, hidden states through learned 16 -> 32 projections (wrapped too) and
    # 2 micro-batches per step (gradients synchronized on the last one only).
    args = [*teacher_args, *STUDENT, "distill.weight_hard=0.5", "distill.hidden_weight=1.0", "train.grad_accum=2"]
    torchrun_distill([*args, "train.distributed=ddp"], tmp_path / "ddp")
    single = distill_one_process(args, tmp_path / "single")
    assert_same_steps(tmp_path / "single", tmp_path / "ddp", (*KEYS, "hidden_loss"))
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["world_size"] == 2 and metrics["distributed"] == "ddp"
    assert metrics["teacher_val_bpb"] == pytest.approx(single["teacher_val_bpb"], rel=RTOL)
    # Saved once, by rank 0, in the one-process format: the student loads like any trained model.
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["latest.pt"]
    a, b = ckpt.load(tmp_path / "single" / "checkpoints" / "latest.pt"), ckpt.load(tmp_path / "ddp" / "checkpoints" / "latest.pt")
    assert b["step"] == 6 and len(b["rng_per_rank"]) == 2
    assert_close_params(b["model"], a["model"])
    assert_close_params(b["extra"], a["extra"])  # the projections, trained in step on both ranks
    assert load_pretrained(str(tmp_path / "ddp")).config.d_model == 16


def test_fsdp_distillation_trains_and_resumes(tmp_path, teacher_args):
    args = [*teacher_args, *STUDENT, "distill=offline", "distill.top_k=8", "baseline=scratch"]
    run = tmp_path / "fsdp"
    torchrun_distill([*args, "train.distributed=fsdp", "train.stop_at=3"], run)
    assert ckpt.latest_sharded(run / "checkpoints").name == "step_00000003.dcp"
    first_steps = (run / "metrics.jsonl").read_text()  # with this launch's step times
    torchrun_distill([*args, "train.distributed=fsdp", "resume=true"], run)
    # Continued from step 3: its records kept as they were (a fresh start rewrites the timings).
    assert (run / "metrics.jsonl").read_text().startswith(first_steps)
    # One process, building its own top-k cache: the two ranks' cache holds the same bytes.
    single = distill_one_process([*args, f"distill.cache_dir={tmp_path / 'kd-single'}"], tmp_path / "single")
    assert_same_steps(tmp_path / "single", run, KEYS)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["world_size"] == 2 and metrics["distributed"] == "fsdp"
    built, own = Path(metrics["offline_cache"]["folder"]), Path(single["offline_cache"]["folder"])
    assert built != own and built.name == own.name and single["offline_cache"]["built_batches"] == 6
    for name in ("values.f16", "indices.u16", "filled.u8"):
        assert (built / name).read_bytes() == (own / name).read_bytes(), name
    # The scratch baseline trained under FSDP as well, like one process.
    assert (run / "scratch" / "checkpoints" / ckpt.SHARDED_POINTER).is_file()
    assert metrics["scratch_val_bpb"] == pytest.approx(single["scratch_val_bpb"], rel=RTOL)
    # One complete checkpoint folder; consolidated, it is the one-process student.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest_dcp.json", "step_00000006.dcp"]
    model_pt = ckpt.consolidate(run / "checkpoints" / "step_00000006.dcp", tmp_path / "student.pt")
    assert_close_params(ckpt.load(model_pt)["model"], ckpt.load(tmp_path / "single" / "checkpoints" / "latest.pt")["model"])
    assert load_pretrained(str(model_pt)).config.d_model == 16


@pytest.mark.parametrize("overrides,key", [
    (["train.distributed=mpi"], "train.distributed='mpi' must be one of none, ddp, fsdp"),
    (["train.distributed=ddp", "data.batch_size=1"], "data.batch_size=1 is smaller than the 2 processes"),
])
def test_bad_distributed_config_exits_2_naming_the_key(overrides, key, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the config fails before joining a group
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["attnlab.distill", "teacher=x", *overrides, *quiet, f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert key in capsys.readouterr().err
