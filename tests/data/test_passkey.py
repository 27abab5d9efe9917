"""The passkey task (data=passkey): the key sits in the hidden sentence and is the only thing
scored, distances are exactly the configured ones, batches are deterministic, the validation
set is balanced and uses the held-out plays, and every field is validated."""

import re

import numpy as np
import pytest
import torch

from attnlab.data import build_data, data_config_from_dict
from attnlab.data.passkey import (
    QUESTION,
    SENTENCE_PREFIX,
    SENTENCE_SUFFIX,
    PasskeyConfig,
    distance_range,
    filler_text,
    passkey_sequences,
)
from attnlab.data.recall import IGNORE, AccuracyTally, RecallTask


def text(row) -> str:
    return bytes(np.asarray(row, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


def test_passkey_sequence_by_hand():
    cfg = PasskeyConfig(digits=3, distances=(60,), context=80)
    x, y, dist = passkey_sequences(cfg, np.random.default_rng(0), 1)
    assert x.shape == y.shape == dist.shape == (1, 80)
    seq = np.concatenate([x[0], y[0, -1:]])  # all 81 bytes (y's last target is the one x lacks)
    s = text(seq)
    key = s[-3:]
    assert re.fullmatch(r"[1-9]\d\d", key)
    # the answer: the last 3 bytes, after the question
    assert s[81 - 3 - len(QUESTION) : 81 - 3] == QUESTION
    # the hidden key: its first digit 60 positions before the answer's first digit (81 - 3 = 78)
    h = 78 - 60
    assert s[h - len(SENTENCE_PREFIX) : h] == SENTENCE_PREFIX and s[h : h + 3] == key
    assert s[h + 3 : h + 3 + len(SENTENCE_SUFFIX)] == SENTENCE_SUFFIX
    assert re.findall(r"\d+", s) == [key, key], "the key and its answer are the only digits"
    # only the three answer digits are scored: targets 77, 78, 79 predict positions 78, 79, 80
    assert np.nonzero(y[0] != IGNORE)[0].tolist() == [77, 78, 79]
    assert text(y[0, 77:]) == key
    assert dist[0].tolist() == [0] * 77 + [60, 60, 60]
    for t in (77, 78, 79):  # each answer equals the byte its distance back
        assert y[0, t] == seq[t + 1 - 60]


def test_every_answer_copies_the_byte_its_distance_back():
    cfg = PasskeyConfig(distances=(59, 100, 235), context=256, batch_size=16)
    task = build_data(cfg)
    assert isinstance(task, RecallTask) and task.chance_accuracy == 0.1 and task.vocab_size == 256
    _, y = task.train_batch(5)
    for by in (y, *[vy for _, vy, _ in task.val_set()]):  # the last 5 targets, nothing else
        scored = by != IGNORE
        assert (scored.sum(dim=1) == 5).all() and scored[:, -5:].all()
    for vx, vy, vd in task.val_set():
        seq = torch.cat([vx, vy[:, -1:]], dim=1)
        for row in range(vx.shape[0]):
            t = (vy[row] != IGNORE).nonzero().flatten()
            d = int(vd[row, t[0]])
            assert d in cfg.distances and (vd[row, t] == d).all() and (vd[row][vy[row] == IGNORE] == 0).all()
            assert torch.equal(vy[row, t], seq[row, t + 1 - d])


def test_batches_are_a_function_of_seed_and_step():
    a, b = build_data(PasskeyConfig(seed=3)), build_data(PasskeyConfig(seed=3))
    assert all(torch.equal(u, v) for u, v in zip(a.train_batch(7), b.train_batch(7), strict=True))
    assert not torch.equal(a.train_batch(7)[0], a.train_batch(8)[0])
    assert not torch.equal(a.train_batch(7)[0], build_data(PasskeyConfig(seed=4)).train_batch(7)[0])
    va, vb = a.val_set(), b.val_set()
    assert all(torch.equal(u, v) for p, q in zip(va, vb, strict=True) for u, v in zip(p, q, strict=True))


def test_validation_is_balanced_and_uses_the_held_out_plays():
    cfg = PasskeyConfig(distances=(64, 128, 192), context=256, val_sequences=12, batch_size=5)
    task = build_data(cfg)
    val = task.val_set()
    assert [len(b[0]) for b in val] == [5, 5, 2]
    per_row = torch.cat([b[2] for b in val]).max(dim=1).values
    assert sorted(per_row.tolist()) == sorted([64, 128, 192] * 4), "every distance equally often"
    train_text, val_text = filler_text("train"), filler_text("val")
    x = torch.cat([b[0] for b in val])
    for row in x:  # the first 40 bytes are filler (the sentence starts after byte 60 at most)
        head = text(row[:40])
        assert head in val_text and head not in train_text
    head = text(task.train_batch(0)[0][0, :40])
    assert head in train_text


def test_accuracy_by_distance_reports_the_configured_distances():
    task = build_data(data_config_from_dict({"name": "passkey", "distances": [70, 200], "context": 256, "val_sequences": 4}))
    x, y, dist = task.val_set()[0]
    logits = torch.nn.functional.one_hot(y.clamp(min=0), 256).float()  # a perfect model
    tally = AccuracyTally("passkey")
    tally.add(logits, y, dist)
    m = tally.metrics()
    assert m["val_accuracy_by_distance"] == {"70": 1.0, "200": 1.0} and m["val_answers"] == 4 * 5


@pytest.mark.parametrize("fields,key,allowed", [
    ({"digits": 0}, "digits", "[1, 20]"),
    ({"digits": True}, "digits", "[1, 20]"),
    ({"distances": [108]}, "distances", "[59, 107]"),
    ({"distances": [58]}, "distances", "[59, 107]"),
    ({"distances": [236], "context": 256}, "distances", "[59, 235]"),
    ({"distances": [64, 64]}, "distances", "distinct"),
    ({"distances": []}, "distances", "non-empty"),
    ({"distances": "64"}, "distances", "list of integers"),
    ({"context": 64}, "context", "at least 80"),
    ({"val_sequences": 0}, "val_sequences", ">= 1"),
    ({"name": "copy"}, "name", "'passkey'"),
])
def test_bad_fields_are_named(fields, key, allowed):
    with pytest.raises(ValueError) as err:
        PasskeyConfig(**fields)
    msg = str(err.value)
    assert f"data.{key}=" in msg and allowed in msg, msg


def test_distance_range_is_the_layout():
    low, high = distance_range(5, 256)
    assert (low, high) == (5 + len(SENTENCE_SUFFIX) + len(QUESTION), 257 - 5 - len(SENTENCE_PREFIX)) == (59, 235)
    PasskeyConfig(distances=(low, high), context=256)  # both ends fit
