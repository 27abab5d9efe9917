"""bpb_by_position: hand-computed values on a stub model, buckets, and agreement with the
`bpb` task on the same windows."""

import math

import numpy as np
import pytest
import torch

from attnlab.data import ByteTokenizer, DataConfig
from attnlab.eval import bpb_by_position, evaluate_bpb, position_curve, position_losses
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import Pretrained


class PositionStub(torch.nn.Module):
    """Logits that depend on the position only: at position t, log-probabilities ``log_probs[t]``."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.log(torch.tensor(probs, dtype=torch.float64)).float()  # (T, V)

    def forward(self, idx, targets=None, doc_ids=None):
        return self.log_probs[None].expand(idx.shape[0], -1, -1), None  # (B, T, V)


def test_position_losses_by_hand():
    probs = [[0.4, 0.4, 0.2], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]  # T=3 positions, V=3 tokens
    byte_lengths = torch.tensor([1, 2, 3])
    y1 = torch.tensor([[0, 1, 2], [1, 0, 2]])
    y2 = torch.tensor([[1, 2, 0]])
    batches = [(torch.zeros_like(y1), y1), (torch.zeros_like(y2), y2)]
    sums = position_losses(PositionStub(probs), batches, byte_lengths, "cpu")
    ln = math.log
    loss = [-ln(0.4) * 3, -ln(0.5) - ln(0.25) - ln(0.25), -ln(0.8) * 2 - ln(0.1)]
    n_bytes = [1 + 2 + 2, 2 + 1 + 3, 3 + 3 + 1]
    assert sums["windows"] == 3 and sums["bytes"].tolist() == n_bytes
    np.testing.assert_allclose(sums["loss"], loss, rtol=1e-6)
    # each window's own sums, in batch order (window 0: targets 0, 1, 2 at positions 0, 1, 2)
    window_loss = [-ln(0.4) - ln(0.5) - ln(0.8), -ln(0.4) - ln(0.25) - ln(0.8), -ln(0.4) - ln(0.25) - ln(0.1)]
    np.testing.assert_allclose(sums["window_loss"], window_loss, rtol=1e-6)
    assert sums["window_bytes"].tolist() == [1 + 2 + 3, 2 + 1 + 3, 2 + 3 + 1]
    curve = position_curve(sums["loss"], sums["bytes"])
    np.testing.assert_allclose(curve["bpb_by_position"], [v / (ln(2) * b) for v, b in zip(loss, n_bytes, strict=True)], rtol=1e-6)
    # buckets [1, 1] and [2, 3] (positions are 1-based: tokens seen)
    assert [b["positions"] for b in curve["buckets"]] == [[1, 1], [2, 3]]
    assert curve["buckets"][1]["bpb"] == pytest.approx((loss[1] + loss[2]) / (ln(2) * 13), rel=1e-6)
    assert curve["val_bpb"] == pytest.approx(sum(loss) / (ln(2) * sum(n_bytes)), rel=1e-6)


def test_buckets_are_powers_of_two_and_cover_every_position():
    curve = position_curve(np.ones(100), np.full(100, 2))
    spans = [b["positions"] for b in curve["buckets"]]
    assert spans == [[1, 1], [2, 3], [4, 7], [8, 15], [16, 31], [32, 63], [64, 100]]
    assert sum(b["bytes"] for b in curve["buckets"]) == 200
    assert all(b["bpb"] == pytest.approx(1 / (2 * math.log(2))) for b in curve["buckets"])


def test_byte_weighted_mean_over_positions_is_the_bpb_task(tmp_path):
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, context=32)
    pre = Pretrained(Transformer(cfg).eval(), cfg, ByteTokenizer(), "random", "attnlab", "test")
    data = DataConfig(context=32, val_tokens=256, cache_dir=str(tmp_path / "cache"))
    bpb = evaluate_bpb(pre, data, windows=3, batch_size=2, device="cpu")
    pos = bpb_by_position(pre, data, windows=3, batch_size=2, device="cpu")
    assert pos["windows"] == bpb["windows"] == 4 and pos["bytes"] == bpb["bytes"]  # 2 batches of 2
    assert pos["val_bpb"] == pytest.approx(bpb["val_bpb"], rel=1e-5)
    weighted = sum(v * b for v, b in zip(pos["bpb_by_position"], pos["bytes_by_position"], strict=True))
    assert weighted / sum(pos["bytes_by_position"]) == pytest.approx(bpb["val_bpb"], rel=1e-5)
    assert len(pos["bpb_by_position"]) == 32 and pos["buckets"][-1]["positions"] == [32, 32]
