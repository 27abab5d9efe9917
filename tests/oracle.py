"""An independent oracle for tests: the contract's masking rules written out directly
(not through `AttentionSpec.dense_mask`) and an fp64 masked softmax.

Documents (packed sequences): key j is allowed only if it has the document id of the
query's aligned position p = i + n_k - n_q, ANDed with every other rule."""

from __future__ import annotations

import torch


def token_allowed(i: int, j: int, n_q: int, n_k: int, causal: bool, window) -> bool:
    """The contract's rule for one (query i, key j) pair, in plain Python."""
    p = i + n_k - n_q
    if causal and j > p:
        return False
    if window is None:
        return True
    if isinstance(window, tuple):
        left, right = window  # -1: unbounded on that side
        return (left == -1 or p - left <= j) and (right == -1 or j <= p + right)
    return p - window < j <= p if causal else abs(p - j) < window


def doc_ids_from_lengths(lengths, dtype=torch.int64) -> torch.Tensor:
    """[sum(lengths)] ids 0, 0, ..., 1, ...: document d holds lengths[d] consecutive tokens."""
    ids = [d for d, n in enumerate(lengths) for _ in range(n)]
    return torch.tensor(ids, dtype=dtype)


def cycled(lengths, total: int) -> list[int]:
    """Document lengths taken from `lengths` in turn, the last one cut, summing to `total`."""
    out, i = [], 0
    while sum(out) < total:
        out.append(min(lengths[i % len(lengths)], total - sum(out)))
        i += 1
    return out


def document_allowed(doc_row: list, i: int, j: int, n_q: int, n_k: int) -> bool:
    """The document rule for one pair: query i (at p = i + n_k - n_q) and key j share an id."""
    return doc_row[i + n_k - n_q] == doc_row[j]


def oracle_mask(spec, n_q: int, n_k: int, doc_ids=None) -> torch.Tensor:
    """bool [H or 1, Nq, Nk] built pair by pair from the rules (and the block layout); with
    ``doc_ids`` ([Nk] or [B, Nk]) bool [B or 1, H or 1, Nq, Nk]."""
    base = _oracle_mask(spec, n_q, n_k)
    if doc_ids is None:
        return base
    rows = doc_ids.reshape(-1, n_k).tolist()
    docs = torch.tensor(
        [[[document_allowed(row, i, j, n_q, n_k) for j in range(n_k)] for i in range(n_q)] for row in rows],
        dtype=torch.bool,
    ).reshape(len(rows), 1, n_q, n_k)
    return base[None] & docs


def _oracle_mask(spec, n_q: int, n_k: int) -> torch.Tensor:
    tok = torch.tensor(
        [[token_allowed(i, j, n_q, n_k, spec.causal, spec.window) for j in range(n_k)] for i in range(n_q)],
        dtype=torch.bool,
    ).reshape(n_q, n_k)
    mask = tok[None]
    if spec.kind == "block_sparse":
        lay = spec.block_layout(n_q, n_k)  # [H, Mb, Kb]
        bs = spec.block_size
        mask = mask & lay.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :n_q, :n_k]
    if getattr(spec, "kind", None) == "custom":  # mask_mod called one pair at a time
        t = lambda x: torch.tensor(x)  # noqa: E731
        custom = torch.tensor(
            [[[bool(spec.mask_mod(t(0), t(h), t(i), t(j))) for j in range(n_k)] for i in range(n_q)]
             for h in range(spec.heads or 1)], dtype=torch.bool,
        ).reshape(spec.heads or 1, n_q, n_k)
        mask = mask & custom
    sink = getattr(spec, "sink", 0)
    if sink:
        sinks = torch.tensor(
            [[j < sink and (not spec.causal or j <= i + n_k - n_q) for j in range(n_k)] for i in range(n_q)],
            dtype=torch.bool,
        ).reshape(n_q, n_k)
        mask = mask | sinks[None]
    return mask


def oracle_attention(q, k, v, mask: torch.Tensor, scale: float | None = None, softcap=None,
                     return_lse: bool = False):
    """fp64 softmax(QK^T scale [capped: c tanh(s / c)] masked) V with explicit GQA expansion;
    empty rows -> 0 (LSE -inf). mask: bool [H or 1, Nq, Nk] or [B or 1, H or 1, Nq, Nk]."""
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    q64, k64, v64 = (t.double() for t in (q, k, v))
    k64 = k64.repeat_interleave(group, 1)
    v64 = v64.repeat_interleave(group, 1)
    s = q64 @ k64.transpose(-1, -2) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~(mask if mask.dim() == 4 else mask[None]), float("-inf"))
    m = s.amax(-1, keepdim=True).clamp_min(-1e300)  # finite even for empty rows
    w = torch.exp(s - m)
    denom = w.sum(-1, keepdim=True)
    p = torch.where(denom > 0, w / denom.clamp_min(1e-300), torch.zeros_like(w))
    if not return_lse:
        return p @ v64
    lse = torch.where(denom[..., 0] > 0, (m + torch.log(denom.clamp_min(1e-300)))[..., 0], float("-inf"))
    return p @ v64, lse
