"""Synthetic recall tasks: deterministic generators with the right answers, answer-only
scoring, accuracy by distance, validation of every field, and the training job on them."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from attnlab.data import build_data, data_config_from_dict
from attnlab.data.recall import (
    IGNORE,
    AccuracyTally,
    CopyConfig,
    MQARConfig,
    copy_sequences,
    distance_bucket,
    mqar_sequences,
)


def test_copy_sequence_by_hand():
    cfg = CopyConfig(vocab_size=5, distances=(3,), context=8)
    x, y, dist = copy_sequences(cfg, np.random.default_rng(0), 1)
    seg = x[0, :3]
    full = np.resize(seg, 9)  # the segment repeated: 9 tokens for 8 inputs + 8 targets
    assert x[0].tolist() == full[:8].tolist()
    # targets 0, 1 predict positions 1, 2 (inside the first segment): not scored
    assert y[0].tolist() == [IGNORE, IGNORE, *full[3:9].tolist()]
    assert dist[0].tolist() == [0, 0, 3, 3, 3, 3, 3, 3]
    assert (seg >= 0).all() and (seg < 5).all()


def test_copy_answers_are_the_token_d_back():
    cfg = CopyConfig(vocab_size=7, distances=(2, 5, 11), context=40)
    task = build_data(cfg)
    x, y = task.train_batch(3)
    seq = torch.cat([x, y[:, -1:]], dim=1)  # y's last target is the only token x does not hold
    for row in range(x.shape[0]):
        scored = (y[row] != IGNORE).nonzero().flatten()
        d = int(scored[0]) + 1  # the first scored target predicts position d
        assert d in cfg.distances
        t = scored
        assert torch.equal(y[row, t], seq[row, t + 1 - d]), "each answer equals the token d positions back"


def test_train_batches_are_a_function_of_seed_and_step():
    a, b = build_data(CopyConfig(seed=1)), build_data(CopyConfig(seed=1))
    assert all(torch.equal(u, v) for u, v in zip(a.train_batch(7), b.train_batch(7), strict=True))
    assert not torch.equal(a.train_batch(7)[0], a.train_batch(8)[0])
    assert not torch.equal(a.train_batch(7)[0], build_data(CopyConfig(seed=2)).train_batch(7)[0])


def test_validation_set_is_fixed_balanced_and_apart_from_training():
    cfg = CopyConfig(distances=(8, 16, 32), val_sequences=30, batch_size=7)
    task = build_data(cfg)
    first = task.val_set()
    again = build_data(cfg).val_set(batch_size=30)
    x = torch.cat([b[0] for b in first])
    assert torch.equal(x, again[0][0]) and [len(b[0]) for b in first] == [7, 7, 7, 7, 2]
    dist = torch.cat([b[2] for b in first])
    per_row = dist.max(dim=1).values
    assert sorted(per_row.tolist()) == sorted([8, 16, 32] * 10), "every distance equally often"
    train_rows = {tuple(r.tolist()) for s in range(20) for r in task.train_batch(s)[0]}
    assert not train_rows & {tuple(r.tolist()) for r in x}


def test_mqar_by_hand():
    cfg = MQARConfig(vocab_size=16, num_pairs=3, context=12)
    x, y, dist = mqar_sequences(cfg, np.random.default_rng(5), 4)
    for row in range(4):
        keys, values = x[row, 0:6:2], x[row, 1:6:2]
        assert len(set(keys.tolist())) == 3 and ((keys >= 1) & (keys < 8)).all()
        assert ((values >= 8) & (values < 16)).all()
        assert (y[row, :6] == IGNORE).all(), "nothing is scored inside the pairs"
        queries = np.nonzero(y[row] != IGNORE)[0]
        assert len(queries) == 3 and (queries >= 6).all()
        assert sorted(x[row, queries].tolist()) == sorted(keys.tolist()), "every key is asked once"
        for q in queries:
            pair = keys.tolist().index(x[row, q])
            assert y[row, q] == values[pair]
            assert dist[row, q] == q - 2 * pair and x[row, q - dist[row, q]] == x[row, q]
        filler = np.setdiff1d(np.arange(6, 12), queries)
        assert (x[row, filler] == 0).all() and (dist[row][y[row] == IGNORE] == 0).all()


def test_mqar_query_power_pulls_queries_towards_the_pairs():
    near = mqar_sequences(MQARConfig(context=256, num_pairs=4, query_power=2.0), np.random.default_rng(0), 200)[2]
    flat = mqar_sequences(MQARConfig(context=256, num_pairs=4), np.random.default_rng(0), 200)[2]
    assert near[near > 0].mean() < 0.5 * flat[flat > 0].mean()


def test_accuracy_by_distance_on_a_constructed_batch():
    y = torch.tensor([[IGNORE, 1, 2, 3], [IGNORE, IGNORE, 0, 1]])
    dist = torch.tensor([[0, 4, 4, 8], [0, 0, 8, 8]])
    pred = torch.tensor([[0, 1, 0, 3], [2, 2, 0, 0]])  # right: (0,1) (0,3) (1,2); wrong: (0,2) (1,3)
    logits = torch.nn.functional.one_hot(pred, 4).float()
    tally = AccuracyTally("copy")
    tally.add(logits, y, dist)
    m = tally.metrics()
    assert m["val_answers"] == 5 and m["val_accuracy"] == pytest.approx(3 / 5)
    assert m["val_accuracy_by_distance"] == {"4": 0.5, "8": pytest.approx(2 / 3)}


def test_mqar_distances_bucket_by_powers_of_two():
    assert distance_bucket("mqar", torch.tensor([0, 1, 3, 4, 7, 8, 100])).tolist() == [0, 1, 2, 4, 4, 8, 64]
    assert distance_bucket("copy", torch.tensor([3, 5])).tolist() == [3, 5]


def test_loss_covers_answers_only():
    from attnlab.model import ModelConfig, Transformer

    task = build_data(CopyConfig(vocab_size=8, distances=(4,), context=16, batch_size=3))
    x, y = task.train_batch(0)
    model = Transformer(ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, context=16))
    logits, loss = model(x, y)
    scored = y != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[scored], y[scored])
    assert torch.allclose(loss, by_hand) and scored.sum() == 3 * 13


@pytest.mark.parametrize("cls,field,value,allowed", [
    (CopyConfig, "distances", [0, 8], "integers in [1, context=128]"),
    (CopyConfig, "distances", [8, 8], "distinct"),
    (CopyConfig, "distances", [200], "context=128"),
    (CopyConfig, "vocab_size", 1, "[2, "),
    (CopyConfig, "context", 1, ">= 2"),
    (MQARConfig, "num_pairs", 50, "context // 3 = 42"),
    (MQARConfig, "num_pairs", 200, "[1, 127]"),
    (MQARConfig, "query_power", -1.0, ">= 0"),
    (MQARConfig, "batch_size", 0, ">= 1"),
    (MQARConfig, "seed", 2**70, "[0, "),
])
def test_bad_fields_are_named(cls, field, value, allowed):
    with pytest.raises(ValueError) as err:
        cls(**{field: value})
    msg = str(err.value)
    assert f"data.{field}=" in msg and allowed in msg


def test_config_sections_pick_the_task_dataclass():
    assert isinstance(data_config_from_dict({"name": "copy", "distances": [4, 8]}), CopyConfig)
    assert isinstance(data_config_from_dict({"name": "mqar"}), MQARConfig)
    with pytest.raises(ValueError, match=r"data.window"):
        data_config_from_dict({"name": "copy", "window": 3})
    with pytest.raises(ValueError, match=r"data.name='spiral'.*copy"):
        data_config_from_dict({"name": "spiral"})


def test_tasks_refuse_document_packing():
    with pytest.raises(ValueError, match="no documents"):
        build_data(CopyConfig()).train_batch(0, with_doc_ids=True)


def test_training_job_reports_accuracy_by_distance(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "attnlab.train", "model=tiny", "data=copy", "data.distances=[4,32]",
         "data.val_sequences=8", "data.batch_size=4", "train.steps=3", "train.logger=none",
         "train.progress=false", f"hydra.run.dir={run}"],
        capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["val_accuracy_by_distance"]) == {"4", "32"} and 0 <= metrics["val_accuracy"] <= 1
    assert metrics["val_answers"] == 4 * (64 - 3) + 4 * (64 - 31) and math.isfinite(metrics["val_loss"])
    assert "val_bpb" not in metrics


def test_training_job_refuses_mlm_on_a_task(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "attnlab.train", "model=tiny", "data=copy", "model.objective=mlm",
         "train.steps=1", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2 and "model.objective='mlm'" in out.stderr
