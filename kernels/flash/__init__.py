"""FlashAttention-2 style Triton kernels: dense, causal, sliding-window and block-sparse
attention, fwd + bwd, optionally restricted to documents (packed sequences, ``doc_ids=``).

- ``flash_attention``: the fused kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).
- ``block_sparse_attention``: the same kernels walking a compressed block layout.
- ``flash_attention_reference`` / ``block_sparse_reference``: the pure-PyTorch oracles.
- ``flash_attention_mask`` / ``block_sparse_mask``: the bool masks those semantics define.
- ``compress_layout``: a layout's CSR/CSC index (cached), as the kernels consume it; layouts
  computed on the device each call take ``block_sparse_attention(max_blocks_per_row=)``
  instead (fixed-length lists, ``layout.build_index_fixed``: no host synchronisation).
- ``document_bounds`` / ``document_mask``: per-token document bounds (as the kernels read
  them) and the bool same-document mask of ``doc_ids``.
"""

from .documents import DocumentBounds, document_bounds, document_mask
from .interface import block_sparse_attention, flash_attention
from .layout import BlockSparseIndex, compress_layout
from .reference import (
    block_sparse_mask,
    block_sparse_reference,
    flash_attention_mask,
    flash_attention_reference,
)

__all__ = [
    "BlockSparseIndex",
    "DocumentBounds",
    "block_sparse_attention",
    "block_sparse_mask",
    "block_sparse_reference",
    "compress_layout",
    "document_bounds",
    "document_mask",
    "flash_attention",
    "flash_attention_mask",
    "flash_attention_reference",
]
