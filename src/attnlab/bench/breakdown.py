"""Per-kernel CUDA-event breakdown of the flash path: forward, backward preprocess, dK/dV, dQ.

    python -m attnlab.bench.breakdown --out DIR [--seq-len 16384] [--head-dims 64 128]
        [--batch 4] [--heads 16] [--dtype bfloat16] [--reps 10] [--warmup 2]

Causal dense attention. Calls the launchers ``flash_fwd`` and ``flash_bwd`` (kernels/flash)
directly, autotuned as ``flash_attention`` runs them, and times every Triton kernel they
launch with a pair of CUDA events recorded by Triton's launch hooks
(``triton.knobs.runtime.launch_enter_hook`` / ``launch_exit_hook``). The table therefore
follows the kernels as they are: today ``_fwd_kernel``, ``_bwd_preprocess``,
``_bwd_dkdv_kernel``, ``_bwd_dq_kernel``; a fused or renamed kernel shows up under its own
name. Events around each launcher call give the GPU span of the whole call; the row
``host gaps`` (calls minus kernels) is time the GPU waited for the host between launches.

Rows: per head dim, one per kernel (median ms per call over the reps, launches per call,
share of all kernel time), the two calls, and TFLOP/s of the forward kernel and of each call
from the mask-exact count (4 D per allowed pair forward, 2.5x that backward). Written to
DIR/breakdown.csv and DIR/breakdown.md after every head dim. CUDA only.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

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

COLUMNS = ("n", "head_dim", "dtype", "batch", "heads", "stage", "kernel", "launches", "ms", "share", "tflops",
           "status", "reason")
# Substrings of Triton kernel names -> stage label; first match wins (dkdv before dq).
STAGES = (("preprocess", "bwd preprocess"), ("dkdv", "bwd dK/dV"), ("dq", "bwd dQ"), ("fwd", "fwd"))
FWD_CALL, BWD_CALL, GAPS = "fwd call", "bwd call", "host gaps"


@dataclass(frozen=True)
class BreakdownConfig:
    seq_len: int = 16384
    head_dims: tuple[int, ...] = (64, 128)
    batch: int = 4
    heads: int = 16
    dtype: str = "bfloat16"
    reps: int = 10
    warmup: int = 2  # untimed fwd+bwd calls first: they compile and autotune

    def __post_init__(self):
        for name in ("seq_len", "batch", "heads", "reps", "warmup"):
            check_positive_int(f"breakdown.{name}", getattr(self, name))
        object.__setattr__(self, "head_dims", check_head_dims("breakdown.head_dims", self.head_dims))
        check_dtype("breakdown.dtype", self.dtype)


def stage_of(kernel: str) -> str:
    """The stage label of a Triton kernel name (``_bwd_dq_kernel`` -> ``bwd dQ``); unknown
    names are their own label."""
    low = kernel.lower()
    return next((label for key, label in STAGES if key in low), kernel)


def causal_flops(batch: int, heads: int, n: int, head_dim: int, mode: str) -> int:
    """`AttentionSpec(kind="dense", causal=True).flops` for Nq = Nk = n in closed form
    (counting pairs is slow at 16k): n (n + 1) / 2 pairs, 4 D each forward, 2.5x backward."""
    fwd = 4 * head_dim * (n * (n + 1) // 2) * batch * heads
    return {"fwd": fwd, "bwd": fwd * 5 // 2}[mode]


def _launch_hooks():
    try:
        from triton import knobs

        return knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    except (ImportError, AttributeError) as err:
        import triton

        raise RuntimeError(f"the breakdown needs Triton's launch hooks (triton.knobs.runtime, triton >= 3.4); "
                           f"triton {triton.__version__} has none") from err


class LaunchEvents:
    """Within the block, a CUDA event pair around every Triton kernel launch: ``launches`` is
    a list of (kernel name, start event, end event), in launch order."""

    def __init__(self):
        self.launches: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._open: list[tuple[str, torch.cuda.Event]] = []

    def _enter(self, metadata) -> None:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self._open.append((metadata.get()["name"], start))

    def _exit(self, metadata) -> None:
        name, start = self._open.pop()
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.launches.append((name, start, end))

    def __enter__(self) -> LaunchEvents:
        enter, exit_ = _launch_hooks()
        enter.add(self._enter)
        exit_.add(self._exit)
        return self

    def __exit__(self, *exc) -> None:
        enter, exit_ = _launch_hooks()
        enter.remove(self._enter)
        exit_.remove(self._exit)


def flash_launchers(q, k, v, scale: float):
    """(forward() -> (out, lse), backward(out, lse, dout) -> (dq, dk, dv)): the causal flash
    path's two launchers, called as ``FlashAttentionFunction`` calls them (autotuned)."""
    from attnlab.kernels.flash.backward import flash_bwd
    from attnlab.kernels.flash.forward import flash_fwd

    def forward():
        return flash_fwd(q, k, v, scale, None, 0, autotune=True)  # window_right=0: causal

    def backward(out, lse, dout):
        return flash_bwd(dout, q, k, v, out, lse, None, scale, None, 0, autotune=True)

    return forward, backward


def summarize(records: list[tuple[int, str, float]], reps: int) -> list[dict]:
    """Rows from (rep, kernel or call name, ms) records: per kernel the median over reps of
    its summed time in a rep, launches per rep and share of all kernel time; then the two
    calls and the host gaps (calls minus kernels, median over reps)."""
    per_rep: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    launches: dict[str, int] = defaultdict(int)
    for rep, name, ms in records:
        per_rep[name][rep] += ms
        launches[name] += 1
    kernels = [name for name in per_rep if name not in (FWD_CALL, BWD_CALL)]
    median = {name: statistics.median(per_rep[name].get(r, 0.0) for r in range(reps)) for name in per_rep}
    total = sum(median[name] for name in kernels)
    rows = [{"stage": stage_of(name), "kernel": name, "launches": launches[name] / reps, "ms": median[name],
             "share": median[name] / total if total > 0 else float("nan")} for name in kernels]
    for call in (FWD_CALL, BWD_CALL):
        if call in per_rep:
            rows.append({"stage": call, "kernel": "-", "launches": float("nan"), "ms": median[call]})
    if FWD_CALL in per_rep and BWD_CALL in per_rep:
        gaps = [per_rep[FWD_CALL][r] + per_rep[BWD_CALL][r] - sum(per_rep[k].get(r, 0.0) for k in kernels)
                for r in range(reps)]
        rows.append({"stage": GAPS, "kernel": "-", "launches": float("nan"), "ms": statistics.median(gaps)})
    return rows


def _add_tflops(rows: list[dict], cfg: BreakdownConfig, head_dim: int) -> None:
    """TFLOP/s of the forward kernel and of the two whole calls."""
    flops = {m: causal_flops(cfg.batch, cfg.heads, cfg.seq_len, head_dim, m) for m in ("fwd", "bwd")}
    for r in rows:
        mode = {"fwd": "fwd", FWD_CALL: "fwd", BWD_CALL: "bwd"}.get(r["stage"])
        if mode is not None and r["ms"] > 0:
            r["tflops"] = flops[mode] / (r["ms"] * 1e9)


def measure(cfg: BreakdownConfig, head_dim: int, device: torch.device) -> list[dict]:
    """The breakdown rows of one head dim (CUDA)."""
    dtype = check_dtype("breakdown.dtype", cfg.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (cfg.batch, cfg.heads, cfg.seq_len, head_dim)  # [B, H, N, D]
    q, k, v, dout = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(4))
    forward, backward = flash_launchers(q, k, v, head_dim**-0.5)
    for _ in range(cfg.warmup):
        backward(*forward(), dout)
    torch.cuda.synchronize(device)
    records: list[tuple[int, str, float]] = []
    for rep in range(cfg.reps):
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        with LaunchEvents() as events:
            marks[0].record()
            out, lse = forward()
            marks[1].record()
            backward(out, lse, dout)
            marks[2].record()
        torch.cuda.synchronize(device)
        records += [(rep, FWD_CALL, marks[0].elapsed_time(marks[1])), (rep, BWD_CALL, marks[1].elapsed_time(marks[2]))]
        records += [(rep, name, start.elapsed_time(end)) for name, start, end in events.launches]
    rows = summarize(records, cfg.reps)
    _add_tflops(rows, cfg, head_dim)
    return rows


def run(cfg: BreakdownConfig, out_dir: Path, log=print) -> list[dict]:
    """Every head dim of `cfg`; the table is rewritten after each. A head dim that fails
    (out of memory, a compile error) becomes one ``error`` row with the reason."""
    device = require_cuda("the kernel breakdown")
    common = {"n": cfg.seq_len, "dtype": cfg.dtype, "batch": cfg.batch, "heads": cfg.heads}
    title = (f"Flash path per kernel, causal, {cfg.dtype}, B={cfg.batch} H={cfg.heads} N={cfg.seq_len}, "
             f"{torch.cuda.get_device_name(device)}; median of {cfg.reps} reps (CUDA events per launch)")
    rows: list[dict] = []
    for head_dim in cfg.head_dims:
        try:
            got = [{**common, "head_dim": head_dim, **r, "status": "ok"} for r in measure(cfg, head_dim, device)]
        except Exception as err:  # recorded, never fatal: the next head dim still runs
            got = [{**common, "head_dim": head_dim, "stage": "-", "status": "error", "reason": reason(err)}]
        finally:
            free_memory(device)
        rows += got
        write_table(rows, COLUMNS, out_dir, "breakdown", title,
                    notes=[f"`{GAPS}`: fwd call + bwd call minus the kernels, i.e. GPU idle between launches."])
        for r in got:
            log(f"D={head_dim} {r['stage']:<15} {r.get('kernel', '-'):<18} " +
                (f"{r['ms']:.3f} ms" if r["status"] == "ok" else r["reason"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m attnlab.bench.breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for breakdown.csv / breakdown.md")
    parser.add_argument("--seq-len", type=int, default=BreakdownConfig.seq_len)
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(BreakdownConfig.head_dims))
    parser.add_argument("--batch", type=int, default=BreakdownConfig.batch)
    parser.add_argument("--heads", type=int, default=BreakdownConfig.heads)
    parser.add_argument("--dtype", default=BreakdownConfig.dtype)
    parser.add_argument("--reps", type=int, default=BreakdownConfig.reps)
    parser.add_argument("--warmup", type=int, default=BreakdownConfig.warmup)
    args = parser.parse_args(argv)

    def measure() -> list[dict]:
        cfg = BreakdownConfig(args.seq_len, tuple(args.head_dims), args.batch, args.heads, args.dtype, args.reps,
                              args.warmup)
        return run(cfg, args.out)

    return run_cli(measure, args.out / "breakdown.csv")


if __name__ == "__main__":
    raise SystemExit(main())
