"""mask_tokens: BERT 80/10/10 proportions, -100 elsewhere, determinism, the ModelConfig form."""

import pytest
import torch

from attnlab.model import IGNORE_INDEX, Transformer, mask_tokens


def test_proportions_on_a_large_sample():
    vocab, mask_id = 256, 256
    idx = torch.randint(0, vocab, (64, 4096))
    inputs, targets = mask_tokens(idx, vocab, mask_id, generator=torch.Generator().manual_seed(0))
    chosen = targets != IGNORE_INDEX
    n = int(chosen.sum())
    assert abs(n / idx.numel() - 0.15) < 0.003
    assert torch.equal(targets[chosen], idx[chosen])
    assert torch.equal(inputs[~chosen], idx[~chosen])  # unchosen positions untouched
    masked = chosen & (inputs == mask_id)
    kept = chosen & (inputs == idx)
    assert abs(int(masked.sum()) / n - 0.8) < 0.01
    # Random replacements sometimes draw the original token (1/256): "kept" ~ 0.1 + 0.1/256.
    assert abs(int(kept.sum()) / n - (0.1 + 0.1 / vocab)) < 0.01
    assert abs(int((chosen & ~masked & ~kept).sum()) / n - 0.1 * (1 - 1 / vocab)) < 0.01
    assert int(inputs.max()) <= mask_id and int(inputs[inputs != mask_id].max()) < vocab


def test_deterministic_with_a_generator_and_custom_prob():
    idx = torch.randint(0, 10, (4, 500))
    a = mask_tokens(idx, 10, 10, generator=torch.Generator().manual_seed(3), prob=0.5)
    b = mask_tokens(idx, 10, 10, generator=torch.Generator().manual_seed(3), prob=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert abs(float((a[1] != IGNORE_INDEX).float().mean()) - 0.5) < 0.05


def test_at_least_one_position_is_chosen():
    for seed in range(20):
        _, targets = mask_tokens(torch.zeros(1, 2, dtype=torch.long), 5, 5, torch.Generator().manual_seed(seed))
        assert int((targets != IGNORE_INDEX).sum()) >= 1


def test_model_config_form_uses_the_reserved_row(make_cfg):
    cfg = make_cfg(objective="mlm", vocab_size=256)
    idx = torch.randint(0, 256, (8, 48))
    inputs, targets = mask_tokens(idx, cfg, generator=torch.Generator().manual_seed(0))
    assert int(inputs.max()) == 256 == cfg.mask_token_id
    _, loss = Transformer(cfg)(inputs, targets)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs an mlm model config"):
        mask_tokens(idx, make_cfg(vocab_size=256))
    with pytest.raises(ValueError, match="not both"):
        mask_tokens(idx, cfg, 3)


@pytest.mark.parametrize(
    "args, match",
    [((10, None), "mask_token_id=None"), ((0, 1), "vocab_size=0"), ((10, 10, None, 0.0), r"prob=0\.0")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), *args)
