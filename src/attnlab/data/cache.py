"""On-disk cache: atomic writes, checksums, and token arrays read back as ``np.memmap``.

Every file is written to a temporary file in the destination folder, fsynced, then
renamed over the destination (with the mode a plain ``open`` would give it: ``0666`` less
the umask), so a reader never sees a half-written file and two processes building the
same entry at once both end with a complete one.

Checksums: cache metadata is "checked JSON" (`write_checked_json`: the object plus a
``checksum`` of its canonical JSON); data files are listed in it with their size and
SHA-256 (`file_sha256`, hashed once when written, verified when opened). A cache whose
metadata or data does not verify is rebuilt (`CorruptFile` names the file): a derived
cache is never trusted blindly. The token cache of `attnlab.data.corpus` lives here
(`write_token_cache` / `open_token_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


class CorruptFile(ValueError):
    """A file written by attnlab that does not verify (checksum, size or format); the
    message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    old = os.umask(0o022)  # pragma: no cover
    os.umask(old)  # pragma: no cover
    return old  # pragma: no cover


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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the mode open() would
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


def atomic_write_array(path: Path, array: np.ndarray) -> str:
    """Raw little-endian array bytes, readable with :func:`open_memmap`. Returns their
    SHA-256 (``sha256:<hex>``, as `file_sha256` gives for the file)."""
    data = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    atomic_write(path, lambda f: f.write(memoryview(data).cast("B")))
    return "sha256:" + hashlib.sha256(memoryview(data).cast("B")).hexdigest()


# ---------------------------------------------------------------------- checksums
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """``sha256:<hex>`` of a file's bytes (read in chunks: bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def json_sha256(obj) -> str:
    """``sha256:<hex>`` of ``obj``'s canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def write_checked_json(path: str | os.PathLike, obj: dict) -> None:
    """``obj`` plus ``"checksum"`` (of the rest), atomically. Read it with `read_checked_json`."""
    obj = {k: v for k, v in obj.items() if k != "checksum"}
    atomic_write_json(Path(path), {**obj, "checksum": json_sha256(obj)})


def read_checked_json(path: str | os.PathLike) -> dict:
    """What `write_checked_json` wrote (without ``checksum``); `CorruptFile` when the file is
    unreadable, not a JSON object, or its checksum does not match."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptFile(path, f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("checksum"), str):
        raise CorruptFile(path, "not a JSON object with a checksum")
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    if json_sha256(rest) != obj["checksum"]:
        raise CorruptFile(path, "checksum mismatch (the file was changed or damaged)")
    return rest


# ---------------------------------------------------------------------- token cache
def write_token_cache(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """``<split>.bin`` raw token files plus ``meta.json`` (checked JSON) recording each file's
    size and SHA-256 and ``<split>_tokens``; ``meta`` adds what the caller wants kept."""
    files = {}
    for split, array in arrays.items():
        name = f"{split}.bin"
        digest = atomic_write_array(folder / name, array)
        files[name] = {"bytes": int(array.size * array.dtype.itemsize), "sha256": digest}
        meta = {**meta, f"{split}_tokens": int(array.size)}
    write_checked_json(folder / "meta.json", {**meta, "files": files})


def open_token_cache(folder: Path, dtype: str, splits=("train", "val"), expect: dict | None = None):
    """``(meta, {split: memmap})`` of a complete, verified token cache; ``None`` when there is
    none yet; `CorruptFile` (naming the file) when meta.json or a token file does not verify,
    or meta.json lacks/changes one of ``expect``'s items."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_checked_json(meta_path)
    if meta.get("dtype") != dtype:
        raise CorruptFile(meta_path, f"dtype={meta.get('dtype')!r}, expected {dtype!r}")
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise CorruptFile(meta_path, f"{key}={meta.get(key)!r}, expected {value!r}")
    files = meta.get("files")
    arrays = {}
    for split in splits:
        name, path = f"{split}.bin", folder / f"{split}.bin"
        record = files.get(name) if isinstance(files, dict) else None
        length = meta.get(f"{split}_tokens")
        if not isinstance(record, dict) or not isinstance(length, int) or length < 0:
            raise CorruptFile(meta_path, f"no valid record of {name}")
        if record.get("bytes") != length * np.dtype(dtype).itemsize:
            raise CorruptFile(meta_path, f"{name}: {record.get('bytes')} bytes recorded for {length} tokens")
        try:
            size = path.stat().st_size
        except OSError:
            raise CorruptFile(path, "missing") from None
        if size != record["bytes"]:
            raise CorruptFile(path, f"{size} bytes, meta.json records {record['bytes']}")
        if file_sha256(path) != record.get("sha256"):
            raise CorruptFile(path, "checksum mismatch (the file was changed or damaged)")
        arrays[split] = open_memmap(path, dtype, length)
    return meta, arrays


def open_memmap(path: Path, dtype: str, length: int) -> np.ndarray:
    """Read-only memmap of ``length`` items of ``dtype`` (an empty array for length 0)."""
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(length,))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"
