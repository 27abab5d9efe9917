"""Tokenize a corpus with a given tokenizer object (a pretrained model's), with
`attnlab.data`'s splits, token cache and batches.

`attnlab.data.build_data` chooses the tokenizer from ``DataConfig.tokenizer`` (byte | bpe);
a pretrained model brings its own. `build_corpus` is `build_data` with the tokenizer handed
in: the same documents, split, cache layout and key (documents hash + tokenizer
fingerprint, so a byte-level corpus shares `build_data`'s cache entry) and `Corpus`.
(It uses `attnlab.data.corpus`'s private helpers; a ``tokenizer=`` argument on
`build_data` would make this module one line.)
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from attnlab.data import Corpus, DataConfig, build_data, load_split
from attnlab.data import corpus as _corpus
from attnlab.data.tokenizers import BPETokenizer, ByteTokenizer


def build_corpus(cfg: DataConfig, tokenizer=None) -> Corpus:
    """``build_data(cfg)``, tokenized with ``tokenizer`` when given (any object with the
    tokenizer interface: ``vocab_size``, ``encode_array``, ``fingerprint()``,
    ``token_byte_lengths()``). ``cfg.tokenizer`` and ``cfg.vocab_size`` are then unused;
    the corpus's ``config`` records byte/bpe and the true vocab size where they apply."""
    if tokenizer is None:
        return build_data(cfg)
    if isinstance(tokenizer, ByteTokenizer):
        cfg = replace(cfg, tokenizer="byte")
    elif isinstance(tokenizer, BPETokenizer):
        cfg = replace(cfg, tokenizer="bpe", vocab_size=tokenizer.vocab_size)
    train, val = load_split(cfg)
    cache_dir = cfg.resolved_cache_dir()
    key = hashlib.sha256(
        f"{_corpus.CACHE_FORMAT}:{_corpus._documents_hash(train, val)}:{tokenizer.fingerprint()}".encode()
    ).hexdigest()[:20]
    folder = cache_dir / "tokens" / f"{cfg.name}-{key}"
    cache_paths = {"cache_dir": str(cache_dir), "tokens": str(folder)}
    train_tokens, val_tokens, from_cache = _corpus._load_or_encode(folder, tokenizer, train, val)
    for split, docs, tokens in (("train", train, train_tokens), ("val", val, val_tokens)):
        if len(tokens) < cfg.context + 1:
            raise _corpus._too_short(cfg, split, docs, len(tokens))
    return Corpus(cfg, tokenizer, train_tokens, val_tokens, train, val, cache_paths, from_cache)
