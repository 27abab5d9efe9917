"""Parity with HF transformers' LlamaForCausalLM (the oracle for checkpoint loading).

Skipped where `transformers` is not installed (it is the optional `hf` extra)."""

import pytest
import torch

from attnlab.model import Transformer, from_hf_name, hf_name_map

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_logits_match_llama_for_causal_lm(make_cfg, tie):
    cfg = make_cfg(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_ff=72, vocab_size=64, context=48,
                   rope_base=500.0, norm_eps=1e-6, tie_embeddings=tie)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=48, rms_norm_eps=1e-6, rope_theta=500.0,
        tie_word_embeddings=tie, attention_bias=False, mlp_bias=False, hidden_act="silu",
    )
    hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 500.0}  # transformers >= 5
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    ours = Transformer(cfg).eval()
    hf_sd = hf.state_dict()
    names = hf_name_map(ours)
    assert set(names.values()) == set(hf_sd)  # the same tensors under the mapped names
    ours.load_state_dict({from_hf_name(k): v for k, v in hf_sd.items()})
    idx = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
