"""Offline teacher logits: a teacher's top-k logits of every train batch, on disk.

The batch of train step ``s`` is a pure function of ``(data seed, s)``
(`Corpus.train_batch`), so a teacher's answers to batches ``0 .. n-1`` can be computed once
and reused by every student run and sweep that reads the same corpus with the same seed,
batch size and context. Files, under ``<cache_dir>/teacher_topk/<key>/``:

- ``values.f16``: float16 ``[capacity, B, N, k]`` top-k logits (temperature 1), largest first;
- ``indices.u16`` (vocab <= 65536) or ``indices.i32``: their token ids, same shape;
- ``filled.u8``: ``[capacity]``, 1 once batch ``i`` is written (set after its data is flushed);
- ``meta.json``: what the key was made of, and the shapes.

``key`` hashes the teacher fingerprint (a hash of its weights file), the tokenizer
fingerprint, the corpus token cache (documents and tokenizer), the data seed, batch size,
context and k. Builders take a file lock, so two runs of a sweep that start together
compute each batch once; the capacity grows (copying what is there) when a run needs more
batches than an earlier one did. A data-parallel job builds together: rank 0 holds the lock
and grows the files, every rank computes its share of the missing batches, rank 0 marks
them filled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from attnlab.data.cache import atomic_write_json
from attnlab.distill.losses import TopK
from attnlab.train.distributed import Dist

FORMAT = 1


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:20]


@contextmanager
def locked(folder: Path, hold: bool = True):
    """An exclusive file lock on ``folder`` for the block. ``hold=False``: no lock (the other
    ranks of a data-parallel job whose rank 0 holds it for them)."""
    if not hold:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class TopKCache:
    """Top-k teacher logits of train batches ``0 .. capacity-1`` (memory-mapped).

    ``TopKCache(root, parts, batch_size, context, k, vocab_size)`` opens (or creates, on the
    first `build`) the entry for ``parts`` (the key ingredients, see the module docstring).
    """

    def __init__(self, root: str | Path, parts: dict, batch_size: int, context: int, k: int, vocab_size: int):
        if not isinstance(k, int) or not 1 <= k <= vocab_size:
            raise ValueError(f"distill.top_k={k!r} must be an int in [1, vocab_size={vocab_size}] for offline logits")
        self.parts = dict(parts, batch_size=batch_size, context=context, k=k, vocab_size=vocab_size)
        self.key = cache_key(self.parts)
        self.folder = Path(root) / "teacher_topk" / self.key
        self.shape = (batch_size, context, k)
        self.index_dtype = np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<i4")
        self._arrays = None

    # ------------------------------------------------------------------ files
    @property
    def _files(self) -> dict[str, Path]:
        suffix = "u16" if self.index_dtype.itemsize == 2 else "i32"
        return {"values": self.folder / "values.f16", "indices": self.folder / f"indices.{suffix}",
                "filled": self.folder / "filled.u8"}

    def capacity(self) -> int:
        meta = self.folder / "meta.json"
        return json.loads(meta.read_text())["capacity"] if meta.exists() else 0

    def _open(self, mode: str = "r"):
        cap = self.capacity()
        files = self._files
        return (
            np.memmap(files["values"], dtype="<f2", mode=mode, shape=(cap, *self.shape)),
            np.memmap(files["indices"], dtype=self.index_dtype, mode=mode, shape=(cap, *self.shape)),
            np.memmap(files["filled"], dtype=np.uint8, mode=mode, shape=(cap,)),
        )

    def _grow(self, capacity: int) -> None:
        """Make room for ``capacity`` batches, keeping what is there (new files, renamed over)."""
        old = self.capacity()
        if capacity <= old:
            return
        self._arrays = None
        for name, path in self._files.items():
            dtype = {"values": np.dtype("<f2"), "indices": self.index_dtype, "filled": np.dtype(np.uint8)}[name]
            shape = (capacity,) if name == "filled" else (capacity, *self.shape)
            tmp = path.with_name(path.name + ".grow")
            new = np.memmap(tmp, dtype=dtype, mode="w+", shape=shape)
            if old:
                new[:old] = np.memmap(path, dtype=dtype, mode="r", shape=(old, *shape[1:]))
            new.flush()
            del new
            os.replace(tmp, path)
        atomic_write_json(self.folder / "meta.json", {**self.parts, "capacity": capacity, "format": FORMAT})

    # ------------------------------------------------------------------ public
    def missing(self, n_batches: int) -> list[int]:
        """Batch ids in ``[0, n_batches)`` not in the cache yet."""
        cap = self.capacity()
        filled = np.zeros(n_batches, dtype=bool)
        if cap:
            have = np.memmap(self._files["filled"], dtype=np.uint8, mode="r", shape=(cap,))
            m = min(cap, n_batches)
            filled[:m] = have[:m] == 1
        return [int(i) for i in np.flatnonzero(~filled)]

    def build(self, n_batches: int, teacher_topk: Callable[[int], TopK], progress=None, dist: Dist | None = None) -> int:
        """Compute and store every missing batch in ``[0, n_batches)``; ``teacher_topk(i)`` gives
        batch ``i``'s `TopK` (``[B, N, k]``). Returns how many batches were computed.
        ``dist`` (collective): every rank computes every ``world``-th missing batch."""
        dist = dist or Dist()
        with locked(self.folder, hold=dist.is_main):
            todo = dist.broadcast_object(self.missing(n_batches) if dist.is_main else None)
            if not todo:
                return 0
            if dist.is_main:
                self._grow(max(n_batches, self.capacity()))
            dist.barrier()  # the files have their size
            values, indices, filled = self._open("r+")
            mine = todo[dist.rank::dist.world]
            for n, i in enumerate(mine):
                top = teacher_topk(i)
                if tuple(top.values.shape) != self.shape:
                    raise ValueError(f"teacher top-k of batch {i} has shape {tuple(top.values.shape)}, expected {self.shape}")
                values[i] = top.values.detach().float().cpu().numpy().astype(np.float16)
                indices[i] = top.indices.cpu().numpy().astype(self.index_dtype)
                if progress is not None:
                    progress(n + 1, len(mine))
            values.flush()
            indices.flush()
            dist.barrier()  # every rank's batches are written
            if dist.is_main:
                filled[todo] = 1
                filled.flush()
            del values, indices, filled
            self._arrays = None
            dist.barrier()  # marked filled before any rank reads
            return len(todo)

    def get(self, i: int, device=None, rows: slice | None = None) -> TopK:
        """Batch ``i``'s top-k logits: values float32 ``[B, N, k]``, indices int64; ``rows``:
        only those rows of the batch (a rank's share, `Dist.rows`)."""
        if self._arrays is None or len(self._arrays[2]) <= i:
            self._arrays = self._open("r")
        values, indices, filled = self._arrays
        if i >= len(filled) or not filled[i]:
            raise KeyError(f"teacher top-k cache {self.folder} has no batch {i}; build it first")
        rows = rows if rows is not None else slice(None)
        top = TopK(torch.from_numpy(np.asarray(values[i, rows], dtype=np.float32)),
                   torch.from_numpy(np.asarray(indices[i, rows]).astype(np.int64)))
        return top if device is None else top.to(device)
