"""Document masking for packed sequences: per-batch document boundaries.

A packed row holds several documents back to back; with document boundaries a token
attends only to keys of its own document, ANDed with the spec's rules (causal, window,
block layout). Boundaries are data that change every batch, so they are not part of the
frozen, hashable `AttentionSpec`: they are passed per call, as one of

* ``doc_ids``: an int32 / int64 tensor ``[Nk]`` (shared by every batch row) or
  ``[B or 1, Nk]`` (one row per batch row), non-decreasing along each row; equal ids =
  one document (ids need not start at 0 or be consecutive);
* ``cu_seqlens``: the flash-attn varlen convention, int32 / int64 ``[num_docs + 1]`` with
  ``0 = cu[0] < cu[1] < ... < cu[-1] = Nk`` (document d holds keys ``cu[d] .. cu[d+1]-1``),
  shared by every batch row (flash-attn's packed batch is the B == 1 case); or a list /
  tuple of B such tensors, one per batch row.

Ids label the Nk key positions. Query row i takes the id of its aligned position
``p = i + Nk - Nq`` (queries are the last Nq tokens, as for ``causal``), so with documents
Nq <= Nk is required.

Everything resolves to ``doc_ids [B or 1, Nk]`` (`resolve_documents`). The checks on the
*values* (non-decreasing ids, cu_seqlens bounds) read the tensor, which synchronises a
GPU: a doc-ids tensor that passed is remembered (`TensorCache`), so the layers of one
forward pass check it once. They are skipped while ``torch.compile`` traces, so compiled
models have no graph break here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

INT_DTYPES = (torch.int32, torch.int64)


class TensorCache:
    """A small LRU cache keyed on a tensor's identity (storage pointer, in-place version
    counter, shape, strides, dtype, device) plus extra hashable keys.

    It keeps a reference to every key tensor, so a cached storage is never freed and reused
    by another tensor; an in-place edit bumps the version and misses. Inference-mode tensors
    (no version counter) are never cached. Not for use while ``torch.compile`` traces (fake
    tensors have no storage): callers bypass it there.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.Tensor, object]] = OrderedDict()

    def get(self, tensor: torch.Tensor, extra: tuple, build: Callable[[], object]):
        if tensor.is_inference():
            return build()
        key = (tensor.data_ptr(), tensor._version, tuple(tensor.shape), tensor.stride(), tensor.dtype,
               str(tensor.device), *extra)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit[1]
        value = build()
        self._items[key] = (tensor, value)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


_CHECKED = TensorCache(size=8)  # doc-id tensors whose values passed the checks
# cu_seqlens tensor -> its checked doc ids: every layer given the same cu_seqlens gets the same
# ids tensor, so the impls' per-doc-ids caches (FlexAttention block masks, kernel block lists) hit
_FROM_CU_SEQLENS = TensorCache(size=8)


def _show(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device.type})"
    return f"{type(t).__name__} {t!r}"[:80]


def _cacheable(t) -> bool:
    return isinstance(t, torch.Tensor) and not torch.compiler.is_compiling()


def _values_checked() -> bool:
    return not torch.compiler.is_compiling()


def check_doc_ids(doc_ids, n_k: int, batch: int | None = None) -> torch.Tensor:
    """Validate ``doc_ids`` and return it as ``[B or 1, Nk]`` (a view, same dtype/device)."""
    if not isinstance(doc_ids, torch.Tensor):
        raise ValueError(f"doc_ids={_show(doc_ids)} must be an int32 or int64 torch.Tensor [Nk] or [B or 1, Nk]")
    if doc_ids.dtype not in INT_DTYPES:
        raise ValueError(f"doc_ids.dtype={doc_ids.dtype} is not allowed; allowed: torch.int32, torch.int64")
    if doc_ids.dim() not in (1, 2) or doc_ids.shape[-1] != n_k:
        raise ValueError(
            f"doc_ids has shape {tuple(doc_ids.shape)}; allowed: [Nk] or [B or 1, Nk] with Nk={n_k} "
            "(one id per key position)"
        )
    ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]
    if ids.shape[0] < 1 or (batch is not None and ids.shape[0] not in (1, batch)):
        allowed = "1 or the batch size" if batch is None else f"1 or B={batch}"
        raise ValueError(f"doc_ids has {ids.shape[0]} rows (shape {tuple(doc_ids.shape)}); allowed: {allowed}")
    if _values_checked() and n_k > 1:
        _CHECKED.get(doc_ids, (), lambda: _check_non_decreasing(ids))
    return ids


def _check_non_decreasing(ids: torch.Tensor) -> bool:
    drops = ids[:, 1:] < ids[:, :-1]
    if bool(drops.any()):
        row, col = (int(x) for x in drops.nonzero()[0])
        raise ValueError(
            f"doc_ids must be non-decreasing along each row (documents are contiguous runs), but "
            f"row {row} goes from {int(ids[row, col])} at position {col} to {int(ids[row, col + 1])} "
            f"at position {col + 1}"
        )
    return True


def _check_cu(cu, n_k: int, name: str) -> None:
    if not isinstance(cu, torch.Tensor):
        raise ValueError(f"{name}={_show(cu)} must be an int32 or int64 torch.Tensor [num_docs + 1]")
    if cu.dtype not in INT_DTYPES:
        raise ValueError(f"{name}.dtype={cu.dtype} is not allowed; allowed: torch.int32, torch.int64")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(
            f"{name} has shape {tuple(cu.shape)}; allowed: 1-D [num_docs + 1] with num_docs >= 1 "
            "(document d holds keys cu[d] .. cu[d+1]-1)"
        )
    if not _values_checked():
        return
    values = cu.tolist()
    if values[0] != 0 or values[-1] != n_k:
        raise ValueError(f"{name}={values} must start at 0 and end at Nk={n_k} (got {values[0]} .. {values[-1]})")
    bad = next((d for d in range(len(values) - 1) if values[d + 1] <= values[d]), None)
    if bad is not None:
        raise ValueError(
            f"{name}={values} must be strictly increasing (every document holds >= 1 token), but "
            f"entry {bad + 1} ({values[bad + 1]}) <= entry {bad} ({values[bad]})"
        )


def cu_seqlens_to_doc_ids(cu_seqlens: torch.Tensor, n_k: int) -> torch.Tensor:
    """int32 ``[Nk]`` document index of each key from ``cu_seqlens [num_docs + 1]`` (unchecked)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    docs = torch.arange(lengths.numel(), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(docs, lengths, output_size=n_k)


def resolve_documents(
    doc_ids=None, cu_seqlens=None, *, n_q: int, n_k: int, batch: int | None = None, device=None
) -> torch.Tensor | None:
    """``doc_ids [B or 1, Nk]`` from either argument (validated), or None without documents.

    ``batch``: the attention's batch size (None: any number of rows). ``device``: where the
    result must live; None keeps the argument's device. Raises ``ValueError`` naming the
    argument, its value and what is allowed.
    """
    if doc_ids is None and cu_seqlens is None:
        return None
    if doc_ids is not None and cu_seqlens is not None:
        raise ValueError("pass document boundaries once: doc_ids or cu_seqlens, not both")
    if n_q > n_k:
        raise ValueError(
            f"document masking needs n_q <= n_k, got n_q={n_q}, n_k={n_k}: ids label the key positions "
            "and query row i takes the id of its aligned position i + n_k - n_q"
        )
    if doc_ids is not None:
        ids = check_doc_ids(doc_ids, n_k, batch)
    elif isinstance(cu_seqlens, list | tuple):
        if batch is not None and len(cu_seqlens) != batch:
            raise ValueError(
                f"cu_seqlens is a list of {len(cu_seqlens)} tensors; allowed: one 1-D tensor (shared "
                f"by every row) or a list of B={batch} tensors (one per row)"
            )
        if len(cu_seqlens) == 0:
            raise ValueError("cu_seqlens=[] is empty; allowed: a 1-D tensor or a non-empty list of them")
        for row, cu in enumerate(cu_seqlens):
            _check_cu(cu, n_k, f"cu_seqlens[{row}]")
        ids = torch.stack([cu_seqlens_to_doc_ids(cu, n_k) for cu in cu_seqlens])
    else:
        def build():
            _check_cu(cu_seqlens, n_k, "cu_seqlens")
            return cu_seqlens_to_doc_ids(cu_seqlens, n_k)[None]

        ids = _FROM_CU_SEQLENS.get(cu_seqlens, (n_k,), build) if _cacheable(cu_seqlens) else build()
    if device is not None and ids.device != torch.device(device):
        raise ValueError(
            f"document boundaries are on {ids.device} but the attention inputs are on {torch.device(device)}; "
            "move them to the same device"
        )
    return ids


def same_document(doc_ids: torch.Tensor, rows: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """bool ``[B or 1, len(rows), Nk]``: query row i and key j lie in one document."""
    q_ids = doc_ids[:, rows + (n_k - n_q)]  # [B or 1, R]: ids of the aligned positions
    return q_ids[:, :, None] == doc_ids[:, None, :]
