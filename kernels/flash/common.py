"""Pieces shared by the forward and backward kernels.

The only places that know *which* (query, key) pairs interact are here:

- ``kv_blocks_for_q_block`` / ``q_blocks_for_kv_block``: the block ranges a program
  visits, split into masked edge blocks and unmasked ("full") interior blocks;
- ``allowed_pairs``: the element-wise mask inside an edge block.

Dense, causal and sliding-window attention are all the window mask below (causal is
``window_right = 0``). Block-sparse attention (``SPARSE`` constexpr in the kernels) keeps
the loops in forward.py/backward.py and swaps the iteration source: instead of a token
range it walks a compressed index list (layout.py: CSR rows for the forward / dQ pass,
CSC columns for the dK/dV pass), each entry one ``INDEX_BLOCK``-sized block split into
kernel-tile sub-blocks (``sparse_tile_start``); its in-block mask is ``pair_mask``
(the window mask, plus the exact layout when layout blocks are smaller than the index
block).

Positions: query row i sits at ``p = i + Nk - Nq`` (bottom-right alignment); key j is
allowed iff ``p - window_left <= j <= p + window_right`` and ``0 <= j < Nk`` (a missing
bound is unbounded, selected by the HAS_WL / HAS_WR constexprs).

Documents (``DOCS`` constexpr, packed sequences; documents.py): additionally key j must lie in
p's document. The kernels read ``DocStart_b`` / ``DocEnd_b`` (int32 ``[Nk]`` of this batch row:
first position / one past the last position of each token's document): "same document" is
``DocStart[p] == DocStart[j]``, a query block's keys are clipped to
``[DocStart[p_first], DocEnd[p_last])`` and its full run to ``[DocStart[p_last], DocEnd[p_first])``
(empty unless the block lies in one document); key blocks symmetrically. Needs Nq <= Nk.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): scores go through exp2 with log2e folded into the scale
LN2 = 0.6931471805599453  # ln(2): the natural-log LSE from the kernels' log2-domain one

# Tests set this to True: every output/gradient buffer is NaN-filled instead of left
# uninitialised, so a tile the kernel forgets to write fails loudly.
_POISON_OUTPUTS = False

# Fixed tile sizes under the Triton interpreter (no autotuning there). 64x64 tiles are
# far faster than small ones in the interpreter; tests override these to exercise the
# edge/interior block split with BLOCK_M != BLOCK_N.
INTERPRET_BLOCKS = {
    "fwd": (64, 64),  # (BLOCK_M queries, BLOCK_N keys)
    "dkdv": (64, 64),  # (BLOCK_M queries per step, BLOCK_N keys per program)
    "dq": (64, 64),  # (BLOCK_M queries per program, BLOCK_N keys per step)
}
# Block-sparse under the interpreter: None = min(64, index block) for both tiles; tests set a
# dict like INTERPRET_BLOCKS to exercise sub-tiles (tiles must divide the index block).
INTERPRET_SPARSE_BLOCKS: dict[str, tuple[int, int]] | None = None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def alloc_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised buffer with x's shape (and x's layout when x is dense)."""
    out = torch.empty_like(x, dtype=dtype)
    if _POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised contiguous buffer (NaN-filled when poisoning)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1); plain Python: these run on every call, and
    ``triton.next_power_of_2`` (a constexpr function) costs microseconds each on the host."""
    return 1 << (n - 1).bit_length()


def head_dim_block(head_dim: int) -> int:
    """BLOCK_D: head dim padded to a power of two (>= 16 so tl.dot accepts it)."""
    return max(16, next_power_of_2(head_dim))


def length_bucket(n: int) -> int:
    """Autotune key for a sequence length: next power of two, so N=1000 and N=1024 share one tuning."""
    return next_power_of_2(max(n, 16))


def window_bucket(w: int | None) -> int:
    """Autotune key for a window extent: -1 when unbounded, else next power of two of w + 1."""
    return -1 if w is None else next_power_of_2(w + 1)


def stride_last_one(x: torch.Tensor) -> torch.Tensor:
    """The kernels index the head dim with stride 1; copy only when that is not already so."""
    return x if x.stride(-1) == 1 else x.contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use 3xTF32 tensor-core dots (about fp32 accuracy; plain "ieee" FMA dots spill
    registers heavily on sm_90). Ignored for 16-bit inputs and by the interpreter."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def smem_bytes(block_rows: int, block_cols: int, block_d: int, stages: int, elem: int = 2) -> int:
    """Rough shared-memory estimate: one resident tile plus two streamed tiles per stage."""
    return (block_rows * block_d + 2 * block_cols * block_d * stages) * elem


# Autotuning: each candidate config is timed for AUTOTUNE_WARMUP_MS + AUTOTUNE_REP_MS (Triton's
# default is 25 + 100 ms, which makes a first call with many configs slow); the winners are kept
# in Triton's on-disk cache (``cache_results``) so later processes with the same key skip timing.
AUTOTUNE_WARMUP_MS = 5
AUTOTUNE_REP_MS = 25


def shape_window_args(q: torch.Tensor, k: torch.Tensor, scale: float, window_left: int | None,
                      window_right: int | None, interp: bool, sink: int = 0, sink_causal: bool = False,
                      softcap: float | None = None) -> dict:
    """Kernel arguments every flash kernel takes alike (forward, dK/dV, dQ): heads, lengths, the
    window, the log2-domain score scale, autotune keys, head-dim constexprs, precision, and the
    sink / soft-cap arguments (``capped_scores``)."""
    _, hq, n_q, head_dim = q.shape
    _, hkv, n_k, _ = k.shape
    return dict(
        Hq=hq, Hkv=hkv, Nq=n_q, Nk=n_k,
        window_left=window_left or 0, window_right=window_right or 0, qk_scale=scale * LOG2E,
        NQ_KEY=length_bucket(n_q), NK_KEY=length_bucket(n_k),
        WL_KEY=window_bucket(window_left), WR_KEY=window_bucket(window_right),
        HEAD_DIM=head_dim, BLOCK_D=head_dim_block(head_dim),
        HAS_WL=window_left is not None, HAS_WR=window_right is not None,
        UPCAST=interp and q.dtype != torch.float32, DOT_PREC=dot_precision(q.dtype),
        sink=sink, cap_in=scale / softcap if softcap else 0.0, cap_out=softcap * LOG2E if softcap else 0.0,
        HAS_SINK=sink > 0, SINK_CAUSAL=bool(sink_causal), SOFTCAP=softcap is not None,
    )  # fmt: skip


def screened(config: tuple, table: dict, block_d: int, elem: int, index_block: int) -> bool:
    """Whether ``config`` may launch: dense (``index_block == 0``) 16-bit launches at a head-dim
    block listed in ``table`` (BLOCK_D -> configs screened offline for sm_90) take only its
    configs; everything else is not restricted here."""
    allowed = table.get(block_d) if index_block == 0 and elem == 2 else None
    return allowed is None or config in allowed


def autotune_bench(kernel_call, quantiles):
    """The autotuner's timing function (``triton.autotune(do_bench=...)``)."""
    return triton.testing.do_bench(kernel_call, warmup=AUTOTUNE_WARMUP_MS, rep=AUTOTUNE_REP_MS, quantiles=quantiles)


def autotuned(kernel, configs, key, prune):
    """``triton.autotune`` over ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tuples."""
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in configs],
        key=key,
        prune_configs_by={"early_config_prune": prune},
        do_bench=autotune_bench,
        cache_results=True,
    )(kernel)


# ----------------------------------------------------------------------------- lean launch

# The lean launch path of the autotuned dense / window kernels (no block-sparse index, no
# documents): the first call of a static key goes through ``Autotuner.run`` as before and records
# the config it chose and the kernel's argument list in signature order; later calls with that key
# fill in their tensors and launch the plain JIT kernel with that config (no ``Autotuner.run``, no
# kwargs dict, no ``launch_args``). Triton's own argument binder still runs on every launch.
# False: every call takes the plain path (``launch_args`` + ``Autotuner.run``), for old-vs-new
# host-overhead comparisons on a GPU.
LEAN_LAUNCH = True
_LEAN_MAX_ENTRIES = 1024  # a bound on the cache when shapes keep changing (it is then cleared)
_LEAN: dict[tuple, tuple] = {}


def lean_launch(tuned, key: tuple, tensors: tuple, roles: dict, build, grid) -> None:
    """Launch ``tuned`` (a ``triton.autotune`` of a JIT kernel) for the call whose tensors are
    ``tensors``.

    key: everything the non-tensor arguments depend on (shapes, strides, dtype, scale, window,
        sink, soft-cap; the caller's choice), plus a kernel name.
    roles: kernel argument name -> index into ``tensors`` of every tensor argument (dummy
        pointers included), checked against ``build()`` on the first call of a key.
    build(): (positional args, keyword args) as the plain path launches them, for this call.
    grid(block_m, block_n): the launch grid.
    """
    entry = _LEAN.get(key)
    if entry is None:
        args, kwargs = build()
        tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **kwargs)
        config = tuned.best_config  # what Autotuner.run just launched with for this key
        named = {**dict(zip(tuned.arg_names, args, strict=False)), **kwargs, **config.kwargs}  # args: a prefix
        template = [named[name] for name in tuned.fn.arg_names]
        slots = []
        for pos, name in enumerate(tuned.fn.arg_names):
            if isinstance(template[pos], torch.Tensor):
                index = roles.get(name)
                if index is None or template[pos] is not tensors[index]:
                    raise RuntimeError(f"lean launch: kernel argument {name} has no role in the call's tensors")
                template[pos] = None  # no reference to this call's tensors stays in the cache
                slots.append((pos, index))
        launch = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        if len(_LEAN) >= _LEAN_MAX_ENTRIES:
            _LEAN.clear()
        _LEAN[key] = (template, tuple(slots), grid(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]), launch)
        return
    template, slots, grid_size, launch = entry
    args = template.copy()
    for pos, index in slots:
        args[pos] = tensors[index]
    tuned.fn[grid_size](*args, **launch)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Index of the fixed config that launched, per (kernel, head-dim block, dtype size, ...) key.
_FIXED_CHOICE: dict[tuple, int] = {}


def launch_fixed(kernel, grid, args, kwargs, candidates, key) -> None:
    """Launch ``kernel`` with the first of ``candidates`` (BLOCK_M, BLOCK_N, warps, stages) whose
    compiled binary fits the device (shared memory is only known after compiling); the choice is
    remembered per ``key`` so every later call of that key runs the same config (deterministic).
    ``grid(block_m, block_n)`` gives the launch grid."""
    start = _FIXED_CHOICE.get(key, 0)
    for i in range(start, len(candidates)):
        bm, bn, warps, stages = candidates[i]
        try:
            kernel[grid(bm, bn)](
                *args, **kwargs, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages
            )
        except triton.runtime.errors.OutOfResources:
            if i == len(candidates) - 1:
                raise
            continue
        _FIXED_CHOICE[key] = i
        return


@triton.jit
def load_tile(
    ptrs,
    rows,
    n_rows,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Load a ``[len(rows), BLOCK_D]`` tile; rows >= n_rows (if CHECK_ROWS) and padded head-dim columns read 0."""
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(
                ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0
            )
    else:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    if UPCAST:  # the interpreter's bf16/fp16 arithmetic is wrong: compute in fp32 there
        x = x.to(tl.float32)
    return x


@triton.jit
def allowed_pairs(
    q_idx, k_idx, Nq, Nk, window_left, window_right, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr
):
    """Element mask for an edge block. q_idx / k_idx: broadcastable 2-D row / key indices."""
    q_pos = q_idx + (Nk - Nq)  # bottom-right aligned query position
    ok = (q_idx < Nq) & (k_idx < Nk)
    if HAS_WL:
        ok = ok & (k_idx >= q_pos - window_left)
    if HAS_WR:
        ok = ok & (k_idx <= q_pos + window_right)
    return ok


@triton.jit
def pair_mask(
    q_idx, k_idx, Nq, Nk, window_left, window_right,
    Lay_h,  # int8 [Mb, Kb] layout of this head (only read when LAYOUT_MASK)
    lay_kb,  # Kb: layout blocks per key row
    DocStart_b,  # int32 [Nk] document starts of this batch row (only read when DOCS)
    sink,  # keys j < sink are always allowed (only read when HAS_SINK)
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    LAYOUT_MASK: tl.constexpr, LAYOUT_BLOCK: tl.constexpr, DOCS: tl.constexpr,
    HAS_SINK: tl.constexpr, SINK_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Element mask of a masked block: ``allowed_pairs`` and, when the layout is finer than the
    index block (LAYOUT_MASK), the layout bit of each pair's (query block, key block); with
    HAS_SINK, OR the sink pairs ``j < sink`` (``j <= p`` too when SINK_CAUSAL); with DOCS, query
    and key in one document (their document starts are equal)."""
    ok = allowed_pairs(q_idx, k_idx, Nq, Nk, window_left, window_right, HAS_WL, HAS_WR)
    if LAYOUT_MASK:
        offs = (q_idx // LAYOUT_BLOCK).to(tl.int64) * lay_kb + k_idx // LAYOUT_BLOCK
        ok = ok & (tl.load(Lay_h + offs, mask=ok, other=0) != 0)
    if HAS_SINK:
        in_sink = (q_idx < Nq) & (k_idx < Nk) & (k_idx < sink)
        if SINK_CAUSAL:
            in_sink = in_sink & (k_idx <= q_idx + (Nk - Nq))
        ok = ok | in_sink
    if DOCS:  # loads of broadcastable shapes: one id per row, one per key
        q_doc = tl.load(DocStart_b + (q_idx + (Nk - Nq)), mask=q_idx < Nq, other=-1)
        k_doc = tl.load(DocStart_b + k_idx, mask=k_idx < Nk, other=-2)
        ok = ok & (q_doc == k_doc)
    return ok


@triton.jit
def capped_scores(qk, cap_in, cap_out):
    """Soft-capped scores in the log2 domain: ``cap_out * tanh(qk * cap_in)`` with
    ``cap_in = scale / c`` and ``cap_out = c * log2(e)``. tanh(x) = 1 - 2 / (exp(2x) + 1)
    (exact at both tails: exp overflow gives 1, underflow -1)."""
    t = 1.0 - 2.0 / (tl.math.exp2(qk * (cap_in * 2.8853900817779268)) + 1.0)  # 2 * log2(e)
    return t * cap_out


@triton.jit
def sparse_tile_start(Idx, it, BLOCK: tl.constexpr, INDEX_BLOCK: tl.constexpr):
    """Token offset of step ``it`` through an index list whose entries (block numbers of
    INDEX_BLOCK tokens) are each split into ``INDEX_BLOCK // BLOCK`` tiles of BLOCK tokens."""
    return (
        tl.load(Idx + it // (INDEX_BLOCK // BLOCK)) * INDEX_BLOCK
        + (it % (INDEX_BLOCK // BLOCK)) * BLOCK
    )


@triton.jit
def sparse_bounds(Bounds, block):
    """(start, mid, end) of one index row: entries [start, mid) are masked, [mid, end) full."""
    ptr = Bounds + block * 3
    return tl.load(ptr), tl.load(ptr + 1), tl.load(ptr + 2)


@triton.jit
def kv_blocks_for_q_block(
    start_m,
    Nq,
    Nk,
    window_left,
    window_right,
    DocStart_b,  # int32 [Nk] of this batch row (only read when DOCS)
    DocEnd_b,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    DOCS: tl.constexpr,
):
    """Key range for query rows [start_m, start_m + BLOCK_M) as ``lo <= mid_lo <= mid_hi <= hi``.

    [lo, mid_lo) and [mid_hi, hi) are edge blocks (need ``pair_mask``); [mid_lo, mid_hi)
    are full blocks where every valid query row may see every key. lo, mid_lo, mid_hi are
    multiples of BLOCK_N (or equal hi). Everything clamped to >= 0 before integer division.
    With DOCS the range is clipped to the documents of the rows (module docstring).
    """
    shift = Nk - Nq
    p_min = start_m + shift  # position of the first row
    p_max = tl.minimum(start_m + BLOCK_M, Nq) - 1 + shift  # position of the last valid row
    lo = Nk * 0
    full_lo = Nk * 0
    if HAS_WL:  # j >= p - wl
        lo = tl.maximum(p_min - window_left, 0) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(p_max - window_left, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    hi = Nk + 0
    full_end = Nk + 0
    if HAS_WR:  # j <= p + wr
        hi = tl.minimum(p_max + window_right + 1, Nk)
        full_end = tl.minimum(p_min + window_right + 1, Nk)
    if DOCS:  # keys of the rows' documents; full only inside a document holding every row
        lo = tl.maximum(lo, tl.load(DocStart_b + p_min) // BLOCK_N * BLOCK_N)
        hi = tl.minimum(hi, tl.load(DocEnd_b + p_max))
        full_lo = tl.maximum(full_lo, (tl.load(DocStart_b + p_max) + BLOCK_N - 1) // BLOCK_N * BLOCK_N)
        full_end = tl.minimum(full_end, tl.load(DocEnd_b + p_min))
    full_hi = tl.maximum(full_end, 0) // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), tl.maximum(hi, lo))
    mid_hi = tl.maximum(tl.minimum(full_hi, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def q_blocks_for_kv_block(
    start_n,
    Nq,
    Nk,
    window_left,
    window_right,
    DocStart_b,  # int32 [Nk] of this batch row (only read when DOCS)
    DocEnd_b,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    DOCS: tl.constexpr,
):
    """Query-row range that can see keys [start_n, start_n + BLOCK_N), split like
    ``kv_blocks_for_q_block`` (multiples of BLOCK_M; full blocks have all rows < Nq); with
    DOCS clipped to the rows whose positions lie in the keys' documents."""
    shift = Nk - Nq
    k_last = tl.minimum(start_n + BLOCK_N, Nk) - 1
    lo = Nq * 0
    full_lo = Nq * 0
    if HAS_WR:  # key j seen from p >= j - wr
        lo = tl.maximum(start_n - window_right - shift, 0) // BLOCK_M * BLOCK_M
        full_lo = (
            (tl.maximum(start_n + BLOCK_N - 1 - window_right - shift, 0) + BLOCK_M - 1)
            // BLOCK_M
            * BLOCK_M
        )
    hi = Nq + 0
    full_end = Nq + 0
    if HAS_WL:  # key j seen from p <= j + wl
        hi = tl.minimum(k_last + window_left - shift + 1, Nq)
        full_end = tl.minimum(start_n + window_left - shift + 1, Nq)
    if DOCS:  # rows at positions in the keys' documents; full only inside one document
        lo = tl.maximum(lo, tl.maximum(tl.load(DocStart_b + start_n) - shift, 0) // BLOCK_M * BLOCK_M)
        hi = tl.minimum(hi, tl.load(DocEnd_b + k_last) - shift)
        full_lo = tl.maximum(
            full_lo,
            (tl.maximum(tl.load(DocStart_b + k_last) - shift, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M,
        )
        full_end = tl.minimum(full_end, tl.load(DocEnd_b + start_n) - shift)
    full_hi = tl.maximum(full_end, 0) // BLOCK_M * BLOCK_M
    full_hi = tl.where(start_n + BLOCK_N > Nk, 0, full_hi)  # a ragged last key block is never full
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), tl.maximum(hi, lo))
    mid_hi = tl.maximum(tl.minimum(full_hi, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi
