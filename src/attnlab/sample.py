"""`python -m attnlab.sample checkpoint=... prompt="..."`: text from a training checkpoint.

Greedy (`greedy=true`), temperature and top-k sampling; the tokenizer is rebuilt from the
checkpoint's data config (byte-level, or the cached BPE of that corpus).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attnlab.configs import from_dict
from attnlab.data import DataConfig, build_data, data_config_from_dict
from attnlab.model import ModelConfig, Transformer, generate
from attnlab.train import checkpoint as ckpt
from attnlab.train.loop import resolve_device


def load_model(path, device) -> tuple[Transformer, DataConfig]:
    state = ckpt.load(path, map_location=device)
    record = state["config"]
    model = Transformer(from_dict(ModelConfig, record["model"], "model")).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, data_config_from_dict(record["data"], "data")


def sample_text(path, prompt: str, max_new_tokens: int = 200, greedy: bool = False, temperature: float = 1.0,
                top_k: int | None = None, num_samples: int = 1, seed: int = 0, device: str = "auto") -> list[str]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (or use greedy=true)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or null")
    dev = resolve_device(device)
    model, data_cfg = load_model(path, dev)
    tokenizer = build_data(data_cfg).tokenizer
    ids = tokenizer.encode(prompt) or [tokenizer.encode("\n")[0]]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, greedy=greedy, generator=gen)
    return [tokenizer.decode(row.tolist()) for row in out]


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="sample", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        if not Path(cfg.checkpoint).is_file():
            print(f"error: checkpoint={cfg.checkpoint} does not exist", file=sys.stderr)
            sys.exit(2)
        texts = sample_text(cfg.checkpoint, cfg.prompt, cfg.max_new_tokens, cfg.greedy, cfg.temperature,
                            cfg.top_k, cfg.num_samples, cfg.seed, cfg.device)
        for i, text in enumerate(texts):
            if len(texts) > 1:
                print(f"--- sample {i}")
            print(text)

    _main()


if __name__ == "__main__":
    main()
