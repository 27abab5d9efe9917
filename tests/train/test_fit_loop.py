"""One training loop: the training and distillation jobs both run `attnlab.train.fit_loop.fit`, so
they resume, log, guard against non-finite numbers and honour train.* settings the same way.
Each test runs both jobs (tiny models: 1 layer, d 16, 4 steps of 2 x 16 bytes; no timing)."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

import attnlab.distill.scratch as scratch_module
import attnlab.distill.trainer as trainer_module
import attnlab.train.fit_loop as fit_module
import attnlab.train.loop as loop_module
from attnlab.data import DataConfig
from attnlab.distill import DistillConfig, distill
from attnlab.model import ModelConfig, Transformer
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.logger import read_jsonl
from attnlab.train.loop import train

MODEL = ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, context=16)
DATA = DataConfig(context=16, batch_size=2, val_tokens=64)
KEYS = ("kind", "step", "train_loss", "soft_loss", "grad_norm", "lr", "tokens", "val_loss")


def tcfg(**kw):
    return TrainConfig(**(dict(steps=4, lr=3e-3, min_lr=3e-4, warmup_steps=1, eval_every=2, eval_batches=1,
                               log_every=1, ckpt_every=2, logger="jsonl", progress=False, device="cpu") | kw))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    train(MODEL, DATA, tcfg(steps=1, eval_every=0), run)
    return str(run)


@pytest.fixture(scope="module", params=["train", "distill"])
def job(request, teacher):
    """``job(run_dir, resume=False, **train_cfg) -> metrics``: one of the two jobs."""
    if request.param == "train":
        return lambda run, resume=False, **kw: train(MODEL, DATA, tcfg(**kw), run, resume=resume)
    kd = DistillConfig(weight_hard=0.5, throughput_batches=0)
    return lambda run, resume=False, **kw: distill(MODEL, DATA, kd, tcfg(**kw), run, teacher=teacher, resume=resume)


@pytest.fixture(scope="module")
def straight(job, tmp_path_factory):
    """The job's uninterrupted run (the default `tcfg`)."""
    run = tmp_path_factory.mktemp("straight")
    job(run)
    return run


def logged(run: Path) -> list[dict]:
    return [{k: r.get(k) for k in KEYS} for r in read_jsonl(run / "metrics.jsonl")]


def test_both_jobs_run_the_one_loop():
    assert loop_module.fit is trainer_module.fit is scratch_module.fit is fit_module.fit
    for module in (trainer_module, scratch_module):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnlab.train"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module.__name__} imports private names of {node.module}: {private}"


def test_resume_keeps_the_records_up_to_the_checkpoint(tmp_path, job, straight):
    run = tmp_path / "run"
    assert job(run, stop_at=2) == {"status": "stopped", "step": 2}
    kept = (run / "metrics.jsonl").read_text()
    with (run / "metrics.jsonl").open("a") as f:  # written after the checkpoint, then killed mid-record
        f.write('{"step": 3, "kind": "train", "train_loss": 9.0}\n{"step": 4, "ki')
    assert job(run, resume="auto")["status"] == "complete"
    assert (run / "metrics.jsonl").read_text().startswith(kept), "records up to the checkpoint kept as they were"
    assert logged(run) == logged(straight)


@pytest.mark.parametrize("resume", ["auto", True])
def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, job, straight, resume):
    (tmp_path / "metrics.jsonl").write_bytes((straight / "metrics.jsonl").read_bytes())
    (tmp_path / "config.json").write_bytes((straight / "config.json").read_bytes())  # the same config
    # as if killed before any checkpoint: records, but nothing to continue from
    assert job(tmp_path, resume=resume)["status"] == "complete"
    assert logged(tmp_path) == logged(straight), "the records once, not appended"


def test_the_same_records_are_logged(tmp_path, job):
    job(tmp_path, log_every=2, eval_every=3)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", 2), ("eval", 3), ("train", 4), ("eval", 4)]
    for r in records[::2]:
        assert {"train_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "tokens"} <= set(r)
        assert r["tokens"] == r["step"] * DATA.batch_size * DATA.context


@pytest.fixture
def nan_at_step_3(monkeypatch):
    """The model's training forward returns NaN logits and loss from its 3rd call (step 3)."""
    forward, calls = Transformer.forward, {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if torch.is_grad_enabled() and self.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                logits = logits * float("nan")
                loss = None if loss is None else loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", poisoned)


def test_a_non_finite_loss_stops_before_the_step(tmp_path, job, nan_at_step_3):
    with pytest.raises(FloatingPointError, match=r"^non-finite loss at step 3; last good checkpoint: "
                                                 r".*latest.pt \(step 2\)$"):
        job(tmp_path)
    assert ckpt.load(tmp_path / "checkpoints" / "latest.pt")["step"] == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 2]  # train 1, 2, eval 2
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_parameters_are_never_saved(tmp_path, job, monkeypatch):
    step, calls = torch.optim.AdamW.step, {"n": 0}

    def nan_after_step_4(self, *args, **kwargs):  # finite loss and gradients: the update itself goes NaN
        out = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", nan_after_step_4)
    with pytest.raises(FloatingPointError, match=r"non-finite parameters after step 4; not saving them; "
                                                 r"last good checkpoint: .*latest.pt \(step 2\)"):
        job(tmp_path, eval_every=0)
    state = ckpt.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_train_compile_is_honoured(tmp_path, job, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    job(tmp_path, steps=1, eval_every=0, compile=True)
    assert len(compiled) == 1 and isinstance(compiled[0], Transformer)
