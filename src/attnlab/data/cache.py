"""On-disk cache: atomic writes and token arrays read back as ``np.memmap``.

Every file is written to a temporary file in the destination folder, fsynced, then
renamed over the destination, so a reader never sees a half-written file and two
processes building the same entry at once both end with a complete one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write `path` all or nothing: ``write(f)`` fills a temp file ``.<name>.*.tmp`` beside it,
    which is fsynced and renamed over `path`. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def atomic_write_array(path: Path, array: np.ndarray) -> None:
    """Raw little-endian array bytes, readable with :func:`open_memmap`."""
    array = np.ascontiguousarray(array)
    atomic_write(
        path, lambda f: f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    )


def open_memmap(path: Path, dtype: str, length: int) -> np.ndarray:
    """Read-only memmap of ``length`` items of ``dtype`` (an empty array for length 0)."""
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(length,))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"
