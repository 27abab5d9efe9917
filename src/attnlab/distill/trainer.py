"""The distillation job: `distill(student_cfg, data_cfg, cfg, train_cfg, run_dir, teacher)`.

    teacher (frozen, eval mode, no grad; bf16 on CUDA)  ─┐ logits (or offline top-k) [+ hidden states]
    student (training)                                   ─┴> weight_soft * soft + weight_hard * CE (+ hidden)

Order of work: load the teacher, check vocabularies (a mismatch is an error before any
compute), tokenize the corpus with the teacher's tokenizer, build and initialize the
student, build the offline top-k cache if asked, train, evaluate student and teacher on the
fixed validation set, time both, and with ``baseline="scratch"`` train the same student
from a random init on the data alone for the same steps, batches and seed (in
``<run_dir>/scratch``). Optimizer, schedule, checkpoints, logging and evaluation are the
training job's (`attnlab.train`). The run dir gets config.json, metrics.jsonl, metrics.json
and checkpoints/latest.pt (``model`` + ``config``, so a student loads like any trained
model: ``load_pretrained(run_dir)``).

Data parallel (``train.distributed=ddp|fsdp``, one process per device under torchrun), as
the training job (`attnlab.train.distributed`): the student (and the hidden-state
projections) are wrapped with DDP or sharded with FSDP2; the teacher is frozen and
replicated on every rank (eval mode, no grad, not wrapped). Every rank takes its rows of
each global batch, losses are weighted by its share of the targets, logged numbers are
reduced over ranks and rank 0 alone writes files. Checkpoints: ``latest.pt`` by rank 0
(ddp) or a `torch.distributed.checkpoint` folder ``step_<N>.dcp`` (fsdp; model keys are the
student's, so `attnlab.train.checkpoint.consolidate` gives a loadable file). Rank 0 takes
the file locks of the shared caches (scratch baseline, offline top-k) for all ranks and
decides whether they hold the answer; the top-k cache is built by all ranks, each its share
of the batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from attnlab.data import DataConfig
from attnlab.distill.cache import TopKCache, cache_key, locked
from attnlab.distill.config import BASELINES, DistillConfig
from attnlab.distill.losses import HiddenStateLoss, TopK, distillation_loss, hard_loss
from attnlab.distill.student import capture_hidden, init_from_teacher, layer_map, transfer_config
from attnlab.model import ModelConfig, Transformer, flops_per_token, num_params
from attnlab.pretrained import Pretrained, build_corpus, load_pretrained
from attnlab.train import checkpoint as ckpt
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist, setup
from attnlab.train.logger import RunLogger, read_jsonl
from attnlab.train.loop import (
    _NullLogger,
    _progress,
    _set_rng,
    _truncate_log,
    check_world_size,
    end_of_step,
    evaluate,
    peak_memory_mib,
)
from attnlab.train.optim import make_optimizer, make_scheduler


def check_vocab(student_vocab: int | None, teacher: Pretrained) -> None:
    """Logit distillation needs one vocabulary: raise naming both sizes when they differ."""
    t_vocab = teacher.config.vocab_size
    if student_vocab is not None and student_vocab != t_vocab:
        raise ValueError(
            f"vocabulary mismatch: the student has model.vocab_size={student_vocab} but the teacher "
            f"({teacher.source}, tokenizer {teacher.tokenizer.fingerprint()}) has {t_vocab}; distillation "
            "compares the two models' distributions token by token, so they need the same vocabulary: "
            "leave model.vocab_size null (it takes the teacher's) or pick a teacher with this vocabulary"
        )


def _teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _write_record(run_dir: Path, record: dict | None, write: bool = True, **sections) -> dict:
    record = dict(record or {}, **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v
                                   for k, v in sections.items()})
    if write:
        (run_dir / "config.json").write_text(json.dumps(record, indent=2, default=str))
    return record


@torch.no_grad()
def forward_tokens_per_s(model: Transformer, x: torch.Tensor, repeats: int, autocast) -> float | None:
    """Inference throughput (eval mode, no grad): ``x.numel()`` over the median time of
    ``repeats`` forward passes after one warm-up; None for ``repeats=0``."""
    if repeats < 1:
        return None
    was_training = model.training
    model.eval()
    times = []
    for r in range(repeats + 1):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        with autocast:
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        if r:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return x.numel() / statistics.median(times)


def _batch(corpus, index: int, device,
           dist: Dist | None = None) -> tuple[torch.Tensor, torch.Tensor, dict, float, float]:
    """``(x, y, model kwargs, share, weight)``: this rank's rows of train batch ``index``
    (`Dist.shard_batch`; one process: the whole batch, 1.0, 1.0); with
    ``data.pack_documents`` the kwargs carry ``doc_ids`` (attention kept inside each
    document), for student and teacher."""
    dist = dist or Dist()
    x, y, *docs = corpus.train_batch(index, with_doc_ids=getattr(corpus.config, "pack_documents", False))
    kwargs = {"doc_ids": docs[0][dist.rows(x.shape[0])].to(device)} if docs else {}
    x, y, share, weight = dist.shard_batch(x, y)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True), kwargs, share, weight


def _has_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _dcp_state(student: nn.Module, extra: nn.Module | None, params: nn.Module, optimizer) -> dict:
    """FSDP2 checkpoint state: the student's own keys under ``model`` (so `consolidate` gives
    a file that loads like a trained model), the projections under ``hidden``, the optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(student), "optimizer": get_optimizer_state_dict(params, optimizer)}
    if _has_params(extra):
        state["hidden"] = get_model_state_dict(extra)
    return state


def _dcp_apply(student: nn.Module, extra: nn.Module | None, params: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(student, state["model"])
    if "hidden" in state:
        set_model_state_dict(extra, state["hidden"])
    set_optimizer_state_dict(params, optimizer, state["optimizer"])


def _fit(student: Transformer, extra: nn.Module | None, corpus, model_cfg: ModelConfig, cfg: TrainConfig,
         run_dir: Path, record: dict, autocast, step_losses, resume: bool, dist: Dist) -> dict:
    """Train ``student`` (and ``extra``'s parameters, e.g. hidden-state projections) on
    ``step_losses(batch_index, x, y, kwargs, student, extra) -> {"loss": ..., other logged
    terms}`` (x, y: this rank's rows; kwargs: ``doc_ids`` for packed documents; student /
    extra: the modules to call, DDP wrappers when distributed); the train job's optimizer,
    schedule, checkpoints, eval and data parallelism. Returns the last train record, the
    last eval and the loop's tokens/s (on every rank)."""
    main, device, sharded = dist.is_main, dist.device, dist.mode == "fsdp"
    ckpt_dir = run_dir / "checkpoints"
    found, state = ckpt.open_for_resume(ckpt_dir, resume, dist)
    if state is not None:
        student.load_state_dict(state["model"])
        if extra is not None:
            extra.load_state_dict(state["extra"])
    train_student = dist.wrap(student)  # DDP: a wrapper; FSDP2: `student` itself, sharded in place
    train_extra = dist.wrap(extra) if _has_params(extra) else extra
    params = nn.ModuleDict({"student": student, **({"extra": extra} if extra is not None else {})})
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    if dist.rank > 0:
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # own dropout stream per rank
    start = 0
    if found:
        if sharded:
            dcp_state = _dcp_state(student, extra, params, optimizer)
            state = ckpt.load_sharded(dcp_state, found, dist)
            _dcp_apply(student, extra, params, optimizer, dcp_state)
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        _set_rng(state, dist, cfg.seed, start)
        if main:
            _truncate_log(run_dir / "metrics.jsonl", start)
    elif main and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    logger = RunLogger(run_dir, cfg, record, resume=resume) if main else _NullLogger()
    bar = _progress(cfg, start) if main else None
    tokens_per_step = corpus.config.batch_size * corpus.config.context * cfg.grad_accum  # the global batch

    def save(step: int) -> None:
        rng = dist.gather_objects(ckpt.rng_states())
        meta = {"scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng, "step": step,
                "config": record, "world_size": dist.world, "distributed": dist.mode}
        if sharded:
            ckpt.save_sharded(_dcp_state(student, extra, params, optimizer), meta, ckpt_dir, step, dist)
        elif main:
            ckpt.atomic_save({"model": student.state_dict(), "extra": extra.state_dict() if extra is not None else None,
                              "optimizer": optimizer.state_dict(), **meta}, ckpt_dir / ckpt.LATEST)

    last, t_run, tokens_run = {}, time.perf_counter(), 0
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            x, y, kwargs, share, weight = _batch(corpus, index, device, dist)
            with contextlib.ExitStack() as no_sync:
                for module in filter(_has_params, (train_student, train_extra)):
                    no_sync.enter_context(dist.no_grad_sync(module, last_micro=micro == cfg.grad_accum - 1))
                losses = step_losses(index, x, y, kwargs, train_student, train_extra)
                (losses["loss"] * weight / cfg.grad_accum if weight != 1.0 else losses["loss"] / cfg.grad_accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * share / cfg.grad_accum
        sums = dict(zip(sums, dist.sum(list(sums.values())), strict=True))  # the global batch's means
        grad_norm = torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        if not (math.isfinite(sums["loss"]) and math.isfinite(float(grad_norm))):
            logger.close()
            raise FloatingPointError(f"non-finite loss or gradient norm at step {step + 1}: {sums}")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        tokens_run += tokens_per_step
        done = step + 1
        last = {"step": done, "train_loss": sums.pop("loss"), **{f"{k}_loss": v for k, v in sums.items()},
                "lr": lr, "grad_norm": float(grad_norm), "step_time_s": dt, "tokens_per_s": tokens_per_step / dt}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['train_loss']:.3f}")
        if end_of_step(done, last, cfg, logger, bar, save,
                       lambda: evaluate(student, corpus, model_cfg, cfg, device, autocast, dist)):
            return {"stopped": done}
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_run
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "eval"] if main else []
    logger.close()
    return {"last": last, "eval": dist.broadcast_object(evals[-1] if evals else {}),
            "tokens_per_s": tokens_run / elapsed if elapsed > 0 and tokens_run else None}


def _teacher_eval(teacher: Pretrained, model: Transformer, corpus, cfg: TrainConfig, autocast, root: Path,
                  dtype: torch.dtype, dist: Dist) -> dict:
    """The teacher's val metrics on the fixed validation set, cached on disk per
    (teacher, tokenizer, corpus, val windows, eval_batches, batch size, dtype)."""
    key = cache_key({"teacher": teacher.fingerprint, "tokens": corpus.cache_paths["tokens"],
                     "context": corpus.config.context, "val_tokens": corpus.config.val_tokens,
                     "batch_size": corpus.config.batch_size, "eval_batches": cfg.eval_batches, "dtype": str(dtype)})
    path = root / "teacher_eval" / f"{key}.json"
    cached = dist.broadcast_object(json.loads(path.read_text()) if dist.is_main and path.exists() else None)
    if cached is not None:  # rank 0 decides, so that every rank evaluates or none does
        return cached
    out = evaluate(model, corpus, teacher.config, cfg, dist.device, autocast, dist)
    if dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out


def distill(student_cfg: ModelConfig, data_cfg: DataConfig, cfg: DistillConfig, train_cfg: TrainConfig, run_dir,
            teacher: str | Pretrained, baseline: str = "none", resume: bool = False,
            config_record: dict | None = None, dist: Dist | None = None) -> dict:
    """Distill ``teacher`` (a `Pretrained` or a `load_pretrained` source) into a student
    (module docstring); returns the final metrics (also written to metrics.json).
    ``dist``: the process group to use (else `setup(train_cfg.distributed)` joins one and
    leaves it at the end)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} must be one of {', '.join(BASELINES)}")
    own = dist is None
    dist = setup(train_cfg.distributed, train_cfg.device) if own else dist
    try:
        return _distill(student_cfg, data_cfg, cfg, train_cfg, Path(run_dir), teacher, baseline, resume,
                        config_record, dist)
    finally:
        if own:
            dist.close()


def _distill(student_cfg: ModelConfig, data_cfg: DataConfig, cfg: DistillConfig, train_cfg: TrainConfig,
             run_dir: Path, teacher: str | Pretrained, baseline: str, resume: bool, config_record: dict | None,
             dist: Dist) -> dict:
    main, device = dist.is_main, dist.device
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _write_record(run_dir, config_record, write=main, model=student_cfg, data=data_cfg, distill=cfg,
                           train=train_cfg)
    check_world_size(data_cfg, dist.world)

    # ---------------------------------------------------------------- teacher, vocab, data
    pre = teacher if isinstance(teacher, Pretrained) else load_pretrained(
        teacher, context=None, cache_dir=data_cfg.resolved_cache_dir(), needed_context=data_cfg.context)
    check_vocab(student_cfg.vocab_size, pre)
    if cfg.init == "teacher":
        student_cfg = transfer_config(pre.config, student_cfg.attention, student_cfg.layer_pattern,
                                      attn_impl=student_cfg.attn_impl, dropout=student_cfg.dropout)
    if "causal" != student_cfg.objective or "causal" != pre.config.objective:
        raise ValueError(f"distillation needs causal LMs; student objective={student_cfg.objective!r}, "
                         f"teacher objective={pre.config.objective!r}")
    for who, context in (("model.context (student)", student_cfg.context), ("the teacher's context", pre.config.context)):
        if data_cfg.context > context:
            raise ValueError(f"data.context={data_cfg.context} exceeds {who}={context}")
    if not main:
        dist.barrier()  # rank 0 fills the token cache first
    corpus = build_corpus(data_cfg, pre.tokenizer)
    if main:
        dist.barrier()
    if student_cfg.vocab_size is None:
        student_cfg = replace(student_cfg, vocab_size=corpus.tokenizer.vocab_size)
    check_vocab(student_cfg.vocab_size, pre)
    record = _write_record(run_dir, config_record, write=main, model=student_cfg, data=corpus.config, distill=cfg,
                           train=train_cfg)
    record["teacher_model"] = asdict(pre.config)
    record["tokenizer"] = corpus.tokenizer.fingerprint()

    # ---------------------------------------------------------------- student
    t_model = pre.model
    torch.manual_seed(train_cfg.seed)
    student = Transformer(student_cfg)
    copied = {}
    if cfg.init == "layer_map":
        copied = init_from_teacher(student, t_model, layer_map(cfg.layer_map, student_cfg.n_layers, pre.config.n_layers))
    elif cfg.init == "teacher":
        copied = init_from_teacher(student, t_model, list(range(student_cfg.n_layers)))
    student.to(device)
    hidden = None
    if cfg.hidden_weight > 0:
        ids = layer_map(cfg.hidden_layer_map or "top", student_cfg.n_layers, pre.config.n_layers)
        hidden = HiddenStateLoss(list(enumerate(ids)), student_cfg.d_model, pre.config.d_model, cfg.hidden_loss).to(device)
    t_dtype = _teacher_dtype(cfg.teacher_dtype, device)
    t_model = t_model.to(device=device, dtype=t_dtype).eval().requires_grad_(False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else data_cfg.resolved_cache_dir() / "distill"

    # ---------------------------------------------------------------- offline top-k cache
    cache, cache_info = None, None
    if cfg.offline:
        cache = TopKCache(root, {"teacher": pre.fingerprint, "tokenizer": corpus.tokenizer.fingerprint(),
                                 "tokens": corpus.cache_paths["tokens"], "seed": data_cfg.seed, "dtype": str(t_dtype),
                                 "pack_documents": getattr(data_cfg, "pack_documents", False)},
                          data_cfg.batch_size, data_cfg.context, cfg.top_k, pre.config.vocab_size)

        @torch.no_grad()
        def teacher_topk(i: int) -> TopK:
            x, _, kwargs, _, _ = _batch(corpus, i, device)  # the global batch
            with autocast:
                logits, _ = t_model(x, **kwargs)
            return TopK.of(logits.float(), cfg.top_k)

        t0 = time.perf_counter()
        built = cache.build(train_cfg.steps * train_cfg.grad_accum, teacher_topk, dist=dist)
        cache_info = {"key": cache.key, "folder": str(cache.folder), "built_batches": built,
                      "build_s": time.perf_counter() - t0}

    t_layers = sorted({t for _, t in hidden.layer_map}) if hidden is not None else []
    s_layers = sorted({s for s, _ in hidden.layer_map}) if hidden is not None else []

    def kd_losses(index: int, x: torch.Tensor, y: torch.Tensor, kwargs: dict, train_student, train_hidden) -> dict:
        t_hidden = {}
        if cache is not None:
            t_logits = cache.get(index, device, rows=dist.rows(data_cfg.batch_size))
        else:
            with torch.no_grad(), capture_hidden(t_model, t_layers) as t_hidden, autocast:
                t_logits, _ = t_model(x, **kwargs)
            t_hidden = dict(t_hidden)
            if cfg.top_k is not None:
                t_logits = TopK.of(t_logits, cfg.top_k)
        with capture_hidden(student, s_layers) as s_hidden, autocast:
            s_logits, _ = train_student(x, **kwargs)
        out = distillation_loss(s_logits, t_logits, y, kind=cfg.loss, temperature=cfg.temperature, beta=cfg.beta,
                                weight_hard=cfg.weight_hard, weight_soft=cfg.weight_soft)
        if hidden is not None:
            out["hidden"] = train_hidden(s_hidden, t_hidden)
            out["loss"] = out["loss"] + cfg.hidden_weight * out["hidden"]
        return out

    # ---------------------------------------------------------------- train, evaluate, time
    init_eval = {}
    if cfg.init != "random":  # the student before training (attention transfer: "before" numbers)
        init_file = run_dir / "init_eval.json"
        init_eval = dist.broadcast_object(json.loads(init_file.read_text()) if main and resume and init_file.exists()
                                          else None)
        if init_eval is None:
            init_eval = evaluate(student, corpus, student_cfg, train_cfg, device, autocast, dist)
            if main:
                init_file.write_text(json.dumps(init_eval))
    fit = _fit(student, hidden, corpus, student_cfg, train_cfg, run_dir, record, autocast, kd_losses, resume, dist)
    if "stopped" in fit:
        return {"status": "stopped", "step": fit["stopped"]}
    t_eval = _teacher_eval(pre, t_model, corpus, train_cfg, autocast, root, t_dtype, dist)
    t_model.eval()  # evaluate() leaves a model in train mode
    x0, _ = corpus.train_batch(0)
    x0 = x0.to(device)
    s_tps = forward_tokens_per_s(student, x0, cfg.throughput_batches, autocast)
    t_tps = forward_tokens_per_s(t_model, x0, cfg.throughput_batches, autocast)
    metrics = {
        "status": "complete",
        "config_hash": record.get("config_hash"),
        "steps": train_cfg.steps,
        **{k: v for k, v in fit["last"].items() if k.endswith("_loss")},
        **{k: v for k, v in fit["eval"].items() if k.startswith("val_")},
        **{f"teacher_{k}": v for k, v in t_eval.items()},
        **{f"init_{k}": v for k, v in init_eval.items()},
    }

    # ---------------------------------------------------------------- scratch baseline
    if baseline == "scratch":
        metrics.update(_scratch(student_cfg, corpus, train_cfg, run_dir / "scratch", record, autocast, resume, root,
                                dist))
        gap = metrics["scratch_val_bpb"] - metrics["teacher_val_bpb"]
        metrics["gap_closed"] = (metrics["scratch_val_bpb"] - metrics["val_bpb"]) / gap if gap else None

    s_params, t_params = num_params(student), num_params(t_model)
    s_flops = flops_per_token(student_cfg, data_cfg.context)
    s_fpt = s_flops["total"]
    t_fpt = flops_per_token(pre.config, data_cfg.context)["total"]
    metrics.update({
        "params": s_params,
        "teacher_params": t_params,
        "params_ratio": s_params / t_params,
        "tokens_per_s": fit["tokens_per_s"],  # the distillation loop (teacher forward included unless offline)
        "student_forward_tokens_per_s": s_tps,
        "teacher_forward_tokens_per_s": t_tps,
        "tokens_per_s_ratio": s_tps / t_tps if s_tps and t_tps else None,
        "flops_per_token": s_fpt,
        "attention_flops_per_token": s_flops["attention"],  # the student's, as attnlab.train records
        "teacher_flops_per_token": t_fpt,
        "flops_ratio": s_fpt / t_fpt,
        "peak_memory_mib": dist.max(peak_memory_mib(device)),  # the largest process's
        "device": str(device),
        "distributed": dist.mode,
        "world_size": dist.world,
        "teacher": pre.source,
        "teacher_kind": pre.kind,
        "init": cfg.init,
        "initialized_from_teacher": len(copied),
        "loss": cfg.loss,
        "layer_specs": [s.name for s in student_cfg.layer_specs()],
        "teacher_layer_specs": [s.name for s in pre.config.layer_specs()],
        "offline_cache": cache_info,
    })
    if main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return dist.broadcast_object(metrics)  # rank 0's timings on every rank


def _scratch(student_cfg, corpus, train_cfg, run_dir: Path, record, autocast, resume, root: Path, dist: Dist) -> dict:
    """The same student from a random init (same seed) trained on the data alone, for the
    same steps and batches: its val metrics as ``scratch_*``. Kept under ``root/scratch``
    by (student, data, optimization): the runs of a sweep over distillation settings train
    each scratch baseline once (under a lock, so parallel runs wait for each other; rank 0
    holds it for the job and decides, so that every rank trains or none does)."""
    quiet = {"logger", "wandb_mode", "wandb_project", "wandb_group", "progress", "log_every", "ckpt_every", "stop_at"}
    key = cache_key({"model": asdict(student_cfg), "data": asdict(corpus.config), "tokens": corpus.cache_paths["tokens"],
                     "train": {k: v for k, v in asdict(train_cfg).items() if k not in quiet}, "device": dist.device.type})
    shared = root / "scratch" / f"{key}.json"
    with locked(root / "scratch" / key, hold=dist.is_main):
        cached = dist.broadcast_object(json.loads(shared.read_text()) if dist.is_main and shared.exists() else None)
        if cached is not None:
            return dict(cached, scratch_reused=str(shared))
        out = _train_scratch(student_cfg, corpus, train_cfg, run_dir, record, autocast, resume, dist)
        if dist.is_main:
            shared.write_text(json.dumps(dict(out, scratch_run_dir=str(run_dir)), indent=2))
        return out


def _train_scratch(student_cfg, corpus, train_cfg, run_dir: Path, record, autocast, resume, dist: Dist) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "scratch_metrics.json"
    finished = dist.broadcast_object(json.loads(done.read_text()) if dist.is_main and resume and done.exists() else None)
    if finished is not None:
        return finished
    torch.manual_seed(train_cfg.seed)
    model = Transformer(student_cfg).to(dist.device)
    cfg = replace(train_cfg, logger="jsonl", stop_at=None)

    def ce(index, x, y, kwargs, train_model, _):
        with autocast:
            logits, _ = train_model(x, **kwargs)
        return {"loss": hard_loss(logits, y)}

    fit = _fit(model, None, corpus, student_cfg, cfg, run_dir, dict(record, baseline="scratch"), autocast, ce, resume,
               dist)
    out = {f"scratch_{k}": v for k, v in fit["eval"].items() if k.startswith("val_")}
    out["scratch_train_loss"] = fit["last"].get("train_loss")
    if dist.is_main:
        done.write_text(json.dumps(out, indent=2))
    return out
