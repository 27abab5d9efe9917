"""The GGUF loader on a tiny file written here (fast, no download): names, q/k un-permutation,
tied embeddings, the tokenizer, and attnlab checkpoints through `load_pretrained`."""

import numpy as np
import pytest
import torch
from needs_packages import require

from attnlab.data import ByteTokenizer, DataConfig, build_data
from attnlab.data.tokenizers import _bytes_to_unicode
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import (
    build_corpus,
    gguf_to_name,
    load_gguf,
    load_pretrained,
    permute_qk,
    unpermute_qk,
)

GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
MERGES = ["Ġ t", "h e", "Ġt he"]
CONTROL = "<|endoftext|>"


def gguf_name(ours: str) -> str:
    top = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if ours in top:
        return top[ours]
    _, i, rest = ours.split(".", 2)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{i}.{GGUF_NAMES[module]}.weight"


def write_gguf(path, model: Transformer, tokens, types) -> None:
    """What llama.cpp's converter writes for a Llama model (F32 tensors, q/k permuted)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue
        t = tensor.detach().clone()
        if name.endswith("q_proj.weight"):
            t = permute_qk(t, cfg.n_heads)
        elif name.endswith("k_proj.weight"):
            t = permute_qk(t, cfg.kv_heads)
        w.add_tensor(gguf_name(name), t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vocab():
    byte_chars = list(_bytes_to_unicode().values())
    tokens = [CONTROL, *byte_chars, "Ġt", "he", "Ġthe"]
    return tokens, [3] + [1] * (len(tokens) - 1)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.arange(6 * 8 * 5, dtype=torch.float32).reshape(48, 5)  # 6 heads of Dh = 8
    assert torch.equal(unpermute_qk(permute_qk(w, 6), 6), w)
    # llama.cpp: rows of a head in pair order (0, 4), (1, 5), ...: row 1 of the file is HF's row 4
    assert torch.equal(permute_qk(w, 6)[1], w[4])


def test_names():
    assert gguf_to_name("blk.3.attn_q.weight") == "layers.3.self_attn.q_proj.weight"
    assert gguf_to_name("output_norm.weight") == "norm.weight"
    with pytest.raises(ValueError, match="no counterpart"):
        gguf_to_name("blk.0.attn_qkv.weight")


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_written_gguf_loads_back_with_equal_logits(tmp_path, tie):
    require("gguf")
    tokens, types = vocab()
    cfg = ModelConfig(vocab_size=len(tokens), d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=80,
                      context=40, rope_base=500.0, norm_eps=1e-6, tie_embeddings=tie)
    ref = Transformer(cfg).eval()
    write_gguf(tmp_path / "m.gguf", ref, tokens, types)
    model, tok = load_gguf(tmp_path / "m.gguf")
    assert model.config.tie_embeddings == tie and model.config.rope_base == 500.0
    if tie:
        assert model.lm_head.weight is model.embed_tokens.weight
    idx = torch.randint(0, cfg.vocab_size, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], ref(idx)[0], rtol=1e-5, atol=1e-5)
    # tokenizer: merges applied, digits split one by one, control token whole, exact bytes
    text = "the theme, 1234 naïve\n" + CONTROL
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tokens.index("Ġthe") in ids and ids[-1] == 0
    assert sum(int(tok.token_byte_lengths()[i]) for i in ids) == len(text.encode("utf-8"))
    assert tok.fingerprint().startswith(f"gguf-{len(tokens)}-")


def test_attnlab_checkpoint_source_and_byte_corpus_share_the_cache(tmp_path):
    from attnlab.train.config import TrainConfig
    from attnlab.train.loop import train

    data = DataConfig(context=16, batch_size=2, val_tokens=64, cache_dir=str(tmp_path / "cache"))
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, context=16)
    metrics = train(model, data, TrainConfig(steps=2, warmup_steps=1, eval_every=0, logger="jsonl", progress=False,
                                             device="cpu"), tmp_path / "run")
    pre = load_pretrained(str(tmp_path / "run"))
    assert pre.kind == "attnlab" and isinstance(pre.tokenizer, ByteTokenizer) and pre.data.context == 16
    corpus = build_corpus(data, pre.tokenizer)
    assert corpus.cache_paths["tokens"] == build_data(data).cache_paths["tokens"]
    from attnlab.eval import evaluate_bpb

    out = evaluate_bpb(pre, data, windows=None, batch_size=2, device="cpu")
    assert out["val_bpb"] == pytest.approx(metrics["val_bpb"], rel=1e-5) and out["windows"] == 4
    assert out["val_bpb_check"] == pytest.approx(out["val_bpb"])
