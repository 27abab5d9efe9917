"""Tokenizers in and out of Hugging Face model directories (``tokenizer.json``).

Out (`tokenizer_files`): the ``tokenizers`` JSON of the tokenizer a model was trained or
loaded with, so ``AutoTokenizer.from_pretrained(dir)`` gives the same token ids:

- ``byte`` (`ByteTokenizer`, vocab 256): a byte-level BPE with the 256 single-byte tokens of
  GPT-2's byte alphabet and no merges, whose ids are exactly the UTF-8 bytes (id = byte value);
- ``bpe`` (`BPETokenizer`, trained by attnlab): its own JSON;
- ``gguf`` (`GGUFTokenizer`, SmolLM2 or another GGUF's): the ``tokenizers.Tokenizer`` rebuilt
  from the file's metadata, with its control tokens as special tokens and its bos / eos ids.

A recall task's tokenizer has no ``tokenizers`` form: no tokenizer files then.

In (`read_tokenizer`): ``byte`` and ``bpe`` exports come back as `ByteTokenizer` /
`BPETokenizer` (same fingerprints, so token caches are shared); any other byte-level BPE
``tokenizer.json`` (SmolLM2's, Llama 3's, a GGUF export's) as `HFTokenizer`, with the
`attnlab.data` tokenizer interface and exact bytes per token (bits per byte).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

from attnlab.data.tokenizers import (
    _UNICODE_TO_BYTE,
    BPETokenizer,
    ByteTableTokenizer,
    ByteTokenizer,
    _bytes_to_unicode,
)
from attnlab.errors import UserInputError

MAX_TOKENIZER_BYTES = 1 << 28  # a tokenizer.json over 256 MB is not a tokenizer
TOKENIZER_FILE = "tokenizer.json"


class HFTokenizerError(UserInputError):
    """A tokenizer.json attnlab cannot use; the message names the file."""


def byte_tokenizer_json() -> str:
    """`ByteTokenizer` as a ``tokenizers`` JSON: each byte b is the token of id b."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()  # byte -> printable character
    vocab = {alphabet[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return backend.to_str()


def tokenizer_files(tokenizer, context: int) -> tuple[str, dict[str, str], dict[str, int]] | None:
    """``(kind, {file name: text}, {bos_token_id / eos_token_id: id})`` for a model directory,
    or None when ``tokenizer`` has no ``tokenizers`` form (a recall task's)."""
    from attnlab.pretrained.tokenizer import GGUFTokenizer

    special: dict[str, int] = {}
    if isinstance(tokenizer, ByteTokenizer):
        kind, text = "byte", byte_tokenizer_json()
    elif isinstance(tokenizer, BPETokenizer):
        kind, text = "bpe", tokenizer.to_json()
    elif isinstance(tokenizer, GGUFTokenizer):
        kind, text, special = "gguf", tokenizer.to_json(), dict(tokenizer.special_ids)
    elif isinstance(tokenizer, HFTokenizer):
        kind, text, special = "hf", tokenizer.json_text, dict(tokenizer.special_ids)
    else:
        return None
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    vocab = json.loads(text)
    names = _id_to_content(vocab)
    for key, token_id in special.items():  # bos_token_id -> bos_token: "<|im_start|>"
        if token_id in names:
            config[key.removesuffix("_id")] = names[token_id]
    files = {TOKENIZER_FILE: text, "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
    return kind, files, special


def _id_to_content(data: dict) -> dict[int, str]:
    model = data.get("model") or {}
    vocab = model.get("vocab") if isinstance(model.get("vocab"), dict) else {}
    names = {i: t for t, i in vocab.items() if isinstance(i, int)}
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            names[added["id"]] = added.get("content")
    return names


def read_tokenizer(folder: Path, kind: str | None, special: dict[str, int] | None = None):
    """The tokenizer of a model directory: ``kind`` is its config's ``attnlab_tokenizer``
    (byte / bpe / gguf / None). None when it has no tokenizer.json (and is not byte)."""
    if kind == "byte":
        return ByteTokenizer()
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise HFTokenizerError(f"{path}: {size:,} bytes, over the limit of {MAX_TOKENIZER_BYTES:,} for a tokenizer")
    text = path.read_text(encoding="utf-8")
    if kind == "bpe":
        return BPETokenizer.from_json(text)
    return HFTokenizer(text, source=str(path), special_ids=special)


class HFTokenizer(ByteTableTokenizer):
    """A byte-level BPE ``tokenizer.json`` (GPT-2 byte alphabet; SmolLM2, Llama 3, Qwen2 and
    attnlab's exports), with the `attnlab.data` tokenizer interface. ``encode`` adds no
    special tokens (no BOS): the text's own tokens, as the other attnlab tokenizers."""

    name = "hf"

    def __init__(self, json_text: str, source: str = "", special_ids: dict[str, int] | None = None):
        where = source or TOKENIZER_FILE
        try:
            data = json.loads(json_text)
        except ValueError as err:
            raise HFTokenizerError(f"{where}: not JSON ({err})") from None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            found = model.get("type") if isinstance(model, dict) else None
            raise HFTokenizerError(f"{where}: model.type={found!r}; attnlab reads byte-level BPE tokenizers only")
        decoder = data.get("decoder") if isinstance(data.get("decoder"), dict) else {}
        parts = [decoder, *(d for d in decoder.get("decoders") or [] if isinstance(d, dict))]
        if not any(d.get("type") == "ByteLevel" for d in parts):
            raise HFTokenizerError(f"{where}: decoder {decoder.get('type')!r} is not ByteLevel; attnlab reads "
                                   "byte-level BPE tokenizers only (GPT-2 byte alphabet)")
        from tokenizers import Tokenizer

        try:
            self._backend = Tokenizer.from_str(json_text)
        except Exception as err:  # the Rust library's own complaint, one line
            raise HFTokenizerError(f"{where}: the tokenizers library rejects it ({str(err).splitlines()[0]})") from None
        self.json_text, self.source = json_text, source
        self._added = {t["id"]: t["content"] for t in data.get("added_tokens") or []
                       if isinstance(t, dict) and isinstance(t.get("id"), int) and isinstance(t.get("content"), str)}
        self.special_ids = dict(special_ids or {})

    @cached_property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        table = []
        for i in range(self.vocab_size):
            if i in self._added:
                table.append(self._added[i].encode("utf-8"))
                continue
            token = self._backend.id_to_token(i) or ""  # an unused id stands for nothing
            if all(c in _UNICODE_TO_BYTE for c in token):
                table.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
            else:
                table.append(token.encode("utf-8"))
        return table

    def fingerprint(self) -> str:
        return f"hf-{self.vocab_size}-{hashlib.sha256(self.json_text.encode('utf-8')).hexdigest()[:16]}"

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()!r})"
