"""Synthetic recall tasks: sequences in which a token is predictable only by looking back a
known distance, so that attention layouts that cannot reach that far fail measurably.

```python
from attnlab.data.recall import CopyConfig, build_task

task = build_task(CopyConfig(distances=(8, 16, 32, 64), context=128))
x, y = task.train_batch(step)              # int64 [B, T]; y = -100 where nothing is scored
for x, y, dist in task.val_set(): ...      # dist int64 [B, T]: each answer's distance, 0 elsewhere
```

Tasks (``data.name``; configs are plain dataclasses, Hydra builds them from conf/data/*.yaml):

- ``copy`` (:class:`CopyConfig`): a random segment of ``d`` tokens (uniform over ``vocab_size``
  content tokens), then the same segment again, repeated until the sequence is full. Target
  ``t`` (predicting input position ``t + 1``) is scored only when it is a copy (``t + 1 >= d``),
  and it equals the token ``d`` positions before it, so its *distance* is ``d``: the query at
  position ``t`` must read the key at ``t + 1 - d``. A causal sliding window of ``W`` keys (the
  ``W`` most recent keys, itself included) reaches ``d <= W`` in one layer. ``d`` is drawn per
  sequence from ``distances``; the validation set cycles through them, so every distance
  has the same number of sequences.
- ``mqar`` (:class:`MQARConfig`, multi-query associative recall, Zoology: Arora et al. 2023):
  ``num_pairs`` key-value pairs (distinct keys from ``[1, vocab_size // 2)``, values from
  ``[vocab_size // 2, vocab_size)``) then a query region (token 0 as filler) in which every key
  appears once more, at positions drawn with weight ``(offset + 1) ** -query_power`` (0 =
  uniform; larger = queries closer to the pairs); the target at a query is its value. The
  distance of an answer is query position minus the position of its key; accuracy by
  distance uses power-of-two buckets (the bucket ``b`` holds ``b <= distance < 2b``).
- ``passkey``: see ``attnlab.data.passkey`` (a number hidden in filler text).

Everything is a pure function of ``(seed, step)`` (train) or ``seed`` (validation: the same
sequences for every run with that ``data.seed``, so runs pair up), generated on the fly: no
files, no downloads. Loss and accuracy cover answer positions only (``y = -100`` elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100
VAL_STREAM = 0x5EED_0F_7A1  # a second SeedSequence word: validation never meets a train step


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"data.{field}={value!r} is not allowed: {allowed}")


def _check_int(cfg, field: str, low: int, high: int | None = None) -> None:
    value = getattr(cfg, field)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise _bad(field, value, bound)


@dataclass
class TaskConfig:
    """Fields every recall task has. ``context``: tokens per sequence; ``batch_size``: sequences
    per training batch (and per validation batch); ``val_sequences``: the fixed validation set;
    ``seed``: train batch of step ``s`` = f(seed, s), validation set = f(seed)."""

    name: str = ""
    context: int = 128
    batch_size: int = 32
    val_sequences: int = 256
    seed: int = 0

    #: recall tasks never pack documents (the training loop and evaluation ask)
    pack_documents = False

    def __post_init__(self) -> None:
        _check_int(self, "context", 2)
        _check_int(self, "batch_size", 1)
        _check_int(self, "val_sequences", 1)
        _check_int(self, "seed", 0, 2**63 - 1)

    def resolved_cache_dir(self):
        """Where jobs that cache things put them (recall tasks themselves cache nothing)."""
        import os
        from pathlib import Path

        return Path(os.environ.get("ATTNLAB_CACHE") or "~/.cache/attnlab").expanduser()


@dataclass
class CopyConfig(TaskConfig):
    """The copying task (module docstring). ``vocab_size``: content tokens (chance = 1 / vocab_size);
    ``distances``: segment lengths ``d`` (each in [1, context]), one drawn per sequence."""

    name: str = "copy"
    vocab_size: int = 32
    distances: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        if self.name != "copy":
            raise _bad("name", self.name, "'copy' for CopyConfig")
        super().__post_init__()
        _check_int(self, "vocab_size", 2, 2**31 - 1)
        self.distances = _distances(self.distances, self.context)


@dataclass
class MQARConfig(TaskConfig):
    """Multi-query associative recall (module docstring). ``vocab_size``: keys take
    ``[1, vocab_size // 2)``, values ``[vocab_size // 2, vocab_size)`` (chance = 1 / number of
    values); ``num_pairs``: key-value pairs per sequence (<= number of keys, and the query
    region ``context - 2 * num_pairs`` must hold them all); ``query_power``: >= 0, how strongly
    queries crowd towards the pairs (0 = uniform over the query region)."""

    name: str = "mqar"
    vocab_size: int = 256
    num_pairs: int = 8
    query_power: float = 0.0

    def __post_init__(self) -> None:
        if self.name != "mqar":
            raise _bad("name", self.name, "'mqar' for MQARConfig")
        super().__post_init__()
        _check_int(self, "vocab_size", 4, 2**31 - 1)
        _check_int(self, "num_pairs", 1, self.vocab_size // 2 - 1)
        if 3 * self.num_pairs > self.context:
            raise _bad("num_pairs", self.num_pairs,
                       f"at most context // 3 = {self.context // 3}: {self.num_pairs} pairs take "
                       f"{2 * self.num_pairs} tokens and their queries {self.num_pairs} more")
        p = self.query_power
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p < 0:
            raise _bad("query_power", p, "a finite number >= 0")
        self.query_power = float(p)


def _distances(value, context: int) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise _bad("distances", value, f"a list of integers in [1, context={context}]")
    out = tuple(value)
    if not out or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= context for d in out):
        raise _bad("distances", value, f"a non-empty list of integers in [1, context={context}]")
    if len(set(out)) != len(out):
        raise _bad("distances", value, "distinct integers")
    return out


# ----------------------------------------------------------------------------- generators
# Each returns numpy int64 (x, y, dist), all [n, T]: inputs, targets (IGNORE where unscored)
# and the distance of each scored target (0 where unscored).


def copy_sequences(cfg: CopyConfig, rng: np.random.Generator, n: int,
                   row_distances: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``n`` copying sequences; ``row_distances`` fixes each row's ``d`` (else drawn)."""
    T = cfg.context
    if row_distances is None:
        row_distances = np.asarray(cfg.distances)[rng.integers(0, len(cfg.distances), size=n)]
    segments = rng.integers(0, cfg.vocab_size, size=(n, max(cfg.distances)))  # (n, Dmax)
    pos = np.arange(T + 1)[None, :]  # (1, T+1)
    d = np.asarray(row_distances, dtype=np.int64)[:, None]  # (n, 1)
    seq = np.take_along_axis(segments, pos % d, axis=1)  # (n, T+1): segment repeated with period d
    x, y = seq[:, :-1], seq[:, 1:].copy()  # (n, T) each
    scored = pos[:, 1:] >= d  # target t predicts position t+1: a copy once t+1 >= d
    y[~scored] = IGNORE
    dist = np.where(scored, d, 0)
    return x, y, dist


def mqar_sequences(cfg: MQARConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``n`` MQAR sequences (module docstring)."""
    T, P = cfg.context, cfg.num_pairs
    half = cfg.vocab_size // 2
    keys = np.argsort(rng.random((n, half - 1)), axis=1)[:, :P] + 1  # (n, P) distinct keys in [1, half)
    values = rng.integers(half, cfg.vocab_size, size=(n, P))  # (n, P)
    x = np.zeros((n, T), dtype=np.int64)
    x[:, 0 : 2 * P : 2], x[:, 1 : 2 * P : 2] = keys, values  # k0 v0 k1 v1 ...
    region = T - 2 * P  # query slots
    weights = (np.arange(region) + 1.0) ** -cfg.query_power
    # P distinct slots per row, weighted: Gumbel-top-k on log weights
    scores = np.log(weights)[None, :] - np.log(-np.log(rng.random((n, region))))
    slots = np.argsort(-scores, axis=1)[:, :P] + 2 * P  # (n, P) query positions
    order = np.argsort(rng.random((n, P)), axis=1)  # which pair each slot asks for
    rows = np.arange(n)[:, None]
    x[rows, slots] = keys[rows, order]
    y = np.full((n, T), IGNORE, dtype=np.int64)
    y[rows, slots] = values[rows, order]
    dist = np.zeros((n, T), dtype=np.int64)
    dist[rows, slots] = slots - 2 * order  # query position - key position
    return x, y, dist


# name -> (config class, generator); attnlab.data.passkey adds "passkey" when imported
# (task_config_class imports it; it cannot be imported here: it subclasses TaskConfig).
GENERATORS = {"copy": (CopyConfig, copy_sequences), "mqar": (MQARConfig, mqar_sequences)}


def task_config_class(name: str) -> type:
    """The config dataclass of recall task ``name``."""
    if name == "passkey":
        from attnlab.data.passkey import PasskeyConfig

        return PasskeyConfig
    if name not in GENERATORS:
        raise _bad("name", name, f"one of {sorted([*GENERATORS, 'passkey'])}")
    return GENERATORS[name][0]


def distance_bucket(task_name: str, dist: torch.Tensor) -> torch.Tensor:
    """Copying and passkey report exact (configured) distances; MQAR power-of-two buckets
    (``2**floor(log2 d)``)."""
    if task_name in ("copy", "passkey"):
        return dist
    safe = dist.clamp(min=1)
    return torch.where(dist > 0, 2 ** torch.floor(torch.log2(safe.double())).long(), 0)


class TaskTokens:
    """The token vocabulary of a synthetic task: ids ``0..vocab_size-1``, no text behind them."""

    name = "task"

    def __init__(self, vocab_size: int, task: str):
        self.vocab_size, self.task = vocab_size, task

    def fingerprint(self) -> str:
        return f"{self.task}-tokens-{self.vocab_size}"

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __repr__(self) -> str:
        return f"TaskTokens({self.task}, vocab={self.vocab_size})"


class RecallTask:
    """Batches of a synthetic recall task, with the interface of ``attnlab.data.Corpus`` that
    the training and distillation loops use (``train_batch``, ``val_batches``, ``config``,
    ``tokenizer``) plus ``val_set()`` (with each answer's distance) and ``is_task``."""

    is_task = True

    def __init__(self, config: TaskConfig):
        name = getattr(config, "name", None)
        if name not in GENERATORS:
            raise _bad("name", name, f"one of {sorted(GENERATORS)}")
        cls, self._generate = GENERATORS[name]
        if not isinstance(config, cls):
            raise TypeError(f"data.name={name!r} needs a {cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.tokenizer = TaskTokens(config.vocab_size, name)
        self.cache_paths: dict[str, str] = {"tokens": f"synthetic:{self.tokenizer.fingerprint()}"}
        self._val: tuple[np.ndarray, ...] | None = None

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _sequences(self, rng: np.random.Generator, n: int, val: bool) -> tuple[np.ndarray, ...]:
        if val and self.config.name == "copy":  # every distance equally often
            cycle = np.asarray(self.config.distances)
            return copy_sequences(self.config, rng, n, cycle[np.arange(n) % len(cycle)])
        if val and self.config.name == "passkey":  # held-out filler, every distance equally often
            return self._generate(self.config, rng, n, val=True)
        return self._generate(self.config, rng, n)

    def train_batch(self, step: int, device=None, with_doc_ids: bool = False) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` int64 ``[batch_size, context]`` for ``step``: a pure function of (seed, step)."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step={step!r} is not allowed: an integer >= 0")
        self._no_documents(with_doc_ids)
        rng = np.random.default_rng([self.config.seed, int(step)])
        x, y, _ = self._sequences(rng, self.config.batch_size, val=False)
        return tuple(_to_tensor(a, device) for a in (x, y))

    def _val_arrays(self) -> tuple[np.ndarray, ...]:
        if self._val is None:
            rng = np.random.default_rng([self.config.seed, VAL_STREAM, 1])
            self._val = self._sequences(rng, self.config.val_sequences, val=True)
        return self._val

    def val_set(self, batch_size: int | None = None, device=None) -> list[tuple[torch.Tensor, ...]]:
        """The fixed validation set as ``(x, y, dist)`` batches (``dist``: each scored target's
        distance, 0 elsewhere)."""
        batch_size = self.config.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed: an integer >= 1")
        arrays = self._val_arrays()
        n = arrays[0].shape[0]
        return [tuple(_to_tensor(a[i : i + batch_size], device) for a in arrays) for i in range(0, n, batch_size)]

    def val_batches(self, batch_size: int | None = None, device=None, with_doc_ids: bool = False):
        """``(x, y)`` batches of the validation set (``val_set`` without distances)."""
        self._no_documents(with_doc_ids)
        return [(x, y) for x, y, _ in self.val_set(batch_size, device)]

    def _no_documents(self, with_doc_ids: bool) -> None:
        if with_doc_ids:
            raise ValueError(f"data.name={self.config.name!r}: recall tasks have no documents to pack "
                             "(data.pack_documents is for corpora)")

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"task": self.config.name, **asdict(self.config), "chance_accuracy": self.chance_accuracy}

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of guessing uniformly among the answers the task can have."""
        cfg = self.config
        if cfg.name == "passkey":
            return 0.1  # one of ten digits
        return 1.0 / (cfg.vocab_size if cfg.name == "copy" else cfg.vocab_size - cfg.vocab_size // 2)

    def __repr__(self) -> str:
        return f"RecallTask({self.config})"


def _to_tensor(a: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return t.to(device) if device is not None else t


def build_task(cfg: TaskConfig) -> RecallTask:
    """The task a config describes (``RecallTask``)."""
    return RecallTask(cfg)


class AccuracyTally:
    """Running answer accuracy, overall and by distance bucket, from logits batch by batch."""

    def __init__(self, task_name: str):
        self.task_name = task_name
        self.correct: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def add(self, logits: torch.Tensor, y: torch.Tensor, dist: torch.Tensor) -> None:
        """``logits [B, T, V]``, ``y`` and ``dist`` ``[B, T]`` (unscored targets are ``-100``)."""
        scored = y != IGNORE  # (B, T)
        hit = (logits.argmax(dim=-1) == y) & scored  # (B, T)
        buckets = distance_bucket(self.task_name, dist.to(y.device))[scored]
        hits = hit[scored]
        for b in torch.unique(buckets).tolist():
            sel = buckets == b
            self.correct[b] = self.correct.get(b, 0) + int(hits[sel].sum())
            self.total[b] = self.total.get(b, 0) + int(sel.sum())

    def metrics(self) -> dict:
        """``val_accuracy``, ``val_answers`` and ``val_accuracy_by_distance`` (str(distance) -> accuracy)."""
        n = sum(self.total.values())
        return {
            "val_accuracy": sum(self.correct.values()) / n if n else math.nan,
            "val_answers": n,
            "val_accuracy_by_distance": {str(b): self.correct[b] / self.total[b] for b in sorted(self.total)},
        }
