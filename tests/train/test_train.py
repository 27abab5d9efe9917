"""The training job: end to end, exact resume, schedule, decay groups, faults, entry points."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.data import DataConfig
from attnlab.model import ModelConfig, Transformer
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.logger import read_jsonl
from attnlab.train.loop import train
from attnlab.train.optim import lr_at, param_groups

ROOT = Path(__file__).resolve().parents[2]


def tiny_model(**kw):
    base = dict(vocab_size=None, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, context=32,
                attention={"swa": {"kind": "sliding_window", "window": 8}, "dense": {"kind": "dense"}},
                layer_pattern=["swa", "dense"], dropout=0.1)
    return ModelConfig(**(base | kw))


def tiny_data(**kw):
    return DataConfig(**(dict(context=32, batch_size=4, val_tokens=256) | kw))


def tiny_train(**kw):
    return TrainConfig(**(dict(steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=4, log_every=1,
                               ckpt_every=4, logger="jsonl", progress=False, device="cpu") | kw))


def test_end_to_end_writes_metrics_and_checkpoint(tmp_path):
    metrics = train(tiny_model(), tiny_data(), tiny_train(), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("train_loss", "val_loss", "val_bpb", "val_ppl", "tokens_per_s", "step_time_s", "peak_memory_mib",
                "attention_flops_per_token", "params", "flops_per_token"):
        assert saved[key] is not None and saved[key] > 0, key
    assert saved["status"] == "complete" and saved["mfu"] is None  # no MFU on CPU
    assert saved["layer_specs"] == ["sliding_window(w=8,causal)", "dense(causal)"]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8]
    assert math.isclose(saved["val_bpb"], saved["val_loss"] / math.log(2), rel_tol=1e-9)  # bytes = tokens
    state = ckpt.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    assert (tmp_path / "config.json").exists()


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    train(tiny_model(), tiny_data(), tiny_train(), tmp_path / "straight")
    out = train(tiny_model(), tiny_data(), tiny_train(stop_at=5), tmp_path / "resumed")
    assert out == {"status": "stopped", "step": 5}
    train(tiny_model(), tiny_data(), tiny_train(), tmp_path / "resumed", resume=True)
    a = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    keys = ("kind", "step", "train_loss", "val_loss", "grad_norm", "lr")
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]
    sa = ckpt.load(tmp_path / "straight" / "checkpoints" / "latest.pt")["model"]
    sb = ckpt.load(tmp_path / "resumed" / "checkpoints" / "latest.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_grad_accumulation_runs(tmp_path):
    metrics = train(tiny_model(), tiny_data(), tiny_train(steps=3, grad_accum=2, eval_every=0), tmp_path)
    assert metrics["status"] == "complete"


def test_mlm_objective_trains(tmp_path):
    metrics = train(tiny_model(objective="mlm"), tiny_data(), tiny_train(steps=4), tmp_path)
    assert metrics["objective"] == "mlm" and metrics["val_loss"] > 0 and "val_bpb" not in metrics


def test_loss_goes_down(tmp_path):
    metrics = train(tiny_model(dropout=0.0), tiny_data(), tiny_train(steps=60, eval_every=0, lr=1e-2), tmp_path)
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 1.0
    assert metrics["val_bpb"] < 5.0  # from ~8 bits (uniform over 256 bytes)


def test_nan_stops_with_step_and_last_good_checkpoint(tmp_path, monkeypatch):
    real_forward = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        calls["n"] += 1
        if self.training and calls["n"] > 5:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+; last good checkpoint: .*latest.pt \(step 4\)"):
        train(tiny_model(), tiny_data(), tiny_train(), tmp_path)
    assert ckpt.load(tmp_path / "checkpoints" / "latest.pt")["step"] == 4


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_embeddings():
    model = Transformer(tiny_model(vocab_size=256, tie_embeddings=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all("norm" not in n and "embed" not in n for n in decayed)
    assert any("q_proj" in n for n in decayed)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.atomic_save({"step": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"], "no temp file left behind"


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(steps=0), ["train.steps=0", ">= 1"]),
        (dict(lr=-1.0), ["train.lr=-1.0", ">= 0"]),
        (dict(min_lr=1.0, lr=0.1), ["train.min_lr=1.0", "<= train.lr"]),
        (dict(beta2=1.0), ["train.beta2=1.0", "[0, 1)"]),
        (dict(device="tpu"), ["train.device='tpu'", "cpu"]),
        (dict(logger="tensorboard"), ["train.logger='tensorboard'", "wandb"]),
        (dict(stop_at=20, steps=10), ["train.stop_at=20", "steps=10"]),
    ],
)
def test_train_config_errors(kw, words):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kw)
    for w in words:
        assert w in str(err.value)


def test_context_longer_than_the_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.context=64 exceeds model.context=32"):
        train(tiny_model(), tiny_data(context=64), tiny_train(), tmp_path)


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_entry_points_train_resume_and_sample(tmp_path):
    run_dir = tmp_path / "run"
    common = ["-m", "attnlab.train", "model=tiny", "attention=hybrid", "data.batch_size=4", "data.val_tokens=256",
              "train.steps=6", "train.eval_every=3", "train.warmup_steps=1", "train.progress=false",
              "train.logger=wandb", f"hydra.run.dir={run_dir}"]
    first = _run([*common, "train.stop_at=3"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    second = _run([*common, "resume=true"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["steps"] == 6
    assert (run_dir / "wandb").is_dir(), "wandb logs offline into the run dir"
    sample = _run(["-m", "attnlab.sample", f"checkpoint={run_dir / 'checkpoints' / 'latest.pt'}",
                   "prompt=ROMEO.", "max_new_tokens=20", "greedy=true"], tmp_path)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert sample.stdout.startswith("ROMEO.")


def test_entry_point_bad_config_names_the_key(tmp_path):
    out = _run(["-m", "attnlab.train", "model=tiny", "train.lr=-3", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert out.returncode == 2 and "train.lr=-3" in out.stderr
    out = _run(["-m", "attnlab.train", "model=tiny", "+train.learning_rate=3", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert out.returncode == 2 and "train.learning_rate" in out.stderr


def test_packed_documents_train_with_document_masking(tmp_path, monkeypatch):
    from attnlab.attention import api

    seen = []
    real = api.attention

    def spy(q, k, v, spec, impl="auto", scale=None, **kw):
        seen.append(kw.get("doc_ids"))
        return real(q, k, v, spec, impl, scale, **kw)

    monkeypatch.setattr("attnlab.model.transformer.attention", spy)
    metrics = train(tiny_model(), tiny_data(pack_documents=True), tiny_train(steps=3, eval_every=0), tmp_path)
    assert metrics["status"] == "complete" and metrics["val_bpb"] > 0
    assert seen and all(d is not None and d.shape == (4, 32) for d in seen), "every layer gets the batch's doc ids"
    # attention FLOPs are counted with the first batch's documents (pairs inside a document)
    from attnlab.data import build_data
    from attnlab.train import loop

    counted = []
    real_fpt = loop.flops_per_token
    monkeypatch.setattr(loop, "flops_per_token", lambda *a, **kw: counted.append(kw.get("doc_ids")) or real_fpt(*a, **kw))
    data = tiny_data(pack_documents=True)
    train(tiny_model(), data, tiny_train(steps=1, eval_every=0), tmp_path / "again")
    assert torch.equal(counted[0], build_data(data).train_batch(0, with_doc_ids=True)[2])
    train(tiny_model(), tiny_data(), tiny_train(steps=1, eval_every=0), tmp_path / "unpacked")
    assert counted[1] is None
