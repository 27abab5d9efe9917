"""`python -m attnlab.viz`: draw a spec's block layout and token mask as a PNG.

python -m attnlab.viz --pattern bigbird --causal --n 1024 --block-size 64 --out bigbird.png
python -m attnlab.viz --pattern random --density 0.3 --heads 4 --seed 1
python -m attnlab.viz --kind sliding_window --window 64 --causal --n 256
python -m attnlab.viz --pattern longformer --window 100,100

Bad arguments print one line ``error: ...`` naming the option and exit with status 2.
"""

from __future__ import annotations

import argparse
import re

import torch

from attnlab.attention.spec import KINDS, PATTERNS, AttentionSpec
from attnlab.errors import ArgumentParser, UserInputError, print_error
from attnlab.viz.masks import plot_spec

MAX_N = 8192  # the token mask is drawn N x N: beyond this the PNG shows nothing more, memory grows as N^2


def _window(text: str):
    """'256' -> 256, '5,3' -> (5, 3)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--window {text!r} must be an int W or a pair 'LEFT,RIGHT' of ints"
        ) from None
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 2:
        return tuple(vals)
    raise argparse.ArgumentTypeError(f"--window {text!r} must be an int W or a pair 'LEFT,RIGHT'")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m attnlab.viz",
        description="Draw an attention spec's block layout and token mask.",
    )
    p.add_argument("--kind", default="block_sparse", choices=[k for k in KINDS if k != "custom"],
                   help="custom masks need a Python mask_mod: call attnlab.viz.masks.plot_spec")
    p.add_argument(
        "--pattern",
        default=None,
        choices=PATTERNS,
        help="block_sparse pattern (default: bigbird when --kind block_sparse)",
    )
    p.add_argument(
        "--block-size", type=int, default=None, help="tokens per layout block (default 64)"
    )
    p.add_argument("--causal", action="store_true")
    p.add_argument("--window", type=_window, default=None, help="W or LEFT,RIGHT (-1 = unbounded side)")
    p.add_argument("--sink", type=int, default=0, help="attention sinks: keys j < SINK always visible")
    p.add_argument("--top-k", type=int, default=None,
                   help="topk_blocks: key blocks per query block, selected for random Gaussian q, k drawn "
                        "with --seed (4 query heads, 1 kv head, head dim 16)")
    p.add_argument("--n", type=int, default=512, help="sequence length (Nq = Nk)")
    p.add_argument("--seed", type=int, default=0, help="random patterns (bigbird, random)")
    p.add_argument(
        "--heads", type=int, default=None, help="per-head random layouts (bigbird, random)"
    )
    p.add_argument("--local-blocks", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--global-blocks", type=int, default=None)
    p.add_argument("--random-blocks", type=int, default=None)
    p.add_argument("--density", type=float, default=None)
    p.add_argument("--out", default=None, help="PNG path (default: <spec name>.png)")
    return p


def spec_from_args(args: argparse.Namespace) -> AttentionSpec:
    kw = dict(kind=args.kind, causal=args.causal, window=args.window, sink=args.sink)
    if args.kind == "topk_blocks":
        kw.update(top_k=args.top_k, block_size=args.block_size)
    elif args.top_k is not None:
        raise ValueError(f"--top-k only applies to --kind topk_blocks, not {args.kind}")
    if args.kind == "block_sparse":
        kw.update(pattern=args.pattern or "bigbird", block_size=args.block_size, seed=args.seed)
        for name in (
            "heads",
            "local_blocks",
            "stride",
            "global_blocks",
            "random_blocks",
            "density",
        ):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
    else:
        extra = [
            f"--{n.replace('_', '-')}"
            for n in ("pattern", "block_size", "heads")
            if getattr(args, n) is not None and not (n == "block_size" and args.kind == "topk_blocks")
        ]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} only apply to --kind block_sparse, not {args.kind}"
            )
    return AttentionSpec(**kw)


def _file_name(spec: AttentionSpec) -> str:
    return "".join(c if c.isalnum() or c in "-_=" else "_" for c in spec.name).strip("_") + ".png"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not 1 <= args.n <= MAX_N:
            raise UserInputError(f"--n {args.n} is not allowed: a sequence length in [1, {MAX_N}]")
        try:
            spec = spec_from_args(args)
        except ValueError as err:  # AttentionSpec.<field>=...: lead with the option that set it
            field = re.match(r"AttentionSpec\.(\w+)=", str(err))
            option = f"--{field.group(1).replace('_', '-')}" if field else None
            if option and any(option in a.option_strings for a in parser()._actions):
                raise UserInputError(f"{option}: {err}") from err
            raise
        out = args.out or _file_name(spec)
        try:
            data = {}
            if spec.kind == "topk_blocks":  # a given input: random Gaussian q, k from --seed
                g = torch.Generator().manual_seed(args.seed)
                data = dict(q=torch.randn(1, 4, args.n, 16, generator=g), k=torch.randn(1, 1, args.n, 16, generator=g))
            out = plot_spec(spec, args.n, out, **data)
        except OSError as err:
            raise UserInputError(f"--out {out}: cannot write the PNG ({err.strerror or err})") from err
    except (ValueError, TypeError) as err:
        print_error(err)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
