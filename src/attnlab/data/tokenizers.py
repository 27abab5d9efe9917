"""Tokenizers with one interface: ``name``, ``vocab_size``, ``encode``, ``decode``,
``fingerprint()`` and ``token_byte_lengths()`` (UTF-8 bytes per token id, for bits per byte).

- :class:`ByteTokenizer`: the UTF-8 bytes of the text; vocab 256; no training.
- :class:`BPETokenizer`: byte-level BPE (GPT-2 style byte alphabet and pre-tokenizer,
  no special tokens) trained locally with the ``tokenizers`` library. Every token is a
  fixed byte string, so encode/decode round-trips any text exactly and the bytes a
  window of tokens stands for are known exactly. :func:`train_bpe` caches the trained
  tokenizer as JSON under ``<cache_dir>/tokenizers/`` keyed by the training text's hash
  and the vocab size, with its SHA-256 beside it (``<file>.sha256``); a file that does not
  match (or lacks one) is trained again, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np

from attnlab.data.cache import atomic_write_bytes, file_sha256

log = logging.getLogger(__name__)


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, ``decode(encode(s)) == s`` for every str."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as a uint16 array (fast path used to build the token cache)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte-v1"

    def token_byte_lengths(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class ByteTableTokenizer:
    """Shared half of the BPE tokenizers (ours and GGUF's): subclasses give ``vocab_size``,
    ``encode`` and ``_token_bytes`` (the exact bytes of every token id); this gives token
    arrays, decoding and per-token byte lengths (for bits per byte)."""

    vocab_size: int
    _token_bytes: list[bytes]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        return np.asarray(self.encode(text), dtype=dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self.token_bytes_of(ids).decode("utf-8", errors="replace")

    def token_bytes_of(self, ids: Iterable[int]) -> bytes:
        """The exact bytes a sequence of token ids stands for."""
        table = self._token_bytes
        return b"".join(table[int(i)] for i in ids)

    def token_byte_lengths(self) -> np.ndarray:
        return np.array([len(b) for b in self._token_bytes], dtype=np.int64)


class BPETokenizer(ByteTableTokenizer):
    """Byte-level BPE backed by a ``tokenizers.Tokenizer``. Build it with :func:`train_bpe`
    or :meth:`from_json`."""

    name = "bpe"

    def __init__(self, backend, json_text: str):
        self._backend = backend  # tokenizers.Tokenizer
        self._json = json_text

    @classmethod
    def from_json(cls, json_text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(json_text), json_text)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def to_json(self) -> str:
        return self._json

    @cached_property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text).ids

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        table = []
        for i in range(self.vocab_size):
            token = self._backend.id_to_token(i)
            table.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
        return table

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self._json.encode("utf-8")).hexdigest()[:16]
        return f"bpe-{self.vocab_size}-{digest}"

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()!r})"


def _train_backend(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return backend


def _canonical_json(backend) -> str:
    # Key order fixed so equal tokenizers give equal fingerprints.
    return json.dumps(json.loads(backend.to_str()), sort_keys=True, ensure_ascii=False)


def bpe_cache_path(cache_dir: Path, texts: list[str], vocab_size: int) -> Path:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return Path(cache_dir) / "tokenizers" / f"bpe-{digest.hexdigest()[:16]}-v{vocab_size}.json"


def train_bpe(texts: list[str], vocab_size: int, cache_dir: str | Path) -> BPETokenizer:
    """Byte-level BPE trained on ``texts`` (train split only), or loaded from the cache.

    The vocab may come out smaller than ``vocab_size`` on a tiny corpus (no pair left to
    merge); ``tokenizer.vocab_size`` is the true size.
    """
    path = bpe_cache_path(Path(cache_dir), texts, vocab_size)
    sidecar = path.with_name(path.name + ".sha256")
    if path.exists():
        try:
            recorded = sidecar.read_text().strip()
        except OSError:
            recorded = None
        if recorded is not None and recorded == file_sha256(path):
            return BPETokenizer.from_file(path)
        log.warning("BPE tokenizer cache %s: %s; training it again", path,
                    "checksum mismatch" if recorded is not None else f"no checksum file {sidecar.name}")
    backend = _train_backend(texts, vocab_size)
    json_text = _canonical_json(backend)
    data = json_text.encode("utf-8")
    atomic_write_bytes(path, data)
    atomic_write_bytes(sidecar, ("sha256:" + hashlib.sha256(data).hexdigest() + "\n").encode())
    return BPETokenizer.from_json(json_text)
