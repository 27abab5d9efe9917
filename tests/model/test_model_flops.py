"""flops_per_token against a hand count; the attention part is the sum of per-layer spec.flops."""

import pytest
import torch

from attnlab.attention import AttentionSpec
from attnlab.model import Transformer, flops_per_token, matmul_params, mfu, num_params


def test_hand_count_dense_causal(make_cfg):
    # vocab 64, d 32, 2 layers, 4 heads / 2 kv heads (head_dim 8), ffn 128, seq 16.
    cfg = make_cfg()
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * 32 * 128  # q, k+v, o, gate+up+down = 15360
    assert matmul_params(cfg) == 2 * per_layer + 64 * 32  # + lm_head = 32768
    n = 16
    pairs = n * (n + 1) // 2  # causal: 136 allowed (q, k) pairs per head
    attn_fwd = 4 * 8 * pairs * 4  # 4 * head_dim per pair, 4 heads = 17408 per layer
    out = flops_per_token(cfg, n)
    assert out["matmul"] == 6 * 32768
    assert out["attention"] == pytest.approx(2 * attn_fwd * 3.5 / n)
    assert out["total"] == pytest.approx(6 * 32768 + 2 * attn_fwd * 3.5 / n)
    # The matmul weights are the model's non-embedding parameters (minus norms) plus lm_head.
    model = Transformer(cfg)
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    assert matmul_params(cfg) == num_params(model, non_embedding=True) - norms + 64 * 32


def test_attention_part_is_sum_of_per_layer_spec_flops(make_cfg):
    att = {"w": {"kind": "sliding_window", "window": 8},
           "b": {"kind": "block_sparse", "pattern": "bigbird", "block_size": 8}, "d": {"kind": "dense"}}
    cfg = make_cfg(n_layers=3, attention=att, layer_pattern=["w", "b", "d"])
    n = 40
    out = flops_per_token(cfg, n)
    expected = [s.flops(batch=1, heads=4, n_q=n, n_k=n, head_dim=8, mode="fwd_bwd") / n for s in cfg.layer_specs()]
    assert out["attention_per_layer"] == pytest.approx(expected)
    assert out["attention"] == pytest.approx(sum(expected))
    assert expected[0] < expected[2]  # the window is cheaper than dense
    w = AttentionSpec(kind="sliding_window", causal=True, window=8)
    assert expected[0] == pytest.approx(w.flops(1, 4, n, n, 8, mode="fwd") * 3.5 / n)


def test_tied_mlm_head_counts_its_extra_row(make_cfg):
    assert matmul_params(make_cfg(objective="mlm", tie_embeddings=True)) == matmul_params(make_cfg()) + 32
    assert matmul_params(make_cfg(objective="mlm")) == matmul_params(make_cfg())


def test_mfu_and_errors(make_cfg):
    fpt = flops_per_token(make_cfg(), 16)
    assert mfu(1000.0, fpt, 1e12) == pytest.approx(1000.0 * fpt["total"] / 1e12)
    assert mfu(2.0, 3.0, 6.0) == 1.0
    with pytest.raises(ValueError, match="exceeds model.context=48"):
        flops_per_token(make_cfg(), 49)
    with pytest.raises(ValueError, match="vocab_size=None"):
        flops_per_token(make_cfg(vocab_size=None), 8)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 1.0, 0.0)
    assert all(isinstance(fpt[k], int | float) for k in ("matmul", "attention", "total"))  # JSON-friendly


def test_packed_documents_count_pairs_inside_documents(make_cfg):
    cfg = make_cfg()  # causal dense, 2 layers, 4 heads, head_dim 8
    n = 16
    ids = torch.tensor([[0] * 4 + [1] * 12, [0] * 16])  # row 0: documents of 4 and 12 tokens
    out = flops_per_token(cfg, n, doc_ids=ids)
    tri = lambda m: m * (m + 1) // 2  # noqa: E731  causal pairs of an m-token document
    pairs_per_token = (tri(4) + tri(12) + tri(16)) / (2 * n)
    assert out["attention"] == pytest.approx(2 * 4 * 8 * 4 * pairs_per_token * 3.5)  # layers x 4D x heads
    assert out["attention"] < flops_per_token(cfg, n)["attention"]
    one_doc = flops_per_token(cfg, n, doc_ids=torch.zeros(n, dtype=torch.int64))
    assert one_doc["attention"] == pytest.approx(flops_per_token(cfg, n)["attention"])
