"""attnlab's attention inside transformers (`attnlab.integrations.hf`): dense equals HF's own
eager attention (plain, left- / right-padded, packed, generation with dynamic and static
caches); a spec through the adapter equals attnlab's own Transformer with that spec; masks it
cannot express raise."""

import pytest
import torch
from needs_packages import require

from attnlab.attention import AttentionSpec
from attnlab.model import ModelConfig, Transformer, from_hf_name, generate

require("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from attnlab.integrations.hf import mask_to_documents, register  # noqa: E402

V, N = 64, 24
SWA = {"kind": "sliding_window", "window": 6}
SPECS = {
    "swa": [SWA, SWA],
    "swa_sink": [{**SWA, "sink": 2}, None],
    "local": [{"kind": "block_sparse", "pattern": "local", "block_size": 8, "local_blocks": 1}] * 2,
    "hybrid": [SWA, None],
}


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def run(model, impl, ids, **kwargs):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, **kwargs).logits


def padded(lengths, side="left"):
    """ids [B, max] with pad 0, the mask, position ids, and each row's tokens."""
    rows = [torch.randint(1, V, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[b, cols], mask[b, cols] = row, 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), rows


def attnlab_twin(hf, specs) -> Transformer:
    """attnlab's Transformer with ``hf``'s weights and one spec per layer (None: dense)."""
    c = hf.config
    named = {f"l{i}": {k: v for k, v in (s or {"kind": "dense"}).items()} for i, s in enumerate(specs)}
    cfg = ModelConfig(vocab_size=V, d_model=c.hidden_size, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=c.intermediate_size, context=64, norm_eps=c.rms_norm_eps, attention=named,
                      layer_pattern=list(named))
    model = Transformer(cfg).eval()
    model.load_state_dict({from_hf_name(k): v for k, v in hf.state_dict().items()})
    return model


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_unpadded_logits_equal_eager(hf, impl):
    register(f"attnlab_{impl}", impl=impl)
    ids = torch.randint(0, V, (2, N))
    torch.testing.assert_close(run(hf, f"attnlab_{impl}", ids), run(hf, "eager", ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_rows_run_alone(hf, side):
    register("attnlab")
    ids, mask, pos, rows = padded([N, 17, 9], side)
    got = run(hf, "attnlab", ids, attention_mask=mask, position_ids=pos)
    eager = run(hf, "eager", ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    torch.testing.assert_close(got[real], eager[real], rtol=0, atol=1e-5)
    for b, row in enumerate(rows):
        alone = run(hf, "attnlab", row[None])[0]  # (n, V)
        torch.testing.assert_close(got[b][real[b]], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generate_equals_eager(hf, cache):
    register("attnlab")
    ids, mask, _, _ = padded([12, 7, 10])
    out = {}
    for impl in ("eager", "attnlab"):
        hf.set_attn_implementation(impl)
        kwargs = {"cache_implementation": "static"} if cache == "static" else {}
        out[impl] = hf.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **kwargs)
    assert out["attnlab"].shape == (3, 18)
    assert torch.equal(out["attnlab"], out["eager"])


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_through_adapter_equals_attnlabs_transformer(hf, name):
    register(f"attnlab_{name}", specs=SPECS[name])
    twin = attnlab_twin(hf, SPECS[name])
    ids = torch.randint(0, V, (2, 40))
    got = run(hf, f"attnlab_{name}", ids)
    with torch.no_grad():
        torch.testing.assert_close(got, twin(ids)[0], rtol=0, atol=1e-5)
    assert (got - run(hf, "eager", ids)).abs().max() > 1e-3  # the spec changed the model


def test_sliding_window_with_left_padding_and_kv_cache(hf):
    """Left padding leaves a window spec's result per row unchanged, and greedy decoding with
    HF's KV cache (Nq = 1 < Nk, bottom-right) equals attnlab's own cache-free generate."""
    register("attnlab_swa", specs=SPECS["swa"])
    twin = attnlab_twin(hf, SPECS["swa"])
    ids, mask, pos, rows = padded([20, 11])
    got = run(hf, "attnlab_swa", ids, attention_mask=mask, position_ids=pos)
    for b, row in enumerate(rows):
        with torch.no_grad():
            torch.testing.assert_close(got[b][mask[b].bool()], twin(row[None])[0][0], rtol=0, atol=1e-5)
    hf.set_attn_implementation("attnlab_swa")
    prompt = torch.randint(1, V, (2, 10))
    tokens = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    assert torch.equal(tokens, generate(twin, prompt, 8, greedy=True))


def test_packed_sequences_from_position_ids_stay_apart(hf):
    register("attnlab")
    a, b = torch.randint(1, V, (1, 9)), torch.randint(1, V, (1, 15))
    packed = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(9), torch.arange(15)])[None]
    got = run(hf, "attnlab", packed, position_ids=pos, use_cache=False)
    torch.testing.assert_close(got[0, :9], run(hf, "attnlab", a)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0, 9:], run(hf, "attnlab", b)[0], rtol=0, atol=1e-5)


def test_exported_model_runs_its_recorded_specs_in_transformers(hf, tmp_path):
    require("safetensors")
    from attnlab.pretrained.hf_dir import save_hf

    twin = attnlab_twin(hf, SPECS["hybrid"])
    out = save_hf(twin, tmp_path / "hf")
    register("attnlab")  # no specs: each model's config.attnlab_attention
    loaded = LlamaForCausalLM.from_pretrained(out, attn_implementation="attnlab").eval()
    ids = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, twin(ids)[0], rtol=0, atol=1e-5)


def test_mask_reading():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    n_keys, doc, shifted = mask_to_documents(left, 2, 5, 5)
    assert n_keys == 5 and shifted and doc.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    right = torch.tensor([[1, 1, 1, 0, 0]])
    assert mask_to_documents(right, 1, 5, 5) == (5, None, False)
    decode = torch.tensor([[0, 1, 1, 1, 1, 1]])  # one query over a 6-key cache
    n_keys, doc, _ = mask_to_documents(decode, 1, 1, 6)
    assert doc.tolist() == [[0, 1, 1, 1, 1, 1]]
    static = torch.zeros(1, 1, 2, 8, dtype=torch.bool)  # a static cache: keys 5.. not written yet
    static[0, 0, 0, :4], static[0, 0, 1, :5] = True, True
    assert mask_to_documents(static, 1, 2, 8) == (5, None, False)


def _window_mask(n, w):
    i = torch.arange(n)
    return ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w))[None, None]


@pytest.mark.parametrize("mask,message", [
    (torch.tensor([[1, 1, 0, 1, 1, 1]]), "cannot be expressed"),  # padding inside a row
    (_window_mask(6, 3), "overlapping"),  # a sliding window built by transformers
    (torch.ones(1, 1, 6, 6, dtype=torch.bool), "cannot be expressed"),  # bidirectional
    (torch.where(torch.ones(6, 6).tril().bool(), 0.5, float("-inf"))[None, None], "biases"),
], ids=["hole", "window", "bidirectional", "bias"])
def test_masks_it_cannot_express_raise(mask, message):
    with pytest.raises(ValueError, match=message):
        mask_to_documents(mask, 1, 6, 6)


def test_unsupported_use_raises(hf):
    register("attnlab_swa_sink", specs=SPECS["swa_sink"])
    ids, mask, pos, _ = padded([N, 9])
    with pytest.raises(ValueError, match="sink=2.*left padding"):
        run(hf, "attnlab_swa_sink", ids, attention_mask=mask, position_ids=pos)
    hole = mask.clone()
    hole[1, -3] = 0
    register("attnlab")
    with pytest.raises(ValueError, match="cannot be expressed"):
        run(hf, "attnlab", ids, attention_mask=hole)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    register("attnlab_nomask")
    del ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["attnlab_nomask"]  # transformers would drop the padding
    with pytest.raises(ValueError, match="no mask function"):
        run(hf, "attnlab_nomask", ids, attention_mask=mask)
    register("attnlab_three", specs=[None, None, None])
    with pytest.raises(ValueError, match="3 entries but the model has num_hidden_layers=2"):
        run(hf, "attnlab_three", ids)


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match="transformers' own"):
        register("sdpa")
    with pytest.raises(ValueError, match="not causal"):
        register("attnlab_bad", specs=AttentionSpec(kind="dense"))
    with pytest.raises(ValueError, match="window=0"):
        register("attnlab_bad", specs=[{"kind": "sliding_window", "window": 0}])
    with pytest.raises(ValueError, match="impl='cuda'"):
        register("attnlab_bad", impl="cuda")
