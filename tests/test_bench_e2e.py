"""`attnlab.bench.e2e`: a tiny model trained on CPU with impl sdpa (dense and a window), an impl
that cannot run recorded as an error row, the ratios, and the config checks."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from attnlab.bench import e2e

TINY = dict(seq_len=32, n_layers=2, d_model=32, n_heads=2, vocab_size=64, warmup_steps=1, steps=2)


def test_tiny_cpu_run(tmp_path):
    # flex has no backward on CPU: its rows must be errors with the reason, not a crash
    cfg = e2e.E2EConfig(**TINY, impls=("sdpa", "flex"), attention=("dense", "swa8"))
    rows = e2e.run(cfg, tmp_path, torch.device("cpu"), log=lambda line: None)
    assert [(r["attention"], r["impl"], r["status"]) for r in rows] == [
        ("dense", "sdpa", "ok"), ("dense", "flex", "error"), ("swa8", "sdpa", "ok"), ("swa8", "flex", "error")]
    for r in rows[0], rows[2]:
        assert r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) and r["params_m"] > 0
        assert r["step_ms"] == pytest.approx(32 / r["tokens_per_s"] * 1e3)
    assert "backward" in rows[1]["reason"]
    with (tmp_path / "e2e.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "error", "ok", "error"]


def test_a_step_trains():
    cfg = e2e.E2EConfig(**TINY, impls=("sdpa",), attention=("dense",))
    from attnlab.model import Transformer
    from attnlab.train.optim import param_groups

    torch.manual_seed(0)
    model = Transformer(cfg.model_config("sdpa", "dense"))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    idx = torch.randint(64, (1, 33), generator=torch.Generator().manual_seed(0))
    first = e2e.train_steps(model, opt, idx, 1, torch.autocast("cpu", dtype=torch.bfloat16))
    last = e2e.train_steps(model, opt, idx, 5, torch.autocast("cpu", dtype=torch.bfloat16))
    assert float(last) < float(first)  # the same batch again: the optimizer steps lower its loss


def test_ratios_pair_impls_per_attention():
    rows = [{"attention": "dense", "impl": "triton", "status": "ok", "tokens_per_s": 300.0},
            {"attention": "dense", "impl": "sdpa", "status": "ok", "tokens_per_s": 200.0},
            {"attention": "swa1024", "impl": "triton", "status": "ok", "tokens_per_s": 500.0},
            {"attention": "swa1024", "impl": "sdpa", "status": "error", "tokens_per_s": None}]
    assert e2e.ratios(rows) == {"dense": 1.5}


def test_attention_names():
    assert e2e.attention_kwargs("dense") == {"kind": "dense"}
    assert e2e.attention_kwargs("swa1024") == {"kind": "sliding_window", "window": 1024}
    for bad in ("swa", "swa0", "window1024", "dense "):
        with pytest.raises(ValueError, match="dense, or swa<W>"):
            e2e.attention_kwargs(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"impls": ("triton", "cuda")}, "allowed: "), ({"steps": 0}, "e2e.steps=0"), ({"attention": ()}, "empty"),
    ({"d_model": 33}, "divisible by model.n_heads"), ({"lr": 0}, "e2e.lr=0"), ({"dtype": "fp8"}, "allowed"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        e2e.E2EConfig(**{**TINY, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli(tmp_path, capsys):
    assert e2e.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert e2e.main(["--out", str(tmp_path), "--attention", "swa-1"]) == 2
    assert "swa-1" in capsys.readouterr().err
