"""Fixtures for the model tests: tiny configs built in a line."""

import pytest
import torch

from attnlab.model import ModelConfig

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context=48)


@pytest.fixture
def make_cfg():
    """make_cfg(**overrides) -> a tiny ModelConfig (vocab 64, d 32, 2 layers, 4/2 heads, N <= 48)."""

    def make(**overrides) -> ModelConfig:
        return ModelConfig(**{**TINY, **overrides})

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
