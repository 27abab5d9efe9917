"""`triton` impl: attnlab's own kernels (`attnlab.kernels`), on CUDA or under the interpreter."""

from __future__ import annotations

import functools
import os

import torch

from attnlab.attention.documents import TensorCache
from attnlab.attention.registry import Impl, dtype_name, register, why_not_bf16

TRITON_KINDS = ("dense", "sliding_window", "block_sparse", "custom", "topk_blocks")
# kind="custom" runs as a block-sparse layout of 1-token blocks (the spec's exact mask, read
# per pair in masked tiles): int8 [H, Nq, Nk] on the device, so it is bounded.
MAX_CUSTOM_MASK_ELEMENTS = 2**28
# What the kernels take (kernels/flash/interface.py; a test checks that these agree):
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=32)
def spec_layout(spec, n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """The spec's block layout bool [H or 1, Mb, Kb] on `device`, one tensor per (spec, sizes,
    device): the kernels cache its CSR/CSC compression per layout tensor, so repeated calls
    with the same spec compress once."""
    return spec.block_layout(n_q, n_k).to(device)


_DOC_BOUNDS = TensorCache(size=8)


def document_bounds(doc_ids: torch.Tensor):
    """The kernels' per-token document bounds of validated ``doc_ids [B or 1, Nk]``, computed
    once per doc-ids tensor (the layers of one forward pass share them)."""
    from attnlab.kernels.flash import document_bounds as build

    if torch.compiler.is_compiling():
        return build(doc_ids)
    return _DOC_BOUNDS.get(doc_ids, (), lambda: build(doc_ids))


@functools.lru_cache(maxsize=8)
def custom_layout(spec, n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """kind="custom": the spec's token mask as a 1-token-block layout bool [H or 1, Nq, Nk]
    (built once per spec, sizes and device; the kernels cache its compression per tensor)."""
    heads = spec.num_heads()
    if heads * n_q * n_k > MAX_CUSTOM_MASK_ELEMENTS:
        raise NotImplementedError(
            f"impl='triton' serves kind='custom' through an exact per-pair mask of heads x Nq x Nk = "
            f"{heads} x {n_q} x {n_k} bytes, more than its limit of {MAX_CUSTOM_MASK_ELEMENTS}; "
            "use impl='flex' (block masks) or shorter sequences"
        )
    return spec.dense_mask(n_q, n_k, device=device)


def triton_attention(q, k, v, spec, scale: float, doc_ids=None, return_lse: bool = False):
    """Dense and sliding-window attention through `attnlab.kernels.flash.flash_attention`,
    block-sparse through `block_sparse_attention` with the spec's layout, custom masks through
    a 1-token-block layout; ``doc_ids`` [B or 1, Nk] (documents) go to the kernels, which skip
    key blocks of other documents. Sinks and soft-capping are kernel arguments."""
    from attnlab.kernels.flash import block_sparse_attention, flash_attention

    left, right = spec.window_bounds()
    docs = None if doc_ids is None else document_bounds(doc_ids)
    kw = dict(causal=spec.causal, window_left=left, window_right=right, scale=scale, doc_ids=docs,
              sink=spec.sink, softcap=spec.softcap, return_lse=return_lse)  # fmt: skip
    if spec.kind == "block_sparse":
        layout = spec_layout(spec, q.shape[2], k.shape[2], q.device)
        return block_sparse_attention(q, k, v, layout, spec.block_size, **kw)
    if spec.kind == "custom":
        layout = custom_layout(spec, q.shape[2], k.shape[2], q.device)
        return block_sparse_attention(q, k, v, layout, 1, **kw)
    if spec.kind == "topk_blocks":
        from attnlab.attention.selection import max_chosen, select_blocks

        chosen = select_blocks(spec, q, k)  # [B, Hq, Mb, Kb], on the device
        return chosen_blocks_attention(q, k, v, chosen, spec.block_size, max_chosen(spec.top_k), kw, doc_ids)
    return flash_attention(q, k, v, **kw)


def topk_selection_index(spec, q, k):
    """kind="topk_blocks" without the attention: the selection and the kernels' index lists
    (``BlockSparseIndex``) that ``triton_attention`` builds before its kernels on a call
    without documents. The benchmark times it alone (``triton_selection``)."""
    from attnlab.attention.selection import max_chosen, select_blocks
    from attnlab.kernels.flash.layout import build_index_fixed

    chosen = select_blocks(spec, q, k)  # [B, Hq, Mb, Kb]
    b, hq, n_q = q.shape[:3]
    return build_index_fixed(chosen.reshape(b * hq, *chosen.shape[2:]), spec.block_size, n_q, k.shape[2],
                             None, 0 if spec.causal else None, max_chosen(spec.top_k),
                             sink=spec.sink, sink_causal=spec.causal)  # fmt: skip


def chosen_blocks_attention(q, k, v, chosen, bs: int, max_per_row: int, kw: dict, doc_ids=None):
    """Attention over per-(batch, head) chosen key blocks ``chosen`` bool [B, Hq, Mb, Kb] (at
    most ``max_per_row`` True per row) as per-head layouts of one block-sparse call, batch
    folded into heads (GQA keeps its grouping: head b*Hq + h reads kv head b*Hkv + h // group).
    ``kw``: the kernels' causal / window / scale / sink / softcap / return_lse.

    The kernels' index lists are built on the device with fixed lengths (``max_blocks_per_row``):
    no host synchronisation from selection to output, forward and backward. With documents
    (``doc_ids`` [B or 1, Nk]) it is one call per batch row: the kernels read document bounds
    per batch row but layouts per head, so folding the batch into heads would lose the rows'
    documents. Those calls are still free of synchronisations (the bounds are computed once and
    sliced), but B launches instead of one; only a kernel change (a per-(b, h) layout stride)
    would remove the loop."""
    from attnlab.kernels.flash import DocumentBounds, block_sparse_attention

    b, hq, n_q, d = q.shape
    hkv, n_k = k.shape[1], k.shape[2]
    kw = {"return_lse": False, **kw, "max_blocks_per_row": max_per_row}
    lse = kw["return_lse"]
    if doc_ids is None:
        fold = lambda t, h, n: t.reshape(1, b * h, n, d)  # noqa: E731
        res = block_sparse_attention(fold(q, hq, n_q), fold(k, hkv, n_k), fold(v, hkv, n_k),
                                     chosen.reshape(b * hq, *chosen.shape[2:]), bs, **kw)  # fmt: skip
        out, lse_out = res if lse else (res, None)
        out = out.reshape(b, hq, n_q, d)
        return (out, lse_out.reshape(b, hq, n_q)) if lse else out
    bounds = document_bounds(doc_ids)  # [B or 1, Nk] each, validated by the caller
    rows = []
    for i in range(b):
        r = i if bounds.start.shape[0] > 1 else 0
        row_docs = DocumentBounds(bounds.start[r:r + 1], bounds.end[r:r + 1])
        rows.append(block_sparse_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], chosen[i], bs,
                                           **{**kw, "doc_ids": row_docs}))  # fmt: skip
    if lse:
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    return torch.cat(rows)


def _why_not(spec, device, requires_grad, dtype=None, head_dim=None):
    if spec.kind not in TRITON_KINDS:
        return f"the triton kernels serve kinds {', '.join(TRITON_KINDS)}, not {spec.kind!r} yet"
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_on()):
        return f"triton needs a CUDA device, or TRITON_INTERPRET=1 on CPU (got device {device.type})"
    if dtype is not None and dtype not in TRITON_DTYPES:
        return (f"the triton kernels take dtype {', '.join(map(dtype_name, TRITON_DTYPES))}, "
                f"not dtype={dtype_name(dtype)}")
    if head_dim is not None and not 1 <= head_dim <= MAX_HEAD_DIM:
        return f"the triton kernels take head dim D in [1, {MAX_HEAD_DIM}], not D={head_dim}"
    return why_not_bf16(device, dtype, "triton")


register(
    Impl(
        name="triton",
        run=triton_attention,
        why_not=_why_not,
        description="attnlab's Triton FlashAttention-2 style kernels (dense, sliding window, "
        "block-sparse, custom masks, documents, sinks, soft-capping; fwd + bwd)",
        lse=True,
        lse_grad=True,
    )
)
