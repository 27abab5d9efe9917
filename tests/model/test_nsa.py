"""The NSA layer (attnlab.model.nsa): causal structure, training, the triton and SDPA paths of
the selection branch agree, FLOPs of the three branches, bad settings named."""

import math

import pytest
import torch

from attnlab.model import ModelConfig, Transformer
from attnlab.model.flops import flops_per_token
from attnlab.model.nsa import NSASpec


def nsa_config(**kw):
    attention = {"nsa": {"kind": "nsa", "block_size": 8, "top_k": 2, "window": 8, **kw}}
    return ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context=64,
                       attention=attention, layer_pattern=["nsa"])  # fmt: skip


def test_future_tokens_never_change_earlier_outputs():
    torch.manual_seed(0)
    model = Transformer(nsa_config()).eval()
    idx = torch.randint(0, 32, (2, 61))
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 7, 8, 30, 59):
            changed = idx.clone()
            changed[:, t + 1:] = torch.randint(0, 32, changed[:, t + 1:].shape)
            logits, _ = model(changed)
            assert torch.allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-5), t
            if t < 59:
                assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:], atol=1e-5)  # the test can fail


def test_the_layer_trains():
    torch.manual_seed(0)
    model = Transformer(nsa_config())
    idx = torch.randint(0, 32, (8, 64))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.layers[0].self_attn.compress_k.weight.grad.abs().sum() > 0  # the compression branch learns
    assert model.layers[0].self_attn.gate.weight.grad.abs().sum() > 0


def test_triton_and_sdpa_selection_paths_agree():
    torch.manual_seed(1)
    cfg = nsa_config()
    ref = Transformer(cfg)
    tri = Transformer(ModelConfig(**{**cfg.__dict__, "attn_impl": "triton"}))
    tri.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 32, (2, 40))
    out_ref, loss_ref = ref(idx[:, :-1], idx[:, 1:])
    out_tri, loss_tri = tri(idx[:, :-1], idx[:, 1:])
    assert torch.allclose(out_ref, out_tri, atol=1e-4)
    loss_ref.backward()
    loss_tri.backward()
    for (name, p), q in zip(ref.named_parameters(), tri.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), name


def test_flops_are_the_three_branches():
    spec = NSASpec(block_size=8, top_k=2, window=8)
    n, d = 64, 16
    got = spec.flops(batch=1, heads=1, n_q=n, n_k=n, head_dim=d)
    compressed = sum((i + 1) // 8 for i in range(n))  # whole blocks behind each query
    window = sum(min(i + 1, 8) for i in range(n))
    selection = sum(min(i % 8 + 1 + 8 * min(1, i // 8), i + 1) for i in range(n))  # diagonal + 1 block
    assert got == 4 * d * (compressed + window + selection)
    per_token = flops_per_token(nsa_config(), 64)["attention"]
    assert 0 < per_token < flops_per_token(ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, context=64,
                                                       attention={"d": {"kind": "dense"}}, layer_pattern=["d"]),
                                           64)["attention"]  # fmt: skip


@pytest.mark.parametrize("kw, word", [(dict(block_size=12), "block_size"), (dict(top_k=0), "top_k"),
                                      (dict(window=0), "window"), (dict(spiral=1), "spiral")])
def test_bad_settings_are_named(kw, word):
    with pytest.raises((ValueError, TypeError), match=word):
        nsa_config(**kw)


def test_nsa_refuses_what_it_does_not_serve():
    with pytest.raises(ValueError, match="causal"):
        ModelConfig(**{**nsa_config().__dict__, "objective": "mlm"})
    model = Transformer(nsa_config())
    idx = torch.randint(0, 32, (1, 16))
    with pytest.raises(ValueError, match="documents"):
        model(idx, doc_ids=torch.zeros(1, 16, dtype=torch.long))
    assert math.isfinite(model(idx)[0].sum().item())
