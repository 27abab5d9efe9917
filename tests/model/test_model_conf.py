"""conf/model x conf/attention: every combination composes (Hydra) and builds a Transformer."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnlab.model import ModelConfig, Transformer, num_params

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
ATTENTIONS = sorted(p.stem for p in (CONF / "attention").glob("*.yaml"))


def _container(*overrides: str) -> dict:
    # No primary config (the jobs own theirs): append the two groups to an empty one.
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(overrides=list(overrides))
    return OmegaConf.to_container(cfg.model, resolve=True)


def _compose(*overrides: str) -> ModelConfig:
    container = _container(*overrides)
    assert container["vocab_size"] is None  # filled from the tokenizer by the training job
    return ModelConfig.from_dict({**container, "vocab_size": 256})


def test_presets_and_layouts_exist():
    assert {"tiny", "small", "base"} <= set(MODELS)
    assert {"dense", "swa", "hybrid", "bigbird"} <= set(ATTENTIONS)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("model", MODELS)
def test_every_combination_composes_and_builds(model, attention):
    container = _container(f"+model={model}", f"+attention={attention}")
    if len(container["layer_pattern"]) > container["n_layers"]:  # e.g. the 4-entry hybrid on the 2-layer recall model
        with pytest.raises(ValueError, match="layer_pattern has"):
            ModelConfig.from_dict({**container, "vocab_size": 256})
        return
    cfg = ModelConfig.from_dict({**container, "vocab_size": 256})
    specs = cfg.layer_specs()
    assert len(specs) == cfg.n_layers and all(s.causal for s in specs)
    expected_kinds = {"dense": {"dense"}, "swa": {"sliding_window"}, "hybrid": {"sliding_window", "dense"},
                      "bigbird": {"block_sparse"}}.get(attention)
    if expected_kinds is not None:
        assert {s.kind for s in specs} == expected_kinds
    net = Transformer(cfg)
    if model == "tiny":
        logits, _ = net(torch.zeros(1, cfg.context, dtype=torch.long))
        assert logits.shape == (1, cfg.context, 256)


def test_preset_sizes():
    sizes = {m: num_params(Transformer(_compose(f"+model={m}"))) for m in ("tiny", "small", "base")}
    assert sizes["tiny"] < 200_000
    assert 0.7e6 < sizes["small"] < 1.3e6
    assert 9e6 < sizes["base"] < 12e6


def test_mlm_override_flips_causality():
    cfg = _compose("+model=small", "+attention=hybrid", "model.objective=mlm")
    assert not any(s.causal for s in cfg.layer_specs()) and cfg.embed_rows == 257
