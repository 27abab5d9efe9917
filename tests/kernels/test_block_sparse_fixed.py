"""CPU tests of the fixed-length block-sparse index (``layout.build_index_fixed``, used through
``block_sparse_attention(max_blocks_per_row=)``): the same entries in the same order as the
packed ``build_index`` for every row and column, shapes that depend only on the sizes, bitwise
equal attention and gradients (Triton interpreter), and its errors.

Legend: H heads, Nq / Nk lengths, bs layout block, Mb / Kb layout blocks, G index block,
Mi / Ki index blocks, cap the bound on True blocks per layout row.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnlab.kernels.flash import block_sparse_attention, layout
from kernel_testing import KERNEL_MARKS

pytestmark = KERNEL_MARKS


def capped_layout(heads, n_q, n_k, bs, cap, seed):
    """bool [H, Mb, Kb] with between 1 and ``cap`` True blocks per row (random)."""
    g = torch.Generator().manual_seed(seed)
    mb, kb = math.ceil(n_q / bs), math.ceil(n_k / bs)
    scores = torch.rand(heads, mb, kb, generator=g)
    kept = torch.randint(1, cap + 1, (heads, mb, 1), generator=g)
    rank = scores.argsort(-1, descending=True).argsort(-1)
    return rank < kept


def entries(bounds, idx, h, r):
    """(masked, full) entry lists of row r of head h."""
    s, m, e = bounds[h, r].tolist()
    return idx[s:m].tolist(), idx[m:e].tolist()


# (H, Nq, Nk, bs, cap, window_left, window_right, sink)
CASES = [
    (3, 100, 100, 16, 2, None, 0, 0),  # causal, ragged last block
    (2, 70, 130, 16, 3, None, 0, 5),  # Nq < Nk, partial sink block
    (2, 130, 70, 32, 2, None, None, 32),  # Nq > Nk, bidirectional, whole sink block
    (2, 96, 96, 8, 3, None, 0, 0),  # bs < 16: coarsened index blocks, in-tile layout mask
    (1, 80, 80, 16, 5, 20, 0, 0),  # a window drops far blocks of the layout
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_fixed_lists_hold_the_packed_entries(case):
    heads, n_q, n_k, bs, cap, wl, wr, sink = case
    lay = capped_layout(heads, n_q, n_k, bs, cap, seed=sum(case[:4]))
    packed = layout.build_index(lay, bs, n_q, n_k, wl, wr, sink=sink, sink_causal=wr == 0)
    fixed = layout.build_index_fixed(lay, bs, n_q, n_k, wl, wr, cap, sink=sink, sink_causal=wr == 0)
    assert fixed.nnz is None and fixed.n_full is None
    assert fixed.row_bounds.shape == packed.row_bounds.shape
    assert fixed.col_bounds.shape == packed.col_bounds.shape
    for h in range(heads):
        for r in range(packed.row_bounds.shape[1]):
            assert entries(fixed.row_bounds, fixed.row_cols, h, r) == entries(packed.row_bounds, packed.row_cols, h, r)
        for c in range(packed.col_bounds.shape[1]):
            assert entries(fixed.col_bounds, fixed.col_rows, h, c) == entries(packed.col_bounds, packed.col_rows, h, c)
    fine = (fixed.fine_layout, packed.fine_layout)
    assert (fine[0] is None) == (fine[1] is None) and (fine[0] is None or torch.equal(*fine))


def test_fixed_shapes_depend_only_on_the_sizes():
    """Two layouts of the same sizes (one nearly empty, one full to the bound): same shapes."""
    n, bs, cap = 200, 16, 3
    sparse = torch.zeros(2, 13, 13, dtype=torch.bool)
    sparse[:, 0, 0] = True
    full = capped_layout(2, n, n, bs, cap, seed=1)
    shapes = []
    for lay in (sparse, full):
        idx = layout.build_index_fixed(lay, bs, n, n, None, 0, cap)
        shapes.append([tuple(t.shape) for t in (idx.row_bounds, idx.row_cols, idx.col_bounds, idx.col_rows)])
    mi = ki = 13
    assert shapes[0] == shapes[1] == [(2, mi, 3), (2 * mi * cap,), (2, ki, 3), (2 * ki * mi,)]


def test_fixed_index_attention_is_bitwise_equal():
    """Same entries in the same order: the kernels accumulate in the same order, so outputs,
    LSE and every gradient are bitwise those of the packed (cached) index."""
    n_q, n_k, bs, cap = 80, 96, 16, 2
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, n_q, 16, generator=g)
    k, v = (torch.randn(2, 2, n_k, 16, generator=g) for _ in range(2))
    lay = capped_layout(4, n_q, n_k, bs, cap, seed=4)
    do = torch.randn(2, 4, n_q, 16, generator=g)
    results = []
    for bound in (None, cap):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out, lse = block_sparse_attention(qi, ki, vi, lay, bs, causal=True, sink=3, return_lse=True,
                                          deterministic=True, max_blocks_per_row=bound)  # fmt: skip
        out.backward(do)
        results.append((out, lse, qi.grad, ki.grad, vi.grad))
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(a, b), name
    assert not results[1][0].isnan().any()


def test_a_row_above_the_bound_trips_the_assertion():
    lay = torch.ones(1, 4, 4, dtype=torch.bool)  # 4 blocks per row, bidirectional
    with pytest.raises(RuntimeError, match="max_blocks_per_row too small"):
        layout.build_index_fixed(lay, 16, 64, 64, None, None, 2)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_max_blocks_per_row(bad):
    x = torch.zeros(1, 1, 32, 16)
    lay = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_blocks_per_row"):
        block_sparse_attention(x, x, x, lay, 16, max_blocks_per_row=bad)
    with pytest.raises(ValueError, match="max_blocks_per_row"):
        layout.build_index_fixed(lay, 16, 32, 32, None, None, bad)


def test_fixed_index_needs_the_layout_on_qs_device():
    x = torch.zeros(1, 1, 32, 16)
    lay = torch.ones(1, 2, 2, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="q's device"):
        block_sparse_attention(x, x, x, lay, 16, max_blocks_per_row=2)
