"""The training loop: `train(model_cfg, data_cfg, train_cfg, run_dir) -> final metrics`.

Resume is exact: the batch of step s is a pure function of (data seed, s), and a
checkpoint holds model, optimizer, scheduler and RNG states, so an interrupted run that
resumes logs the same losses as one that never stopped (bitwise on CPU).
"""

from __future__ import annotations

import json
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from attnlab.data import DataConfig, bits_per_byte, build_data
from attnlab.model import ModelConfig, Transformer, flops_per_token, mask_tokens, num_params
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.logger import RunLogger, read_jsonl
from attnlab.train.optim import make_optimizer, make_scheduler

# Dense bf16 tensor-core peaks (FLOP/s) for MFU; unknown cards report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated by torch. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _mlm_batch(x, model_cfg, seed: int, step: int, micro: int):
    gen = torch.Generator().manual_seed(hash((seed, step, micro)) % 2**63)
    return mask_tokens(x, model_cfg, generator=gen)


@torch.no_grad()
def evaluate(model, corpus, model_cfg, cfg: TrainConfig, device, autocast) -> dict:
    """Mean loss over the fixed validation windows; bits per byte for causal LMs (the exact
    UTF-8 bytes of the scored target tokens, so bpb compares across tokenizers)."""
    model.eval()
    byte_len = torch.as_tensor(corpus.tokenizer.token_byte_lengths(), dtype=torch.int64)
    total_loss, total_tokens, total_bytes = 0.0, 0, 0
    for i, (x, y) in enumerate(corpus.val_batches()):
        if cfg.eval_batches is not None and i >= cfg.eval_batches:
            break
        if model_cfg.objective == "mlm":
            x, y = _mlm_batch(x, model_cfg, seed=12345, step=i, micro=0)  # same masks every eval
        else:
            total_bytes += int(byte_len[y].sum())
        x, y = x.to(device), y.to(device)
        with autocast:
            _, loss = model(x, y)
        n = int((y != -100).sum())
        total_loss += float(loss) * n
        total_tokens += n
    model.train()
    val_loss = total_loss / max(total_tokens, 1)
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)), "val_tokens": total_tokens}
    if model_cfg.objective == "causal":
        out["val_bpb"] = bits_per_byte(val_loss, total_tokens, total_bytes)
    return out


def train(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, run_dir, resume: bool = False,
          config_record: dict | None = None) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_record(run_dir, config_record, model_cfg, data_cfg, cfg)  # first: a failed run is still a run
    device = resolve_device(cfg.device)
    corpus = build_data(data_cfg)
    if model_cfg.vocab_size is None:
        model_cfg = replace(model_cfg, vocab_size=corpus.tokenizer.vocab_size)
    elif model_cfg.vocab_size < corpus.tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{corpus.tokenizer.vocab_size}; leave it null to take the tokenizer's"
        )
    if data_cfg.context > model_cfg.context:
        raise ValueError(f"data.context={data_cfg.context} exceeds model.context={model_cfg.context}")
    record = _write_record(run_dir, config_record, model_cfg, data_cfg, cfg)

    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    ckpt_path = run_dir / "checkpoints" / ckpt.LATEST
    start = 0
    if resume and ckpt_path.exists():
        state = ckpt.load(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_states(state["rng"])
        start = state["step"]
        _truncate_log(run_dir / "metrics.jsonl", start)
    elif not resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()

    step_model = torch.compile(model) if cfg.compile else model
    amp = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    logger = RunLogger(run_dir, cfg, record, resume=resume)
    fpt = flops_per_token(model_cfg, data_cfg.context)
    tokens_per_step = data_cfg.batch_size * data_cfg.context * cfg.grad_accum
    peak = peak_flops(device)
    bar = _progress(cfg, start)

    def save(step: int) -> None:
        ckpt.atomic_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": ckpt.rng_states(), "step": step, "config": record},
            ckpt_path,
        )

    last = {}
    t_run = time.perf_counter()
    tokens_run = 0
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = corpus.train_batch(step * cfg.grad_accum + micro)
            if model_cfg.objective == "mlm":
                x, y = _mlm_batch(x, model_cfg, cfg.seed, step, micro)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                _, loss = step_model(x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
        train_loss = loss_sum / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not (math.isfinite(train_loss) and math.isfinite(float(grad_norm))):
            where = f"{ckpt_path} (step {_ckpt_step(ckpt_path)})" if ckpt_path.exists() else "none saved yet"
            logger.close()
            raise FloatingPointError(
                f"non-finite {'loss' if not math.isfinite(train_loss) else 'gradient norm'} at step {step + 1}; "
                f"last good checkpoint: {where}"
            )
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        tokens_run += tokens_per_step
        done = step + 1
        tok_s = tokens_per_step / dt
        last = {"step": done, "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                "step_time_s": dt, "tokens_per_s": tok_s, "tokens": done * tokens_per_step}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}")
        final = done == cfg.steps
        if (cfg.log_every and done % cfg.log_every == 0) or final:
            logger.log(dict(last, kind="train"))
        if (cfg.eval_every and done % cfg.eval_every == 0) or final:
            logger.log(dict(step=done, kind="eval", **evaluate(model, corpus, model_cfg, cfg, device, autocast)))
        if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or final or done == cfg.stop_at:
            save(done)
        if done == cfg.stop_at and not final:
            if bar is not None:
                bar.close()
            logger.close()
            return {"status": "stopped", "step": done}
    if bar is not None:
        bar.close()

    elapsed = time.perf_counter() - t_run
    history = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in history if r.get("kind") == "eval"]
    attn_fwd_bwd = fpt["attention"]
    metrics = {
        "status": "complete",
        "config_hash": record.get("config_hash"),
        "steps": cfg.steps,
        "train_loss": last.get("train_loss"),
        **{k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("val_")},
        "tokens_per_s": tokens_run / elapsed if elapsed > 0 else None,
        "step_time_s": elapsed / max(1, cfg.steps - start),
        "peak_memory_mib": peak_memory_mib(device),
        "params": num_params(model),
        "params_non_embedding": num_params(model, non_embedding=True),
        "flops_per_token": fpt["total"],
        "attention_flops_per_token": attn_fwd_bwd,
        "attention_flops_per_step": attn_fwd_bwd * tokens_per_step,
        "mfu": (fpt["total"] * tokens_run / elapsed / peak) if (peak and elapsed > 0) else None,
        "device": str(device),
        "objective": model_cfg.objective,
        "layer_specs": [s.name for s in model_cfg.layer_specs()],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.close(summary=metrics)
    return metrics


def _write_record(run_dir: Path, config_record, model_cfg, data_cfg, cfg) -> dict:
    record = dict(config_record or {}, model=asdict(model_cfg), data=asdict(data_cfg), train=asdict(cfg))
    (run_dir / "config.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _ckpt_step(path: Path) -> int | None:
    try:
        return ckpt.load(path)["step"]
    except Exception:
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
