"""The training job: `train(model_cfg, data_cfg, train_cfg, run_dir) -> final metrics`.

It builds the model and says what a step's loss is (cross-entropy, or masked LM); the loop
itself, with exact resume, data parallelism, logging, evaluation, fault checks and
checkpoints, is `attnlab.train.fit_loop.fit`, shared with distillation. The run dir is locked
while the job writes it, and a rerun never destroys a run (`attnlab.train.rundir`).
Also here: `evaluate` (val loss and bits per byte; recall accuracy for tasks).
"""

from __future__ import annotations

import math
import resource
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from attnlab.data import DataConfig, bits_per_byte, build_data
from attnlab.model import ModelConfig, Transformer, flops_per_token, mask_tokens, num_params
from attnlab.train import pretrained_init, rundir
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist, setup
from attnlab.train.fit_loop import Batch, Fitted, fit
from attnlab.train.trainable import frozen_state_keys, set_trainable

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


def train(model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig, run_dir, resume: bool | str = False,
          config_record: dict | None = None, corpus=None, dist: Dist | None = None, init=None) -> dict:
    """Train; returns the final metrics (``{"status": "stopped", ...}`` at ``cfg.stop_at``).

    ``resume``: false | true | "auto" | "force": what to do with a run the dir already holds
    (`attnlab.train.rundir`; a complete run of this config is not redone: its metrics are
    returned). ``corpus``: an already built `Corpus` of ``data_cfg`` (else it is built here).
    ``dist``: the process group to use (else `setup(cfg.distributed)` joins one and leaves it
    at the end). ``init``: a `Pretrained` to start from (`attnlab.train.pretrained_init`):
    ``model_cfg`` is its architecture (`init_model_config`), the corpus is tokenized with its
    tokenizer, and the run starts from its weights.

    ``cfg.trainable`` (`attnlab.train.trainable`) freezes the rest of the model and may add
    LoRA adapters. A run from ``init`` that freezes weights saves only what it trains, plus
    ``base`` (the init source and its file's checksum): ``load_pretrained(run_dir)`` rebuilds
    the full model from both, adapters merged. Other runs save every weight.
    """
    own = dist is None
    dist = setup(cfg.distributed, cfg.device) if own else dist
    try:
        run_dir = Path(run_dir)
        with rundir.locked(run_dir, dist):
            return _train(model_cfg, data_cfg, cfg, run_dir, resume, config_record, corpus, dist, init)
    finally:
        if own:
            dist.close()


def build_model(model_cfg: ModelConfig, cfg: TrainConfig, init=None) -> tuple[Transformer, dict]:
    """The model a run starts from, on the CPU: seeded random weights, or ``init``'s (a
    `Pretrained` of this architecture); then ``cfg.trainable`` adds LoRA adapters and freezes
    the rest (`attnlab.train.trainable`). Returns ``(model, {"trainable": n, "frozen": n})``."""
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg)
    if init is not None:
        model.load_state_dict(init.model.state_dict())  # same parameters; RoPE tables are rebuilt
    return model, set_trainable(model, cfg.trainable, cfg.lora)


def lm_loss(model_cfg: ModelConfig, autocast):
    """The step loss of language modelling (`fit`'s ``step_loss``): the model's own
    cross-entropy (causal, or over the masked positions for MLM)."""

    def step_loss(batch: Batch, model, _extra) -> dict:
        with autocast:
            logits, loss = model(batch.x, batch.y, **batch.kwargs)
        if batch.share == 0.0:  # no target on this rank (mlm): zero gradients, yet every param in the graph
            loss = logits.float().sum() * 0.0
        return {"loss": loss}

    return step_loss


def _train(model_cfg, data_cfg, cfg: TrainConfig, run_dir: Path, resume, config_record, corpus, dist: Dist,
           init=None) -> dict:
    main = dist.is_main
    rundir.record_start(run_dir, rundir.record_of(config_record, model=model_cfg, data=data_cfg, train=cfg), dist)
    device = dist.device
    check_world_size(data_cfg, dist.world)
    if corpus is None:
        if not main:
            dist.barrier()  # rank 0 fills the token cache first
        corpus = build_data(data_cfg) if init is None else pretrained_init.init_corpus(data_cfg, init)
        if main:
            dist.barrier()
    if init is not None:
        data_cfg = corpus.config  # records the tokenizer it was given where DataConfig can say it
        pretrained_init.check_init_context(data_cfg, model_cfg, init)
    model_cfg = check_against_corpus(model_cfg, data_cfg, corpus)
    record = rundir.record_of(config_record, model=model_cfg, data=data_cfg, train=cfg)
    if init is not None:
        if record.get("init") is None:
            record["init"] = init.source
        record.update(pretrained_init.init_record(init, corpus))
    plan = rundir.start(run_dir, record, resume, dist, sharded=dist.mode == "fsdp")
    if plan.done is not None:
        return plan.done

    model, counts = build_model(model_cfg, cfg, init)
    model.to(device)
    # a run from init that freezes weights saves what it trains; the rest is the init file's
    partial = init is not None and cfg.frozen and dist.mode != "fsdp"
    frozen_keys = frozen_state_keys(model) if partial else set()
    base = {"base": pretrained_init.base_entry(init)} if partial else None
    amp = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    # packed documents: attention FLOPs of the first training batch's documents (a sample)
    sample_docs = corpus.train_batch(0, with_doc_ids=True)[2] if data_cfg.pack_documents else None
    fpt = flops_per_token(model_cfg, data_cfg.context, doc_ids=sample_docs)
    tokens_per_step = data_cfg.batch_size * data_cfg.context * cfg.grad_accum  # the global batch
    peak = peak_flops(device)

    def global_batch(index: int) -> tuple:
        x, y, *docs = corpus.train_batch(index, with_doc_ids=data_cfg.pack_documents)
        if model_cfg.objective == "mlm":
            x, y = _mlm_batch(x, model_cfg, cfg.seed, index // cfg.grad_accum, index % cfg.grad_accum)
        return x, y, docs[0] if docs else None

    def summary(fitted: Fitted) -> dict:
        peak_mib = dist.max(peak_memory_mib(device))
        elapsed, tokens_run = fitted.elapsed_s, fitted.tokens_run
        attn_fwd_bwd = fpt["attention"]
        return {
            "status": "complete",
            "config_hash": record.get("config_hash"),
            "steps": cfg.steps,
            "train_loss": fitted.last.get("train_loss"),
            **{k: v for k, v in fitted.eval.items() if k.startswith("val_")},
            "tokens_per_s": fitted.tokens_per_s,
            "step_time_s": elapsed / (cfg.steps - fitted.start) if cfg.steps > fitted.start else None,
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
            **({"init": record.get("init"), "init_fingerprint": record.get("init_fingerprint")} if init else {}),
            "trainable": cfg.trainable,
            "params_trainable": counts["trainable"],
            "checkpoint_weights": "trainable" if partial else "all",
        }

    fitted = fit(model, lm_loss(model_cfg, autocast), corpus, cfg, run_dir, record=record, resume=plan.resume,
                 dist=dist, global_batch=global_batch, summary=summary, frozen_keys=frozen_keys,
                 checkpoint_extra=base,
                 evaluate=lambda: evaluate(model, corpus, model_cfg, cfg, device, autocast, dist))
    if fitted.status == "stopped":
        return {"status": "stopped", "step": fitted.step}
    return fitted.metrics
