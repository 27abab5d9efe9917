"""`GGUFTokenizer`: the byte-level BPE tokenizer stored in a GGUF file's metadata, with the
interface of `attnlab.data`'s tokenizers (``name``, ``vocab_size``, ``encode``,
``encode_array``, ``decode``, ``fingerprint()``, ``token_byte_lengths()``).

A GGUF written by llama.cpp's converter stores the vocabulary (``tokenizer.ggml.tokens``,
spelled in GPT-2's byte alphabet), the merges (``tokenizer.ggml.merges``), each token's type
(1 normal, 3 control, ...) and the pre-tokenizer name (``tokenizer.ggml.pre``). We rebuild a
``tokenizers.Tokenizer`` from them:

- model: BPE over the vocabulary and merges (no unknown token: every byte is a token);
- pre-tokenizer: GPT-2's regex split + byte-level mapping; for the pre-tokenizers that
  llama.cpp runs with a ``\\p{N}`` split first (``smollm``, ``starcoder``, ``refact``, ...),
  digits are split one by one first, as in SmolLM2's own ``tokenizer.json``;
- control tokens (type 3, e.g. ``<|endoftext|>``) are special tokens, matched whole;
- decoder: byte-level.

Bits per byte need the bytes each token stands for: a normal token's bytes are its GPT-2
spelling mapped back to bytes; a control token stands for no text of the corpus, its
length is that of its UTF-8 spelling (it never occurs when encoding plain text that does
not spell it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property

from attnlab.data.tokenizers import _UNICODE_TO_BYTE, ByteTableTokenizer
from attnlab.pretrained.gguf_reader import GGUFError

CONTROL = 3  # llama.cpp token type of special tokens
MAX_VOCAB = 1 << 21
MAX_MERGES = 1 << 22
# llama.cpp pre-tokenizers that split every digit before the GPT-2 regex (llama-vocab.cpp).
DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
GPT2_PRE = ("gpt2", "default", "mpt", "olmo", "jais", "trillion")


def _check_vocabulary(tokens: list, merges: list, token_types: list, where: str) -> None:
    """Types, sizes and merges checked before the tokenizer library sees them (it rejects a
    merge of unknown tokens with an error, or on some versions a Rust panic)."""
    if not 1 <= len(tokens) <= MAX_VOCAB or not all(isinstance(t, str) and t for t in tokens):
        raise GGUFError(f"{where}: tokenizer.ggml.tokens must be 1 to {MAX_VOCAB:,} non-empty strings "
                        f"(got {len(tokens):,} entries)")
    if len(token_types) != len(tokens) or not all(isinstance(t, int) and not isinstance(t, bool) for t in token_types):
        raise GGUFError(f"{where}: tokenizer.ggml.token_type must be {len(tokens):,} integers, one per token "
                        f"(got {len(token_types):,})")
    if len(merges) > MAX_MERGES:
        raise GGUFError(f"{where}: tokenizer.ggml.merges has {len(merges):,} entries, over the limit of {MAX_MERGES:,}")
    vocab = set(tokens)
    for i, merge in enumerate(merges):
        parts = merge.split(" ", 1) if isinstance(merge, str) else []
        if len(parts) != 2 or not all(parts):
            raise GGUFError(f"{where}: tokenizer.ggml.merges[{i}]={merge!r} is not two tokens joined by a space")
        for piece in (*parts, parts[0] + parts[1]):
            if piece not in vocab:
                raise GGUFError(f"{where}: tokenizer.ggml.merges[{i}]={merge!r} names {piece!r}, which is not in "
                                "tokenizer.ggml.tokens")


class GGUFTokenizer(ByteTableTokenizer):
    """A GGUF file's byte-level BPE tokenizer. Build it with :meth:`from_metadata`."""

    name = "gguf"

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], pre: str,
                 source: str = "", special_ids: dict[str, int] | None = None):
        where = source or "GGUF"
        if not isinstance(pre, str) or pre not in DIGIT_SPLIT_PRE + GPT2_PRE:
            raise GGUFError(
                f"{where}: tokenizer.ggml.pre={pre!r} is not supported; supported byte-level pre-tokenizers: "
                f"{', '.join(DIGIT_SPLIT_PRE + GPT2_PRE)}"
            )
        self.tokens, self.merges, self.token_types = list(tokens), list(merges), list(token_types)
        self.pre, self.source = pre, source
        _check_vocabulary(self.tokens, self.merges, self.token_types, where)
        # {"bos_token_id": id, "eos_token_id": id} where the file names them (written into exports)
        self.special_ids = {k: v for k, v in (special_ids or {}).items()
                            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(self.tokens)}
        self._backend = self._build_backend()

    @classmethod
    def from_metadata(cls, metadata: dict, source: str = "") -> GGUFTokenizer:
        """From GGUF metadata (``tokenizer.ggml.*`` keys); only ``model == "gpt2"`` (byte-level BPE)."""
        where = source or "GGUF"
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise GGUFError(
                f"{where}: tokenizer.ggml.model={model!r} is not supported; only byte-level "
                "BPE ('gpt2', as in SmolLM2, Llama 3, Qwen2) is"
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if not isinstance(metadata.get(key), list):
                raise GGUFError(f"{where}: {key} is {'missing' if key not in metadata else 'not an array'}")
        tokens = metadata["tokenizer.ggml.tokens"]
        types = metadata.get("tokenizer.ggml.token_type")
        special = {f"{k}_token_id": metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
        return cls(tokens, metadata["tokenizer.ggml.merges"], [1] * len(tokens) if types is None else types,
                   metadata.get("tokenizer.ggml.pre", "gpt2"), source, special)

    def _build_backend(self):
        try:
            return self._make_backend()
        except BaseException as err:  # the Rust library may panic (pyo3 PanicException is a BaseException)
            if (isinstance(err, Exception) and not isinstance(err, ImportError)) or type(err).__name__ == "PanicException":
                raise GGUFError(f"{self.source or 'GGUF'}: the tokenizer library rejects this vocabulary "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
            raise

    def _make_backend(self):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for i, tok in enumerate(self.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in self.merges]
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if self.pre in DIGIT_SPLIT_PRE:
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        control = [AddedToken(t, special=True, normalized=False)
                   for t, kind in zip(self.tokens, self.token_types, strict=True) if kind == CONTROL]
        if control:
            backend.add_special_tokens(control)
        return backend

    @cached_property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def to_json(self) -> str:
        """The rebuilt ``tokenizers.Tokenizer`` as JSON (a model directory's ``tokenizer.json``)."""
        return self._backend.to_str()

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        table = []
        for tok, kind in zip(self.tokens, self.token_types, strict=True):
            if kind != CONTROL and all(c in _UNICODE_TO_BYTE for c in tok):
                table.append(bytes(_UNICODE_TO_BYTE[c] for c in tok))
            else:
                table.append(tok.encode("utf-8"))
        return table

    @cached_property
    def _digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.pre, "\n".join(self.tokens), "\n".join(self.merges), ",".join(map(str, self.token_types))):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        return f"gguf-{self.vocab_size}-{self._digest}"

    def __repr__(self) -> str:
        return f"GGUFTokenizer(vocab_size={self.vocab_size}, pre={self.pre!r}, fingerprint={self.fingerprint()!r})"
