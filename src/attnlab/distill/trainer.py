"""The distillation job: `distill(student_cfg, data_cfg, cfg, train_cfg, run_dir, teacher)`.

    teacher (frozen, eval mode, no grad; bf16 on CUDA)  ─┐ logits (or offline top-k) [+ hidden states]
    student (training)                                   ─┴> weight_soft * soft + weight_hard * CE (+ hidden)

Order of work: load the teacher, check vocabularies (a mismatch is an error before any
compute), tokenize the corpus with the teacher's tokenizer, build and initialize the
student, build the offline top-k cache if asked, train, evaluate student and teacher on the
fixed validation set, time both, and with ``baseline="scratch"`` train the same student
from a random init on the data alone for the same steps, batches and seed (in
``<run_dir>/scratch``). The loop (optimizer, schedule, resume, checkpoints, logging,
evaluation, fault checks) is the training job's, `attnlab.train.fit_loop`, with the distillation
loss as its step loss; the run dir is locked and reruns behave as the training job's
(`attnlab.train.rundir`). The run dir gets config.json, metrics.jsonl, metrics.json
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

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from attnlab.data import DataConfig
from attnlab.distill.cache import TopKCache
from attnlab.distill.config import BASELINES, DistillConfig
from attnlab.distill.losses import HiddenStateLoss, TopK, distillation_loss
from attnlab.distill.measure import forward_tokens_per_s, teacher_eval
from attnlab.distill.scratch import scratch_baseline
from attnlab.distill.student import capture_hidden, init_from_teacher, layer_map, transfer_config
from attnlab.model import ModelConfig, Transformer, flops_per_token, num_params
from attnlab.pretrained import Pretrained, build_corpus, load_pretrained
from attnlab.train import rundir
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist, setup
from attnlab.train.fit_loop import Batch, Fitted, fit
from attnlab.train.loop import check_world_size, evaluate, peak_memory_mib


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


def distill(student_cfg: ModelConfig, data_cfg: DataConfig, cfg: DistillConfig, train_cfg: TrainConfig, run_dir,
            teacher: str | Pretrained, baseline: str = "none", resume: bool | str = False,
            config_record: dict | None = None, dist: Dist | None = None) -> dict:
    """Distill ``teacher`` (a `Pretrained` or a `load_pretrained` source) into a student
    (module docstring); returns the final metrics (also written to metrics.json).
    ``resume``: false | true | "auto" | "force", as for `attnlab.train.loop.train`.
    ``dist``: the process group to use (else `setup(train_cfg.distributed)` joins one and
    leaves it at the end)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} must be one of {', '.join(BASELINES)}")
    own = dist is None
    dist = setup(train_cfg.distributed, train_cfg.device) if own else dist
    try:
        run_dir = Path(run_dir)
        with rundir.locked(run_dir, dist):
            return _distill(student_cfg, data_cfg, cfg, train_cfg, run_dir, teacher, baseline, resume,
                            config_record, dist)
    finally:
        if own:
            dist.close()


def _global_batch(corpus, index: int, device) -> tuple[torch.Tensor, dict]:
    """Train micro-batch ``index``'s inputs (all rows) and model kwargs (``doc_ids`` when
    documents are packed), on ``device``: what the teacher sees when building the cache."""
    x, _, *docs = corpus.train_batch(index, with_doc_ids=getattr(corpus.config, "pack_documents", False))
    return x.to(device), ({"doc_ids": docs[0].to(device)} if docs else {})


def _distill(student_cfg: ModelConfig, data_cfg: DataConfig, cfg: DistillConfig, train_cfg: TrainConfig,
             run_dir: Path, teacher: str | Pretrained, baseline: str, resume: bool | str, config_record: dict | None,
             dist: Dist) -> dict:
    main, device = dist.is_main, dist.device
    rundir.record_start(run_dir, rundir.record_of(config_record, model=student_cfg, data=data_cfg, distill=cfg,
                                                  train=train_cfg), dist)
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
    record = rundir.record_of(config_record, model=student_cfg, data=corpus.config, distill=cfg, train=train_cfg)
    plan = rundir.start(run_dir, record, resume, dist, sharded=dist.mode == "fsdp")
    if plan.done is not None:
        return plan.done
    resume = plan.resume
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
            x, kwargs = _global_batch(corpus, i, device)
            with autocast:
                logits, _ = t_model(x, **kwargs)
            return TopK.of(logits.float(), cfg.top_k)

        t0 = time.perf_counter()
        built = cache.build(train_cfg.steps * train_cfg.grad_accum, teacher_topk, dist=dist)
        cache_info = {"key": cache.key, "folder": str(cache.folder), "built_batches": built,
                      "build_s": time.perf_counter() - t0}

    t_layers = sorted({t for _, t in hidden.layer_map}) if hidden is not None else []
    s_layers = sorted({s for s, _ in hidden.layer_map}) if hidden is not None else []

    def kd_losses(batch: Batch, train_student, train_hidden) -> dict:
        x, y, kwargs = batch.x, batch.y, batch.kwargs
        t_hidden = {}
        if cache is not None:
            t_logits = cache.get(batch.index, device, rows=dist.rows(data_cfg.batch_size))
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
    def summary(fitted: Fitted) -> dict:
        t_eval = teacher_eval(pre, t_model, corpus, train_cfg, autocast, root, t_dtype, dist)
        t_model.eval()  # evaluate() leaves a model in train mode
        x0 = corpus.train_batch(0)[0].to(device)
        s_tps = forward_tokens_per_s(student, x0, cfg.throughput_batches, autocast)
        t_tps = forward_tokens_per_s(t_model, x0, cfg.throughput_batches, autocast)
        metrics = {
            "status": "complete",
            "config_hash": record.get("config_hash"),
            "steps": train_cfg.steps,
            **{k: v for k, v in fitted.last.items() if k.endswith("_loss")},
            **{k: v for k, v in fitted.eval.items() if k.startswith("val_")},
            **{f"teacher_{k}": v for k, v in t_eval.items()},
            **{f"init_{k}": v for k, v in init_eval.items()},
        }
        if baseline == "scratch":
            metrics.update(scratch_baseline(student_cfg, corpus, train_cfg, run_dir / "scratch", record, autocast,
                                            resume, root, dist))
            gap = metrics["scratch_val_bpb"] - metrics["teacher_val_bpb"]
            metrics["gap_closed"] = (metrics["scratch_val_bpb"] - metrics["val_bpb"]) / gap if gap else None
        s_params, t_params = num_params(student), num_params(t_model)
        s_flops = flops_per_token(student_cfg, data_cfg.context)
        t_fpt = flops_per_token(pre.config, data_cfg.context)["total"]
        return metrics | {
            "params": s_params,
            "teacher_params": t_params,
            "params_ratio": s_params / t_params,
            "tokens_per_s": fitted.tokens_per_s,  # the distillation loop (teacher forward included unless offline)
            "student_forward_tokens_per_s": s_tps,
            "teacher_forward_tokens_per_s": t_tps,
            "tokens_per_s_ratio": s_tps / t_tps if s_tps and t_tps else None,
            "flops_per_token": s_flops["total"],
            "attention_flops_per_token": s_flops["attention"],  # the student's, as attnlab.train records
            "teacher_flops_per_token": t_fpt,
            "flops_ratio": s_flops["total"] / t_fpt,
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
        }

    fitted = fit(student, kd_losses, corpus, train_cfg, run_dir, record=record, resume=resume, dist=dist, extra=hidden,
                 summary=summary, evaluate=lambda: evaluate(student, corpus, student_cfg, train_cfg, device, autocast, dist))
    if fitted.status == "stopped":
        return {"status": "stopped", "step": fitted.step}
    return fitted.metrics  # rank 0's timings on every rank
