"""Document masks for packed sequences, as the flash kernels consume them.

``doc_ids``: int32 / int64 ``[Nk]`` (shared by every batch row) or ``[B or 1, Nk]``,
non-decreasing along each row; equal ids = one document, so documents are contiguous runs.
Query row i takes the id of its aligned position ``p = i + Nk - Nq`` (so Nq <= Nk), and key j
is allowed only if it lies in p's document (ANDed with the causal / window / layout rules).

The kernels never read the ids themselves but two int32 arrays per row (`document_bounds`):
``start[b, j]`` (first position of j's document) and ``end[b, j]`` (one past its last). Two
tokens share a document iff their starts are equal, and a run of positions p_first..p_last
touches exactly the keys ``[start[p_first], end[p_last])`` (common.py clips the block ranges
with them). Computing them is a handful of small device ops, no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_ID_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True, eq=False)
class DocumentBounds:
    """Per-token document bounds of a packed batch; R = 1 (shared by every row) or B."""

    start: Tensor  # int32 [R, Nk]: first position of each token's document
    end: Tensor  # int32 [R, Nk]: one past its last position

    def launch_args(self) -> dict:
        """Kernel arguments (batch stride 0 when one row serves every batch row)."""
        return dict(
            DocStart=self.start, DocEnd=self.end,
            stride_docb=self.start.stride(0) if self.start.shape[0] > 1 else 0, DOCS=True,
        )  # fmt: skip


def no_documents_args(dummy: Tensor) -> dict:
    """The same kernel arguments without documents (pointers unused)."""
    return dict(DocStart=dummy, DocEnd=dummy, stride_docb=0, DOCS=False)


def check_doc_ids(
    doc_ids, batch: int, n_q: int, n_k: int, device: torch.device, values: bool = True
) -> Tensor:
    """Validate ``doc_ids`` for an attention of B = ``batch`` rows; returns ``[B or 1, Nk]``.

    Raises ``ValueError`` naming the argument, its value and what is allowed. The
    non-decreasing check (``values``) reads the values (a device synchronisation on GPU).
    """
    if not isinstance(doc_ids, Tensor):
        raise ValueError(f"doc_ids must be an int32 or int64 torch.Tensor, got {type(doc_ids).__name__}")
    if doc_ids.dtype not in _ID_DTYPES:
        raise ValueError(f"doc_ids.dtype is {doc_ids.dtype}; allowed: torch.int32, torch.int64")
    ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]
    if doc_ids.dim() not in (1, 2) or ids.shape[1] != n_k or ids.shape[0] not in (1, batch):
        raise ValueError(
            f"doc_ids has shape {tuple(doc_ids.shape)}; allowed: [Nk] or [B or 1, Nk] with Nk={n_k}, B={batch}"
        )
    if ids.device != device:
        raise ValueError(f"doc_ids is on {ids.device} but q is on {device}; allowed: the same device")
    if n_q > n_k:
        raise ValueError(
            f"doc_ids needs Nq <= Nk (query row i takes the id of key position i + Nk - Nq), "
            f"got Nq={n_q}, Nk={n_k}"
        )
    if values and n_k > 1 and not torch.compiler.is_compiling() and bool((ids[:, 1:] < ids[:, :-1]).any()):
        raise ValueError("doc_ids must be non-decreasing along each row (documents are contiguous runs)")
    return ids


def document_bounds(doc_ids: Tensor) -> DocumentBounds:
    """``start`` / ``end`` int32 ``[R, Nk]`` of each token's document from ids ``[R, Nk]``."""
    rows, n_k = doc_ids.shape
    pos = torch.arange(n_k, device=doc_ids.device).expand(rows, n_k)  # [R, Nk]
    first = torch.ones(rows, n_k, dtype=torch.bool, device=doc_ids.device)  # starts a document
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    last = torch.ones_like(first)  # ends a document
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(dim=1).values
    end = torch.where(last, pos + 1, n_k).flip(1).cummin(dim=1).values.flip(1)
    return DocumentBounds(start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous())


def document_mask(doc_ids: Tensor, n_q: int, n_k: int) -> Tensor:
    """bool ``[R, Nq, Nk]``: query row i (position i + Nk - Nq) and key j share a document."""
    ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]
    return ids[:, n_k - n_q :, None] == ids[:, None, :]
