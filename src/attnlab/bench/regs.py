"""Offline sm_90 register / spill / shared-memory report of the flash kernels (no GPU needed).

    python -m attnlab.bench.regs [--head-dims 64 128] [--kernels fwd dkdv dq]
        [--masks causal swa full] [--options plain sink softcap] [--configs fitting|first|"BM,BN,W,S;..."]

For each kernel, head dim, mask, option and launch config it builds the kernel's arguments
with the launchers' own ``launch_args`` (kernels/flash/forward.py, backward.py: the same dict a
real launch passes, on CPU tensors of the right dtype and strides), binds them through Triton's
argument binder so the specialisation matches a CUDA launch, compiles for
``GPUTarget("cuda", 90, 32)`` (the third field is the warp size) and runs the ptxas bundled
with Triton (``ptxas -v --gpu-name=sm_90a``) on the PTX. ``CompiledKernel.n_regs`` /
``n_spills`` stay empty without a driver, so the numbers are parsed from ptxas' log.

Screen every kernel change with it before spending device time (`make regs`). About 3-30 s
per config on one core. Written against Triton 3.6's compiler internals (``ASTSource``,
``create_function_from_signature``); a Triton without them reports that and exits 2.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

MASKS = {"causal": (None, 0), "full": (None, None), "swa": (1023, 0)}  # (window_left, window_right)
OPTIONS = {"plain": {}, "sink": {"sink": 4, "sink_causal": True}, "softcap": {"softcap": 30.0}}
RE_REGS = re.compile(r"Used (\d+) registers")
RE_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Row:
    kernel: str
    head_dim: int
    mask: str
    option: str
    config: tuple[int, int, int, int]
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    smem: int | None = None
    error: str = ""

    def line(self) -> str:
        bm, bn, w, s = self.config
        head = f"{self.kernel:5s} {self.head_dim:4d} {self.mask:7s} {self.option:8s} {bm:4d} {bn:4d} {w:2d} {s:2d} |"
        if self.error:
            return f"{head} FAILED {self.error}"
        return f"{head} {self.regs:4d} {self.spill_stores:6d} {self.spill_loads:6d} {self.smem:7d}"


def kernel_inputs(kernel: str, head_dim: int, mask: str, option: str, dtype=torch.bfloat16):
    """(jit function, positional args, keyword args) of one kernel as its launcher builds them."""
    from attnlab.kernels.flash import backward, forward

    b, h, n = 1, 16, 256  # only dtypes, strides and alignment matter for the specialisation
    q = torch.empty(b, h, n, head_dim, dtype=dtype)
    k, v, out, do = (torch.empty_like(q) for _ in range(4))
    lse = torch.empty(b, h, n, dtype=torch.float32)
    wl, wr = MASKS[mask]
    extra = OPTIONS[option]
    scale = head_dim**-0.5
    if kernel == "fwd":
        return forward._fwd_kernel, (), forward.launch_args(q, k, v, out, lse, scale, wl, wr, **extra)
    dkdv_args, dkdv_kw, dq_args, dq_kw = backward.launch_args(
        q, k, v, do, lse, torch.empty_like(lse), q, k, v, scale, wl, wr, **extra
    )
    return (backward._bwd_dkdv_kernel, dkdv_args, dkdv_kw) if kernel == "dkdv" else (
        backward._bwd_dq_kernel, dq_args, dq_kw)  # fmt: skip


def candidate_configs(kernel: str, head_dim: int, which: str) -> list[tuple[int, int, int, int]]:
    """The configs the launcher could pick at this head dim (``fitting``), the first of them, or
    an explicit list ``BM,BN,W,S;...``."""
    from attnlab.kernels.flash import backward, forward
    from attnlab.kernels.flash.common import head_dim_block

    if which not in ("fitting", "first"):
        try:
            return [tuple(int(x) for x in c.split(",")) for c in which.split(";")]
        except ValueError:
            raise ValueError(f"--configs {which!r}: fitting, first or 'BM,BN,W,S;...'") from None
    block_d = head_dim_block(head_dim)
    if kernel == "fwd":
        cands = forward.fixed_fwd_configs(block_d)
    elif kernel == "dkdv":
        cands = backward._fitting(backward._DKDV_CONFIGS, backward._dkdv_fits, block_d)
    else:
        cands = backward._fitting(backward._DQ_CONFIGS, backward._dq_fits, block_d)
    return cands[:1] if which == "first" else cands


def compile_sm90(fn, args: tuple, kwargs: dict, config) -> Row:
    """Compile one launch for sm_90 and read ptxas' register / spill report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    bm, bn, warps, stages = config
    kw = dict(kwargs, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, opts, bound, spec, opts)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([triton.knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", ptx, "-o", ptx + ".o"],
                             capture_output=True, text=True).stderr  # fmt: skip
    regs, spill = RE_REGS.search(log), RE_SPILL.search(log)
    if regs is None or spill is None:
        raise RuntimeError(f"ptxas printed no register report: {log.strip()[:200]}")
    return Row("", 0, "", "", config, int(regs.group(1)), int(spill.group(2)), int(spill.group(3)),
               int(compiled.metadata.shared))  # fmt: skip


def report(kernels, head_dims, masks, options, configs: str, out=sys.stdout) -> list[Row]:
    rows = []
    print("kernel    D mask    option     BM   BN  W  S | regs spill_st spill_ld smem_B", file=out, flush=True)
    for d in head_dims:
        for name in kernels:
            for mask in masks:
                for option in options:
                    fn, args, kwargs = kernel_inputs(name, d, mask, option)
                    for cfg in candidate_configs(name, d, configs):
                        try:
                            row = compile_sm90(fn, args, kwargs, cfg)
                        except Exception as err:  # noqa: BLE001 - a config that fails is a row, not an abort
                            row = Row("", 0, "", "", cfg, error=f"{type(err).__name__}: {str(err)[:160]}")
                        row.kernel, row.head_dim, row.mask, row.option = name, d, mask, option
                        rows.append(row)
                        print(row.line(), file=out, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnlab.bench.regs", description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--kernels", nargs="+", default=["fwd", "dkdv", "dq"], choices=["fwd", "dkdv", "dq"])
    p.add_argument("--masks", nargs="+", default=["causal"], choices=list(MASKS))
    p.add_argument("--options", nargs="+", default=["plain"], choices=list(OPTIONS))
    p.add_argument("--configs", default="first", help="fitting | first | 'BM,BN,W,S;...'")
    args = p.parse_args(argv)
    bad = [d for d in args.head_dims if not 1 <= d <= 256]
    if bad:
        print(f"error: --head-dims {bad} not allowed: the kernels take 1..256", file=sys.stderr)
        return 2
    try:
        import triton.compiler  # noqa: F401
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
    except ImportError as err:
        print(f"error: this Triton lacks the compiler internals the report uses ({err}); it targets Triton 3.6",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        for kernel in args.kernels:
            for d in args.head_dims:
                candidate_configs(kernel, d, args.configs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = report(args.kernels, args.head_dims, args.masks, args.options, args.configs)
    return 1 if all(r.error for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["MASKS", "OPTIONS", "Row", "candidate_configs", "compile_sm90", "kernel_inputs", "main"]
