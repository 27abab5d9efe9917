"""Benchmark of flash_attention against PyTorch's SDPA (flash backend) and FlexAttention.

    python -m attnlab.kernels.flash.benchmark [--n 4096 8192] [--d 64 128] [--no-flex]

Prints one row per (shape, mask, pass): median milliseconds from ``triton.testing.do_bench``
and TFLOP/s from a mask-exact FLOP count (4·D per allowed (q, k) pair per head forward,
2.5x that for the backward), and max|out - ours|: how far each output is from ours.
Needs a CUDA device.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from .interface import flash_attention


def allowed_pairs(n: int, causal: bool, window_left: int | None) -> int:
    """Exact count of allowed (q, k) pairs for Nq = Nk = n."""
    if not causal:
        return (
            n * n
            if window_left is None
            else sum(min(window_left, i) + 1 + min(window_left, n - 1 - i) for i in range(n))
        )
    if window_left is None:
        return n * (n + 1) // 2
    return sum(min(window_left, i) + 1 for i in range(n))


def _flex_fn(n: int, causal: bool, window_left: int | None, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        ok = (q_idx >= 0) & (kv_idx >= 0)
        if causal:
            ok = ok & (kv_idx <= q_idx)
        if window_left is not None:
            ok = ok & (kv_idx >= q_idx - window_left)
        return ok

    block_mask = create_block_mask(mask_mod, None, None, n, n, device=device)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def _time(fn, backward: bool, q, k, v) -> float:
    if not backward:
        with torch.no_grad():
            return triton.testing.do_bench(lambda: fn(q, k, v), warmup=25, rep=100)
    out = fn(q, k, v)
    grad = torch.randn_like(out)

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(grad)

    return triton.testing.do_bench(step, warmup=25, rep=100)


def run(
    ns,
    ds,
    batch_tokens: int,
    heads: int,
    window: int,
    with_flex: bool,
    with_window: bool = True,
    deterministic: bool = False,
    dtype=torch.bfloat16,
):
    device = "cuda"
    print(
        f"{'N':>6} {'D':>4} {'mask':>10} {'pass':>8} | {'impl':>6} {'ms':>8} {'TFLOP/s':>8} {'|out-ours|':>10}"
    )
    for n in ns:
        for d in ds:
            batch = max(1, batch_tokens // n)
            for causal, wl in ((True, None), (True, window - 1))[: 2 if with_window else 1]:
                gen = torch.Generator(device=device).manual_seed(0)
                q, k, v = (
                    torch.randn(
                        batch, heads, n, d, device=device, dtype=dtype, generator=gen
                    ).requires_grad_()
                    for _ in range(3)
                )
                impls = {
                    "ours": lambda q, k, v, c=causal, wl=wl: flash_attention(
                        q, k, v, causal=c, window_left=wl
                    )
                }
                if wl is None:

                    def sdpa(q, k, v):
                        with torch.nn.attention.sdpa_kernel(
                            torch.nn.attention.SDPBackend.FLASH_ATTENTION
                        ):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

                    impls["sdpa"] = sdpa
                if with_flex:
                    impls["flex"] = _flex_fn(n, causal, wl, device)
                pairs = allowed_pairs(n, causal, wl)
                with torch.no_grad():
                    ref_out = impls["ours"](q, k, v).float()
                mask_name = "causal" if wl is None else f"win{window}"
                for backward in (False, True):
                    flops = 4.0 * batch * heads * pairs * d * (3.5 if backward else 1.0)
                    for name, fn in impls.items():
                        try:
                            ms = _time(fn, backward, q, k, v)
                            with torch.no_grad():
                                diff = (fn(q, k, v).float() - ref_out).abs().max().item()
                        except Exception as e:  # a baseline that cannot run this shape
                            print(
                                f"{n:>6} {d:>4} {mask_name:>10} {'fwd+bwd' if backward else 'fwd':>8} | {name:>6} failed: {type(e).__name__}: {e}"
                            )
                            continue
                        print(
                            f"{n:>6} {d:>4} {mask_name:>10} {'fwd+bwd' if backward else 'fwd':>8} | "
                            f"{name:>6} {ms:8.3f} {flops / ms * 1e-9:8.1f} {diff:10.2e}",
                            flush=True,
                        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-tokens", type=int, default=16384, help="B = batch_tokens // N")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument(
        "--window", type=int, default=256, help="Mistral-style window W (window_left = W - 1)"
    )
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--no-window", action="store_true", help="causal rows only")
    parser.add_argument(
        "--deterministic", action="store_true", help="fixed launch configs, no autotuning"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA device")
    run(
        args.n,
        args.d,
        args.batch_tokens,
        args.heads,
        args.window,
        not args.no_flex,
        not args.no_window,
        args.deterministic,
    )


if __name__ == "__main__":
    main()
