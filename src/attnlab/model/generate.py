"""Autoregressive sampling from a causal `Transformer` (no KV cache: each step reruns the
last ``context`` tokens, which is fine at this repo's sizes)."""

from __future__ import annotations

import torch

from attnlab.model.transformer import Transformer


@torch.no_grad()
def generate(
    model: Transformer,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append `max_new_tokens` tokens to ``idx [B, N]``; returns ``[B, N + max_new_tokens]``.

    Each step feeds the last ``model.config.context`` tokens. ``greedy`` takes the argmax
    (temperature and top_k are then unused); otherwise samples from
    ``softmax(logits / temperature)`` restricted to the `top_k` most likely tokens.
    The model runs in eval mode (no dropout) and its previous mode is restored.
    """
    cfg = model.config
    if cfg.objective != "causal":
        raise ValueError(f"generate needs a causal LM, got model.objective={cfg.objective!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0 (or use greedy=True)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a positive int or None")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be [B, N] with N >= 1, got shape {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            window = idx[:, -cfg.context:]  # (B, <= context)
            logits, _ = model(window)
            logits = logits[:, -1, :].float()  # (B, V)
            if greedy:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)  # (B, V)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)  # (B, N + 1)
    finally:
        model.train(was_training)
    return idx
