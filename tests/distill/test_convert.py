"""attnlab.distill.convert (attention conversion of a pretrained model, healing, evaluation) and
the tiny version of experiments/convert_smollm2 end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.data import ByteTokenizer, DataConfig
from attnlab.distill.convert import Heal, attention_flops, convert, evaluate_model, heal
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import build_corpus

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ({"swa": {"kind": "sliding_window", "window": 4}, "dense": {"kind": "dense"}}, ["swa", "dense"])


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, context=32, attn_impl="sdpa")
    return Transformer(cfg).eval()


@pytest.fixture
def corpus(tmp_path):
    return build_corpus(DataConfig(context=32, batch_size=2, val_tokens=32 * 3 + 1, cache_dir=str(tmp_path / "c")),
                        ByteTokenizer())


def test_convert_keeps_the_weights_and_changes_the_layout(teacher):
    student = convert(teacher, *LAYOUT)
    assert [s.kind for s in student.config.layer_specs()] == ["sliding_window", "dense"]
    for (n, a), (_, b) in zip(student.state_dict().items(), teacher.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert attention_flops(student.config, 64) < attention_flops(teacher.config, 64)  # context raised for counting


@pytest.mark.parametrize("method", ["ce", "kd", "match", "match_kd"])
def test_heal_trains_only_attention_and_match_only_converted_layers(teacher, corpus, tmp_path, method):
    student = convert(teacher, *LAYOUT)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    stages = heal(student, teacher, Heal(method, 2, 1e-2, match_steps=2, match_lr=1e-2), corpus, tmp_path / "run")
    assert set(stages) == {"match_kd": {"match", "kd"}}.get(method, {method})
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".self_attn." in n for n in changed)
    if method == "match":  # layer 1 is dense in both: nothing to match there
        assert all(n.startswith("layers.0.") for n in changed)
    assert all(torch.equal(p, q) for p, q in zip(teacher.state_dict().values(), convert(teacher, *LAYOUT).state_dict().values(), strict=True))


def test_heal_settings_are_validated():
    with pytest.raises(ValueError, match="method='sft' must be one of ce, kd, match, match_kd"):
        Heal("sft", 2, 1e-3)
    with pytest.raises(ValueError, match="steps=0 must be an int >= 1"):
        Heal("ce", 0, 1e-3)
    with pytest.raises(ValueError, match="match_lr=0 must be a finite number > 0"):
        Heal("match_kd", 2, 1e-3, match_steps=2, match_lr=0)


def test_evaluate_model_windows_average_to_the_positions(teacher, corpus):
    val = corpus.val_batches(batch_size=1)
    out = evaluate_model(teacher, val, corpus.tokenizer.token_byte_lengths())
    assert out["windows"] == len(val) == len(out["window_bpb"]) == 3
    assert min(out["window_bpb"]) <= out["val_bpb"] <= max(out["window_bpb"])


def test_tiny_experiment_runs_end_to_end_and_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ATTNLAB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, str(ROOT / "experiments/convert_smollm2/run.py"), "all", "--tiny",
           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    record = json.loads((tmp_path / "out/report.json").read_text())
    rows = {(r["conversion"], r["method"]): r for r in record["rows"]}
    assert set(rows) == {("dense", "untrained"), ("dense", "ce"), ("swa8", "untrained"), ("swa8", "ce"), ("swa8", "kd"),
                         ("swa8", "match_kd")}
    assert rows[("swa8", "kd")]["seeds"] == 2 and rows[("swa8", "kd")]["attn_flops_vs_dense"] < 1
    assert set(rows[("swa8", "ce")]["passkey"]) == {"64", "128"}
    assert (tmp_path / "out/bpb_by_position.png").stat().st_size > 0
    assert "| swa8 | kd | 2 |" in (tmp_path / "out/report.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)  # every run is on disk: nothing retrains
    assert again.returncode == 0 and "val bpb" not in again.stdout.split("Dense original")[0]
