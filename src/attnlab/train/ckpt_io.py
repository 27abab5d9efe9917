"""The checkpoint file format: ``torch.save`` of a dict, read back only with
``torch.load(weights_only=True)``, with a checksum verified on every load.

A file (format 2) is the saved dict plus one entry, ``"_attnlab"``::

    {"format": 2, "checksum": "sha256:...", "meta_checksum": "sha256:...", "files": {...}}

- ``checksum``: SHA-256 over the whole dict in a fixed walk (keys, values, each tensor's
  dtype, shape and bytes): any damaged byte of state or weights fails the load, naming the file;
- ``meta_checksum``: the same walk with tensors as dtype and shape only, so `read_meta` can
  check step and config without reading the weights;
- ``files`` (DCP folders only): the SHA-256 of every file the folder's shards wrote.

Only what ``weights_only`` accepts is stored: tensors, dicts, lists, tuples, str, bytes,
numbers, bool, None, torch dtypes / devices / sizes. numpy arrays (the numpy RNG state) are
kept as raw bytes plus dtype and shape, and come back as numpy arrays; numpy scalars are saved
as Python numbers and paths as strings. Anything else is refused at save time.

Loading never unpickles arbitrary objects: a file that would need to (an old attnlab
checkpoint, with numpy RNG state pickled, or a foreign / crafted pickle) raises
`UnsafeCheckpointError` naming the file and the one-time conversion for a *trusted* file,
``python -m attnlab.train.checkpoint convert --trust PATH``. A DCP folder's ``.metadata``
pickle is screened by an unpickler that allows only DCP's own metadata classes before torch
reads it, and its non-tensor items are read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

try:  # one-line CLI errors for bad user input, where attnlab.errors exists
    from attnlab.errors import UserInputError as _InputError
except ImportError:  # pragma: no cover - before attnlab.errors
    _InputError = ValueError

FORMAT = 2
HEADER = "_attnlab"
_NDARRAY = "__ndarray__"
CONVERT = "python -m attnlab.train.checkpoint convert"


class CheckpointError(_InputError):
    """A checkpoint file (or DCP folder) attnlab cannot load; the message names it."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the file would unpickle arbitrary objects (run code): refused."""


class CorruptCheckpointError(CheckpointError):
    """The file is damaged: unreadable, or its checksum does not match."""


def convert_hint(path, trust: bool = True) -> str:
    flag = " --trust" if trust else ""
    return f"if you trust this file (written by you or an older attnlab), convert it once: {CONVERT}{flag} {path}"


# ---------------------------------------------------------------------- encode / decode
def encode(obj, where: str = ""):
    """``obj`` with numpy arrays as weights_only-loadable records; TypeError (naming the
    place) for anything `torch.load(weights_only=True)` could not read back."""
    if isinstance(obj, torch.Tensor | torch.dtype | torch.device | torch.Size | str | bytes | bool | int | float):
        return obj
    if obj is None:
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"cannot save {where or 'value'}: numpy array of dtype {obj.dtype} (numbers only)")
        raw = np.ascontiguousarray(obj).reshape(-1).view(np.uint8).copy()
        return {_NDARRAY: {"dtype": obj.dtype.str, "shape": list(obj.shape), "bytes": torch.from_numpy(raw)}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if type(obj) in (dict, OrderedDict):
        out = type(obj)((k, encode(v, f"{where}[{k!r}]")) for k, v in obj.items())
        for k in out:
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise TypeError(f"cannot save {where or 'dict'}: key {k!r} of type {type(k).__name__}")
        if getattr(obj, "_metadata", None) is not None:  # a module state_dict's version record
            out._metadata = encode(obj._metadata, f"{where}._metadata")
        return out
    if type(obj) in (list, tuple):
        return type(obj)(encode(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"cannot save {where or 'value'} of type {type(obj).__name__} in a checkpoint: only tensors, dicts, "
        "lists, tuples, str, bytes, numbers, bool, None, numpy arrays and torch dtypes/devices/sizes are"
    )


def decode(obj, map_location=None):
    """Inverse of `encode`; tensors moved to ``map_location`` (a device) when given."""
    if isinstance(obj, torch.Tensor):
        return obj if map_location is None else obj.to(map_location)
    if type(obj) in (dict, OrderedDict):
        if len(obj) == 1 and _NDARRAY in obj:
            rec = obj[_NDARRAY]
            dtype = np.dtype(rec["dtype"])
            if dtype.kind not in "biufc":
                raise ValueError(f"numpy record of dtype {dtype}")
            return np.frombuffer(rec["bytes"].numpy().tobytes(), dtype=dtype).reshape(rec["shape"]).copy()
        out = type(obj)((k, decode(v, map_location)) for k, v in obj.items())
        if getattr(obj, "_metadata", None) is not None:
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(decode(v, map_location) for v in obj)
    return obj


# ---------------------------------------------------------------------- checksums
def _tensor_bytes(t: torch.Tensor):
    t = t.detach()
    if t.layout != torch.strided:
        raise TypeError(f"cannot checksum a {t.layout} tensor")
    t = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy()


def digest(obj, tensors: bool = True) -> str:
    """``sha256:<hex>`` of ``obj`` in a fixed walk; ``tensors=False``: dtype and shape only."""
    h = hashlib.sha256()

    def feed(tag: bytes, data: bytes = b"") -> None:
        h.update(tag + struct.pack("<Q", len(data)) + data)

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            feed(b"T", f"{x.dtype}{tuple(x.shape)}".encode())
            if tensors:
                h.update(_tensor_bytes(x))
        elif isinstance(x, dict):
            feed(b"D", str(len(x)).encode())
            for k, v in x.items():
                walk(k)
                walk(v)
            if getattr(x, "_metadata", None) is not None:
                feed(b"M")
                walk(x._metadata)
        elif isinstance(x, torch.Size):
            feed(b"Z", str(tuple(x)).encode())
        elif isinstance(x, list | tuple):
            feed(b"L" if isinstance(x, list) else b"U", str(len(x)).encode())
            for v in x:
                walk(v)
        elif isinstance(x, str):
            feed(b"S", x.encode("utf-8", "surrogatepass"))
        elif isinstance(x, bytes):
            feed(b"B", x)
        elif isinstance(x, bool):  # before int: bool is an int
            feed(b"b", b"1" if x else b"0")
        elif isinstance(x, int):
            feed(b"I", str(x).encode())
        elif isinstance(x, float):
            feed(b"F", struct.pack("<d", x))
        elif x is None:
            feed(b"N")
        else:  # torch dtype / device
            feed(b"R", f"{type(x).__name__}:{x}".encode())

    walk(obj)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------- files
def write(f, obj: dict, **header) -> None:
    """``torch.save`` ``obj`` (a dict) to the open binary file ``f`` in format 2 (module
    docstring); ``header`` adds entries to the ``_attnlab`` record (e.g. ``files``)."""
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint is a dict, got {type(obj).__name__}")
    if HEADER in obj:
        raise ValueError(f"checkpoint key {HEADER!r} is reserved")
    payload = encode(obj)
    record = {"format": FORMAT, "checksum": digest(payload), "meta_checksum": digest(payload, tensors=False), **header}
    torch.save({**payload, HEADER: record}, f)


def _first_line(err: BaseException) -> str:
    """The gist of torch's (multi-line) load error: the global it refused, else its first line."""
    text = str(err).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it names {found.group(1)}"
    for line in text.splitlines():
        if "Unsupported" in line:
            return line.strip()[:200]
    return (text.splitlines() or [type(err).__name__])[0].strip()[:200]


def _check_zip(path: Path) -> None:
    """torch.save writes an uncompressed zip: refuse anything else before torch allocates the
    sizes a zip member claims (a compressed member may claim any size)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not in the torch zip format attnlab writes, damaged or an old/foreign file ({err}); "
            f"{convert_hint(path)}"
        ) from None
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or info.file_size > size:
            raise CorruptCheckpointError(f"{path}: zip member {info.filename!r} is compressed or claims "
                                         f"{info.file_size:,} bytes in a {size:,}-byte file")


def read(path: str | os.PathLike, map_location=None, verify: str = "full", mmap: bool = False) -> tuple[dict, dict]:
    """``(state, header)`` of a format-2 file, loaded with ``weights_only=True``.
    ``verify``: ``"full"`` (every byte), ``"meta"`` (all but tensor data) or ``"none"``.
    Raises `UnsafeCheckpointError`, `CorruptCheckpointError` or `CheckpointError`, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: zip, or a legacy pickle
        raise CorruptCheckpointError(
            f"{path}: cannot be read as a model checkpoint: not in the torch zip format (torch files start "
            f"with a zip or pickle header, this one starts with {head!r})"
        )
    _check_zip(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise UnsafeCheckpointError(
                f"{path}: refused: loading it would unpickle objects that can run code ({_first_line(err)}); "
                f"attnlab loads only its checksummed weights_only format; {convert_hint(path)}"
            ) from None
        raise CorruptCheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
    except Exception as err:  # torch raises RuntimeError / EOFError / ValueError / ... on damaged files
        raise CorruptCheckpointError(
            f"{path}: not a readable checkpoint, damaged or not a torch file ({type(err).__name__}: {_first_line(err)})"
        ) from None
    header = raw.pop(HEADER, None) if isinstance(raw, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("checksum"), str):
        raise CheckpointError(
            f"{path}: not an attnlab checkpoint of format {FORMAT} (no checksum record; older attnlab or another "
            f"program wrote it); {convert_hint(path, trust=False)}"
        )
    if verify != "none":
        key, full = ("checksum", True) if verify == "full" else ("meta_checksum", False)
        if digest(raw, tensors=full) != header.get(key):
            raise CorruptCheckpointError(
                f"{path}: checksum mismatch: the file was changed or damaged after it was written; "
                "use another checkpoint (or retrain)"
            )
    try:
        state = decode(raw, None if map_location in (None, "cpu") else map_location)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"{path}: malformed numpy record ({err})") from None
    return state, header


def read_legacy(path: str | os.PathLike, trust: bool) -> dict:
    """An old-format checkpoint (any ``torch.save`` dict): with ``weights_only=True`` when it
    allows; otherwise only with ``trust=True``, by full unpickling (runs whatever the file says)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise UnsafeCheckpointError(
                f"{path}: loading it needs full unpickling ({_first_line(err)}), which runs any code the file "
                "holds; rerun with --trust only if you trust where it came from"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------- DCP folders
_DCP_METADATA = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Allows only DCP's metadata classes (and torch dtypes): a crafted ``.metadata`` fails here."""

    def find_class(self, module, name):
        if name in _DCP_METADATA.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                      torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not a DCP metadata class")


def check_dcp_metadata(folder: Path) -> None:
    """Screen every ``*.metadata`` pickle of a DCP folder before torch unpickles it."""
    for path in sorted(Path(folder).glob("*.metadata")):
        try:
            with open(path, "rb") as f:
                _DCPMetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"{path}: refused: this DCP metadata would unpickle objects that can run code ({err})"
            ) from None
        except Exception as err:
            raise CorruptCheckpointError(f"{path}: unreadable DCP metadata ({type(err).__name__}: {err})") from None


def shard_checksums(folder: Path, skip: set[str]) -> dict[str, str]:
    from attnlab.data.cache import file_sha256

    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in skip}


def verify_shards(folder: Path, recorded) -> str | None:
    """None when every file in ``recorded`` (name -> sha256) is in ``folder`` with that
    checksum, else what differs (files not recorded are not read by DCP: ignored)."""
    if not isinstance(recorded, dict) or not recorded:
        return f"{folder}: no shard checksums recorded"
    from attnlab.data.cache import file_sha256

    for name, checksum in sorted(recorded.items()):
        path = Path(folder) / str(name)
        if Path(str(name)).name != name or not path.is_file():
            return f"{path}: missing"
        if file_sha256(path) != checksum:
            return f"{path}: checksum mismatch: the file was changed or damaged after it was written"
    return None


def safe_planner(empty: bool = False, keys=None):
    """A DCP load planner whose non-tensor items are read with ``weights_only=True`` (torch's
    own default planner unpickles them fully). ``empty``: rebuild the state from the file
    (``keys``: only those), as for a conversion."""
    from torch.distributed.checkpoint.default_planner import (
        DefaultLoadPlanner,
        _EmptyStateDictLoadPlanner,
    )

    base = _EmptyStateDictLoadPlanner if empty else DefaultLoadPlanner

    class SafeLoadPlanner(base):
        def load_bytes(self, read_item, value):
            obj = torch.load(value, map_location="cpu", weights_only=True)  # refuses arbitrary objects
            clean = io.BytesIO()
            torch.save(obj, clean)  # our own bytes of a plain object: safe for the stock reader
            clean.seek(0)
            super().load_bytes(read_item, clean)

    return SafeLoadPlanner(keys=keys) if empty else SafeLoadPlanner()
