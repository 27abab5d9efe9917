"""`python -m attnlab.sample checkpoint=<source> prompt="..."`: text from a trained model.

``checkpoint`` takes every source `python -m attnlab.eval` takes: a run dir of
`python -m attnlab.train` / `attnlab.distill`, a checkpoint .pt, ``smollm2`` or
``gguf:<path>``. Greedy (``greedy=true``), temperature and top-k sampling; the tokenizer is
the model's (an attnlab run's byte-level or cached BPE tokenizer, a GGUF file's own).

Every option is checked before the model is loaded; bad input (an option, a checkpoint that
does not exist or is not a model) prints one line ``error: ...`` naming the key and exits
with status 2.
"""

from __future__ import annotations

import math

import torch

from attnlab.data import DataConfig
from attnlab.errors import UserInputError, check_seed, hydra_cli, user_errors
from attnlab.model import Transformer, generate
from attnlab.pretrained.sources import check_attn_impl, load_source


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"{key}={value!r} is not allowed: a positive int")
    return value


def resolve_device(name) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    ok = isinstance(name, str) and (name in ("auto", "cpu", "cuda") or
                                    (name.startswith("cuda:") and name[5:].isdigit()))
    if not ok:
        raise UserInputError(f"device={name!r} is not allowed: auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def check_options(max_new_tokens, greedy, temperature, top_k, num_samples, seed, device) -> torch.device:
    """Validate the sampling options (conf/sample.yaml's keys); returns the device."""
    _positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(greedy, bool):
        raise UserInputError(f"greedy={greedy!r} is not allowed: true or false")
    if not greedy and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                       or not math.isfinite(temperature) or temperature <= 0):
        raise UserInputError(f"temperature={temperature!r} is not allowed: a finite number > 0 (or greedy=true)")
    if top_k is not None:
        _positive_int("top_k", top_k)
    _positive_int("num_samples", num_samples)
    check_seed("seed", seed)
    return resolve_device(device)


def load_model(source, device, attn_impl: str | None = None) -> tuple[Transformer, DataConfig | None]:
    """(the model on ``device`` in eval mode, its training data config: None for a GGUF file)."""
    pre = load_source(source, "checkpoint", attn_impl=check_attn_impl("attn_impl", attn_impl))
    return pre.model.to(device).eval(), pre.data


def _load_causal(source, attn_impl: str | None):
    pre = load_source(source, "checkpoint", attn_impl=check_attn_impl("attn_impl", attn_impl))
    if pre.config.objective != "causal":
        raise UserInputError(f"checkpoint={source!r} holds a model.objective={pre.config.objective!r} model; "
                             "sampling needs a causal LM")
    return pre


def _generate_texts(pre, dev: torch.device, prompt, max_new_tokens: int, greedy: bool, temperature: float,
                    top_k: int | None, num_samples: int, seed: int) -> list[str]:
    model, tokenizer = pre.model.to(dev).eval(), pre.tokenizer
    ids = tokenizer.encode(str(prompt)) or [tokenizer.encode("\n")[0]]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, greedy=greedy, generator=gen)
    return [tokenizer.decode(row.tolist()) for row in out]


def sample_text(source, prompt: str, max_new_tokens: int = 200, greedy: bool = False, temperature: float = 1.0,
                top_k: int | None = None, num_samples: int = 1, seed: int = 0, device: str = "auto",
                attn_impl: str | None = None) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (each returned with the prompt in front).
    Bad options raise `UserInputError` before the model is loaded."""
    dev = check_options(max_new_tokens, greedy, temperature, top_k, num_samples, seed, device)
    pre = _load_causal(source, attn_impl)
    return _generate_texts(pre, dev, prompt, max_new_tokens, greedy, temperature, top_k, num_samples, seed)


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from attnlab.paths import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="sample", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        with user_errors():  # bad options and unloadable checkpoints: one line, status 2
            checkpoint = None if OmegaConf.is_missing(cfg, "checkpoint") else cfg.checkpoint
            c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            opts = [c["max_new_tokens"], c["greedy"], c["temperature"], c["top_k"], c["num_samples"], c["seed"]]
            dev = check_options(*opts, c["device"])
            pre = _load_causal(checkpoint, c.get("attn_impl"))
        texts = _generate_texts(pre, dev, c["prompt"], *opts)
        for i, text in enumerate(texts):
            if len(texts) > 1:
                print(f"--- sample {i}")
            print(text)

    hydra_cli(_main)()


if __name__ == "__main__":
    main()
