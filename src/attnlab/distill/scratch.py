"""The scratch baseline of a distillation run: the same student from a random init (same
seed) trained on the data alone, for the same steps and batches, by the same loop (`fit`)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from attnlab.distill.cache import cache_key, locked
from attnlab.distill.losses import hard_loss
from attnlab.model import Transformer
from attnlab.train.distributed import Dist
from attnlab.train.fit_loop import fit
from attnlab.train.loop import evaluate
from attnlab.train.rundir import train_keys_not_results


def scratch_baseline(student_cfg, corpus, train_cfg, run_dir: Path, record, autocast, resume: bool, root: Path,
                     dist: Dist) -> dict:
    """The scratch student's val metrics as ``scratch_*``. Kept under ``root/scratch`` by
    (student, data, optimization): the runs of a sweep over distillation settings train
    each scratch baseline once (under a lock, so parallel runs wait for each other; rank 0
    holds it for the job and decides, so that every rank trains or none does). Trained in
    ``run_dir`` (``<distill run>/scratch``)."""
    quiet = train_keys_not_results()
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


def _train_scratch(student_cfg, corpus, train_cfg, run_dir: Path, record, autocast, resume: bool, dist: Dist) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "scratch_metrics.json"
    finished = dist.broadcast_object(json.loads(done.read_text()) if dist.is_main and resume and done.exists() else None)
    if finished is not None:
        return finished
    torch.manual_seed(train_cfg.seed)
    model = Transformer(student_cfg).to(dist.device)
    cfg = replace(train_cfg, logger="jsonl", stop_at=None)

    def ce(batch, train_model, _extra) -> dict:
        with autocast:
            logits, _ = train_model(batch.x, **batch.kwargs)
        return {"loss": hard_loss(logits, batch.y)}

    fitted = fit(model, ce, corpus, cfg, run_dir, record=dict(record, baseline="scratch"), resume=resume, dist=dist,
                 evaluate=lambda: evaluate(model, corpus, student_cfg, cfg, dist.device, autocast, dist))
    out = {f"scratch_{k}": v for k, v in fitted.eval.items() if k.startswith("val_")}
    out["scratch_train_loss"] = fitted.last.get("train_loss")
    if dist.is_main:
        done.write_text(json.dumps(out, indent=2))
    return out
