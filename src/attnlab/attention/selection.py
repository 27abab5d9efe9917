"""Content-selected key blocks (``kind="topk_blocks"``, MoBA-style): which key blocks each
query block attends, chosen from the data.

Legend: B batch, Hq / Hkv query / key-value heads (group = Hq // Hkv), Nq / Nk lengths, bs the
spec's block size, Mb = ceil(Nq / bs) query blocks, Kb = ceil(Nk / bs) key blocks.

For batch b, query head h and query block i (rows ``i*bs .. min((i+1)*bs, Nq) - 1``), with
``qbar`` the mean of the block's query rows and ``kbar_j`` the mean of key block j's keys (the
kv head of h; a last, partial block averages the rows it has), all in fp32:

- candidates: every key block; if causal, only blocks holding a key at or before the aligned
  position ``p = row + Nk - Nq`` of the block's last row;
- forced: the key blocks holding the aligned positions of the block's rows (the diagonal);
- chosen: forced, plus the highest ``qbar . kbar_j`` among the other candidates until ``top_k``
  blocks (fewer when there are fewer candidates); ties go to the lower block index.

Causal caveat (the definition above, as issue 16 states it): ``qbar`` pools every row of the
query block, so with ``causal=True`` row i's chosen blocks depend on the queries of the rows
after it in its block (up to ``block_size - 1`` positions ahead). The keys it attends stay
causal, but the choice leaks a little of the future; a causal LM trained with it can use that.
`attnlab.model.nsa` selects from the block's first row instead, which is causal.

Inside chosen blocks the token rules apply (causal, documents, sinks). Documents do not take
part in the selection. The selection is not differentiated (gradients flow through the
attention over the chosen blocks, as in MoBA). Everything here is torch ops on q's device, with
no host synchronisation.
"""

from __future__ import annotations

import math

import torch


def block_means(x: torch.Tensor, bs: int) -> torch.Tensor:
    """fp32 mean of each run of ``bs`` rows: [B, H, N, D] -> [B, H, ceil(N / bs), D] (a last,
    partial block averages its own rows)."""
    b, h, n, d = x.shape
    nb = math.ceil(n / bs)
    padded = torch.nn.functional.pad(x.detach().float(), (0, 0, 0, nb * bs - n))
    sums = padded.view(b, h, nb, bs, d).sum(3)
    counts = (n - torch.arange(nb, device=x.device) * bs).clamp(max=bs).float()  # rows per block
    return sums / counts[:, None]


def _rows_of_blocks(n_q: int, n_k: int, bs: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned positions (first, last) of each query block's rows: int64 [Mb] each."""
    mb = math.ceil(n_q / bs)
    first = torch.arange(mb, device=device) * bs
    last = torch.clamp(first + bs, max=n_q) - 1
    return first + (n_k - n_q), last + (n_k - n_q)


def candidates_and_forced(spec, n_q: int, n_k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [Mb, Kb] each: which key blocks may be chosen, which must be."""
    bs = spec.block_size
    kb = math.ceil(n_k / bs)
    p_first, p_last = _rows_of_blocks(n_q, n_k, bs, device)
    key_block = torch.arange(kb, device=device)[None, :]
    start = key_block * bs  # first key of each block, [1, Kb]
    candidates = (start <= p_last[:, None]) if spec.causal else torch.ones_like(start <= p_last[:, None])
    # blocks holding positions [max(p_first, 0), min(p_last, Nk - 1)] (none when p_last < 0)
    lo = torch.clamp(p_first, min=0) // bs
    hi = torch.clamp(p_last, max=n_k - 1) // bs
    forced = (key_block >= lo[:, None]) & (key_block <= hi[:, None]) & (p_last[:, None] >= 0)
    return candidates, forced & candidates


def choose(spec, scores: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """bool [..., Mb, Kb] chosen blocks from scores [..., Mb, Kb] (the rules above)."""
    candidates, forced = candidates_and_forced(spec, n_q, n_k, scores.device)
    free = candidates & ~forced
    budget = (spec.top_k - forced.sum(-1)).clamp(min=0)  # [Mb] free blocks each query block takes
    masked = scores.float().masked_fill(~free, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices  # ties: lower index first
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                            .expand_as(order).contiguous())  # fmt: skip
    return forced | (free & (rank < budget[:, None]))


def max_chosen(top_k: int) -> int:
    """An upper bound on the chosen blocks of one query block: ``top_k``, or 2 forced blocks
    when ``top_k`` = 1 (a block's ``bs`` consecutive aligned positions span at most two key
    blocks). The kernels' fixed-length index lists are sized by it."""
    return max(top_k, 2)


def select_blocks(spec, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The chosen key blocks of every (batch, query head, query block): bool [B, Hq, Mb, Kb]
    on q's device. q [B, Hq, Nq, D], k [B, Hkv, Nk, D]."""
    bs = spec.block_size
    group = q.shape[1] // k.shape[1]
    qbar = block_means(q, bs)  # [B, Hq, Mb, D]
    kbar = block_means(k, bs).repeat_interleave(group, dim=1)  # [B, Hq, Kb, D]
    scores = qbar @ kbar.transpose(-1, -2)  # [B, Hq, Mb, Kb] fp32
    return choose(spec, scores, q.shape[2], k.shape[2])


def nearest_blocks(spec, n_q: int, n_k: int) -> torch.Tensor:
    """bool [1, 1, Mb, Kb]: the layout whose free choices are the candidates nearest the
    diagonal (scores = key block index: later blocks first). What `flops` counts without data."""
    kb = math.ceil(n_k / spec.block_size)
    mb = math.ceil(n_q / spec.block_size)
    scores = torch.arange(kb, dtype=torch.float32).expand(1, 1, mb, kb)
    return choose(spec, scores, n_q, n_k)


def expand_to_tokens(layout: torch.Tensor, bs: int, n_q: int, n_k: int) -> torch.Tensor:
    """bool [..., Mb, Kb] -> [..., Nq, Nk]."""
    rows = torch.arange(n_q, device=layout.device) // bs
    cols = torch.arange(n_k, device=layout.device) // bs
    return layout[..., rows, :][..., cols]
