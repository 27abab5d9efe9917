"""Hostile GGUF files, written byte by byte here: each fails fast with a one-line `GGUFError`
naming the file and the field, with bounded memory (tracemalloc peak and max-RSS growth under
200 MB); a huge ``llama.context_length`` no longer sizes the RoPE tables."""

import resource
import struct
import tracemalloc

import numpy as np
import pytest
from needs_packages import require

from attnlab.data.tokenizers import _bytes_to_unicode
from attnlab.pretrained import load_gguf, load_pretrained
from attnlab.pretrained.gguf_reader import GGUFError

U32, F32, STR, ARR, U64 = 4, 6, 8, 9, 10
D, HEADS, KV, FF = 8, 2, 1, 16  # a 1-layer Llama: head_dim 4
TOKENS = ["<|endoftext|>", *_bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
MERGES = ["Ġ t", "h e", "Ġt he"]
BUDGET = 200 << 20


def s(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def kv(key: str, vtype: int, value, length: int | None = None) -> bytes:
    """One metadata entry; ``length`` overrides an array's / a string's declared length."""
    out = s(key) + struct.pack("<I", vtype)
    if vtype == STR:
        return out + s(value, length)
    if vtype == ARR:
        etype, items = value
        body = b"".join(s(x) for x in items) if etype == STR else struct.pack(f"<{len(items)}I", *items)
        return out + struct.pack("<IQ", etype, len(items) if length is None else length) + body
    return out + struct.pack({U32: "<I", F32: "<f", U64: "<Q"}[vtype], value)


def model_kvs(**override) -> list[bytes]:
    fields = {"general.architecture": (STR, "llama"), "llama.block_count": (U32, 1),
              "llama.context_length": (U32, 32), "llama.embedding_length": (U32, D),
              "llama.feed_forward_length": (U32, FF), "llama.attention.head_count": (U32, HEADS),
              "llama.attention.head_count_kv": (U32, KV), "llama.rope.freq_base": (F32, 10000.0),
              "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5), "tokenizer.ggml.model": (STR, "gpt2"),
              "tokenizer.ggml.pre": (STR, "smollm"), "tokenizer.ggml.tokens": (ARR, (STR, TOKENS)),
              "tokenizer.ggml.token_type": (ARR, (U32, [3] + [1] * (len(TOKENS) - 1))),
              "tokenizer.ggml.merges": (ARR, (STR, MERGES))}
    out = []
    for key, (vtype, value) in fields.items():
        if key in override:
            if override[key] is None:
                continue
            entry = override[key]
            out.append(entry if isinstance(entry, bytes) else kv(key, *entry))
        else:
            out.append(kv(key, vtype, value))
    out += [kv(key, *entry) for key, entry in override.items() if key not in fields]
    return out


def tensor_table() -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, GGML dims: innermost first) of the tied 1-layer model."""
    v, hd = len(TOKENS), D // HEADS
    return [("token_embd.weight", (D, v)), ("output_norm.weight", (D,)), ("blk.0.attn_norm.weight", (D,)),
            ("blk.0.ffn_norm.weight", (D,)), ("blk.0.attn_q.weight", (D, D)), ("blk.0.attn_k.weight", (D, KV * hd)),
            ("blk.0.attn_v.weight", (D, KV * hd)), ("blk.0.attn_output.weight", (D, D)),
            ("blk.0.ffn_gate.weight", (D, FF)), ("blk.0.ffn_up.weight", (D, FF)), ("blk.0.ffn_down.weight", (FF, D))]


def gguf_bytes(kvs=None, tensors=None, n_tensors=None, n_kv=None, offset_shift=0, version=3) -> bytes:
    kvs = model_kvs() if kvs is None else kvs
    tensors = tensor_table() if tensors is None else tensors
    infos, data, offset = [], b"", 0
    rng = np.random.default_rng(0)
    for name, dims in tensors:
        n = int(np.prod(dims))
        infos.append(s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", 0, offset + (offset_shift if name == tensors[-1][0] else 0)))
        blob = (rng.standard_normal(n).astype("<f4") * 0.1).tobytes() if n < 1 << 20 else b""
        blob += b"\0" * (-len(blob) % 32)
        data += blob
        offset += len(blob)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % 32) + data


def _bounded(fn):
    """Run ``fn``; assert the Python heap peak and the process's max-RSS growth stay < 200 MB."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024  # Linux: KiB
        assert peak < BUDGET and grown < BUDGET, f"peak {peak:,} bytes, RSS grew {grown:,} bytes"


def test_the_hand_written_file_loads(tmp_path):
    require("gguf")
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes())
    model, tok = load_gguf(path)
    assert model.config.context == 32 and model.config.n_kv_heads == KV and tok.vocab_size == len(TOKENS)


@pytest.mark.parametrize("file_ctx,needed,want", [(4_000_000_000, None, 8192), (4_000_000_000, 20_000, 20_000),
                                                   (32, 64, 32)])
def test_rope_tables_follow_the_run_not_a_huge_file_context(tmp_path, file_ctx, needed, want):
    require("gguf")
    path = tmp_path / "ctx.gguf"
    path.write_bytes(gguf_bytes(model_kvs(**{"llama.context_length": (U64, file_ctx)})))
    pre = _bounded(lambda: load_pretrained(f"gguf:{path}", needed_context=needed))
    assert pre.config.context == want and pre.model.rope_cos.shape[0] == want


BIG = 1 << 62
HOSTILE = {
    "bad magic": (lambda: b"GGUX" + gguf_bytes()[4:], "magic"),
    "version": (lambda: gguf_bytes(version=7), "version: 7"),
    "kv_count": (lambda: gguf_bytes(n_kv=BIG), "kv_count"),
    "tensor_count": (lambda: gguf_bytes(n_tensors=BIG), "tensor_count"),
    "more kv than written": (lambda: gguf_bytes(n_kv=5000), "metadata key #"),
    "string length": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.pre": (STR, "smollm", BIG)})),
                      "tokenizer.ggml.pre"),
    "key length": (lambda: gguf_bytes([s("k", BIG)]), "metadata key #0"),
    "array length": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.tokens": (ARR, (STR, TOKENS), BIG)})),
                     "tokenizer.ggml.tokens"),
    "array past EOF": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.merges": (ARR, (STR, MERGES), 1 << 21)})),
                       "tokenizer.ggml.merges"),
    "value type": (lambda: gguf_bytes(model_kvs(**{"general.architecture": s("general.architecture")
                                                   + struct.pack("<I", 99)})), "general.architecture"),
    "nested arrays": (lambda: gguf_bytes([s("x") + struct.pack("<IIQ", ARR, ARR, 1) + struct.pack("<IQ", ARR, 1)
                                          + struct.pack("<IQ", U32, 1) + struct.pack("<I", 1)]), "x"),
    "layers": (lambda: gguf_bytes(model_kvs(**{"llama.block_count": (U32, 10**9)})), "llama.block_count"),
    "dims": (lambda: gguf_bytes(model_kvs(**{"llama.embedding_length": (U64, 1 << 40)})), "llama.embedding_length"),
    "heads": (lambda: gguf_bytes(model_kvs(**{"llama.attention.head_count": (U32, 3)})),
              "llama.embedding_length=8 is not llama.attention.head_count=3"),
    "vocab": (lambda: gguf_bytes(model_kvs(**{"llama.vocab_size": (U64, 1 << 40)})), "llama.vocab_size"),
    "context type": (lambda: gguf_bytes(model_kvs(**{"llama.context_length": (STR, "big")})), "llama.context_length"),
    "missing key": (lambda: gguf_bytes(model_kvs(**{"llama.feed_forward_length": None})), "llama.feed_forward_length"),
    "tensor dims": (lambda: gguf_bytes(tensors=[*tensor_table()[:-1], ("blk.0.ffn_down.weight", (1 << 31, 1 << 31))]),
                    "ffn_down.weight' offset"),
    "tensor offset": (lambda: gguf_bytes(offset_shift=1 << 40), "ffn_down.weight' offset"),
    "tensor shape": (lambda: gguf_bytes(tensors=[*tensor_table()[:-1], ("blk.0.ffn_down.weight", (FF, FF))]),
                     "blk.0.ffn_down.weight' has shape"),
    "missing tensor": (lambda: gguf_bytes(tensors=tensor_table()[:-1]), "tensors missing for"),
    "truncated": (lambda: gguf_bytes()[:300], "ends at 300"),
    "merge names a missing token": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.merges": (ARR, (STR, [
        *MERGES, "Ġthe zz"]))})), r"tokenizer.ggml.merges[3]='Ġthe zz' names 'zz'"),
    "merge without space": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.merges": (ARR, (STR, ["Ġt"]))})),
                            "tokenizer.ggml.merges[0]"),
    "token types": (lambda: gguf_bytes(model_kvs(**{"tokenizer.ggml.token_type": (ARR, (U32, [1]))})),
                    "tokenizer.ggml.token_type"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_gguf_fails_fast_naming_file_and_field(tmp_path, case):
    require("gguf")
    make, field = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(make())
    with pytest.raises(GGUFError) as err:
        _bounded(lambda: load_pretrained(f"gguf:{path}"))
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert field in message, message
