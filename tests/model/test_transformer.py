"""Transformer: shapes, HF naming, tying, init, causality per attention kind, MLM, RoPE, training."""

import math

import pytest
import torch

from attnlab.model import (
    Transformer,
    apply_rope,
    from_hf_name,
    hf_name_map,
    num_params,
    rope_cache,
    to_hf_name,
)

KINDS = {
    "dense": ({"d": {"kind": "dense"}}, ["d"]),
    "sliding_window": ({"w": {"kind": "sliding_window", "window": 8}}, ["w"]),
    "hybrid": ({"w": {"kind": "sliding_window", "window": 8}, "d": {"kind": "dense"}}, ["w", "d"]),
    "bigbird": (
        {"b": {"kind": "block_sparse", "pattern": "bigbird", "block_size": 8, "local_blocks": 1,
               "global_blocks": 1, "random_blocks": 1}},
        ["b"],
    ),
}


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_shapes_and_loss(make_cfg, n_heads, n_kv_heads):
    cfg = make_cfg(n_heads=n_heads, n_kv_heads=n_kv_heads)
    model = Transformer(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, cfg.vocab_size) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and abs(loss.item() - math.log(cfg.vocab_size)) < 0.5  # ~uniform at init
    kv_dim = n_kv_heads * cfg.head_dim
    assert model.layers[0].self_attn.k_proj.weight.shape == (kv_dim, cfg.d_model)
    assert model.layers[0].self_attn.v_proj.weight.shape == (kv_dim, cfg.d_model)


def test_loss_ignores_minus_100(make_cfg):
    model = Transformer(make_cfg())
    idx = torch.randint(0, 64, (2, 10))
    targets = idx.clone()
    targets[:, ::2] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    ref = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, ref)


def test_parameter_names_match_hf_llama(make_cfg):
    cfg = make_cfg(n_heads=4, n_kv_heads=2)  # head_dim 8, ffn 128
    sd = Transformer(cfg).state_dict()
    expected = {"embed_tokens.weight": (64, 32), "norm.weight": (32,), "lm_head.weight": (64, 32)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        expected |= {
            p + "self_attn.q_proj.weight": (32, 32),
            p + "self_attn.k_proj.weight": (16, 32),  # [n_kv_heads * head_dim, d_model]
            p + "self_attn.v_proj.weight": (16, 32),
            p + "self_attn.o_proj.weight": (32, 32),
            p + "mlp.gate_proj.weight": (128, 32),
            p + "mlp.up_proj.weight": (128, 32),
            p + "mlp.down_proj.weight": (32, 128),
            p + "input_layernorm.weight": (32,),
            p + "post_attention_layernorm.weight": (32,),
        }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected  # no RoPE buffers either
    names = hf_name_map(Transformer(cfg))
    assert names["layers.1.self_attn.k_proj.weight"] == "model.layers.1.self_attn.k_proj.weight"
    assert names["embed_tokens.weight"] == "model.embed_tokens.weight"
    assert names["lm_head.weight"] == "lm_head.weight"
    assert all(from_hf_name(to_hf_name(k)) == k for k in sd)


def test_tied_embeddings_share_storage(make_cfg):
    model = Transformer(make_cfg(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = Transformer(make_cfg())
    assert num_params(untied) - num_params(model) == 64 * 32
    assert num_params(model, non_embedding=True) == num_params(untied, non_embedding=True)
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["embed_tokens.weight"].data_ptr()
    Transformer(make_cfg(tie_embeddings=True)).load_state_dict(sd)  # both keys, loads strictly


def test_num_params_counts_every_tensor_once(make_cfg):
    model = Transformer(make_cfg())
    total = sum(p.numel() for p in model.parameters())
    assert num_params(model) == total
    assert num_params(model, non_embedding=True) == total - 2 * 64 * 32


def test_init_std(make_cfg):
    cfg = make_cfg(d_model=256, n_heads=4, n_kv_heads=4, n_layers=8, vocab_size=512)
    model = Transformer(cfg).requires_grad_(False)
    assert abs(float(model.layers[0].self_attn.q_proj.weight.std()) - 0.02) < 0.002
    assert abs(float(model.embed_tokens.weight.std()) - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * cfg.n_layers)
    for w in (model.layers[3].self_attn.o_proj.weight, model.layers[3].mlp.down_proj.weight):
        assert abs(float(w.std()) - residual) < 0.1 * residual
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_too_long_input_raises(make_cfg):
    model = Transformer(make_cfg(context=16))
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sequence length N=17 must be in \[1, model.context=16\]"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))


def test_vocab_none_cannot_build(make_cfg):
    with pytest.raises(ValueError, match=r"model\.vocab_size=None: Transformer needs it"):
        Transformer(make_cfg(vocab_size=None))


@pytest.mark.parametrize("kind", KINDS)
def test_causal_logits_ignore_later_tokens(make_cfg, kind):
    attention, pattern = KINDS[kind]
    model = Transformer(make_cfg(attention=attention, layer_pattern=pattern)).eval()
    n, t = 40, 21
    idx = torch.randint(0, 64, (2, n))
    changed = idx.clone()
    changed[:, t + 1:] = torch.randint(0, 64, (2, n - t - 1))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-3  # the later ones do change


def test_sliding_window_reaches_the_kernel(make_cfg):
    # 2 layers of window 8: position t sees tokens >= t - 2 * 7 only; a dense model sees all.
    attention, pattern = KINDS["sliding_window"]
    idx = torch.randint(0, 64, (2, 40))
    changed = idx.clone()
    changed[:, :20] = (idx[:, :20] + 1) % 64
    for att, pat, far_changes in ((attention, pattern, False), *[(*KINDS["dense"], True)]):
        model = Transformer(make_cfg(attention=att, layer_pattern=pat)).eval()
        with torch.no_grad():
            delta = (model(idx)[0][:, 34:] - model(changed)[0][:, 34:]).abs().max()
        assert (delta > 1e-4) == far_changes, (pat, float(delta))


@pytest.mark.parametrize("kind", KINDS)
def test_mlm_logits_see_later_tokens(make_cfg, kind):
    attention, pattern = KINDS[kind]
    model = Transformer(make_cfg(objective="mlm", attention=attention, layer_pattern=pattern)).eval()
    idx = torch.randint(0, 64, (2, 40))
    t = 20
    changed = idx.clone()
    changed[:, t + 1] = (idx[:, t + 1] + 1) % 64  # the very next token: inside every window
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4


def test_mlm_model_embeds_the_mask_token(make_cfg):
    for tie in (False, True):
        cfg = make_cfg(objective="mlm", tie_embeddings=tie)
        model = Transformer(cfg)
        assert model.embed_tokens.weight.shape == (65, 32)
        idx = torch.full((1, 5), cfg.mask_token_id)
        logits, _ = model(idx)
        assert logits.shape == (1, 5, 64)  # the [MASK] id is never predicted


def test_reference_impl_matches_auto(make_cfg):
    attention, pattern = KINDS["hybrid"]
    idx = torch.randint(0, 64, (2, 33))
    torch.manual_seed(1)
    a, _ = Transformer(make_cfg(attention=attention, layer_pattern=pattern)).eval()(idx)
    torch.manual_seed(1)
    b, _ = Transformer(make_cfg(attention=attention, layer_pattern=pattern, attn_impl="reference")).eval()(idx)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_rope_relative_property():
    d, n, shift = 16, 12, 37
    cos, sin = rope_cache(n + shift, d)
    q, k = torch.randn(2, 3, n, d, dtype=torch.float64), torch.randn(2, 3, n, d, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()
    scores = apply_rope(q, cos[:n], sin[:n]) @ apply_rope(k, cos[:n], sin[:n]).transpose(-1, -2)
    shifted = apply_rope(q, cos[shift:], sin[shift:]) @ apply_rope(k, cos[shift:], sin[shift:]).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, rtol=0, atol=1e-5)  # tables are fp32
    # Position 0 is the identity; rotation preserves norms.
    torch.testing.assert_close(apply_rope(q, cos[:n], sin[:n])[..., 0, :], q[..., 0, :])
    torch.testing.assert_close(apply_rope(q, cos[:n], sin[:n]).norm(dim=-1), q.norm(dim=-1))


def test_rope_is_rotate_half():
    # Channel c pairs with c + D/2 (HF Llama), angle p * base^(-2c/D).
    d, p, base = 8, 5, 10000.0
    cos, sin = rope_cache(p + 1, d, base)
    x = torch.randn(1, 1, p + 1, d)
    out = apply_rope(x, cos, sin)[0, 0, p]
    x = x[0, 0, p]
    for c in range(d // 2):
        theta = p * base ** (-2 * c / d)
        assert math.isclose(out[c], x[c] * math.cos(theta) - x[c + d // 2] * math.sin(theta), abs_tol=1e-5)
        assert math.isclose(out[c + d // 2], x[c + d // 2] * math.cos(theta) + x[c] * math.sin(theta), abs_tol=1e-5)


def test_tiny_model_overfits_one_batch(make_cfg):
    cfg = make_cfg(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=32, context=32)
    model = Transformer(cfg)
    idx = torch.randint(0, 32, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(100):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.1 * losses[0], losses[::10]  # seen: 3.48 -> 0.02


def test_dropout_is_active_in_train_mode_only(make_cfg):
    model = Transformer(make_cfg(dropout=0.5))
    idx = torch.randint(0, 64, (1, 12))
    a, _ = model(idx)
    b, _ = model(idx)
    assert not torch.equal(a, b)
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_impls_agree_with_reference_forward_and_backward(make_cfg, impl):
    # The model's only contact with kernels: every impl must give the same logits and grads.
    # (triton runs under TRITON_INTERPRET=1 on CPU, set by tests/conftest.py.)
    attention, pattern = KINDS["hybrid"]
    idx = torch.randint(0, 64, (2, 37))  # N not a multiple of any block
    grads = {}
    for name in ("reference", impl):
        torch.manual_seed(1)
        model = Transformer(make_cfg(d_model=64, attention=attention, layer_pattern=pattern, attn_impl=name))
        logits, loss = model(idx, idx)
        loss.backward()
        grads[name] = (logits.detach(), {k: p.grad for k, p in model.named_parameters()})
    (ref_logits, ref_grads), (logits, got) = grads["reference"], grads[impl]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for k, g in ref_grads.items():
        torch.testing.assert_close(got[k], g, rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
