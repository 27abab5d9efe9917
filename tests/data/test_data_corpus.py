"""Token cache, batches and bits per byte."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.data import ByteTokenizer, DataConfig, bits_per_byte, build_data


def _cfg(path, **kw):
    base = {"context": 16, "batch_size": 3, "val_tokens": 100, "seed": 0}
    return DataConfig(name="text", path=str(path), **{**base, **kw})


def test_token_cache_is_reused_without_tokenizing(text_folder, monkeypatch, private_cache):
    calls = []
    original = ByteTokenizer.encode_array

    def counting(self, text):
        calls.append(len(text))
        return original(self, text)

    monkeypatch.setattr(ByteTokenizer, "encode_array", counting)
    first = build_data(_cfg(text_folder))
    assert calls and not first.from_cache
    n_calls = len(calls)
    second = build_data(_cfg(text_folder))
    assert len(calls) == n_calls and second.from_cache
    assert isinstance(second.train_tokens, np.memmap) and second.train_tokens.dtype == np.uint16
    assert np.array_equal(first.train_tokens, second.train_tokens)
    assert np.array_equal(first.val_tokens, second.val_tokens)
    folder = second.describe()["cache"]["tokens"]
    assert folder.startswith(str(private_cache))
    assert not [p for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def test_changed_corpus_gets_a_new_cache_entry(text_folder):
    first = build_data(_cfg(text_folder))
    (text_folder / "part1.txt").write_text("Changed text.\n" * 100)
    second = build_data(_cfg(text_folder))
    assert not second.from_cache
    assert second.describe()["cache"]["tokens"] != first.describe()["cache"]["tokens"]


def test_truncated_cache_is_rebuilt(text_folder):
    first = build_data(_cfg(text_folder))
    expected = np.array(first.train_tokens)
    train_bin = Path(first.describe()["cache"]["tokens"]) / "train.bin"
    # A new file renamed over the old one: truncating in place would pull the pages from
    # under `first`'s memmap (SIGBUS on the next read).
    broken = train_bin.with_name("broken.bin")
    broken.write_bytes(train_bin.read_bytes()[:10])
    os.replace(broken, train_bin)
    again = build_data(_cfg(text_folder))
    assert not again.from_cache and np.array_equal(again.train_tokens, expected)


@pytest.mark.parametrize("damage", ["bit flip in train.bin", "bit flip in meta.json", "meta.json not JSON"])
def test_damaged_cache_is_rebuilt_with_a_warning_naming_the_file(text_folder, damage, caplog):
    first = build_data(_cfg(text_folder))
    expected = np.array(first.train_tokens)
    folder = Path(first.describe()["cache"]["tokens"])
    target = folder / ("train.bin" if "train.bin" in damage else "meta.json")
    data = bytearray(target.read_bytes())
    if damage == "meta.json not JSON":
        data[:1] = b"]"
    else:  # one bit, in the middle: sizes unchanged, only the checksum can tell
        data[len(data) // 2] ^= 0x10
    broken = target.with_name("broken")
    broken.write_bytes(bytes(data))
    os.replace(broken, target)  # renamed over: `first`'s memmap keeps the old pages
    with caplog.at_level("WARNING", logger="attnlab.data.corpus"):
        again = build_data(_cfg(text_folder))
    assert not again.from_cache and np.array_equal(again.train_tokens, expected)
    assert str(target) in caplog.text and "rebuilding" in caplog.text
    assert build_data(_cfg(text_folder)).from_cache  # the rebuilt entry verifies


def test_train_batch_shapes_and_shift(text_folder):
    data = build_data(_cfg(text_folder))
    x, y = data.train_batch(0)
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.from_numpy(np.asarray(data.train_tokens, dtype=np.int64))
    for row_x, row_y in zip(x, y, strict=True):  # each row is a real window of the stream
        starts = [s for s in range(len(stream) - 16) if torch.equal(stream[s : s + 16], row_x)]
        assert any(torch.equal(stream[s + 1 : s + 17], row_y) for s in starts)


def test_train_batch_is_a_function_of_seed_and_step(text_folder):
    a = build_data(_cfg(text_folder))
    b = build_data(_cfg(text_folder))
    for step in (0, 1, 7, 10_000):
        assert all(
            torch.equal(u, v) for u, v in zip(a.train_batch(step), b.train_batch(step), strict=True)
        )
    assert torch.equal(a.train_batch(5)[0], a.train_batch(5)[0])  # order of calls does not matter
    assert not torch.equal(a.train_batch(1)[0], a.train_batch(2)[0])
    other_seed = build_data(_cfg(text_folder, seed=1))
    assert not torch.equal(a.train_batch(1)[0], other_seed.train_batch(1)[0])


@pytest.mark.parametrize("step", [-1, 1.5, True])
def test_train_batch_rejects_bad_step(text_folder, step):
    data = build_data(_cfg(text_folder))
    with pytest.raises(ValueError, match="step="):
        data.train_batch(step)


def test_val_set_is_fixed_and_non_overlapping(text_folder):
    a = build_data(_cfg(text_folder))
    b = build_data(_cfg(text_folder, seed=3, batch_size=5))
    assert a.val_windows == 100 // 16 and a.val_target_tokens == 6 * 16
    xa = torch.cat([x for x, _ in a.val_batches()])
    ya = torch.cat([y for _, y in a.val_batches()])
    xb = torch.cat([x for x, _ in b.val_batches(batch_size=4)])
    assert torch.equal(xa, xb) and [len(x) for x, _ in a.val_batches()] == [3, 3]
    val = torch.from_numpy(np.asarray(a.val_tokens, dtype=np.int64))
    assert torch.equal(xa.flatten(), val[:96]) and torch.equal(ya.flatten(), val[1:97])
    assert a.val_bytes == 96  # bytes: one byte per target token


def test_val_cap_is_the_smaller_of_val_tokens_and_val(text_folder):
    data = build_data(_cfg(text_folder, val_tokens=10**6))
    assert data.val_windows == (len(data.val_tokens) - 1) // 16


def test_bits_per_byte_hand_computed():
    # 2 nats/token over 300 tokens that stand for 1200 bytes: 600 nats = 600/ln2 bits over 1200 bytes.
    assert bits_per_byte(2.0, 300, 1200) == pytest.approx(0.5 / math.log(2))
    assert bits_per_byte(math.log(2), 8, 8) == pytest.approx(1.0)  # byte tokens: bpb = loss / ln 2
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 10, 0)


def test_corpus_bits_per_byte_uses_the_val_set(text_folder):
    data = build_data(_cfg(text_folder))
    assert data.bits_per_byte(math.log(2)) == pytest.approx(data.val_target_tokens / data.val_bytes)


def test_iter_documents(text_folder):
    data = build_data(_cfg(text_folder))
    assert [n for n, _ in data.iter_documents()] == ["part0.txt", "part1.txt", "part2.md"]
    with pytest.raises(ValueError, match="split="):
        data.iter_documents("test")
