"""The distillation job end to end on CPU: KD loss falls, metrics, scratch baseline, offline
logits, attention transfer, vocabulary mismatch, the Hydra entry point and its configs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import attnlab.distill.trainer as trainer_module
from attnlab.configs import from_dict
from attnlab.data import DataConfig
from attnlab.distill import DistillConfig, distill
from attnlab.model import ModelConfig, flops_per_token
from attnlab.paths import CONF_DIR
from attnlab.pretrained import load_pretrained
from attnlab.train.config import TrainConfig
from attnlab.train.logger import read_jsonl
from attnlab.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def data_cfg(cache_dir, **kw):
    return DataConfig(**(dict(context=32, batch_size=4, val_tokens=512, cache_dir=str(cache_dir)) | kw))


def train_cfg(**kw):
    return TrainConfig(**(dict(steps=30, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_every=0, log_every=1,
                               ckpt_every=0, logger="jsonl", progress=False, device="cpu") | kw))


def student_cfg(**kw):
    return ModelConfig(**(dict(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, context=32) | kw))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, cache_dir):
    """A tiny dense teacher (4 layers, d 32) trained for 40 steps with `python -m attnlab.train`'s loop."""
    run = tmp_path_factory.mktemp("teacher")
    teacher = ModelConfig(d_model=32, n_layers=4, n_heads=2, n_kv_heads=1, context=32)
    train(teacher, data_cfg(cache_dir), train_cfg(steps=40), run)
    return run


def test_kd_loss_falls_and_metrics_are_complete(tmp_path, teacher_dir, cache_dir):
    m = distill(student_cfg(), data_cfg(cache_dir), DistillConfig(temperature=2.0), train_cfg(), tmp_path,
                teacher=str(teacher_dir), baseline="scratch")
    soft = [r["soft_loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(soft) == 30 and sum(soft[-5:]) / 5 < 0.7 * sum(soft[:5]) / 5, soft
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for key in ("val_bpb", "teacher_val_bpb", "scratch_val_bpb", "params_ratio", "tokens_per_s_ratio",
                "student_forward_tokens_per_s", "teacher_forward_tokens_per_s", "gap_closed", "flops_ratio"):
        assert m[key] is not None, key
    assert 0 < m["params_ratio"] < 1 and m["teacher_kind"] == "attnlab" and m["status"] == "complete"
    assert (tmp_path / "scratch" / "metrics.jsonl").exists() and not (tmp_path / "scratch" / "config.json").exists()
    # the student's run dir loads like any trained model (checkpoint with model + config)
    student = load_pretrained(str(tmp_path)).config
    assert student.d_model == 16
    assert m["attention_flops_per_token"] == flops_per_token(student, data_cfg(cache_dir).context)["attention"] > 0


def test_offline_topk_logits_are_built_once_and_match_online(tmp_path, teacher_dir, cache_dir):
    cfg = dict(top_k=8, temperature=1.0, cache_dir=str(tmp_path / "kd-cache"))
    steps = train_cfg(steps=6, lr=1e-3)
    first = distill(student_cfg(), data_cfg(cache_dir), DistillConfig(offline=True, **cfg), steps, tmp_path / "a",
                    teacher=str(teacher_dir))
    again = distill(student_cfg(), data_cfg(cache_dir), DistillConfig(offline=True, **cfg), steps, tmp_path / "b",
                    teacher=str(teacher_dir))
    distill(student_cfg(), data_cfg(cache_dir), DistillConfig(**cfg), steps, tmp_path / "c", teacher=str(teacher_dir))
    assert first["offline_cache"]["built_batches"] == 6 and again["offline_cache"]["built_batches"] == 0
    assert first["offline_cache"]["key"] == again["offline_cache"]["key"]
    losses = [[r["soft_loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl") if r["kind"] == "train"]
              for d in "abc"]
    assert losses[0] == losses[1]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[2]), rtol=2e-3, atol=2e-3)  # fp16 values


def test_attention_transfer_reports_before_and_after(tmp_path, teacher_dir, cache_dir):
    swa = student_cfg(attention={"swa": {"kind": "sliding_window", "window": 4}}, layer_pattern=["swa"])
    m = distill(swa, data_cfg(cache_dir), DistillConfig(init="teacher", weight_hard=0.5, weight_soft=0.5),
                train_cfg(steps=5, lr=1e-3), tmp_path, teacher=str(teacher_dir))
    assert m["initialized_from_teacher"] > 0 and m["params_ratio"] == 1.0  # the teacher's architecture
    assert m["layer_specs"] == ["sliding_window(w=4,causal)"] * 4
    assert m["init_val_bpb"] > m["teacher_val_bpb"]  # the narrow window hurts before training


def test_layer_map_init_and_hidden_state_loss_with_projection(tmp_path, teacher_dir, cache_dir):
    # same width as the teacher: every other teacher layer copied in, then KD + hidden MSE
    same = distill(student_cfg(d_model=32, n_layers=2), data_cfg(cache_dir),
                   DistillConfig(init="layer_map", layer_map="every_other", hidden_weight=1.0),
                   train_cfg(steps=3), tmp_path / "map", teacher=str(teacher_dir))
    assert same["initialized_from_teacher"] == 3 + 2 * 9  # embed, norm, head + 2 blocks of 9 tensors
    assert same["init_val_bpb"] < 8.5  # a random byte model starts at ~8 bits per byte
    # narrower student: the hidden loss learns a 16 -> 32 projection per matched layer
    narrow = distill(student_cfg(), data_cfg(cache_dir), DistillConfig(hidden_weight=1.0, hidden_loss="cosine"),
                     train_cfg(steps=8), tmp_path / "proj", teacher=str(teacher_dir))
    records = [r for r in read_jsonl(tmp_path / "proj" / "metrics.jsonl") if r["kind"] == "train"]
    assert all("hidden_loss" in r for r in records) and records[-1]["hidden_loss"] < records[0]["hidden_loss"]
    extra = torch.load(tmp_path / "proj" / "checkpoints" / "latest.pt", weights_only=False)["extra"]
    assert [tuple(v.shape) for v in extra.values()] == [(32, 16), (32, 16)]
    assert narrow["status"] == "complete"


def test_vocabulary_mismatch_fails_before_any_compute(tmp_path, teacher_dir, cache_dir, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("tokenized the corpus before checking the vocabulary")

    monkeypatch.setattr(trainer_module, "build_corpus", no_data)
    with pytest.raises(ValueError, match=r"vocabulary mismatch: the student has model.vocab_size=300 but the "
                                         r"teacher .* has 256"):
        distill(student_cfg(vocab_size=300), data_cfg(cache_dir), DistillConfig(), train_cfg(), tmp_path,
                teacher=str(teacher_dir))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_every_distill_config_composes():
    names = sorted(p.stem for p in (CONF_DIR / "distill").glob("*.yaml"))
    experiments = sorted(p.stem for p in (CONF_DIR / "distill" / "experiment").glob("*.yaml"))
    assert {"kd", "transfer", "offline", "jsd"} <= set(names)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        overrides = [[f"distill={n}"] for n in names] + [[f"distill/experiment={e}"] for e in experiments]
        for o in overrides:
            cfg = compose("distill", overrides=["teacher=x", *o])
            from_dict(DistillConfig, dict(cfg.distill), "distill")
            from_dict(TrainConfig, dict(cfg.train), "train")


def test_hydra_entry_point_runs_and_skips_a_complete_rerun(tmp_path, teacher_dir, cache_dir):
    cmd = [sys.executable, "-m", "attnlab.distill", f"teacher={teacher_dir}", "model.d_model=16", "model.n_layers=2",
           "model.context=32", "data.batch_size=4", "data.val_tokens=256", f"data.cache_dir={cache_dir}",
           "train.steps=3", "train.warmup_steps=1", "train.progress=false", "train.device=cpu",
           f"hydra.run.dir={tmp_path}"]
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "complete"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skip:" in again.stdout
    bad = subprocess.run(cmd[:4] + ["model.vocab_size=100", f"hydra.run.dir={tmp_path / 'bad'}"] + cmd[4:-1],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "vocabulary mismatch" in bad.stderr
    assert "vocabulary mismatch" in (tmp_path / "bad" / "error.txt").read_text()


def test_report_table(tmp_path, teacher_dir, cache_dir):
    from attnlab.distill.report import main as report

    for seed in (0, 1):
        distill(student_cfg(), data_cfg(cache_dir), DistillConfig(), train_cfg(steps=2, seed=seed),
                tmp_path / f"run{seed}", teacher=str(teacher_dir))
    assert report([str(tmp_path)]) == 0
    table = (tmp_path / "distill_report.md").read_text()
    assert "| student bpb | teacher bpb | scratch bpb | gap closed |" in table and "| 0,1 | complete |" in table


def test_packed_documents_reach_teacher_and_student(tmp_path, teacher_dir, cache_dir, monkeypatch):
    from attnlab.model import Transformer

    seen = []
    forward = Transformer.forward
    monkeypatch.setattr(Transformer, "forward",
                        lambda self, idx, targets=None, doc_ids=None: seen.append(doc_ids is not None)
                        or forward(self, idx, targets, doc_ids=doc_ids))
    m = distill(student_cfg(), data_cfg(cache_dir, pack_documents=True), DistillConfig(top_k=8, offline=True,
                cache_dir=str(tmp_path / "kd")), train_cfg(steps=2), tmp_path / "run", teacher=str(teacher_dir))
    assert m["status"] == "complete" and seen and all(seen[:4])  # cache build (teacher) and training (student)
