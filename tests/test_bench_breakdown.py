"""`attnlab.bench.breakdown`: stage labels, the closed-form FLOPs, summarising launch records,
the launchers it calls (under the interpreter, against the reference) and the CLI's checks.
The timing itself needs CUDA (`make gpu-check` runs it)."""

from __future__ import annotations

import pytest
import torch
from attnlab.kernels.flash import flash_attention_reference

from attnlab.attention import AttentionSpec
from attnlab.bench import breakdown
from attnlab.bench.runs import write_table


@pytest.mark.parametrize("name, label", [
    ("_fwd_kernel", "fwd"), ("_bwd_preprocess", "bwd preprocess"), ("_bwd_dkdv_kernel", "bwd dK/dV"),
    ("_bwd_dq_kernel", "bwd dQ"), ("_bwd_fused_kernel", "_bwd_fused_kernel"),
])
def test_stage_of(name, label):
    assert breakdown.stage_of(name) == label


def test_causal_flops_match_the_spec():
    spec = AttentionSpec(kind="dense", causal=True)
    for mode, spec_mode in (("fwd", "fwd"), ("bwd", "bwd")):
        want = spec.flops(batch=2, heads=3, n_q=70, n_k=70, head_dim=64, mode=spec_mode)
        assert breakdown.causal_flops(2, 3, 70, 64, mode) == want


def test_summarize_medians_shares_calls_and_gaps():
    records = []
    for rep, (f, pre, dkdv, dq) in enumerate([(1.0, 0.1, 2.0, 1.0), (3.0, 0.1, 2.0, 1.0), (2.0, 0.1, 2.0, 1.0)]):
        records += [(rep, "_fwd_kernel", f), (rep, "_bwd_preprocess", pre), (rep, "_bwd_dkdv_kernel", dkdv),
                    (rep, "_bwd_dq_kernel", dq / 2), (rep, "_bwd_dq_kernel", dq / 2),  # two launches a call
                    (rep, breakdown.FWD_CALL, f + 0.5), (rep, breakdown.BWD_CALL, pre + dkdv + dq + 0.25)]
    rows = {r["stage"]: r for r in breakdown.summarize(records, reps=3)}
    assert rows["fwd"]["ms"] == pytest.approx(2.0)  # median of 1, 3, 2
    assert rows["bwd dQ"]["ms"] == pytest.approx(1.0) and rows["bwd dQ"]["launches"] == 2
    assert rows["bwd dK/dV"]["share"] == pytest.approx(2.0 / 5.1)
    assert rows[breakdown.FWD_CALL]["ms"] == pytest.approx(2.5)
    assert rows[breakdown.GAPS]["ms"] == pytest.approx(0.75)
    assert list(rows) == ["fwd", "bwd preprocess", "bwd dK/dV", "bwd dQ", breakdown.FWD_CALL, breakdown.BWD_CALL,
                          breakdown.GAPS]


def test_table_files(tmp_path):
    rows = [{"n": 16, "head_dim": 64, "stage": "fwd", "kernel": "_fwd_kernel", "ms": 1.23456, "share": float("nan"),
             "status": "ok"}]
    csv_path, md_path = write_table(rows, breakdown.COLUMNS, tmp_path / "o", "breakdown", "title")
    assert csv_path.read_text().splitlines()[1].startswith("16,64,,,,fwd,_fwd_kernel,,1.23456,,")
    md = md_path.read_text()
    assert md.startswith("title\n\n| n | head_dim |") and "| fwd | _fwd_kernel | - | 1.235 | - |" in md


def test_launchers_match_the_reference():
    """The launchers are called with the arguments FlashAttentionFunction passes (interpreter)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(4))
    forward, backward = breakdown.flash_launchers(q, k, v, 16**-0.5)
    out, lse = forward()
    dq, dk, dv = backward(out, lse, dout)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = flash_attention_reference(qr, kr, vr, causal=True)
    ref.backward(dout)
    torch.testing.assert_close(out, ref.detach(), atol=2e-4, rtol=2e-4)
    for got, want in ((dq, qr.grad), (dk, kr.grad), (dv, vr.grad)):
        torch.testing.assert_close(got, want, atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"seq_len": 0}, "breakdown.seq_len=0"), ({"head_dims": (64, 15)}, "15"), ({"head_dims": ()}, "head_dims"),
    ({"dtype": "float32"}, "allowed: bfloat16, float16"), ({"reps": True}, "breakdown.reps"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        breakdown.BreakdownConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_needs_cuda(tmp_path, capsys):
    assert breakdown.main(["--out", str(tmp_path), "--head-dims", "64"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "breakdown.csv").exists()
    assert breakdown.main(["--out", str(tmp_path), "--seq-len", "-1"]) == 2
    assert "breakdown.seq_len=-1" in capsys.readouterr().err
