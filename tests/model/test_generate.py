"""generate: greedy is deterministic, sampling follows the generator, context cropping."""

import pytest
import torch

from attnlab.model import Transformer, generate


def test_greedy_is_deterministic_and_restores_train_mode(make_cfg):
    model = Transformer(make_cfg(dropout=0.3))  # train mode: dropout would break determinism
    idx = torch.randint(0, 64, (2, 5))
    a = generate(model, idx, 12, greedy=True)
    b = generate(model, idx, 12, greedy=True)
    assert a.shape == (2, 17) and torch.equal(a, b) and torch.equal(a[:, :5], idx)
    assert model.training
    # Greedy equals the argmax of a plain forward at each step.
    model.eval()
    with torch.no_grad():
        assert torch.equal(a[:, 5], model(idx)[0][:, -1].argmax(-1))


def test_sampling_follows_the_generator_and_top_k(make_cfg):
    model = Transformer(make_cfg())
    idx = torch.zeros(3, 1, dtype=torch.long)
    a = generate(model, idx, 10, temperature=0.8, generator=torch.Generator().manual_seed(1))
    b = generate(model, idx, 10, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    top1 = generate(model, idx, 10, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(top1, generate(model, idx, 10, greedy=True))


def test_crops_to_context(make_cfg):
    model = Transformer(make_cfg(context=8)).eval()
    idx = torch.randint(0, 64, (1, 20))  # longer than the context already
    out = generate(model, idx, 6, greedy=True)
    assert out.shape == (1, 26)
    # Each new token depends only on the last 8 tokens before it.
    for i in range(20, 26):
        with torch.no_grad():
            expected = model(out[:, i - 8:i])[0][:, -1].argmax(-1)
        assert torch.equal(out[:, i], expected)


def test_errors(make_cfg):
    model = Transformer(make_cfg())
    idx = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature=0"):
        generate(model, idx, 1, temperature=0)
    with pytest.raises(ValueError, match="top_k=0"):
        generate(model, idx, 1, top_k=0)
    with pytest.raises(ValueError, match="needs a causal LM"):
        generate(Transformer(make_cfg(objective="mlm")), idx, 1)
