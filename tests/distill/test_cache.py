"""The offline top-k teacher logits cache: round trip, reuse, growth, keys."""

import numpy as np
import pytest
import torch

from attnlab.distill.cache import TopKCache
from attnlab.distill.losses import TopK

B, N, K, V = 2, 5, 3, 300  # V > 256 so ids need more than a byte


def fake_teacher(calls):
    def topk(i):
        calls.append(i)
        g = torch.Generator().manual_seed(i)
        return TopK.of(torch.randn(B, N, V, generator=g) * 3, K)
    return topk


def test_round_trip_reuse_and_growth(tmp_path):
    parts = {"teacher": "t1", "tokens": "corpus-a", "seed": 0}
    calls = []
    cache = TopKCache(tmp_path, parts, B, N, K, V)
    assert cache.missing(3) == [0, 1, 2]
    assert cache.build(3, fake_teacher(calls)) == 3
    for i in range(3):
        expect = fake_teacher([])(i)
        got = cache.get(i)
        assert got.values.dtype == torch.float32 and got.indices.dtype == torch.int64
        torch.testing.assert_close(got.values, expect.values.half().float())
        assert torch.equal(got.indices, expect.indices)
    # a second run with the same key computes nothing; a longer one only the new batches
    again = TopKCache(tmp_path, parts, B, N, K, V)
    assert again.build(3, fake_teacher(calls)) == 0 and calls == [0, 1, 2]
    assert again.build(5, fake_teacher(calls)) == 2 and calls == [0, 1, 2, 3, 4]
    assert again.capacity() == 5
    torch.testing.assert_close(again.get(1).values, fake_teacher([])(1).values.half().float())  # kept on growth
    with pytest.raises(KeyError, match="no batch 7"):
        again.get(7)
    assert np.dtype(again.index_dtype).itemsize == 2


def test_key_depends_on_teacher_data_and_k(tmp_path):
    a = TopKCache(tmp_path, {"teacher": "t1", "seed": 0}, B, N, K, V)
    assert a.key == TopKCache(tmp_path, {"teacher": "t1", "seed": 0}, B, N, K, V).key
    assert a.key != TopKCache(tmp_path, {"teacher": "t2", "seed": 0}, B, N, K, V).key
    assert a.key != TopKCache(tmp_path, {"teacher": "t1", "seed": 1}, B, N, K, V).key
    assert a.key != TopKCache(tmp_path, {"teacher": "t1", "seed": 0}, B, N, K + 1, V).key
    with pytest.raises(ValueError, match="top_k"):
        TopKCache(tmp_path, {}, B, N, V + 1, V)
