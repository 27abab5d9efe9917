"""Host microseconds per fwd+bwd call at short N, eager and replayed from a CUDA graph.

    python -m attnlab.bench.host_overhead --out DIR [--seq-len 1024] [--head-dims 64 128]
        [--batch 4] [--heads 16] [--impls triton sdpa_flash] [--calls 100] [--device cuda]

One call is ``torch.autograd.grad(attention(q, k, v, causal, impl), (q, k, v), dout)``;
``sdpa_flash`` / ``sdpa_cudnn`` are SDPA pinned to one backend, as in `attnlab.bench`. Per
(head dim, impl, graphs): ``host_us`` is the time Python takes to issue one call (mean over
``calls`` back-to-back calls, before synchronising) and ``wall_us`` the time per call until the
GPU has finished them all. At N = 1k the GPU work is ~100 us, so ``wall_us`` is host-bound when
``host_us`` exceeds it. ``graphs=yes`` captures one call in a ``torch.cuda.CUDAGraph`` (static
inputs, warmed up on a side stream first) and times ``graph.replay()``; a capture that fails
is a row with status ``error`` and the error string, never a crash. Rows are written to
DIR/host_overhead.csv and .md as they come. ``--device cpu`` checks the harness only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.attention import AttentionSpec
from attnlab.bench.runs import (
    check_dtype,
    check_head_dims,
    check_positive_int,
    free_memory,
    reason,
    require_cuda,
    run_cli,
    write_table,
)
from attnlab.errors import ArgumentParser

COLUMNS = ("impl", "n", "head_dim", "dtype", "batch", "heads", "graphs", "status", "host_us", "wall_us", "calls",
           "reason")
IMPLS = ("triton", "sdpa", "sdpa_flash", "sdpa_cudnn", "flex")
CAUSAL = AttentionSpec(kind="dense", causal=True)
GRAPH_WARMUP = 3  # side-stream calls before capture (PyTorch's whole-network capture recipe)


@dataclass(frozen=True)
class HostConfig:
    seq_len: int = 1024
    head_dims: tuple[int, ...] = (64, 128)
    batch: int = 4
    heads: int = 16
    dtype: str = "bfloat16"
    impls: tuple[str, ...] = ("triton", "sdpa_flash")
    calls: int = 100
    warmup: int = 5  # eager calls before timing (compile, autotune)
    graphs: tuple[bool, ...] = (False, True)

    def __post_init__(self):
        for name in ("seq_len", "batch", "heads", "calls", "warmup"):
            check_positive_int(f"host_overhead.{name}", getattr(self, name))
        object.__setattr__(self, "head_dims", check_head_dims("host_overhead.head_dims", self.head_dims))
        check_dtype("host_overhead.dtype", self.dtype)
        if not self.impls or any(i not in IMPLS for i in self.impls):
            raise ValueError(f"host_overhead.impls={list(self.impls)!r}: allowed: {', '.join(IMPLS)}")
        if not self.graphs or any(not isinstance(g, bool) for g in self.graphs):
            raise ValueError(f"host_overhead.graphs={self.graphs!r} must be a non-empty tuple of bools")


def fwd_bwd_call(impl: str, q, k, v, dout) -> Callable[[], tuple]:
    """One causal attention forward + backward; returns (dq, dk, dv) (nothing accumulates)."""
    from attnlab.bench.harness import _impl_fn  # the bench's impls, SDPA backend variants included

    attend = _impl_fn(impl, CAUSAL)
    return lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), dout)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable, calls: int, device: torch.device) -> tuple[float, float]:
    """(host_us, wall_us) per call over ``calls`` back-to-back calls."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    issued = time.perf_counter()
    _sync(device)
    done = time.perf_counter()
    return (issued - t0) / calls * 1e6, (done - t0) / calls * 1e6


def capture(call: Callable, device: torch.device) -> Callable[[], tuple]:
    """``call`` captured in a CUDA graph; returns its replay. Raises if capture fails."""
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need a CUDA device (got {device})")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = call()

    def replay():
        graph.replay()
        return static_out  # replays write into these: they live as long as the graph

    return replay


def measure(cfg: HostConfig, impl: str, head_dim: int, graphs: bool, device: torch.device) -> dict:
    """One row: ok with host_us / wall_us, or skipped / error with the reason."""
    row = {"impl": impl, "n": cfg.seq_len, "head_dim": head_dim, "dtype": cfg.dtype, "batch": cfg.batch,
           "heads": cfg.heads, "graphs": "yes" if graphs else "no", "calls": cfg.calls}
    if impl == "triton" and device.type != "cuda":
        return {**row, "status": "skipped", "reason": "the Triton kernels need CUDA (the interpreter's times mean nothing)"}
    dtype = check_dtype("host_overhead.dtype", cfg.dtype)
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        shape = (cfg.batch, cfg.heads, cfg.seq_len, head_dim)  # [B, H, N, D]
        q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_() for _ in range(3))
        call = fwd_bwd_call(impl, q, k, v, torch.randn(shape, generator=gen, device=device, dtype=dtype))
        for _ in range(cfg.warmup):
            call()
        host_us, wall_us = time_calls(capture(call, device) if graphs else call, cfg.calls, device)
    except Exception as err:  # a failed capture or an impl that cannot run: recorded, not fatal
        return {**row, "status": "error", "reason": reason(err)}
    finally:
        free_memory(device)
    return {**row, "status": "ok", "host_us": host_us, "wall_us": wall_us}


def run(cfg: HostConfig, out_dir: Path, device: torch.device, log=print) -> list[dict]:
    """Eager rows of every head dim first, then the graph rows (a failed capture cannot
    disturb an eager row); the table is rewritten after each row."""
    title = (f"Host overhead of causal fwd+bwd, {cfg.dtype}, B={cfg.batch} H={cfg.heads} N={cfg.seq_len}, "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, {cfg.calls} calls per row")
    rows: list[dict] = []
    for graphs in cfg.graphs:
        for head_dim in cfg.head_dims:
            for impl in cfg.impls:
                row = measure(cfg, impl, head_dim, graphs, device)
                rows.append(row)
                write_table(rows, COLUMNS, out_dir, "host_overhead", title,
                            notes=["host_us: issuing one call (Python, argument binding, launches); wall_us: per "
                                   "call until the GPU is done. graphs=yes: CUDA graph replay of one call."])
                log(f"{impl:<11} D={head_dim} graphs={row['graphs']}: " + (
                    f"host {row['host_us']:.1f} us, wall {row['wall_us']:.1f} us" if row["status"] == "ok"
                    else f"{row['status']} ({row['reason']})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m attnlab.bench.host_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for host_overhead.csv / .md")
    parser.add_argument("--seq-len", type=int, default=HostConfig.seq_len)
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HostConfig.head_dims))
    parser.add_argument("--batch", type=int, default=HostConfig.batch)
    parser.add_argument("--heads", type=int, default=HostConfig.heads)
    parser.add_argument("--dtype", default=HostConfig.dtype)
    parser.add_argument("--impls", nargs="+", default=list(HostConfig.impls), choices=IMPLS)
    parser.add_argument("--calls", type=int, default=HostConfig.calls)
    parser.add_argument("--warmup", type=int, default=HostConfig.warmup)
    parser.add_argument("--no-graphs", action="store_true", help="eager rows only")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: checks the harness only")
    args = parser.parse_args(argv)

    def measure() -> list[dict]:
        cfg = HostConfig(args.seq_len, tuple(args.head_dims), args.batch, args.heads, args.dtype, tuple(args.impls),
                         args.calls, args.warmup, (False,) if args.no_graphs else (False, True))
        device = require_cuda("host_overhead --device cuda") if args.device == "cuda" else torch.device("cpu")
        return run(cfg, args.out, device)

    return run_cli(measure, args.out / "host_overhead.csv")


if __name__ == "__main__":
    raise SystemExit(main())
