"""The training loop: `train(model_cfg, data_cfg, train_cfg, run_dir) -> final metrics`.

Resume is exact: the batch of step s is a pure function of (data seed, s), and a
checkpoint holds model, optimizer, scheduler and RNG states, so an interrupted run that
resumes logs the same losses as one that never stopped (bitwise on CPU).

Data parallel (`train.distributed=ddp|fsdp`, one process per device under torchrun): every
rank builds the same global batch and trains on its rows (`attnlab.train.distributed`);
losses and metrics are reduced over ranks, rank 0 alone logs and writes files, and
checkpoints are `latest.pt` (rank 0) or a `torch.distributed.checkpoint` folder (FSDP2).

Faults: a non-finite loss or gradient norm stops the run before the optimizer step with
an error naming the step and the last good checkpoint, which is kept; parameters are
checked before every save, so a checkpoint never holds a NaN.
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
from attnlab.train.distributed import Dist, setup
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
def evaluate(model, corpus, model_cfg, cfg: TrainConfig, device, autocast, dist: Dist | None = None) -> dict:
    """Mean loss over the fixed validation windows; bits per byte for causal LMs (the exact
    UTF-8 bytes of the scored target tokens, so bpb compares across tokenizers).
    Distributed: each rank scores its rows of every val batch (a rank without rows runs a
    dummy forward, which FSDP needs); the loss sums are reduced over ranks."""
    dist = dist or Dist()
    if getattr(corpus, "is_task", False):
        return evaluate_task(model, corpus, cfg, device, autocast)
    model.eval()
    byte_len = torch.as_tensor(corpus.tokenizer.token_byte_lengths(), dtype=torch.int64)
    total_loss, total_tokens, total_bytes = 0.0, 0, 0
    packed = corpus.config.pack_documents
    for i, (x, y, *docs) in enumerate(corpus.val_batches(with_doc_ids=packed)):
        if cfg.eval_batches is not None and i >= cfg.eval_batches:
            break
        doc_ids = docs[0] if docs else None  # [B, T] document of each token (packed plays)
        if model_cfg.objective == "mlm":
            x, y = _mlm_batch(x, model_cfg, seed=12345, step=i, micro=0)  # same masks every eval
        else:
            total_bytes += int(byte_len[y].sum())
        if dist.active:
            total_tokens += int((y != -100).sum())
            rows = dist.rows(x.shape[0])
            rows, dummy = (rows, False) if rows.stop > rows.start else (slice(0, 1), True)
            x, y = x[rows], y[rows]
            doc_ids = doc_ids[rows] if doc_ids is not None else None
        x, y = x.to(device), y.to(device)
        doc_ids = doc_ids.to(device) if doc_ids is not None else None
        with autocast:
            _, loss = model(x, y, doc_ids=doc_ids)
        n = int((y != -100).sum())
        if dist.active:
            total_loss += float(loss) * n if (n and not dummy) else 0.0
        else:
            total_loss += float(loss) * n
            total_tokens += n
    model.train()
    if dist.active:
        total_loss = dist.sum([total_loss])[0]
    val_loss = total_loss / max(total_tokens, 1)
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)), "val_tokens": total_tokens}
    if model_cfg.objective == "causal":
        out["val_bpb"] = bits_per_byte(val_loss, total_tokens, total_bytes)
    return out


@torch.no_grad()
def evaluate_task(model, task, cfg: TrainConfig, device, autocast) -> dict:
    """A recall task's fixed validation set (``attnlab.data.recall``): mean loss over answer
    positions, ``val_accuracy`` (argmax == answer) and ``val_accuracy_by_distance``. Every rank
    scores the whole (small) set, so distributed runs need no reduction."""
    from attnlab.data.recall import AccuracyTally

    model.eval()
    tally = AccuracyTally(task.config.name)
    total_loss, total = 0.0, 0
    for i, (x, y, dist) in enumerate(task.val_set()):
        if cfg.eval_batches is not None and i >= cfg.eval_batches:
            break
        x, y = x.to(device), y.to(device)
        with autocast:
            logits, loss = model(x, y)
        n = int((y != -100).sum())
        total_loss += float(loss) * n if n else 0.0
        total += n
        tally.add(logits.float(), y, dist)
    model.train()
    return {"val_loss": total_loss / max(total, 1), **tally.metrics()}


def end_of_step(done: int, record: dict, cfg: TrainConfig, logger, bar, save, evaluate_now) -> bool:
    """Bookkeeping after optimizer step `done`, shared by training and distillation: log the
    train `record`, evaluate (``evaluate_now()`` -> metrics) and checkpoint (``save(done)``) on
    their schedules and at the last step. True when the run stops here (``train.stop_at``),
    with the progress bar and logger closed."""
    final = done == cfg.steps
    if (cfg.log_every and done % cfg.log_every == 0) or final:
        logger.log(dict(record, kind="train"))
    if (cfg.eval_every and done % cfg.eval_every == 0) or final:
        logger.log(dict(step=done, kind="eval", **evaluate_now()))
    if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or final or done == cfg.stop_at:
        save(done)
    if done == cfg.stop_at and not final:
        if bar is not None:
            bar.close()
        logger.close()
        return True
    return False


def check_against_corpus(model_cfg: ModelConfig, data_cfg: DataConfig, corpus) -> ModelConfig:
    """Fill `model.vocab_size` from the tokenizer and check the sizes that need the corpus."""
    if model_cfg.vocab_size is None:
        model_cfg = replace(model_cfg, vocab_size=corpus.tokenizer.vocab_size)
    elif model_cfg.vocab_size < corpus.tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{corpus.tokenizer.vocab_size}; leave it null to take the tokenizer's"
        )
    if getattr(corpus, "is_task", False) and model_cfg.objective != "causal":
        raise ValueError(f"model.objective={model_cfg.objective!r}: recall tasks (data.name="
                         f"{data_cfg.name!r}) train causal models; use model.objective=causal")
    if data_cfg.context > model_cfg.context:
        raise ValueError(f"data.context={data_cfg.context} exceeds model.context={model_cfg.context}")
    return model_cfg


def check_world_size(data_cfg: DataConfig, world: int) -> None:
    if data_cfg.batch_size < world:
        raise ValueError(
            f"data.batch_size={data_cfg.batch_size} is smaller than the {world} processes: each rank "
            "trains on its rows of the global batch, so data.batch_size must be >= the world size"
        )


def train(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, run_dir, resume: bool = False,
          config_record: dict | None = None, corpus=None, dist: Dist | None = None) -> dict:
    """Train; returns the final metrics (``{"status": "stopped", ...}`` at ``cfg.stop_at``).

    ``corpus``: an already built `Corpus` of ``data_cfg`` (else it is built here). ``dist``:
    the process group to use (else `setup(cfg.distributed)` joins one and leaves it at the end).
    """
    own = dist is None
    dist = setup(cfg.distributed, cfg.device) if own else dist
    try:
        return _train(model_cfg, data_cfg, cfg, Path(run_dir), resume, config_record, corpus, dist)
    finally:
        if own:
            dist.close()


def _train(model_cfg, data_cfg, cfg: TrainConfig, run_dir: Path, resume: bool, config_record, corpus,
           dist: Dist) -> dict:
    main = dist.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_record(run_dir, config_record, model_cfg, data_cfg, cfg, write=main)  # first: a failed run is still a run
    device = dist.device
    check_world_size(data_cfg, dist.world)
    if corpus is None:
        if not main:
            dist.barrier()  # rank 0 fills the token cache first
        corpus = build_data(data_cfg)
        if main:
            dist.barrier()
    model_cfg = check_against_corpus(model_cfg, data_cfg, corpus)
    record = _write_record(run_dir, config_record, model_cfg, data_cfg, cfg, write=main)

    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    if dist.rank > 0:
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # own dropout stream per rank
    sharded = dist.mode == "fsdp"
    ckpt_dir = run_dir / "checkpoints"
    found, state = ckpt.open_for_resume(ckpt_dir, resume, dist)
    if state is not None:
        model.load_state_dict(state["model"])
    train_model = dist.wrap(model)  # DDP: a wrapper; FSDP2: `model` itself, sharded in place
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    start = 0
    if found:
        if sharded:
            dcp_state = _dcp_state(model, optimizer)
            state = ckpt.load_sharded(dcp_state, found, dist)
            _dcp_apply(model, optimizer, dcp_state)
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        _set_rng(state, dist, cfg.seed, start)
        if main:
            _truncate_log(run_dir / "metrics.jsonl", start)
    elif not resume and main and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()

    step_model = torch.compile(train_model) if cfg.compile else train_model
    amp = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    logger = RunLogger(run_dir, cfg, record, resume=resume) if main else _NullLogger()
    # packed documents: attention FLOPs of the first training batch's documents (a sample)
    sample_docs = corpus.train_batch(0, with_doc_ids=True)[2] if data_cfg.pack_documents else None
    fpt = flops_per_token(model_cfg, data_cfg.context, doc_ids=sample_docs)
    tokens_per_step = data_cfg.batch_size * data_cfg.context * cfg.grad_accum  # the global batch
    peak = peak_flops(device)
    bar = _progress(cfg, start) if main else None

    good = {"path": found, "step": start} if found else {}  # this run's last checkpoint

    def last_good() -> str:
        return f"{good['path']} (step {good['step']})" if good else "none saved yet"

    def save(step: int) -> None:
        if not _params_finite(model, dist):
            raise FloatingPointError(
                f"non-finite parameters after step {step}; not saving them; last good checkpoint: {last_good()}"
            )
        rng = dist.gather_objects(ckpt.rng_states())
        extra = {"scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng, "step": step,
                 "config": record, "world_size": dist.world, "distributed": dist.mode}
        if sharded:
            path = ckpt.save_sharded(_dcp_state(model, optimizer), extra, ckpt_dir, step, dist)
        else:
            path = ckpt_dir / ckpt.LATEST
            if main:
                ckpt.atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra}, path)
        good.update(path=path, step=step)

    last = {}
    t_run = time.perf_counter()
    tokens_run = 0
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            # the global micro-batch (+ each token's document when plays are packed)
            x, y, *docs = corpus.train_batch(step * cfg.grad_accum + micro, with_doc_ids=data_cfg.pack_documents)
            if model_cfg.objective == "mlm":
                x, y = _mlm_batch(x, model_cfg, cfg.seed, step, micro)
            doc_ids = docs[0][dist.rows(x.shape[0])].to(device, non_blocking=True) if docs else None
            x, y, share, weight = dist.shard_batch(x, y)  # this rank's rows
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with dist.no_grad_sync(train_model, last_micro=micro == cfg.grad_accum - 1):
                with autocast:
                    logits, loss = step_model(x, y, doc_ids=doc_ids)
                if share == 0.0:  # no target on this rank (mlm): zero gradients, yet every param in the graph
                    loss = logits.float().sum() * 0.0
                (loss * weight / cfg.grad_accum if weight != 1.0 else loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) * share
        train_loss = dist.sum([loss_sum])[0] / cfg.grad_accum  # the global batch's mean
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        if not (math.isfinite(train_loss) and math.isfinite(float(grad_norm))):
            logger.close()
            if bar is not None:
                bar.close()
            raise FloatingPointError(
                f"non-finite {'loss' if not math.isfinite(train_loss) else 'gradient norm'} at step {step + 1}; "
                f"last good checkpoint: {last_good()}"
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
        if end_of_step(done, last, cfg, logger, bar, save,
                       lambda: evaluate(model, corpus, model_cfg, cfg, device, autocast, dist)):
            return {"status": "stopped", "step": done}
    if bar is not None:
        bar.close()

    elapsed = time.perf_counter() - t_run
    peak_mib = dist.max(peak_memory_mib(device))
    metrics = None
    if main:
        history = read_jsonl(run_dir / "metrics.jsonl", skip_torn=True)
        evals = [r for r in history if r.get("kind") == "eval"]
        trains = [r for r in history if r.get("kind") == "train"]
        if not last and trains:  # resumed from the final checkpoint (killed while finishing)
            last = trains[-1]
        attn_fwd_bwd = fpt["attention"]
        metrics = {
            "status": "complete",
            "config_hash": record.get("config_hash"),
            "steps": cfg.steps,
            "train_loss": last.get("train_loss"),
            **{k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("val_")},
            "tokens_per_s": tokens_run / elapsed if (elapsed > 0 and tokens_run) else None,
            "step_time_s": elapsed / (cfg.steps - start) if cfg.steps > start else None,
            "peak_memory_mib": peak_mib,
            "params": num_params(model),
            "params_non_embedding": num_params(model, non_embedding=True),
            "flops_per_token": fpt["total"],
            "attention_flops_per_token": attn_fwd_bwd,
            "attention_flops_per_step": attn_fwd_bwd * tokens_per_step,
            "mfu": (fpt["total"] * tokens_run / elapsed / (peak * dist.world)) if (peak and elapsed > 0 and tokens_run) else None,
            "device": str(device),
            "distributed": dist.mode,
            "world_size": dist.world,
            "objective": model_cfg.objective,
            "layer_specs": [s.name for s in model_cfg.layer_specs()],
        }
        ckpt.atomic_write_text(json.dumps(metrics, indent=2), run_dir / "metrics.json")
        logger.close(summary=metrics)
    return dist.broadcast_object(metrics)


class _NullLogger:
    """What ranks other than 0 log to."""

    def log(self, record: dict) -> None:
        pass

    def close(self, summary: dict | None = None) -> None:
        pass


def _params_finite(model, dist: Dist) -> bool:
    """All parameters finite (FSDP2: this rank's shards, then agreed over ranks)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    ok = bool(torch.stack([torch.isfinite(t.detach()).all() for t in local if t.numel()]).all())
    return not dist.any(not ok) if dist.mode == "fsdp" else ok


def _set_rng(state: dict, dist: Dist, seed: int, step: int) -> None:
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == dist.world:
        ckpt.set_rng_states(per_rank[dist.rank])
        return
    ckpt.set_rng_states(state["rng"])  # another world size: rank 0's states, own streams elsewhere
    if dist.rank > 0:
        torch.manual_seed(seed + 1_000_003 * dist.rank + step)


def _dcp_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def _dcp_apply(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _write_record(run_dir: Path, config_record, model_cfg, data_cfg, cfg, write: bool = True) -> dict:
    record = dict(config_record or {}, model=asdict(model_cfg), data=asdict(data_cfg), train=asdict(cfg))
    if write:
        (run_dir / "config.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path, skip_torn=True) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
