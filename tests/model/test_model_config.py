"""ModelConfig: validation (field, value, what is allowed), layer patterns, objective, presets."""

from dataclasses import replace

import pytest

from attnlab.attention import AttentionSpec
from attnlab.model import ModelConfig, default_ffn_dim

SWA = {"kind": "sliding_window", "window": 8}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(d_model=30), r"model\.d_model=30 must be divisible by model\.n_heads=4"),
        (dict(n_kv_heads=3), r"model\.n_heads=4 must be a multiple of model\.n_kv_heads=3"),
        (dict(d_model=12, n_heads=4, n_kv_heads=None), r"head_dim .* = 3 must be even"),
        (dict(n_layers=0), r"model\.n_layers=0 must be a positive int"),
        (dict(d_model=True), r"model\.d_model=True must be a positive int"),
        (dict(context=-1), r"model\.context=-1 must be a positive int"),
        (dict(vocab_size=0), r"model\.vocab_size=0 must be a positive int"),
        (dict(d_ff=0), r"model\.d_ff=0 must be a positive int or null"),
        (dict(dropout=1.0), r"model\.dropout=1\.0 must be a number in \[0, 1\)"),
        (dict(dropout=-0.1), r"model\.dropout=-0\.1"),
        (dict(rope_base=0.0), r"model\.rope_base=0\.0 must be a positive number"),
        (dict(norm_eps=-1e-5), r"model\.norm_eps"),
        (dict(tie_embeddings="yes"), r"model\.tie_embeddings='yes' must be true or false"),
        (dict(attn_impl="cuda"), r"model\.attn_impl='cuda' is unknown; allowed: auto, .*sdpa"),
        (dict(objective="seq2seq"), r"model\.objective='seq2seq' is unknown; allowed: causal, mlm"),
        (dict(layer_pattern=["swa"]), r"uses unknown names \['swa'\]; defined in model\.attention: dense"),
        (dict(layer_pattern=[]), r"model\.layer_pattern=\[\] must be a non-empty list"),
        (dict(layer_pattern="dense"), r"model\.layer_pattern='dense' must be a non-empty list"),
        (dict(attention={}), r"model\.attention=\{\} must be a non-empty mapping"),
        (dict(attention={"a": "dense"}, layer_pattern=["a"]), r"model\.attention entry 'a'"),
        (
            dict(attention={"d": {"kind": "dense"}}, layer_pattern=["d", "d", "d"]),
            r"layer_pattern has 3 entries but model\.n_layers=2",
        ),
        (
            dict(attention={"w": {"kind": "sliding_window"}}, layer_pattern=["w"]),
            r"model\.attention\.w=.*kind='sliding_window' needs a window",
        ),
        (
            dict(attention={"w": {"kind": "dense", "windw": 3}}, layer_pattern=["w"]),
            r"model\.attention\.w=.*windw",
        ),
        (
            dict(attention={"d": {"kind": "dense", "causal": False}}, layer_pattern=["d"]),
            r"model\.attention\.d\.causal=False contradicts model\.objective='causal'",
        ),
        (
            dict(objective="mlm", attention={"d": {"kind": "dense", "causal": True}}, layer_pattern=["d"]),
            r"model\.attention\.d\.causal=True contradicts model\.objective='mlm'",
        ),
        (
            dict(attention={"r": {"kind": "block_sparse", "pattern": "random", "heads": 3, "block_size": 8}},
                 layer_pattern=["r"]),
            r"3 per-head layouts; allowed: 1 or model\.n_heads=4",
        ),
    ],
)
def test_validation_errors(make_cfg, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_cfg(**overrides)


def test_pattern_is_cycled_to_depth_with_a_partial_last_cycle(make_cfg):
    cfg = make_cfg(n_layers=6, attention={"swa": SWA, "dense": {"kind": "dense"}},
                   layer_pattern=["swa", "swa", "swa", "dense"])
    assert cfg.layer_names() == ["swa", "swa", "swa", "dense", "swa", "swa"]
    specs = cfg.layer_specs()
    assert [s.kind for s in specs] == ["sliding_window"] * 3 + ["dense"] + ["sliding_window"] * 2
    assert specs[0] == AttentionSpec(kind="sliding_window", causal=True, window=8)


def test_objective_sets_causal_in_every_layer(make_cfg):
    att = {"swa": SWA, "dense": {"kind": "dense"}}
    assert all(s.causal for s in make_cfg(attention=att, layer_pattern=["swa", "dense"]).layer_specs())
    mlm = make_cfg(objective="mlm", attention=att, layer_pattern=["swa", "dense"])
    assert not any(s.causal for s in mlm.layer_specs())
    # Agreeing explicitly is allowed.
    ok = make_cfg(attention={"d": {"kind": "dense", "causal": True}}, layer_pattern=["d"])
    assert ok.layer_specs()[0].causal


def test_unused_attention_names_are_allowed(make_cfg):
    cfg = make_cfg(attention={"dense": {"kind": "dense"}, "swa": SWA}, layer_pattern=["swa"])
    assert [s.kind for s in cfg.layer_specs()] == ["sliding_window", "sliding_window"]


def test_defaults_and_derived_sizes():
    cfg = ModelConfig()
    assert cfg.layer_specs() == [AttentionSpec(kind="dense", causal=True)] * cfg.n_layers
    assert cfg.kv_heads == cfg.n_heads and cfg.head_dim == cfg.d_model // cfg.n_heads
    assert cfg.vocab_size is None and cfg.mask_token_id is None
    with pytest.raises(ValueError, match=r"model\.vocab_size=None: embed_rows needs it"):
        _ = cfg.embed_rows


def test_default_ffn_dim_is_llama_rule():
    # 8/3 * d rounded up to a multiple of 64; SmolLM2-135M (d 576) has 1536.
    assert [default_ffn_dim(d) for d in (32, 128, 384, 576)] == [128, 384, 1024, 1536]
    assert ModelConfig(d_model=128).ffn_dim == 384
    assert ModelConfig(d_model=128, d_ff=200).ffn_dim == 200


def test_mlm_reserves_a_mask_row(make_cfg):
    cfg = make_cfg(objective="mlm", vocab_size=256)
    assert cfg.mask_token_id == 256 and cfg.embed_rows == 257
    causal = make_cfg(vocab_size=256)
    assert causal.mask_token_id is None and causal.embed_rows == 256


def test_replace_fills_vocab_and_revalidates(make_cfg):
    cfg = make_cfg(vocab_size=None)
    assert replace(cfg, vocab_size=256).vocab_size == 256
    with pytest.raises(ValueError, match="model.n_layers=0"):
        replace(cfg, n_layers=0)


def test_from_dict(make_cfg):
    d = {"vocab_size": 10, "d_model": 16, "n_layers": 1, "n_heads": 2,
         "attention": {"w": {"kind": "sliding_window", "window": [3, 0]}}, "layer_pattern": ("w",)}
    cfg = ModelConfig.from_dict(d)
    assert cfg.layer_specs()[0].window == (3, 0) and cfg.layer_pattern == ["w"]
    with pytest.raises(ValueError, match=r"model: unknown keys \['n_layer'\]; allowed: .*n_layers"):
        ModelConfig.from_dict({"n_layer": 2})
