"""End-to-end training throughput: tokens/s of the shared transformer with each attention impl.

    python -m attnlab.bench.e2e --out DIR [--seq-len 16384] [--layers 12] [--d-model 768]
        [--heads 12] [--vocab 50304] [--batch 1] [--impls triton sdpa]
        [--attention dense swa1024] [--warmup-steps 3] [--steps 10] [--device cuda]

The default model is ~162M parameters (Llama-style: 12 x 768, 12 heads of 64, SwiGLU 2048,
untied embeddings, vocab 50,304) at N = 16k, batch 1: `attnlab.model.Transformer` with
``attn_impl`` set per run. A step is bf16 autocast forward + cross-entropy, backward, fused
AdamW (``attnlab.train.optim.param_groups``) on random tokens: the step of
`attnlab.train.fit_loop` without its data, logging and checkpoints, which this timing does
not want. ``warmup_steps`` untimed steps (compile, autotune), then ``steps`` timed ones,
synchronised: tokens/s = batch * N * steps / elapsed. Attention names: ``dense`` (causal) or
``swa<W>`` (``AttentionSpec(kind="sliding_window", window=W)``, causal), every layer alike.

Each (attention, impl) runs in its own try: an out-of-memory or any error is a row with
status ``error`` and the reason, and the next configuration still runs. Rows go to
DIR/e2e.csv and DIR/e2e.md as they come, with ``triton / sdpa`` ratios per attention (the
issue's targets: >= 1.1x dense, >= 1.7x window 1024). ``--device cpu`` checks the harness.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.attention import IMPLS
from attnlab.bench.runs import (
    check_dtype,
    check_positive_int,
    free_memory,
    reason,
    require_cuda,
    run_cli,
    write_table,
)
from attnlab.errors import ArgumentParser

COLUMNS = ("attention", "impl", "seq_len", "batch", "params_m", "status", "tokens_per_s", "step_ms", "peak_mib",
           "loss", "reason")
_WINDOW = re.compile(r"swa([1-9]\d*)")


@dataclass(frozen=True)
class E2EConfig:
    seq_len: int = 16384
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    vocab_size: int = 50304
    batch: int = 1
    impls: tuple[str, ...] = ("triton", "sdpa")
    attention: tuple[str, ...] = ("dense", "swa1024")
    warmup_steps: int = 3
    steps: int = 10
    lr: float = 3e-4
    dtype: str = "bfloat16"  # autocast dtype; parameters and optimizer state stay fp32
    seed: int = 0

    def __post_init__(self):
        for name in ("seq_len", "n_layers", "d_model", "n_heads", "vocab_size", "batch", "warmup_steps", "steps"):
            check_positive_int(f"e2e.{name}", getattr(self, name))
        if not self.impls or any(i not in IMPLS for i in self.impls):
            raise ValueError(f"e2e.impls={list(self.impls)!r}: allowed: {', '.join(IMPLS)}")
        if not self.attention:
            raise ValueError("e2e.attention is empty; give names like dense, swa1024")
        for name in self.attention:
            attention_kwargs(name)
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not 0 < self.lr < 1:
            raise ValueError(f"e2e.lr={self.lr!r} must be a number in (0, 1)")
        check_dtype("e2e.dtype", self.dtype)
        self.model_config("sdpa", self.attention[0])  # the model's own checks (d_model % n_heads, ...)

    def model_config(self, impl: str, attention: str):
        from attnlab.model import ModelConfig

        try:
            return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                               n_heads=self.n_heads, context=self.seq_len, attn_impl=impl,
                               attention={attention: attention_kwargs(attention)}, layer_pattern=[attention])
        except ValueError as err:
            raise ValueError(f"e2e: {err}") from None


def attention_kwargs(name: str) -> dict:
    """``dense`` -> dense; ``swa<W>`` -> sliding window W (both causal: the LM objective)."""
    if name == "dense":
        return {"kind": "dense"}
    m = _WINDOW.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"e2e.attention name {name!r} is not allowed: dense, or swa<W> with W >= 1 (e.g. swa1024)")
    return {"kind": "sliding_window", "window": int(m.group(1))}


def train_steps(model, optimizer, idx: torch.Tensor, steps: int, autocast) -> torch.Tensor:
    """``steps`` optimizer steps on one batch (idx [B, N + 1]: inputs and shifted targets);
    returns the last loss (a tensor: reading it would synchronise)."""
    x, y = idx[:, :-1], idx[:, 1:]  # (B, N) each
    for _ in range(steps):
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure(cfg: E2EConfig, attention: str, impl: str, device: torch.device) -> dict:
    """One row: tokens/s and peak memory of this (attention, impl), or the error."""
    from attnlab.model import Transformer, num_params
    from attnlab.train.optim import param_groups

    row = {"attention": attention, "impl": impl, "seq_len": cfg.seq_len, "batch": cfg.batch}
    model = optimizer = None
    try:
        torch.manual_seed(cfg.seed)
        model = Transformer(cfg.model_config(impl, attention)).to(device)
        row["params_m"] = num_params(model) / 1e6
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=cfg.lr, betas=(0.9, 0.95),
                                      fused=device.type == "cuda")
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        idx = torch.randint(cfg.vocab_size, (cfg.batch, cfg.seq_len + 1), generator=gen, device=device)
        autocast = torch.autocast(device.type, dtype=check_dtype("e2e.dtype", cfg.dtype))
        train_steps(model, optimizer, idx, cfg.warmup_steps, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        loss = float(train_steps(model, optimizer, idx, cfg.steps, autocast))  # float() synchronises
        elapsed = time.perf_counter() - t0
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} after {cfg.warmup_steps + cfg.steps} steps")
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    except Exception as err:  # an OOM or an impl that cannot run: recorded, the next config still runs
        return {**row, "status": "error", "reason": reason(err)}
    finally:
        model = optimizer = None
        free_memory(device)
    return {**row, "status": "ok", "tokens_per_s": cfg.batch * cfg.seq_len * cfg.steps / elapsed,
            "step_ms": elapsed / cfg.steps * 1e3, "peak_mib": peak, "loss": loss}


def ratios(rows: list[dict], ours: str = "triton", base: str = "sdpa") -> dict[str, float]:
    """tokens/s of ``ours`` over ``base`` per attention name, where both ran."""
    tps = {(r["attention"], r["impl"]): r["tokens_per_s"] for r in rows if r["status"] == "ok"}
    return {a: tps[(a, ours)] / tps[(a, base)] for a, _ in tps if (a, ours) in tps and (a, base) in tps}


def run(cfg: E2EConfig, out_dir: Path, device: torch.device, log=print) -> list[dict]:
    """Every (attention, impl) of `cfg`, attention-major (an impl and its baseline back to back)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    title = (f"Training throughput, {cfg.n_layers} x {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size}, "
             f"N={cfg.seq_len}, batch {cfg.batch}, {cfg.dtype} autocast, AdamW; {cfg.warmup_steps} warm-up + "
             f"{cfg.steps} timed steps, {name}")
    rows: list[dict] = []
    for attention in cfg.attention:
        for impl in cfg.impls:
            row = measure(cfg, attention, impl, device)
            rows.append(row)
            notes = [f"triton / sdpa tokens/s, {a}: {r:.3f}x" for a, r in ratios(rows).items()]
            write_table(rows, COLUMNS, out_dir, "e2e", title, notes)
            log(f"{attention:<9} {impl:<7} " + (f"{row['tokens_per_s']:.0f} tokens/s, {row['peak_mib']:.0f} MiB"
                                               if row["status"] == "ok" else f"error ({row['reason']})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    d = E2EConfig
    parser = ArgumentParser(prog="python -m attnlab.bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for e2e.csv / e2e.md")
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--layers", type=int, default=d.n_layers)
    parser.add_argument("--d-model", type=int, default=d.d_model)
    parser.add_argument("--heads", type=int, default=d.n_heads)
    parser.add_argument("--vocab", type=int, default=d.vocab_size)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--impls", nargs="+", default=list(d.impls))
    parser.add_argument("--attention", nargs="+", default=list(d.attention))
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: checks the harness only")
    args = parser.parse_args(argv)

    def measure() -> list[dict]:
        cfg = E2EConfig(args.seq_len, args.layers, args.d_model, args.heads, args.vocab, args.batch,
                        tuple(args.impls), tuple(args.attention), args.warmup_steps, args.steps)
        device = require_cuda("e2e --device cuda") if args.device == "cuda" else torch.device("cpu")
        return run(cfg, args.out, device)

    return run_cli(measure, args.out / "e2e.csv")


if __name__ == "__main__":
    raise SystemExit(main())
