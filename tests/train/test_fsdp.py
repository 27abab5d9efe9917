"""FSDP2 on CPU (gloo, 2 processes under torchrun): trains like one process and resumes
exactly from its `torch.distributed.checkpoint` folder (measured: bitwise on CPU).
Tolerance against one process: see test_distributed.py."""

import json

import torch
from test_distributed import STEPS, assert_close_runs

from attnlab.sample import load_model
from attnlab.train import checkpoint as ckpt
from attnlab.train.logger import read_jsonl


def test_fsdp_trains_and_resumes_exactly(tmp_path, train_cli):
    fsdp = ["train.distributed=fsdp"]
    straight = train_cli([*STEPS, *fsdp, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path, nproc=2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    single = train_cli([*STEPS, f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert_close_runs(tmp_path / "single", tmp_path / "straight", rtol=1e-5)  # the same steps as one process
    run = tmp_path / "resumed"
    first = train_cli([*STEPS, *fsdp, "train.stop_at=3", f"hydra.run.dir={run}"], tmp_path, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ckpt.latest_sharded(run / "checkpoints").name == "step_00000003.dcp"
    second = train_cli([*STEPS, *fsdp, "resume=true", f"hydra.run.dir={run}"], tmp_path, nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    # Resumed == uninterrupted: every logged number.
    keys = ("kind", "step", "train_loss", "grad_norm", "lr", "val_loss")
    a, b = read_jsonl(tmp_path / "straight" / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]
    # One complete checkpoint folder, named by the pointer; no temp folders left.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest_dcp.json", "step_00000006.dcp"]
    meta = ckpt.read_meta(run / "checkpoints" / "step_00000006.dcp")
    assert meta["step"] == 6 and meta["config"]["train"]["distributed"] == "fsdp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["world_size"] == 2 and metrics["params"] > 0
    # One file for sampling / evaluation on one process.
    single = ckpt.consolidate(run / "checkpoints" / "step_00000006.dcp", tmp_path / "model.pt")
    model, _ = load_model(single, torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]


def test_each_rank_gets_its_own_rng_state_back():
    from attnlab.train.distributed import Dist
    from attnlab.train.fit_loop import set_rng as _set_rng

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(ckpt.rng_states())
    saved = {"rng": states[0], "rng_per_rank": states}
    for rank in (0, 1):
        _set_rng(saved, Dist(mode="fsdp", rank=rank, world=2), seed=0, step=3)
        torch.manual_seed(rank + 1)
        want = torch.rand(3)
        _set_rng(saved, Dist(mode="fsdp", rank=rank, world=2), seed=0, step=3)
        assert torch.equal(torch.rand(3), want)
    # Another world size: rank 0 takes rank 0's state, the others fresh streams of their own.
    _set_rng(saved, Dist(mode="fsdp", rank=0, world=3), seed=0, step=3)
    torch.manual_seed(1)
    want = torch.rand(3)
    _set_rng(saved, Dist(mode="fsdp", rank=0, world=3), seed=0, step=3)
    assert torch.equal(torch.rand(3), want)
