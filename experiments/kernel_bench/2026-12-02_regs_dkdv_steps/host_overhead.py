"""Host (Python) cost of the flash launchers on a CPU machine, old path vs lean path.

    env -u TRITON_INTERPRET python experiments/kernel_bench/2026-12-02_regs_dkdv_steps/host_overhead.py

No GPU: the launchers run with CPU tensors and Triton's ``JITFunction.run`` replaced by
- ``noop``: returns at once (what is left is attnlab's launch path and ``Autotuner.run``), or
- ``binder``: Triton's own argument binder for sm_90 (``create_function_from_signature``, as a real
  launch runs it before looking up the compiled kernel), then returns. The lean path does not
  remove this part; it is the same in both paths.
The autotuners time with a constant fake timer (the first pruned config wins) and keep no disk
cache. ``common.LEAN_LAUNCH`` False is the path before 2026-12-02 (``launch_args`` +
``Autotuner.run`` on every call); True caches the chosen config and argument list per key.
Prints the median CPU microseconds of this process (``time.process_time``; the machine is shared,
so wall time would count other processes) per call over 7 repeats of 200 calls (after 20 warm-up
calls).
This is host time on this CPU, not GPU time; on a GPU the driver launch comes on top.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run with TRITON_INTERPRET unset: the interpreter takes the fixed-tile path, not the autotuned one")

import torch  # noqa: E402
import triton  # noqa: E402
from attnlab.kernels.flash import backward, common, forward  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

torch.set_num_threads(1)
BACKEND = make_backend(GPUTarget("cuda", 90, 32))
_BINDERS: dict = {}


def noop_run(self, *args, grid, warmup, **kwargs):
    return None


def binder_run(self, *args, grid, warmup, **kwargs):
    binder = _BINDERS.get(self)
    if binder is None:
        binder = _BINDERS[self] = create_function_from_signature(self.signature, self.params, BACKEND)
    kwargs["debug"] = False
    binder(*args, **kwargs)
    return None


def per_call_us(fn, calls=200, repeats=7, warmup=20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()  # CPU time of this process: the 2-core box is shared, wall time is not ours
        for _ in range(calls):
            fn()
        times.append((time.process_time() - t0) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    for tuned in (forward._fwd_kernel_autotuned, backward._dkdv_autotuned, backward._dq_autotuned):
        tuned.do_bench = lambda fn, quantiles: [1.0, 1.0, 1.0]
        tuned.cache_results = False
    b, h, n, d = 1, 16, 1024, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, d, generator=gen).to(torch.bfloat16) for _ in range(4))
    scale = d**-0.5
    out, lse = torch.randn_like(q), torch.zeros(b, h, n)  # stand-ins: no kernel runs
    cases = {
        "flash_fwd (causal)": lambda: forward.flash_fwd(q, k, v, scale, None, 0),
        "flash_bwd (causal)": lambda: backward.flash_bwd(do, q, k, v, out, lse, None, scale, None, 0),
        "flash_fwd (window 256, softcap)": lambda: forward.flash_fwd(q, k, v, scale, 255, 0, softcap=30.0),
    }
    print(f"triton {triton.__version__}, torch {torch.__version__}, B={b} H={h} N={n} D={d} bf16, CPU tensors")
    print(f"{'JITFunction.run':16s} {'launcher':32s} {'old us':>8s} {'lean us':>8s} {'saved us':>9s}")
    original = JITFunction.run
    try:
        for mode, run in (("noop", noop_run), ("binder (sm_90)", binder_run)):
            JITFunction.run = run
            for name, fn in cases.items():
                res = {}
                for lean in (False, True):
                    common.LEAN_LAUNCH = lean
                    common._LEAN.clear()
                    res[lean] = per_call_us(fn)
                print(f"{mode:16s} {name:32s} {res[False]:8.1f} {res[True]:8.1f} {res[False] - res[True]:9.1f}")
    finally:
        JITFunction.run = original
        common.LEAN_LAUNCH = True


if __name__ == "__main__":
    main()
