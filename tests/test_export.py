"""`python -m attnlab.export`: a checkpoint becomes a Hugging Face directory that loads back
with the same logits; bad input is one ``error:`` line naming the key, exit status 2."""

import sys
from dataclasses import asdict

import pytest
import torch
from needs_packages import require

from attnlab.data import DataConfig
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import load_pretrained

HYDRA_QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.output_subdir=null"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A sliding-window model saved as an attnlab checkpoint (byte tokenizer)."""
    from attnlab.train.checkpoint import atomic_save

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, context=32,
                      attention={"swa": {"kind": "sliding_window", "window": 8}}, layer_pattern=["swa"])
    path = tmp_path_factory.mktemp("export") / "model.pt"
    record = {"model": asdict(cfg), "data": asdict(DataConfig(context=32))}
    atomic_save({"model": Transformer(cfg).state_dict(), "config": record}, path)
    return str(path)


def run(args, tmp_path, monkeypatch, capsys) -> tuple[int, str, str]:
    from attnlab.export import main

    monkeypatch.setattr(sys, "argv", ["attnlab.export", *args, f"hydra.run.dir={tmp_path / 'hydra'}", *HYDRA_QUIET])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_writes_a_directory_that_loads_back(checkpoint, tmp_path, monkeypatch, capsys):
    require("safetensors")
    out = tmp_path / "hf"
    code, stdout, err = run([f"source={checkpoint}", f"out={out}"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout and "tokenizer.json" in stdout
    src, back = load_pretrained(checkpoint), load_pretrained(f"hf:{out}")
    assert back.model.config.layer_specs() == src.model.config.layer_specs()
    idx = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(back.model(idx)[0], src.model(idx)[0], rtol=0, atol=1e-6)
    code, _, err = run([f"source=hf:{out}", f"out={out}", "overwrite=true", "dtype=bfloat16"],
                       tmp_path, monkeypatch, capsys)  # an export re-exported in place
    assert code == 0, err
    assert load_pretrained(f"hf:{out}").model.config.layer_specs() == src.model.config.layer_specs()


CASES = [
    ([], "source is not set"),
    (["source={ckpt}"], "out is not set"),
    (["source={tmp}/nope.pt", "out={tmp}/a"], "source="),
    (["source={ckpt}", "out={tmp}/a", "dtype=int8"], "dtype='int8'"),
    (["source={ckpt}", "out={tmp}/full"], "out="),
    (["source={ckpt}", "out={tmp}/full", "overwrite=true"], "not a Hugging Face model directory"),
    (["source={ckpt}", "out={tmp}/full", "overwrite=maybe"], "overwrite='maybe'"),
    (["source={ckpt}", "out={tmp}/a", "colour=red"], "colour"),
]


@pytest.mark.parametrize("args,key", CASES, ids=[" ".join(a) or "-" for a, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2(checkpoint, tmp_path, monkeypatch, capsys, args, key):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, _, err = run([a.format(ckpt=checkpoint, tmp=tmp_path) for a in args], tmp_path, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()
