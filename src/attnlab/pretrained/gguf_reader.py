"""Read a GGUF file's header, metadata and tensor table within fixed limits, before anything
is allocated from them.

GGUF (llama.cpp's format, little-endian, versions 2 and 3)::

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x  (string key, u32 value type, value)       string = u64 length + UTF-8 bytes
    tensor_count x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
    padding to general.alignment (default 32), then the tensor data

The ``gguf`` package's reader trusts every count and length it reads (an array of 4e9
strings is a loop of 4e9 steps), so `read_gguf` parses the file itself: each count and length
is checked against the limits below *and* against the bytes left in the file before it is
used, and each tensor's type, shape, offset and size against the file size. Numeric arrays
come back as Python lists, strings as str. Any violation raises `GGUFError`, one line naming
the file and the field.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # one-line CLI errors for bad user input, where attnlab.errors exists
    from attnlab.errors import UserInputError as _InputError
except ImportError:  # pragma: no cover - before attnlab.errors
    _InputError = ValueError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_KV = 1 << 16  # metadata entries
MAX_TENSORS = 1 << 16
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 1 << 24  # one string value (chat templates are kilobytes)
MAX_ARRAY_LEN = 1 << 22  # elements of one array (vocabularies and merges: < 1 M)
MAX_ARRAY_DEPTH = 2  # arrays of arrays at most
MAX_NAME_BYTES = 1 << 10  # a tensor name
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16

# value type -> (struct format, size); 8 = string, 9 = array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1", 10: "<u8", 11: "<i8",
          12: "<f8"}
STRING, ARRAY = 8, 9


class GGUFError(_InputError):
    """A GGUF file that is malformed, over attnlab's limits, or not a model attnlab loads."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. ``dims``: GGML order (innermost first); ``shape``:
    numpy / PyTorch order (reversed); ``offset``: absolute byte offset in the file."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.dims, dtype=object))


@dataclass
class GGUFContents:
    path: Path
    version: int
    metadata: dict
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, field: str, why: str) -> GGUFError:
        return GGUFError(f"{self.path}: {field}: {why}")

    def need(self, n: int, field: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(field, f"needs {n:,} bytes at offset {self.pos:,} but the file ends at {self.size:,}")

    def unpack(self, fmt: str, size: int, field: str):
        self.need(size, field)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, field: str, limit: int) -> str:
        n = self.unpack("<Q", 8, f"{field} (length)")
        if n > limit:
            raise self.fail(field, f"string of {n:,} bytes exceeds the limit of {limit:,}")
        self.need(n, field)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(field, "string is not valid UTF-8") from None

    def value(self, vtype: int, field: str, depth: int = 0):
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return self.unpack(fmt, size, field)
        if vtype == STRING:
            return self.string(field, MAX_STRING_BYTES)
        if vtype != ARRAY:
            raise self.fail(field, f"unknown value type {vtype} (0-12 are defined)")
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(field, f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
        etype = self.unpack("<I", 4, f"{field} (array type)")
        count = self.unpack("<Q", 8, f"{field} (array length)")
        if count > MAX_ARRAY_LEN:
            raise self.fail(field, f"array of {count:,} elements exceeds the limit of {MAX_ARRAY_LEN:,}")
        if etype in _SCALARS:
            size = _SCALARS[etype][1]
            self.need(count * size, field)
            out = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos)
            self.pos += count * size
            return out.astype(bool).tolist() if etype == 7 else out.tolist()
        min_size = {STRING: 8, ARRAY: 12}.get(etype)
        if min_size is None:
            raise self.fail(field, f"array of unknown value type {etype}")
        self.need(count * min_size, field)  # each element takes at least its length prefix
        return [self.value(etype, f"{field}[{i}]", depth + 1) for i in range(count)]


def _limit(cursor: _Cursor, field: str, value: int, limit: int) -> int:
    if value > limit:
        raise cursor.fail(field, f"{value:,} exceeds the limit of {limit:,}")
    return value


def read_gguf(path: str | Path, quant_sizes: dict[int, tuple[int, int]]) -> GGUFContents:
    """Header, metadata and tensor table of ``path``, checked (module docstring).
    ``quant_sizes``: ggml type -> (block size, bytes per block), e.g. ``gguf.GGML_QUANT_SIZES``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise GGUFError(f"{path}: header: {size} bytes, too short for a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(memoryview(buf), path), quant_sizes)


def _parse(c: _Cursor, quant_sizes) -> GGUFContents:
    try:
        return _parse_views(c, quant_sizes)
    finally:
        c.buf.release()


def _parse_views(c: _Cursor, quant_sizes) -> GGUFContents:
    if bytes(c.buf[:4]) != MAGIC:
        raise c.fail("magic", f"{bytes(c.buf[:4])!r} is not b'GGUF'")
    c.pos = 4
    version = c.unpack("<I", 4, "version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise c.fail("version", f"{version} is not supported{hint}; supported: {', '.join(map(str, VERSIONS))}")
    n_tensors = _limit(c, "tensor_count", c.unpack("<Q", 8, "tensor_count"), MAX_TENSORS)
    n_kv = _limit(c, "kv_count", c.unpack("<Q", 8, "kv_count"), MAX_KV)
    metadata: dict = {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}", MAX_KEY_BYTES)
        vtype = c.unpack("<I", 4, f"{key} (value type)")
        if key in metadata:
            raise c.fail(key, "key appears twice")
        metadata[key] = c.value(vtype, key)
    alignment = metadata.get("general.alignment", 32)
    if (isinstance(alignment, bool) or not isinstance(alignment, int) or not 1 <= alignment <= MAX_ALIGNMENT
            or alignment & (alignment - 1)):
        raise c.fail("general.alignment", f"{alignment!r} is not a power of two <= {MAX_ALIGNMENT}")
    raw = []
    names = set()
    for i in range(n_tensors):
        name = c.string(f"tensor #{i} name", MAX_NAME_BYTES)
        if name in names:
            raise c.fail(f"tensor {name!r}", "name appears twice")
        names.add(name)
        n_dims = c.unpack("<I", 4, f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name!r} n_dims", f"{n_dims} is not in [1, {MAX_DIMS}]")
        dims = tuple(c.unpack("<Q", 8, f"tensor {name!r} dims") for _ in range(n_dims))
        ggml_type = c.unpack("<I", 4, f"tensor {name!r} type")
        offset = c.unpack("<Q", 8, f"tensor {name!r} offset")
        raw.append((name, dims, ggml_type, offset))
    data_offset = c.pos + (-c.pos % alignment)
    tensors = []
    for name, dims, ggml_type, offset in raw:
        field = f"tensor {name!r}"
        if ggml_type not in quant_sizes:
            raise c.fail(f"{field} type", f"unknown ggml type {ggml_type}")
        if any(d < 1 for d in dims):
            raise c.fail(f"{field} dims", f"{list(dims)}: every dimension must be >= 1")
        block, type_size = quant_sizes[ggml_type]
        if dims[0] % block:
            raise c.fail(f"{field} dims", f"row of {dims[0]} is not a multiple of the type's block of {block}")
        n_elements = int(np.prod(dims, dtype=object))
        n_bytes = n_elements // block * type_size
        start = data_offset + offset
        if offset % alignment or start + n_bytes > c.size:
            raise c.fail(f"{field} offset", f"data at {start:,} + {n_bytes:,} bytes lies past the end of the file "
                         f"({c.size:,} bytes) or off the {alignment}-byte alignment")
        tensors.append(TensorInfo(name, dims, ggml_type, start, n_bytes))
    return GGUFContents(c.path, version, metadata, tensors, data_offset, c.size)


def tensor_data(buf: np.ndarray, info: TensorInfo, quant_sizes) -> np.ndarray:
    """A read-only view of ``info``'s bytes in ``buf`` (``np.memmap`` of the file, uint8),
    shaped as the ``gguf`` reader shapes it: float types as themselves, quantized types as
    rows of bytes."""
    plain = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}
    data = buf[info.offset:info.offset + info.n_bytes]
    if info.ggml_type in plain:
        return data.view(np.dtype(plain[info.ggml_type]).newbyteorder("<")).reshape(info.shape)
    block, type_size = quant_sizes[info.ggml_type]
    return data.reshape(*info.shape[:-1], info.shape[-1] // block * type_size)
