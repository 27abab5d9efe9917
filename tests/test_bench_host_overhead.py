"""`attnlab.bench.host_overhead`: config checks, a CPU run of the harness (sdpa eager rows are
measured; triton is skipped and a CUDA-graph capture on CPU is an error row, not a crash)."""

from __future__ import annotations

import csv

import pytest
import torch

from attnlab.bench import host_overhead


def test_cpu_run_records_rows_and_errors(tmp_path):
    cfg = host_overhead.HostConfig(seq_len=32, head_dims=(16,), batch=1, heads=2, impls=("triton", "sdpa"), calls=3,
                                   warmup=1)
    rows = host_overhead.run(cfg, tmp_path, torch.device("cpu"), log=lambda line: None)
    got = {(r["impl"], r["graphs"]): r for r in rows}
    assert [r["status"] for r in rows] == ["skipped", "ok", "skipped", "error"]
    eager = got[("sdpa", "no")]
    assert 0 < eager["host_us"] <= eager["wall_us"]
    assert "CUDA graphs need a CUDA device" in got[("sdpa", "yes")]["reason"]
    with (tmp_path / "host_overhead.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [(r["impl"], r["graphs"], r["status"]) for r in written] == [(r["impl"], r["graphs"], r["status"])
                                                                        for r in rows]
    assert "| sdpa | 32 | 16 |" in (tmp_path / "host_overhead.md").read_text()


def test_fwd_bwd_call_returns_the_gradients():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 16, generator=gen).requires_grad_() for _ in range(3))
    dout = torch.randn(1, 2, 24, 16, generator=gen)
    dq, dk, dv = host_overhead.fwd_bwd_call("sdpa", q, k, v, dout)()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = torch.autograd.grad(out, (q, k, v), dout)
    for got, ref in zip((dq, dk, dv), want, strict=True):
        torch.testing.assert_close(got, ref)
    assert q.grad is None  # nothing accumulates between timed calls


@pytest.mark.parametrize("kwargs, match", [
    ({"impls": ("triton", "cudnn")}, "allowed: triton, sdpa"), ({"impls": ()}, "impls"),
    ({"calls": 0}, "host_overhead.calls=0"), ({"graphs": ()}, "graphs"), ({"head_dims": (63,)}, "63"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        host_overhead.HostConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_needs_cuda_by_default(tmp_path, capsys):
    assert host_overhead.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
