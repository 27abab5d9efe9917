"""Masked-LM corruption (BERT, Devlin et al. 2019): choose ~15% of the positions to predict;
of those, 80% become ``[MASK]``, 10% a random real token, 10% stay as they are."""

from __future__ import annotations

import torch

from attnlab.model.config import ModelConfig

IGNORE_INDEX = -100


def mask_tokens(
    idx: torch.Tensor,
    vocab_size: int | ModelConfig,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT 80/10/10 corruption of a batch of token ids.

    Args:
        idx: int tensor [B, N] of real token ids (< vocab_size).
        vocab_size: random replacements are drawn from ``[0, vocab_size)``. Or a
            `ModelConfig` with ``objective="mlm"``: then its ``vocab_size`` and
            ``mask_token_id`` (== vocab_size, the reserved extra row) are used and
            ``mask_token_id`` must not be passed.
        mask_token_id: the ``[MASK]`` id (needed when vocab_size is an int).
        generator: random source (on idx's device, or CPU); None = torch's global RNG.
        prob: fraction of positions chosen for prediction, in (0, 1].

    Returns:
        (inputs, targets), both [B, N] like idx: ``targets`` holds the original token at
        chosen positions and -100 elsewhere (ignored by the loss). At least one position
        is chosen, so the loss is never an empty mean (NaN).
    """
    if isinstance(vocab_size, ModelConfig):
        cfg = vocab_size
        if cfg.objective != "mlm":
            raise ValueError(f"mask_tokens needs an mlm model config, got model.objective={cfg.objective!r}")
        if mask_token_id is not None:
            raise ValueError("mask_tokens: pass either a ModelConfig or (vocab_size, mask_token_id), not both")
        vocab_size, mask_token_id = cfg.vocab_size, cfg.mask_token_id
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"mask_tokens(vocab_size={vocab_size!r}) must be a positive int")
    if not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"mask_tokens(mask_token_id={mask_token_id!r}) must be an int >= 0")
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 < prob <= 1:
        raise ValueError(f"mask_tokens(prob={prob!r}) must be in (0, 1]")
    if idx.dim() != 2 or idx.dtype.is_floating_point or idx.numel() == 0:
        raise ValueError(f"idx must be a non-empty integer tensor [B, N], got {idx.dtype} {tuple(idx.shape)}")

    rng_device = generator.device if generator is not None else idx.device

    def uniform() -> torch.Tensor:  # (B, N) in [0, 1)
        return torch.rand(idx.shape, generator=generator, device=rng_device).to(idx.device)

    chosen = uniform() < prob  # (B, N)
    if not bool(chosen.any()):
        chosen.view(-1)[int(uniform().view(-1).argmax())] = True
    action = uniform()  # (B, N): < 0.8 -> [MASK], [0.8, 0.9) -> random token, >= 0.9 -> keep
    random_ids = torch.randint(0, vocab_size, idx.shape, generator=generator, device=rng_device).to(idx.device)

    inputs = idx.clone()
    inputs[chosen & (action < 0.8)] = mask_token_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap].to(idx.dtype)
    targets = torch.full_like(idx, IGNORE_INDEX)
    targets[chosen] = idx[chosen]
    return inputs, targets
