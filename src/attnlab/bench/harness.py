"""Run the benchmark grid and time each case: `run_benchmark(BenchConfig) -> list[BenchRow]`.

Legend: B batch, Hq / Hkv query / key-value heads, N sequence length (Nq = Nk), D head dim.

Per case (impl, spec, N, D, dtype, mode):

* ``fwd`` times ``attention(q, k, v)`` under ``no_grad``; ``bwd`` runs the forward once and
  times only ``out.backward(dout, retain_graph=True)``; ``fwd_bwd`` times both. Gradients
  are cleared between reps.
* CUDA: ``triton.testing.do_bench`` (median; it clears the L2 cache between reps). CPU: a
  warm-up, then repeated ``time.perf_counter`` timings, median.
* Peak memory (CUDA only, else NaN): ``max_memory_allocated`` over one forward (``fwd``)
  or forward + backward (``bwd``, ``fwd_bwd``), minus what was allocated before it (the
  inputs), in MiB.
* TFLOP/s from the mask-exact ``spec.flops(..., mode=mode)``; ``speedup_vs_<b>`` =
  baseline time / impl time for the same (spec, N, D, dtype, mode) from this run.

A case that cannot run (NotImplementedError, out of memory, unsupported dtype, any
exception) becomes a ``skipped`` row with the reason; the run goes on.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnlab.attention import AttentionSpec, attention
from attnlab.attention.triton_impl import interpreter_on
from attnlab.bench.config import DTYPES, SDPA_VARIANTS, SELECTION_IMPL, BenchConfig

__all__ = ["BenchConfig", "BenchRow", "run_benchmark"]

CPU_SDPA_BACKENDS = ("FLASH_ATTENTION", "MATH")  # the SDPA backends torch has CPU kernels for
_REASON_CHARS = 500
_TRIGGERED = re.compile(r"\(Triggered internally at [^)]*\)")


@dataclass
class BenchRow:
    """One case of the grid: measured (``status="ok"``) or ``"skipped"`` with a reason."""

    impl: str
    spec: str  # config name of the spec
    spec_repr: str  # repr(AttentionSpec): the exact mask
    n: int
    head_dim: int
    dtype: str
    mode: str
    batch: int
    heads: int
    kv_heads: int
    device: str
    status: str = "ok"
    reason: str = ""
    ms: float = math.nan  # median time per call
    tflops: float = math.nan  # mask-exact TFLOP/s
    peak_mib: float = math.nan  # CUDA only
    flops: int = 0
    speedups: dict[str, float] = field(default_factory=dict)  # baseline -> t_base / t_impl

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def case(self) -> tuple:
        """The key rows are compared on for ratios (everything but the impl)."""
        return (self.spec, self.n, self.head_dim, self.dtype, self.mode, self.batch, self.heads, self.kv_heads)


# ---------------------------------------------------------------------------- impls
def equal_documents(n: int, documents: int, device=None) -> torch.Tensor:
    """``cu_seqlens`` (int32 ``[documents + 1]``) splitting N tokens into `documents` documents
    whose lengths differ by at most one."""
    if not 1 <= documents <= n:
        raise ValueError(f"documents={documents} must be between 1 and the sequence length {n}")
    return torch.div(torch.arange(documents + 1) * n, documents, rounding_mode="floor").to(torch.int32).to(device)


def _impl_fn(impl: str, spec: AttentionSpec, cu_seqlens: torch.Tensor | None = None) -> Callable:
    """(q, k, v) -> out for an impl name, incl. the bench-only SDPA backend variants and the
    topk_blocks selection alone."""
    if impl == SELECTION_IMPL:
        from attnlab.attention.triton_impl import topk_selection_index

        return lambda q, k, v: topk_selection_index(spec, q, k)
    if impl not in SDPA_VARIANTS:
        return lambda q, k, v: attention(q, k, v, spec, impl=impl, cu_seqlens=cu_seqlens)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_VARIANTS[impl])

    def run(q, k, v):
        with sdpa_kernel(backend):
            return attention(q, k, v, spec, impl="sdpa", cu_seqlens=cu_seqlens)

    return run


def _why_not_up_front(impl: str, device: torch.device, spec: AttentionSpec, mode: str) -> str | None:
    """Reasons known without running: no CPU kernel, timing the Triton interpreter, or the
    selection alone where there is none (another kind) or no backward to time."""
    if impl == SELECTION_IMPL and (spec.kind != "topk_blocks" or mode != "fwd"):
        return f"{SELECTION_IMPL} times kind='topk_blocks' selections in mode fwd only"
    if impl in SDPA_VARIANTS and device.type == "cpu" and SDPA_VARIANTS[impl] not in CPU_SDPA_BACKENDS:
        return f"torch SDPA has no {SDPA_VARIANTS[impl]} kernel on cpu (CUDA only)"
    if impl == "triton" and interpreter_on():
        return "TRITON_INTERPRET=1: the Triton interpreter is for correctness, its timings mean nothing"
    return None


def _reason(err: BaseException, caught: list | None = None) -> str:
    """One line: the exception type and message, plus torch's warnings (why SDPA refused).

    Long messages keep their head and tail (a Triton CompilationError puts the source first
    and the actual error last)."""
    msg = " ".join(str(err).split()) or "(no message)"
    if isinstance(err, torch.cuda.OutOfMemoryError) and "out of memory" not in msg.lower():
        msg = "CUDA out of memory: " + msg
    text = f"{type(err).__name__}: {msg}"
    notes = []
    for w in caught or ():
        note = " ".join(_TRIGGERED.sub("", str(w.message)).split())
        # "X kernel not used because:" headers and "X has been runtime disabled" (we pinned
        # one backend) say nothing; the reasons are the other lines.
        if note and not note.endswith("because:") and "runtime disabled" not in note and note not in notes:
            notes.append(note)
    if notes:
        text += " [torch: " + " | ".join(notes) + "]"
    if len(text) <= _REASON_CHARS:
        return text
    head = _REASON_CHARS // 3
    return text[:head] + " ... " + text[-(_REASON_CHARS - head - 5):]


# ---------------------------------------------------------------------------- timing
def _clear_grads(tensors) -> None:
    for t in tensors:
        t.grad = None


def _time_cpu(step: Callable, grads: list, warmup_ms: float, rep_ms: float, min_reps: int = 5) -> float:
    """Median ms of `step` on CPU: estimate, warm up ~warmup_ms, then time ~rep_ms (>= min_reps)."""
    _clear_grads(grads)
    t0 = time.perf_counter()
    step()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-4)
    for _ in range(min(1000, max(1, int(warmup_ms / estimate_ms)))):
        _clear_grads(grads)
        step()
    times = []
    for _ in range(min(10_000, max(min_reps, int(rep_ms / estimate_ms)))):
        _clear_grads(grads)
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _time_cuda(step: Callable, grads: list, warmup_ms: float, rep_ms: float) -> float:
    """Median ms of `step` on CUDA via triton's do_bench (CUDA events if triton is missing)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(step, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads, return_mode="median"))
    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        step()
    times = []
    for _ in range(max(5, int(rep_ms / estimate_ms))):
        _clear_grads(grads)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _measure(fn: Callable, q, k, v, mode: str, cfg: BenchConfig, device: torch.device,
             caught: list) -> tuple[float, float]:
    """(median ms, peak MiB or NaN) of one case. Raises whatever the impl raises; the
    warnings of the first call (torch says there why an SDPA backend refused) go to `caught`."""
    grads = [q, k, v] if mode != "fwd" else []
    for t in grads:
        t.requires_grad_(True)
    dout = None if mode == "fwd" else torch.randn_like(q)

    def forward():
        if mode == "fwd":
            with torch.no_grad():
                return fn(q, k, v)
        return fn(q, k, v)

    def one_call():  # what a run of this mode needs from scratch (the memory probe)
        out = forward()
        if dout is not None:
            out.backward(dout)
        _clear_grads(grads)

    with warnings.catch_warnings(record=True) as first_warnings:
        warnings.simplefilter("always")
        try:
            one_call()  # first call: compiles flex, builds and caches masks; not timed
        finally:
            caught.extend(first_warnings)
    peak_mib = math.nan
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        one_call()
        torch.cuda.synchronize(device)
        peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20

    if mode == "bwd":
        out = forward()
        step = lambda: out.backward(dout, retain_graph=True)
    elif mode == "fwd_bwd":
        step = lambda: forward().backward(dout)
    else:
        step = forward
    if device.type == "cuda":
        ms = _time_cuda(step, grads, cfg.warmup_ms, cfg.rep_ms)
    else:
        ms = _time_cpu(step, grads, cfg.warmup_ms, cfg.rep_ms)
    return ms, peak_mib


def _inputs(cfg: BenchConfig, n: int, d: int, dtype: torch.dtype, device: torch.device):
    """q [B, Hq, N, D], k / v [B, Hkv, N, D], the same for every impl of a case."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    kw = dict(generator=gen, device=device, dtype=dtype)
    q = torch.randn(cfg.batch, cfg.heads, n, d, **kw)
    k = torch.randn(cfg.batch, cfg.kv_heads, n, d, **kw)
    v = torch.randn(cfg.batch, cfg.kv_heads, n, d, **kw)
    return q, k, v


def _run_case(row: BenchRow, spec: AttentionSpec, cfg: BenchConfig, device: torch.device,
              documents: int | None = None) -> None:
    """Fill `row` with a measurement, or mark it skipped with the reason."""
    reason = _why_not_up_front(row.impl, device, spec, row.mode)
    if reason is not None:
        row.status, row.reason = "skipped", reason
        return
    caught: list = []
    try:
        q, k, v = _inputs(cfg, row.n, row.head_dim, DTYPES[row.dtype], device)
        cu = None if documents is None else equal_documents(row.n, documents, device)
        fn = _impl_fn(row.impl, spec) if cu is None else _impl_fn(row.impl, spec, cu)
        ms, peak = _measure(fn, q, k, v, row.mode, cfg, device, caught)
    except Exception as err:  # a case that cannot run is reported, never fatal
        row.status, row.reason = "skipped", _reason(err, caught)
        return
    finally:
        q = k = v = None
        _free_memory(device)  # an OOM must not poison the next cases
    row.ms, row.peak_mib = ms, peak
    if row.impl == SELECTION_IMPL:  # no attention pairs: no FLOPs to rate it by
        row.flops = 0
    row.tflops = row.flops / (ms * 1e9) if ms > 0 else math.nan


@contextlib.contextmanager
def _compile_settings(device: torch.device, modes):
    """torch.compile settings for the run (CUDA only, where `flex` is compiled):

    * `flex` is compiled per shape; past dynamo's recompile limit it would silently fall
      back to eager (slow, N x N memory), so the limit is raised.
    * ``bwd`` times ``out.backward(retain_graph=True)``, which compiled backwards with
      donated buffers refuse; donated buffers are turned off when ``bwd`` is in the modes
      (this can raise flex's backward memory a little in every mode of that run).
    """
    if device.type != "cuda":
        yield
        return
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    limits = {name: 10_000 for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                        "accumulated_cache_size_limit") if hasattr(dynamo_config, name)}
    donate = {"donated_buffer": False} if "bwd" in modes and hasattr(functorch_config, "donated_buffer") else {}
    with dynamo_config.patch(**limits), functorch_config.patch(**donate):
        yield


def add_speedups(rows: list[BenchRow], baselines) -> None:
    """Set ``row.speedups[b] = t_b / t_row`` from the ok rows of baseline b (NaN if b was skipped)."""
    times = {(r.impl, r.case): r.ms for r in rows if r.ok}
    for row in rows:
        if not row.ok:
            continue
        for base in baselines:
            t_base = times.get((base, row.case))
            row.speedups[base] = t_base / row.ms if t_base is not None else math.nan


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] | None = None,
                  on_row: Callable[[list[BenchRow]], None] | None = None) -> list[BenchRow]:
    """Time every case of `cfg`'s grid; returns one `BenchRow` per case (ok or skipped).

    Cases run spec -> dtype -> D -> N -> mode -> impl, so an impl and its baselines are
    timed back to back. `log` (e.g. ``print``) gets one line per case; `on_row` gets the
    rows so far (ratios filled in) after every case, e.g. to save them as they come, so a
    run stopped part-way keeps what it measured.
    """
    if not isinstance(cfg, BenchConfig):
        raise ValueError(f"run_benchmark needs a BenchConfig, got {type(cfg).__name__}")
    device = cfg.resolved_device()
    impls = cfg.all_impls
    cases = list(itertools.product(cfg.named_specs, cfg.dtypes, cfg.head_dims, cfg.seq_lens, cfg.modes))
    flops_memo: dict[tuple, int] = {}  # (spec, N, D, mode) -> FLOPs: counting pairs is slow at long N
    rows: list[BenchRow] = []
    with _compile_settings(device, cfg.modes):
        for (spec_name, spec), dtype, d, n, mode in cases:
            key = (spec_name, n, d, mode)
            docs = cfg.documents(spec_name)
            if key not in flops_memo:
                cu = None if docs is None else equal_documents(n, docs)
                flops_memo[key] = spec.flops(batch=cfg.batch, heads=cfg.heads, n_q=n, n_k=n, head_dim=d, mode=mode,
                                             cu_seqlens=cu)
            for impl in impls:
                spec_repr = repr(spec) if docs is None else f"{spec!r} + {docs} documents"
                row = BenchRow(
                    impl=impl, spec=spec_name, spec_repr=spec_repr, n=n, head_dim=d, dtype=dtype, mode=mode,
                    batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads, device=str(device),
                    flops=flops_memo[key],
                )
                _run_case(row, spec, cfg, device, docs)
                rows.append(row)
                if log is not None:
                    log(_progress_line(len(rows), cfg.num_cases, row))
                if on_row is not None:
                    add_speedups(rows, cfg.ratio_baselines)
                    on_row(rows)
    add_speedups(rows, cfg.ratio_baselines)
    return rows


def _progress_line(i: int, total: int, row: BenchRow) -> str:
    head = f"[{i}/{total}] {row.impl:<14} {row.spec} N={row.n} D={row.head_dim} {row.dtype} {row.mode}"
    if row.ok:
        return f"{head}: {row.ms:.3f} ms, {row.tflops:.3g} TFLOP/s"
    return f"{head}: skipped ({row.reason})"
