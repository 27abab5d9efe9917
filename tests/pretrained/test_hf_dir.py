"""Hugging Face Llama directories (`attnlab.pretrained.hf_dir`): what `save_hf` writes loads in
transformers with attnlab's logits, comes back through `Transformer.from_hf` with its
per-layer specs, and hostile or foreign directories fail naming the file and field."""

import json

import pytest
import torch
from needs_packages import require

from attnlab.attention import AttentionSpec
from attnlab.data import ByteTokenizer
from attnlab.data.tokenizers import _bytes_to_unicode, train_bpe
from attnlab.model import ModelConfig, Transformer
from attnlab.pretrained import load_pretrained
from attnlab.pretrained.hf_dir import HFDirError, load_hf, save_hf
from attnlab.pretrained.hf_tokenizer import HFTokenizer
from attnlab.pretrained.tokenizer import GGUFTokenizer

TINY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, context=48,
            rope_base=500.0, norm_eps=1e-6)
SWA_SINK = {"kind": "sliding_window", "window": 8, "sink": 2}
LOCAL = {"kind": "block_sparse", "pattern": "local", "block_size": 16, "local_blocks": 1}


def tiny(**overrides) -> Transformer:
    return Transformer(ModelConfig(**{**TINY, **overrides})).eval()


def logits(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_export_loads_in_transformers_with_attnlabs_logits(tmp_path, tie):
    require("transformers", "safetensors")
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = tiny(tie_embeddings=tie)
    out = save_hf(model, tmp_path / "hf", tokenizer=ByteTokenizer())
    config = json.loads((out / "config.json").read_text())
    assert "attnlab_attention" not in config  # dense causal: a plain Llama
    assert config["max_position_embeddings"] == 48 and config["num_key_value_heads"] == 2
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings == tie
    idx = torch.randint(0, 256, (2, 40))
    torch.testing.assert_close(logits(hf, idx), logits(model, idx), rtol=0, atol=1e-4)
    text = "ROMEO. Née 😀\n\tthe end"  # the byte tokenizer's JSON: ids are the UTF-8 bytes
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == list(text.encode("utf-8"))


def test_from_hf_round_trip_keeps_specs_and_logits(tmp_path):
    require("safetensors")
    model = tiny(attention={"swa": SWA_SINK, "local": LOCAL}, layer_pattern=["swa", "local"], tie_embeddings=True)
    out = save_hf(model, tmp_path / "hf", tokenizer=ByteTokenizer())
    config = json.loads((out / "config.json").read_text())
    assert config["attnlab_attention"] == [{"causal": True, **SWA_SINK}, {"causal": True, **LOCAL}]
    back = Transformer.from_hf(out)
    assert back.config.layer_specs() == model.config.layer_specs()
    assert back.config.context == 48 and back.config.tie_embeddings
    assert back.lm_head.weight is back.embed_tokens.weight
    idx = torch.randint(0, 256, (2, 40))
    torch.testing.assert_close(logits(back, idx), logits(model, idx), rtol=0, atol=1e-6)
    dense = tiny(tie_embeddings=True)
    dense.load_state_dict(model.state_dict())
    assert (logits(dense, idx) - logits(back, idx)).abs().max() > 1e-3  # the specs are in effect
    pre = load_pretrained(f"hf:{out}")
    assert pre.kind == "hf" and isinstance(pre.tokenizer, ByteTokenizer)
    assert pre.model.config.layer_specs() == model.config.layer_specs()


def test_from_hf_reads_a_directory_transformers_wrote(tmp_path):
    require("transformers", "safetensors")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 300.0}
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = Transformer.from_hf(tmp_path / "hf")
    assert model.config.rope_base == 300.0 and model.config.context == 32
    idx = torch.randint(0, 64, (2, 30))
    torch.testing.assert_close(logits(model, idx), logits(hf, idx), rtol=0, atol=1e-4)
    with pytest.raises(HFDirError, match="no tokenizer.json"):
        load_pretrained(f"hf:{tmp_path / 'hf'}")


def test_export_refuses_custom_specs_and_layouts(tmp_path):
    custom = tiny(attention={"c": {"kind": "custom", "mask_mod": lambda b, h, q, k: k <= q}}, layer_pattern=["c"])
    with pytest.raises(HFDirError, match="kind='custom'"):
        save_hf(custom, tmp_path / "a")
    layout = torch.ones(1, 3, 3, dtype=torch.bool).tril()
    explicit = tiny(attention={"l": {"kind": "block_sparse", "layout": layout, "block_size": 16}}, layer_pattern=["l"])
    with pytest.raises(HFDirError, match="explicit block layout"):
        save_hf(explicit, tmp_path / "b")
    mlm = tiny(objective="mlm")
    with pytest.raises(HFDirError, match="objective='mlm'"):
        save_hf(mlm, tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary directory


def test_export_never_overwrites_other_files(tmp_path):
    require("safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(HFDirError, match="is not empty"):
        save_hf(tiny(), out)
    with pytest.raises(HFDirError, match="not a Hugging Face model directory"):
        save_hf(tiny(), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    first, second = tiny(), tiny()
    save_hf(first, tmp_path / "hf")
    with pytest.raises(HFDirError, match="overwrite=true"):
        save_hf(second, tmp_path / "hf")
    save_hf(second, tmp_path / "hf", overwrite=True)  # an export replaced by an export
    idx = torch.randint(0, 256, (1, 16))
    torch.testing.assert_close(logits(Transformer.from_hf(tmp_path / "hf"), idx), logits(second, idx))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temporaries left


def _edit(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


HOSTILE = [
    ({"num_hidden_layers": 10**9}, "num_hidden_layers=1000000000 is outside"),
    ({"vocab_size": 2**40}, "vocab_size="),
    ({"hidden_size": "64"}, "hidden_size='64' is not int"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
    ({"head_dim": 32}, "head_dim=32"),
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_parameters.rope_type='llama3'"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"num_attention_heads": ...}, "lacks 'num_attention_heads'"),
    ({"attnlab_attention": [{"kind": "dense"}]}, "one spec per layer (2), got 1 entries"),
    ({"attnlab_attention": [{"kind": "custom"}, {"kind": "dense"}]}, "attnlab_attention[0]"),
    ({"attnlab_attention": [{"kind": "dense", "mask_mod": "x"}, {"kind": "dense"}]}, "unknown keys ['mask_mod']"),
    ({"attnlab_attention": [{"kind": "dense", "causal": False}, {"kind": "dense"}]}, "causal=False"),
    ({"attnlab_attention": [{"kind": "sliding_window", "window": 0}, {"kind": "dense"}]}, "window=0"),
]


@pytest.mark.parametrize("changes,message", HOSTILE, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(HOSTILE)])
def test_bad_config_fails_naming_the_field_before_loading_weights(tmp_path, changes, message):
    require("safetensors")
    out = save_hf(tiny(), tmp_path / "hf")
    _edit(out, **changes)
    (out / "model.safetensors").write_bytes(b"not read: the config fails first")
    with pytest.raises(HFDirError, match=None) as err:
        load_hf(out)
    assert message in str(err.value) and str(out) in str(err.value)


def test_weights_are_checked_against_the_config(tmp_path):
    require("safetensors")
    from safetensors.torch import load_file, save_file

    out = save_hf(tiny(), tmp_path / "hf")
    weights = load_file(out / "model.safetensors")
    (out / "model.safetensors.sha256").unlink()  # a foreign directory: no checksum
    for name, edit, message in [
        ("shape", lambda w: {**w, "model.norm.weight": torch.ones(32)}, "has shape [32], config.json needs [64]"),
        ("missing", lambda w: {k: v for k, v in w.items() if "layers.1.mlp.up_proj" not in k}, "is missing"),
        ("foreign", lambda w: {**w, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, "does not belong"),
        ("dtype", lambda w: {**w, "model.norm.weight": torch.ones(64, dtype=torch.int32)}, "dtype I32"),
    ]:
        save_file(edit(dict(weights)), out / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(HFDirError, match=None) as err:
            load_hf(out)
        assert message in str(err.value), name
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(HFDirError, match="not a readable safetensors file"):
        load_hf(out)
    (out / "model.safetensors").unlink()
    (out / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(HFDirError, match="never loaded"):
        load_hf(out)


def test_checksum_sidecar_catches_a_changed_weights_file(tmp_path):
    require("safetensors")
    from safetensors.torch import load_file, save_file

    out = save_hf(tiny(), tmp_path / "hf")
    weights = load_file(out / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFDirError, match="checksum mismatch"):
        load_hf(out)


CONTROL = "<|endoftext|>"


def test_gguf_and_bpe_tokenizers_export_as_tokenizer_json(tmp_path):
    require("transformers", "safetensors")
    from transformers import AutoTokenizer

    tokens = [CONTROL, *_bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    gguf = GGUFTokenizer(tokens, ["Ġ t", "h e", "Ġt he"], [3] + [1] * (len(tokens) - 1), "smollm",
                         special_ids={"eos_token_id": 0})
    out = save_hf(tiny(vocab_size=len(tokens)), tmp_path / "gguf", tokenizer=gguf)
    config = json.loads((out / "config.json").read_text())
    assert config["attnlab_tokenizer"] == "gguf" and config["eos_token_id"] == 0
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == CONTROL
    back = load_hf(out).tokenizer
    assert isinstance(back, HFTokenizer)
    text = "the theme, 1234 naïve\n" + CONTROL
    assert back.encode(text) == gguf.encode(text) and back.decode(gguf.encode(text)) == text
    assert back.token_byte_lengths().tolist() == gguf.token_byte_lengths().tolist()
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == gguf.encode(text)

    bpe = train_bpe(["the theme of the thing", "then there they thought"] * 4, 270, tmp_path / "cache")
    out = save_hf(tiny(vocab_size=bpe.vocab_size), tmp_path / "bpe", tokenizer=bpe)
    assert load_hf(out).tokenizer.fingerprint() == bpe.fingerprint()  # the same tokenizer: shared caches


def test_layer_specs_for_every_serialisable_kind_round_trip():
    from attnlab.pretrained.hf_dir import spec_from_json, spec_to_json

    specs = [AttentionSpec(kind="dense", causal=True, softcap=30.0),
             AttentionSpec(kind="sliding_window", causal=True, window=(4, 0), sink=1),
             AttentionSpec(kind="block_sparse", causal=True, pattern="bigbird", block_size=16, local_blocks=1,
                           global_blocks=1, random_blocks=1, seed=3),
             AttentionSpec(kind="block_sparse", causal=True, pattern="random", density=0.5, heads=4, seed=7)]
    for spec in specs:
        entry = json.loads(json.dumps(spec_to_json(spec)))
        assert spec_from_json(entry, "x") == spec


def test_attnlab_imports_without_transformers_or_safetensors(tmp_path):
    """The hf extra is optional: the modules import without it and say what to install when used."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['safetensors'] = None\n"
        "import attnlab.export, attnlab.integrations.hf, attnlab.pretrained.hf_dir as d\n"
        "from attnlab.model import ModelConfig, Transformer\n"
        "for call in (lambda: attnlab.integrations.hf.register(),\n"
        "             lambda: d.save_hf(Transformer(ModelConfig(vocab_size=8, d_model=8, n_heads=2)), 'unused')):\n"
        "    try:\n"
        "        call()\n"
        "    except ModuleNotFoundError as err:\n"
        "        assert 'attnlab[hf]' in str(err), err\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_nsa_and_topk_layers(tmp_path):
    """topk_blocks has a JSON form and round-trips; NSA layers (own weights) are refused."""
    from attnlab.model import ModelConfig, Transformer
    from attnlab.pretrained import HFDirError, load_hf, save_hf

    base = dict(vocab_size=32, d_model=32, n_layers=2, n_heads=4, context=32)
    topk = Transformer(ModelConfig(**base, attention={"m": {"kind": "topk_blocks", "block_size": 8, "top_k": 2}},
                                   layer_pattern=["m"]))  # fmt: skip
    save_hf(topk, tmp_path / "topk")
    assert load_hf(tmp_path / "topk").model.config.layer_specs() == topk.config.layer_specs()
    nsa = Transformer(ModelConfig(**base, attention={"n": {"kind": "nsa", "block_size": 8}}, layer_pattern=["n"]))
    with pytest.raises(HFDirError, match="NSA"):
        save_hf(nsa, tmp_path / "nsa")
