"""What distillation measures besides the loop's own numbers: inference throughput of
student and teacher, and the teacher's val metrics (cached on disk)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from attnlab.distill.cache import cache_key
from attnlab.model import Transformer
from attnlab.pretrained import Pretrained
from attnlab.train.config import TrainConfig
from attnlab.train.distributed import Dist
from attnlab.train.loop import evaluate


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


def teacher_eval(teacher: Pretrained, model: Transformer, corpus, cfg: TrainConfig, autocast, root: Path,
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
