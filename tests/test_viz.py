"""`python -m attnlab.viz` and `plot_spec`: a PNG for every pattern, kind and per-head layout."""

import subprocess
import sys

import pytest
import torch

from attnlab.attention import PATTERNS, AttentionSpec
from attnlab.viz import distinct_heads, plot_spec
from attnlab.viz.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cli_writes_a_png_for_every_pattern(pattern, tmp_path, capsys):
    out = tmp_path / f"{pattern}.png"
    args = ["--pattern", pattern, "--block-size", "16", "--n", "100", "--causal", "--out", str(out)]
    if pattern in ("bigbird", "random"):
        args += ["--heads", "3", "--seed", "1"]
    assert main(args) == 0
    assert is_png(out)
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "dense", "--causal"],
        ["--kind", "sliding_window", "--window", "16", "--causal"],
        ["--pattern", "longformer", "--window", "20,5", "--block-size", "8"],
    ],
)
def test_cli_other_kinds_and_windows(args, tmp_path):
    out = tmp_path / "mask.png"
    assert main([*args, "--n", "64", "--out", str(out)]) == 0
    assert is_png(out)


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--kind", "dense", "--pattern", "local", "--out", str(tmp_path / "x.png")]) == 2
    assert "--pattern" in capsys.readouterr().err
    assert main(["--pattern", "local", "--block-size", "12", "--out", str(tmp_path / "x.png")]) == 2
    assert "block_size=12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--window", "1,2,3"])


def test_plot_spec_explicit_per_head_layout(tmp_path):
    lay = torch.zeros(4, 4, 4, dtype=torch.bool)
    lay[0] = lay[2] = torch.eye(4, dtype=torch.bool)
    lay[1] = lay[3] = True
    spec = AttentionSpec(kind="block_sparse", block_size=16, layout=lay)
    assert distinct_heads(spec.dense_mask(64, 64)) == [[0, 2], [1, 3]]
    assert is_png(plot_spec(spec, 64, tmp_path / "sub" / "explicit.png"))


def test_module_entry_point(tmp_path):
    out = tmp_path / "cli.png"
    res = subprocess.run(
        [sys.executable, "-m", "attnlab.viz", "--pattern", "strided", "--n", "64", "--block-size", "8",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert is_png(out)


def test_cli_draws_a_selected_layout_for_a_given_input(tmp_path, capsys):
    out = tmp_path / "topk.png"
    assert main(["--kind", "topk_blocks", "--top-k", "2", "--block-size", "16", "--causal", "--n", "64",
                 "--seed", "3", "--out", str(out)]) == 0  # fmt: skip
    assert out.stat().st_size > 0
    assert main(["--kind", "sliding_window", "--window", "8", "--top-k", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--top-k" in capsys.readouterr().err
    with pytest.raises(ValueError, match="q= and k="):
        plot_spec(AttentionSpec(kind="topk_blocks", top_k=2), 32, tmp_path / "y.png")
