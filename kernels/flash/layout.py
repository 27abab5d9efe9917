"""Block-sparse layouts compressed for the kernels: CSR / CSC index lists with "full" flags.

A layout is bool ``[H, Mb, Kb]`` (H = 1 shared by every query head, or one per query head),
``Mb = ceil(Nq / bs)``, ``Kb = ceil(Nk / bs)``: True = query block r may attend key block c
(still subject to the causal / window token rules inside the block).

The kernels walk *index blocks* of ``G`` tokens (``index_block``):

- ``G = bs`` when ``bs >= MIN_INDEX_BLOCK`` (16, the smallest ``tl.dot`` tile). Kernel tiles
  of 16..G tokens divide G, so each index block is split into sub-tiles and the layout
  needs no in-tile mask.
- ``G = MIN_INDEX_BLOCK`` when ``bs < 16`` (coarsening): an index block is visited if any of
  its ``(G/bs)²`` layout blocks is True, and masked tiles also read the exact layout bit of
  every pair (``common.pair_mask``, ``LAYOUT_MASK``).

Per index block pair (a, c) two flags are precomputed: *visit* (some layout block in it is
True and the token rules allow some pair) and *full* (every layout block True, every pair
allowed by the token rules, no ragged edge), so full blocks skip all masking work
(FlexAttention's "full blocks"). Each CSR row lists its masked blocks, then its full ones:
``row_bounds[h, a] = (start, mid, end)`` with ``row_cols[start:mid]`` masked and
``row_cols[mid:end]`` full, ascending. The CSC form (``col_bounds``, ``col_rows``: which query
blocks see key block c) drives the dK/dV pass.

Two builders: ``build_index`` packs the lists back to back (it counts them: a host
synchronisation), ``build_index_fixed`` gives every row a fixed number of slots (padding past
each row's end, never read) so that nothing depends on the data but the values: no
synchronisation, for layouts computed on the device each call (content-selected blocks).
``compress_layout`` caches its result per (layout tensor, version, sizes, window, sink), so repeated
calls with the same layout tensor do not recompress.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .common import cdiv

MIN_INDEX_BLOCK = 16  # smallest kernel tile (tl.dot needs >= 16); smaller layout blocks coarsen
_CACHE_SIZE = 32
_CACHE: OrderedDict[tuple, tuple[torch.Tensor, BlockSparseIndex]] = OrderedDict()


@dataclass(frozen=True, eq=False)
class BlockSparseIndex:
    """A layout compressed for the kernels (module docstring). Tensors live on the kernel's device.

    Shapes: H = 1 or Hq layouts, Mi = ceil(Nq / G), Ki = ceil(Nk / G) index blocks.
    """

    block_size: int  # bs: tokens per layout block
    index_block: int  # G: tokens per index block (a power of two >= 16, a multiple of bs)
    n_q: int
    n_k: int
    window_left: int | None
    window_right: int | None  # causal folded in (0)
    heads: int  # H
    row_bounds: torch.Tensor  # int32 [H, Mi, 3]: (start, mid, end) into row_cols
    row_cols: torch.Tensor  # int32 [max(nnz, 1)] (fixed: [H * Mi * row length]): key index blocks, masked then full per row
    col_bounds: torch.Tensor  # int32 [H, Ki, 3]: (start, mid, end) into col_rows
    col_rows: torch.Tensor  # int32 [max(nnz, 1)] (fixed: [H * Ki * Mi]): query index blocks, masked then full per column
    fine_layout: (
        torch.Tensor | None
    )  # int8 [H, Mb, Kb] when G > bs (in-tile layout mask), else None
    nnz: int | None  # visited index blocks (all heads); None from build_index_fixed (not counted)
    n_full: int | None  # of which full
    sink: int = 0  # keys j < sink visited whatever the layout (build_index)
    sink_causal: bool = False

    def launch_args(self, transposed: bool) -> dict:
        """Kernel arguments: CSR (``transposed=False``, forward / dQ) or CSC (dK/dV)."""
        bounds, idx = (
            (self.col_bounds, self.col_rows) if transposed else (self.row_bounds, self.row_cols)
        )
        per_head = self.heads > 1
        lay = self.fine_layout
        return dict(
            Bounds=bounds,
            Idx=idx,
            Lay=lay if lay is not None else idx,
            idx_head_stride=bounds.shape[1] * 3 if per_head else 0,
            lay_head_stride=lay.shape[1] * lay.shape[2] if lay is not None and per_head else 0,
            lay_kb=lay.shape[2] if lay is not None else 0,
            SPARSE=True,
            INDEX_BLOCK=self.index_block,
            LAYOUT_MASK=lay is not None,
            LAYOUT_BLOCK=self.block_size,
        )


def dense_launch_args(dummy: torch.Tensor) -> dict:
    """The same kernel arguments for the dense / window path (pointers unused)."""
    return dict(
        Bounds=dummy, Idx=dummy, Lay=dummy, idx_head_stride=0, lay_head_stride=0, lay_kb=0,
        SPARSE=False, INDEX_BLOCK=0, LAYOUT_MASK=False, LAYOUT_BLOCK=1,
    )  # fmt: skip


def index_block_for(block_size: int) -> int:
    """G for a layout block size: bs itself when >= 16, else 16 (coarsened, in-tile layout mask)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if block_size & (block_size - 1):
        raise ValueError(
            f"block_size={block_size} is not supported: layout blocks must be a power of two. "
            f"Supported: block_size >= {MIN_INDEX_BLOCK} (kernel tiles of {MIN_INDEX_BLOCK}.."
            f"block_size tokens split each layout block), or block_size in 1, 2, 4, 8 (coarsened "
            f"to {MIN_INDEX_BLOCK}-token tiles with an exact in-tile layout mask)"
        )
    return max(block_size, MIN_INDEX_BLOCK)


def check_tiles(block_m: int, block_n: int, index_block: int, block_size: int) -> None:
    """Kernel tiles must split an index block exactly: powers of two in [16, G]."""
    for name, tile in (("BLOCK_M", block_m), ("BLOCK_N", block_n)):
        if tile < MIN_INDEX_BLOCK or tile > index_block or index_block % tile:
            raise ValueError(
                f"kernel tile {name}={tile} cannot serve a layout with block_size={block_size}: "
                f"tiles must divide the index block G={index_block} (G = block_size when "
                f"block_size >= {MIN_INDEX_BLOCK}, else {MIN_INDEX_BLOCK}), i.e. be one of "
                f"{[t for t in (16, 32, 64, 128, 256) if t <= index_block]}. Tiles larger than "
                "the layout block are not supported (only layout blocks < 16 are coarsened)"
            )


def check_layout(layout, block_size: int, n_q: int, n_k: int) -> None:
    """ValueError unless layout is bool [H >= 1, ceil(Nq / bs), ceil(Nk / bs)] (bs checked too)."""
    index_block_for(block_size)
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 3:
        shown = (
            f"Tensor(shape={tuple(layout.shape)}, dtype={layout.dtype})"
            if isinstance(layout, torch.Tensor)
            else type(layout).__name__
        )
        raise ValueError(f"layout must be a bool tensor [H or 1, Mb, Kb], got {shown}")
    want = (cdiv(n_q, block_size), cdiv(n_k, block_size))
    if tuple(layout.shape[1:]) != want or layout.shape[0] < 1:
        raise ValueError(
            f"layout has shape {tuple(layout.shape)} but Nq={n_q}, Nk={n_k} with "
            f"block_size={block_size} need [H or 1, {want[0]}, {want[1]}]"
        )


def _blocks_any_all(layout: torch.Tensor, factor: int, m_i: int, k_i: int):
    """(any, all) over each factor x factor group of layout blocks: bool [H, Mi, Ki].
    Padding blocks (past the last layout block) count as False for any, True for all."""
    heads, mb, kb = layout.shape
    pad = (0, k_i * factor - kb, 0, m_i * factor - mb)
    grid_any = torch.nn.functional.pad(layout, pad, value=False)
    grid_all = torch.nn.functional.pad(layout, pad, value=True)
    shape = (heads, m_i, factor, k_i, factor)
    return grid_any.view(shape).any(4).any(2), grid_all.view(shape).all(4).all(2)


def _token_any_all(n_q, n_k, g, window_left, window_right, device, sink=0, sink_causal=False):
    """(any, all) of the token rules over each G x G index block pair: bool [Mi, Ki].

    Row i sits at p = i + Nk - Nq and sees keys [p - wl, p + wr] ∩ [0, Nk); the union of those
    intervals over a run of rows is one interval, so a block is touched iff its key range meets
    [p_first - wl, p_last + wr], and full iff every row's interval covers it (and it is whole).
    """
    m_i, k_i = cdiv(n_q, g), cdiv(n_k, g)
    row0 = torch.arange(m_i, device=device) * g
    row1 = torch.clamp(row0 + g, max=n_q) - 1  # last valid row
    p_first = (row0 + n_k - n_q)[:, None]  # [Mi, 1]
    p_last = (row1 + n_k - n_q)[:, None]
    key0 = (torch.arange(k_i, device=device) * g)[None, :]  # [1, Ki]
    key1 = torch.clamp(key0 + g, max=n_k) - 1
    touched = torch.ones(m_i, k_i, dtype=torch.bool, device=device)
    full = ((row0 + g <= n_q)[:, None]) & (key0 + g <= n_k)
    if window_left is not None:
        touched &= key1 >= p_first - window_left
        full &= key0 >= p_last - window_left
    if window_right is not None:
        touched &= key0 <= p_last + window_right
        full &= key1 <= p_first + window_right
    return touched, full & touched


def _sink_any_all(n_q, n_k, g, sink, causal, device):
    """(any, all) of the sink pairs (``j < sink``, and ``j <= p`` when causal) over each
    G x G index block pair: bool [Mi, Ki]."""
    m_i, k_i = cdiv(n_q, g), cdiv(n_k, g)
    row0 = torch.arange(m_i, device=device) * g
    row1 = torch.clamp(row0 + g, max=n_q) - 1
    key0 = (torch.arange(k_i, device=device) * g)[None, :]
    key1 = torch.clamp(key0 + g, max=n_k) - 1
    touched = (key0 < sink).expand(m_i, k_i)
    full = ((row0 + g <= n_q)[:, None]) & (key0 + g <= n_k) & (key1 < sink)
    if causal:
        touched = touched & (key0 <= (row1 + n_k - n_q)[:, None])
        full = full & (key1 <= (row0 + n_k - n_q)[:, None])
    return touched, full & touched


def _compress(visit: torch.Tensor, full: torch.Tensor):
    """CSR of bool [H, R, C] (visit, full ⊆ visit): bounds int32 [H, R, 3] and column ids int32."""
    heads, rows, _ = visit.shape
    kinds = torch.stack([visit & ~full, full], dim=2)  # [H, R, 2, C]: masked, full
    idx = kinds.nonzero()[:, 3].to(torch.int32)  # row-major: (h, r, kind, c) ascending
    counts = kinds.sum(-1).reshape(-1)  # [H * R * 2]
    ends = counts.cumsum(0)
    starts = ends - counts
    bounds = torch.stack([starts[0::2], ends[0::2], ends[1::2]], dim=-1)  # [H * R, 3]
    if idx.numel() == 0:  # the kernels never read it, but a 0-element tensor has no pointer
        idx = torch.zeros(1, dtype=torch.int32, device=visit.device)
    return bounds.reshape(heads, rows, 3).to(torch.int32).contiguous(), idx


def _visit_full(layout, block_size, n_q, n_k, window_left, window_right, device, sink, sink_causal):
    """(G, lay, visit, full): the layout on ``device`` and which G x G index block pairs the
    kernels visit / may treat as full, bool [H, Mi, Ki] (module docstring). Device ops only."""
    g = index_block_for(block_size)
    check_layout(layout, block_size, n_q, n_k)
    lay = layout.to(device)
    m_i, k_i = cdiv(n_q, g), cdiv(n_k, g)
    lay_any, lay_all = _blocks_any_all(lay, g // block_size, m_i, k_i)  # [H, Mi, Ki]
    tok_any, tok_all = _token_any_all(n_q, n_k, g, window_left, window_right, device)
    visit = lay_any & tok_any
    full = lay_all & tok_all & visit
    if sink:
        sink_any, sink_all = _sink_any_all(n_q, n_k, g, sink, sink_causal, device)
        visit = visit | sink_any
        full = full | sink_all
    return g, lay, visit, full


def _check_int32(entries: int, g: int, heads: int) -> None:
    """The kernels step through the lists with int32 (entry * G / 16 tiles must fit)."""
    if entries * (g // MIN_INDEX_BLOCK) >= 2**31:
        raise ValueError(
            f"index lists of {entries} entries (blocks of {g} tokens, {heads} heads): too many "
            "for int32 offsets; use a larger block_size or split the heads into several calls"
        )


def build_index(
    layout: torch.Tensor,
    block_size: int,
    n_q: int,
    n_k: int,
    window_left: int | None,
    window_right: int | None,
    device: torch.device | str | None = None,
    sink: int = 0,
    sink_causal: bool = False,
) -> BlockSparseIndex:
    """Compress ``layout`` bool [H, Mb, Kb] (no cache). ``window_right`` has causal folded in.

    ``sink`` > 0: keys ``j < sink`` are visited whatever the layout and window (``j <= p`` too
    when ``sink_causal``); unless ``sink`` is a multiple of G, the kernels then read the exact
    layout bit of every pair in masked tiles (a partly-sink block must not open its other keys).
    Counting the kept blocks and ``nonzero`` read the device (a host synchronisation): layouts
    built on the device each call take ``build_index_fixed`` instead.
    """
    device = torch.device(device) if device is not None else layout.device
    g, lay, visit, full = _visit_full(
        layout, block_size, n_q, n_k, window_left, window_right, device, sink, sink_causal
    )
    nnz = int(visit.sum())
    _check_int32(nnz, g, layout.shape[0])
    row_bounds, row_cols = _compress(visit, full)
    col_bounds, col_rows = _compress(visit.transpose(1, 2), full.transpose(1, 2))
    fine = lay.to(torch.int8).contiguous() if g > block_size or sink % g else None
    return BlockSparseIndex(
        block_size=block_size, index_block=g, n_q=n_q, n_k=n_k,
        window_left=window_left, window_right=window_right, heads=layout.shape[0],
        row_bounds=row_bounds, row_cols=row_cols, col_bounds=col_bounds, col_rows=col_rows,
        fine_layout=fine, nnz=nnz, n_full=int(full.sum()), sink=sink, sink_causal=sink_causal,
    )  # fmt: skip


def _compress_fixed(visit: torch.Tensor, full: torch.Tensor, length: int):
    """``_compress`` with fixed shapes: each row of bool [H, R, C] gets ``length`` slots of
    int32 ``idx [H * R * length]`` (its masked entries then its full ones, ascending, then
    padding past the row's end that the kernels never read); ``bounds`` int32 [H, R, 3] point
    into them (row (h, r) starts at slot (h * R + r) * length). One sort of a fixed-shape key
    per row, no host synchronisation; a row with more than ``length`` entries trips a
    device-side assertion (on CUDA: asynchronously, at the next synchronisation)."""
    heads, rows, cols = visit.shape
    col = torch.arange(cols, dtype=torch.int32, device=visit.device)
    # sort key: masked entries c, full ones C + c, not visited 2C + c (unique per row)
    key = torch.where(visit, col + cols * full.to(torch.int32), col + 2 * cols)
    idx = (key.sort(dim=-1).values[..., :length] % cols).to(torch.int32).reshape(-1)
    n_masked = (visit & ~full).sum(-1)  # [H, R]
    n_visit = visit.sum(-1)
    torch._assert_async(
        (n_visit <= length).all(),
        f"block-sparse layout row holds more blocks than its fixed index length {length} "
        "(max_blocks_per_row too small for this layout)",
    )
    start = torch.arange(heads * rows, device=visit.device).view(heads, rows) * length
    bounds = torch.stack([start, start + n_masked, start + n_visit], dim=-1)  # [H, R, 3]
    return bounds.to(torch.int32).contiguous(), idx


def build_index_fixed(
    layout: torch.Tensor,
    block_size: int,
    n_q: int,
    n_k: int,
    window_left: int | None,
    window_right: int | None,
    max_blocks_per_row: int,
    sink: int = 0,
    sink_causal: bool = False,
) -> BlockSparseIndex:
    """``build_index`` without a host synchronisation, for layouts computed on the device each
    call (content-selected blocks): every shape depends only on (H, Nq, Nk, block_size,
    ``max_blocks_per_row``, sink), so the call composes with CUDA graphs and ``torch.compile``.

    ``max_blocks_per_row``: an upper bound on the True blocks of any layout row. CSR rows get
    ``min(Ki, (G / bs) * max_blocks_per_row + ceil(sink / G))`` slots, CSC columns ``Mi`` (every
    query block may pick one key block); a count above the bound trips a device-side assertion.
    The kernels walk the same entries in the same order as with ``build_index`` (bitwise equal
    results); ``nnz`` and ``n_full`` are None (counting them would read the device).
    """
    if isinstance(max_blocks_per_row, bool) or not isinstance(max_blocks_per_row, int) or max_blocks_per_row < 1:
        raise ValueError(f"max_blocks_per_row must be an int >= 1, got {max_blocks_per_row!r}")
    g, lay, visit, full = _visit_full(
        layout, block_size, n_q, n_k, window_left, window_right, layout.device, sink, sink_causal
    )
    heads, m_i, k_i = visit.shape
    row_len = min(k_i, (g // block_size) * max_blocks_per_row + cdiv(sink, g))
    _check_int32(heads * max(m_i * row_len, k_i * m_i), g, heads)
    row_bounds, row_cols = _compress_fixed(visit, full, row_len)
    col_bounds, col_rows = _compress_fixed(visit.transpose(1, 2), full.transpose(1, 2), m_i)
    fine = lay.to(torch.int8).contiguous() if g > block_size or sink % g else None
    return BlockSparseIndex(
        block_size=block_size, index_block=g, n_q=n_q, n_k=n_k,
        window_left=window_left, window_right=window_right, heads=heads,
        row_bounds=row_bounds, row_cols=row_cols, col_bounds=col_bounds, col_rows=col_rows,
        fine_layout=fine, nnz=None, n_full=None, sink=sink, sink_causal=sink_causal,
    )  # fmt: skip


def compress_layout(
    layout: torch.Tensor,
    block_size: int,
    n_q: int,
    n_k: int,
    window_left: int | None = None,
    window_right: int | None = None,
    device: torch.device | str | None = None,
    sink: int = 0,
    sink_causal: bool = False,
) -> BlockSparseIndex:
    """``build_index`` with a small LRU cache keyed on the layout tensor (storage pointer,
    in-place version counter, shape, strides, device), the sizes and the window.

    The cache keeps a reference to each layout it indexed, so a cached storage is never freed
    and reused by another tensor; an in-place edit bumps the version and misses the cache.
    """
    device = torch.device(device) if device is not None else layout.device
    key = (
        layout.data_ptr() if isinstance(layout, torch.Tensor) else id(layout),
        getattr(layout, "_version", None),
        tuple(getattr(layout, "shape", ())),
        layout.stride() if isinstance(layout, torch.Tensor) else None,
        str(getattr(layout, "device", None)),
        getattr(layout, "dtype", None),
        block_size, n_q, n_k, window_left, window_right, str(device), sink, sink_causal,
    )  # fmt: skip
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is layout:
        _CACHE.move_to_end(key)
        return hit[1]
    index = build_index(
        layout, block_size, n_q, n_k, window_left, window_right, device, sink, sink_causal
    )
    _CACHE[key] = (layout, index)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return index


def clear_cache() -> None:
    _CACHE.clear()
