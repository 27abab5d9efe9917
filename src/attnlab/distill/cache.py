"""Offline teacher logits: a teacher's top-k logits of every train batch, on disk.

The batch of train step ``s`` is a pure function of ``(data seed, s)``
(`Corpus.train_batch`), so a teacher's answers to batches ``0 .. n-1`` can be computed once
and reused by every student run and sweep that reads the same corpus with the same seed,
batch size and context. Files, under ``<cache_dir>/teacher_topk/<key>/``:

- ``values.f16``: float16 ``[capacity, B, N, k]`` top-k logits (temperature 1), largest first;
- ``indices.u16`` (vocab <= 65536) or ``indices.i32``: their token ids, same shape;
- ``crc32.u32``: ``[capacity, 2]``, the CRC-32 of each batch's values and indices bytes;
- ``filled.u8``: ``[capacity]``, 1 once batch ``i`` is written (set after its data is flushed);
- ``meta.json``: what the key was made of, the capacity and a checksum of itself.

``key`` hashes content, never a location: the teacher fingerprint (a hash of its weights
file), the tokenizer fingerprint, the corpus token cache (its folder name, itself a hash of
documents and tokenizer; a path given for it is reduced to that name), the data seed, batch
size, context and k. Builders take a file lock, so two runs of a sweep that start together
compute each batch once; the capacity grows (copying what is there) when a run needs more
batches than an earlier one did. A data-parallel job builds together: rank 0 holds the lock
and grows the files, every rank computes its share of the missing batches, rank 0 marks
them filled.

Nothing is trusted blindly: `build` checks every filled batch it needs against its CRC and
computes the damaged ones again (a warning names the file and the batches); a meta.json
that does not verify, or data files of the wrong size, make the whole entry be rebuilt
(with a warning naming the file). `get` checks the batch it returns: a damaged one is
recomputed with the teacher this process built the cache with, else `CorruptFile` names the
file (the next `build` repairs it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from attnlab.data.cache import CorruptFile, read_checked_json, write_checked_json
from attnlab.distill.losses import TopK
from attnlab.train.distributed import Dist

log = logging.getLogger(__name__)

FORMAT = 2  # 2: per-batch CRC-32, checked meta.json, content-only key


def content_parts(parts: dict) -> dict:
    """``parts`` with the token cache given by path reduced to its folder name (a content
    hash), so the key does not change with where the cache directory is."""
    out = dict(parts)
    tokens = out.get("tokens")
    if isinstance(tokens, str | os.PathLike) and (os.sep in str(tokens) or "/" in str(tokens)):
        out["tokens"] = Path(tokens).name
    return out


def cache_key(parts: dict) -> str:
    parts = content_parts(parts)
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:20]


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


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
        self.parts = dict(content_parts(parts), batch_size=batch_size, context=context, k=k, vocab_size=vocab_size)
        self.key = cache_key(self.parts)
        self.folder = Path(root) / "teacher_topk" / self.key
        self.shape = (batch_size, context, k)
        self.index_dtype = np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<i4")
        self._arrays = None
        self._teacher_topk = None  # set by build: recomputes a batch that fails its check in get
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ files
    @property
    def _files(self) -> dict[str, Path]:
        suffix = "u16" if self.index_dtype.itemsize == 2 else "i32"
        return {"values": self.folder / "values.f16", "indices": self.folder / f"indices.{suffix}",
                "crc": self.folder / "crc32.u32", "filled": self.folder / "filled.u8"}

    def _layout(self, capacity: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {"values": (np.dtype("<f2"), (capacity, *self.shape)),
                "indices": (self.index_dtype, (capacity, *self.shape)),
                "crc": (np.dtype("<u4"), (capacity, 2)),
                "filled": (np.dtype(np.uint8), (capacity,))}

    def capacity(self) -> int:
        """Batches the files hold room for; 0 when there is no entry, or when its meta.json or
        file sizes do not check out (logged, naming the file: the next `build` rebuilds it)."""
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            return 0
        try:
            meta = read_checked_json(meta_path)
            cap = meta.get("capacity")
            if meta.get("format") != FORMAT or {k: meta.get(k) for k in self.parts} != self.parts:
                raise CorruptFile(meta_path, "written for another format or key")
            if not isinstance(cap, int) or cap < 0:
                raise CorruptFile(meta_path, f"capacity={cap!r}")
            for name, (dtype, shape) in self._layout(cap).items():
                path = self._files[name]
                want = int(np.prod(shape)) * dtype.itemsize
                size = path.stat().st_size if path.exists() else None
                if size != want:
                    raise CorruptFile(path, f"{size} bytes, {want} expected for capacity {cap}")
        except CorruptFile as err:
            if str(err) not in self._warned:  # capacity() is asked often: say it once
                self._warned.add(str(err))
                log.warning("teacher top-k cache file %s; the entry will be rebuilt", err)
            return 0
        return cap

    def _open(self, mode: str = "r"):
        cap = self.capacity()
        if cap == 0:
            return tuple(np.zeros(shape, dtype) for dtype, shape in self._layout(0).values())
        return tuple(np.memmap(self._files[name], dtype=dtype, mode=mode, shape=shape)
                     for name, (dtype, shape) in self._layout(cap).items())

    def _grow(self, capacity: int) -> None:
        """Make room for ``capacity`` batches, keeping what is there (new files, renamed over)."""
        old = self.capacity()
        if capacity <= old:
            return
        self._arrays = None
        for name, (dtype, shape) in self._layout(capacity).items():
            path = self._files[name]
            tmp = path.with_name(path.name + ".grow")
            new = np.memmap(tmp, dtype=dtype, mode="w+", shape=shape)
            if old:
                new[:old] = np.memmap(path, dtype=dtype, mode="r", shape=(old, *shape[1:]))
            new.flush()
            del new
            os.replace(tmp, path)
        write_checked_json(self.folder / "meta.json", {**self.parts, "capacity": capacity, "format": FORMAT})

    def _damaged(self, values, indices, crcs, i: int) -> list[str]:
        """Names of batch ``i``'s files whose bytes do not match its CRC."""
        got = (_crc(values[i]), _crc(indices[i]))
        return [self._files[name].name for name, a, b in zip(("values", "indices"), got, crcs[i], strict=True)
                if a != int(b)]

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

    def _check(self, n_batches: int) -> list[int]:
        """Filled batches in ``[0, n_batches)`` that fail their CRC, marked unfilled (main rank, locked)."""
        if not self.capacity():
            return []
        values, indices, crcs, filled = self._open("r+")
        bad, where = [], set()
        for i in np.flatnonzero(filled[:n_batches] == 1):
            names = self._damaged(values, indices, crcs, int(i))
            if names:
                bad.append(int(i))
                where.update(names)
        if bad:
            shown = bad if len(bad) <= 10 else [*bad[:10], f"... ({len(bad)} batches)"]
            log.warning("teacher top-k cache %s: batches %s fail their checksum (%s); computing them again",
                        self.folder, shown, ", ".join(str(self.folder / n) for n in sorted(where)))
            filled[bad] = 0
            filled.flush()
        del values, indices, crcs, filled
        self._arrays = None
        return bad

    def build(self, n_batches: int, teacher_topk: Callable[[int], TopK], progress=None, dist: Dist | None = None) -> int:
        """Compute and store every missing (or damaged) batch in ``[0, n_batches)``;
        ``teacher_topk(i)`` gives batch ``i``'s `TopK` (``[B, N, k]``). Returns how many
        batches were computed. ``dist`` (collective): every rank computes every ``world``-th
        missing batch."""
        dist = dist or Dist()
        self._teacher_topk = teacher_topk
        with locked(self.folder, hold=dist.is_main):
            if dist.is_main:
                self._check(n_batches)
            todo = dist.broadcast_object(self.missing(n_batches) if dist.is_main else None)
            if not todo:
                return 0
            if dist.is_main:
                self._grow(max(n_batches, self.capacity()))
            dist.barrier()  # the files have their size
            values, indices, crcs, filled = self._open("r+")
            mine = todo[dist.rank::dist.world]
            for n, i in enumerate(mine):
                top = teacher_topk(i)
                if tuple(top.values.shape) != self.shape:
                    raise ValueError(f"teacher top-k of batch {i} has shape {tuple(top.values.shape)}, expected {self.shape}")
                v = top.values.detach().float().cpu().numpy().astype(np.float16)
                ix = top.indices.cpu().numpy().astype(self.index_dtype)
                values[i], indices[i] = v, ix
                crcs[i] = (_crc(values[i]), _crc(indices[i]))
                if progress is not None:
                    progress(n + 1, len(mine))
            values.flush()
            indices.flush()
            crcs.flush()
            dist.barrier()  # every rank's batches are written
            if dist.is_main:
                filled[todo] = 1
                filled.flush()
            del values, indices, crcs, filled
            self._arrays = None
            dist.barrier()  # marked filled before any rank reads
            return len(todo)

    def get(self, i: int, device=None, rows: slice | None = None) -> TopK:
        """Batch ``i``'s top-k logits: values float32 ``[B, N, k]``, indices int64; ``rows``:
        only those rows of the batch (a rank's share, `Dist.rows`). Checked against its CRC
        (module docstring)."""
        if self._arrays is None or len(self._arrays[3]) <= i:
            self._arrays = self._open("r")
        values, indices, crcs, filled = self._arrays
        if i >= len(filled) or not filled[i]:
            raise KeyError(f"teacher top-k cache {self.folder} has no batch {i}; build it first")
        rows = rows if rows is not None else slice(None)
        damaged = self._damaged(values, indices, crcs, i)
        if damaged:
            where = ", ".join(str(self.folder / n) for n in damaged)
            if self._teacher_topk is None:
                raise CorruptFile(where, f"batch {i} fails its checksum; the next build of this cache computes it again")
            log.warning("teacher top-k cache %s: batch %d fails its checksum; using the teacher's answer instead "
                        "(the next build repairs the file)", where, i)
            top = self._teacher_topk(i)
            top = TopK(top.values.detach().float().cpu().half().float()[rows],
                       top.indices.cpu().to(torch.int64)[rows])
        else:
            top = TopK(torch.from_numpy(np.asarray(values[i, rows], dtype=np.float32)),
                       torch.from_numpy(np.asarray(indices[i, rows]).astype(np.int64)))
        return top if device is None else top.to(device)
