"""`fit`: the one training loop of every job (causal LM, masked LM, distillation).

A job builds its model and says what one micro-batch's loss is (``step_loss``); `fit` does
the rest, the same way for every job:

- resume: model, optimizer, scheduler and RNG states from ``<run_dir>/checkpoints`` (the
  batch of step s is a pure function of s, so a resumed run logs what an uninterrupted one
  does); ``metrics.jsonl`` keeps the records up to the checkpoint's step (none on a fresh start);
- data parallel (`attnlab.train.distributed`): every rank takes its rows of the global batch,
  losses are weighted by its share of the targets and reduced; rank 0 alone writes files;
- logging (``metrics.jsonl``, wandb), a progress bar, periodic and final evaluation;
- faults: a non-finite loss or gradient norm stops the run before the optimizer step, and
  parameters are checked before every save, so a checkpoint never holds a NaN; the error
  names the step and the last good checkpoint, which is kept;
- checkpoints (``latest.pt``, or a DCP folder under FSDP2) every ``train.ckpt_every`` steps,
  at ``train.stop_at`` (the process ends there, as if interrupted) and at the end;
- ``train.compile``: the step runs ``torch.compile(model)``;
- frozen parameters (``requires_grad=False``, `attnlab.train.trainable`) are left out of the
  optimizer; ``frozen_keys`` leaves them out of ``latest.pt`` too (the job says where they
  come from in ``checkpoint_extra``) and lets a resume find them already in the model.

Run-dir locking and what a rerun does are the jobs' first step (`attnlab.train.rundir`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist
from attnlab.train.logger import RunLogger, read_jsonl
from attnlab.train.optim import make_optimizer, make_scheduler


@dataclass
class Batch:
    """One micro-batch as a rank sees it: its rows of global micro-batch ``index``."""

    index: int            # global micro-batch number: step * grad_accum + micro
    x: torch.Tensor       # [b, T] input tokens (this rank's rows, on the device)
    y: torch.Tensor       # [b, T] targets (-100: not scored)
    kwargs: dict          # model keyword arguments: ``doc_ids`` [b, T] with packed documents
    share: float          # this rank's fraction of the global batch's targets (1.0 on one process)


#: ``step_loss(batch, model, extra) -> {"loss": scalar tensor, other terms...}``; ``model`` and
#: ``extra`` are the modules to call (DDP wrappers / compiled when asked). Other terms are
#: logged as ``<name>_loss``.
StepLoss = Callable[[Batch, nn.Module, "nn.Module | None"], dict]


@dataclass
class Fitted:
    status: str               # "complete" | "stopped" (at train.stop_at)
    step: int                 # the last step done
    start: int                # the step this process started from
    last: dict                # the last train record
    eval: dict                # the last eval record
    elapsed_s: float          # this process's time in the loop
    tokens_run: int           # global tokens trained on by this process
    metrics: dict | None = None  # what ``summary`` returned (also in metrics.json)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens_run / self.elapsed_s if self.elapsed_s > 0 and self.tokens_run else None


def fit(model: nn.Module, step_loss: StepLoss, corpus, cfg: TrainConfig, run_dir, *, evaluate: Callable[[], dict],
        record: dict, resume: bool = False, dist: Dist | None = None, extra: nn.Module | None = None,
        global_batch: Callable[[int], tuple] | None = None,
        summary: Callable[[Fitted], dict] | None = None, frozen_keys: Collection[str] = (),
        checkpoint_extra: dict | None = None) -> Fitted:
    """Train ``model`` (and ``extra``'s parameters, e.g. distillation's hidden-state
    projections) for ``cfg.steps`` optimizer steps on ``step_loss`` (module docstring).

    ``corpus``: its ``config`` gives batch size and context; ``global_batch(index) -> (x, y,
    doc_ids or None)`` the global micro-batch (default: ``corpus.train_batch``). ``evaluate()``:
    val metrics of the model now. ``record``: the config saved in checkpoints. ``resume``:
    continue from the latest checkpoint. ``summary(fitted)`` (every rank): the final metrics,
    written by rank 0 to metrics.json and returned as ``fitted.metrics`` (rank 0's).
    ``frozen_keys``: model state-dict keys that ``latest.pt`` leaves out (frozen weights the
    model already holds when it starts; FSDP's sharded checkpoints keep everything).
    ``checkpoint_extra``: more entries for every checkpoint (e.g. the ``base`` the frozen
    weights come from)."""
    dist = dist or Dist()
    run_dir = Path(run_dir)
    main, device, sharded = dist.is_main, dist.device, dist.mode == "fsdp"
    if dist.rank > 0:
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # own dropout stream per rank
    ckpt_dir = run_dir / "checkpoints"
    found, state = ckpt.open_for_resume(ckpt_dir, resume, dist)
    frozen_keys = set(frozen_keys)
    if state is not None:
        load_model_state(model, state["model"], frozen_keys, found)
        if extra is not None:
            extra.load_state_dict(state["extra"])
    train_model = dist.wrap(model)  # DDP: a wrapper; FSDP2: `model` itself, sharded in place
    train_extra = dist.wrap(extra) if _has_params(extra) else extra
    params = model if extra is None else nn.ModuleDict({"model": model, "extra": extra})
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    start = 0
    if found:
        if sharded:
            dcp_state = _dcp_state(model, extra, params, optimizer)
            state = ckpt.load_sharded(dcp_state, found, dist)
            _dcp_apply(model, extra, params, optimizer, dcp_state)
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        set_rng(state, dist, cfg.seed, start)
    if main:
        truncate_log(run_dir / "metrics.jsonl", start)

    step_model = torch.compile(train_model) if cfg.compile else train_model
    logger = RunLogger(run_dir, cfg, record, resume=resume) if main else _NullLogger()
    bar = _progress(cfg, start) if main else None
    tokens_per_step = corpus.config.batch_size * corpus.config.context * cfg.grad_accum  # the global batch
    pack = getattr(corpus.config, "pack_documents", False)
    fetch = global_batch or (lambda i: _corpus_batch(corpus, i, pack))
    good = {"path": found, "step": start} if found else {}  # this run's last checkpoint

    def last_good() -> str:
        return f"{good['path']} (step {good['step']})" if good else "none saved yet"

    def save(step: int) -> None:
        if not _params_finite(params, dist):
            raise FloatingPointError(
                f"non-finite parameters after step {step}; not saving them; last good checkpoint: {last_good()}")
        rng = dist.gather_objects(ckpt.rng_states())
        meta = {"scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng, "step": step,
                "config": record, "world_size": dist.world, "distributed": dist.mode, **(checkpoint_extra or {})}
        if sharded:
            path = ckpt.save_sharded(_dcp_state(model, extra, params, optimizer), meta, ckpt_dir, step, dist)
        else:
            path = ckpt_dir / ckpt.LATEST
            if main:
                weights = {k: v for k, v in model.state_dict().items() if k not in frozen_keys}
                own = {"model": weights, **({"extra": extra.state_dict()} if extra is not None else {})}
                ckpt.atomic_save({**own, "optimizer": optimizer.state_dict(), **meta}, path)
        good.update(path=path, step=step)

    def local_batch(index: int) -> tuple[Batch, float]:
        x, y, doc_ids = fetch(index)
        kwargs = {"doc_ids": doc_ids[dist.rows(x.shape[0])].to(device, non_blocking=True)} if doc_ids is not None else {}
        x, y, share, weight = dist.shard_batch(x, y)  # this rank's rows
        return Batch(index, x.to(device, non_blocking=True), y.to(device, non_blocking=True), kwargs, share), weight

    last, t_run, tokens_run = {}, time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch, weight = local_batch(step * cfg.grad_accum + micro)
                with contextlib.ExitStack() as no_sync:  # gradients are reduced on the last micro-batch
                    for module in filter(_has_params, (train_model, train_extra)):
                        no_sync.enter_context(dist.no_grad_sync(module, last_micro=micro == cfg.grad_accum - 1))
                    losses = step_loss(batch, step_model, train_extra)
                    loss = losses["loss"]
                    (loss * weight / cfg.grad_accum if weight != 1.0 else loss / cfg.grad_accum).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * batch.share
            # the global batch's means
            sums = {k: v / cfg.grad_accum for k, v in zip(sums, dist.sum(list(sums.values())), strict=True)}
            grad_norm = torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            train_loss = sums.pop("loss")
            if not (math.isfinite(train_loss) and math.isfinite(float(grad_norm))):
                raise FloatingPointError(
                    f"non-finite {'loss' if not math.isfinite(train_loss) else 'gradient norm'} at step {step + 1}; "
                    f"last good checkpoint: {last_good()}")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            tokens_run += tokens_per_step
            done = step + 1
            last = {"step": done, "train_loss": train_loss, **{f"{k}_loss": v for k, v in sums.items()}, "lr": lr,
                    "grad_norm": float(grad_norm), "step_time_s": dt, "tokens_per_s": tokens_per_step / dt,
                    "tokens": done * tokens_per_step}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}")
            if (cfg.log_every and done % cfg.log_every == 0) or done == cfg.steps:
                logger.log(dict(last, kind="train"))
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                logger.log(dict(step=done, kind="eval", **evaluate()))
            if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done in (cfg.steps, cfg.stop_at):
                save(done)
            if done == cfg.stop_at and done != cfg.steps:
                _close(bar, logger)
                return Fitted("stopped", done, start, last, {}, time.perf_counter() - t_run, tokens_run)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t_run
        history = read_jsonl(run_dir / "metrics.jsonl", skip_torn=True) if main else []
        evals = [r for r in history if r.get("kind") == "eval"]
        trains = [r for r in history if r.get("kind") == "train"]
        if not last and trains:  # resumed from the final checkpoint (killed while finishing)
            last = trains[-1]
        last, last_eval = dist.broadcast_object((last, evals[-1] if evals else {}))
        fitted = Fitted("complete", cfg.steps, start, last, last_eval, elapsed, tokens_run)
        if summary is not None:
            metrics = summary(fitted)
            if main:
                ckpt.atomic_write_text(json.dumps(metrics, indent=2), run_dir / "metrics.json")
            fitted.metrics = dist.broadcast_object(metrics)
    except BaseException:
        _close(bar, logger)
        raise
    logger.close(summary=fitted.metrics)
    return fitted


# ---------------------------------------------------------------------- helpers
def load_model_state(model: nn.Module, weights: dict, frozen_keys: set[str], path) -> None:
    """A checkpoint's model weights into ``model``: every key, or every key but the frozen
    ones (which the model already holds); anything else is an error naming the checkpoint."""
    if not frozen_keys:
        model.load_state_dict(weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    wrong = sorted(set(missing) - frozen_keys) + sorted(unexpected)
    if wrong:
        raise ValueError(f"{path}: its model weights do not fit this run's model (trainable parameters and "
                         f"adapters): {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")


def _corpus_batch(corpus, index: int, pack: bool) -> tuple:
    x, y, *docs = corpus.train_batch(index, with_doc_ids=pack)
    return x, y, docs[0] if docs else None


def _close(bar, logger) -> None:
    if bar is not None:
        bar.close()
    logger.close()


def _has_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


class _NullLogger:
    """What ranks other than 0 log to."""

    def log(self, record: dict) -> None:
        pass

    def close(self, summary: dict | None = None) -> None:
        pass


def _params_finite(model: nn.Module, dist: Dist) -> bool:
    """All parameters finite (FSDP2: this rank's shards, then agreed over ranks)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    ok = bool(torch.stack([torch.isfinite(t.detach()).all() for t in local if t.numel()]).all())
    return not dist.any(not ok) if dist.mode == "fsdp" else ok


def set_rng(state: dict, dist: Dist, seed: int, step: int) -> None:
    """Restore a checkpoint's RNG states: each rank its own (another world size: rank 0's
    states on rank 0, fresh streams of their own on the others)."""
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == dist.world:
        ckpt.set_rng_states(per_rank[dist.rank])
        return
    ckpt.set_rng_states(state["rng"])
    if dist.rank > 0:
        torch.manual_seed(seed + 1_000_003 * dist.rank + step)


def _dcp_state(model: nn.Module, extra: nn.Module | None, params: nn.Module, optimizer) -> dict:
    """FSDP2 checkpoint state: the model's own keys under ``model`` (so `consolidate` gives a
    file that loads like a trained model), ``extra``'s under ``extra``, the optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(params, optimizer)}
    if _has_params(extra):
        state["extra"] = get_model_state_dict(extra)
    return state


def _dcp_apply(model: nn.Module, extra: nn.Module | None, params: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, state["model"])
    if "extra" in state:
        set_model_state_dict(extra, state["extra"])
    set_optimizer_state_dict(params, optimizer, state["optimizer"])


def truncate_log(path: Path, step: int) -> None:
    """Keep the log records up to ``step`` (those after the checkpoint we resume from are
    redone; a fresh start, step 0, keeps none)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = [r for r in read_jsonl(path, skip_torn=True) if r.get("step", 0) <= step]
    ckpt.atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
