"""Attention conversion of a pretrained model: the same weights with another attention layout,
evaluated untrained and after healing (experiments/convert_smollm2).

Healing methods (each trains the student's attention projections only, ``train.trainable=
attention``, through `attnlab.train.fit`, so runs resume and checkpoints hold what trains):

- ``ce``: cross-entropy on the data;
- ``kd``: forward KL (T = 1) to the dense original's full next-token distribution;
- ``match``: layer-wise attention-output matching only (`attnlab.distill.layer_match`: each
  converted layer trained on the teacher's inputs to reproduce the teacher layer's output);
- ``match_kd``: ``match`` then ``kd`` from its result (LoLCATs-style: layer matching, then
  end-to-end healing), each stage with its own steps and learning rate.

`evaluate_model` scores bits per byte on fixed validation windows (with each window's sums, for
intervals paired by window), bpb by position, and passkey retrieval prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from attnlab.distill.layer_match import attention_match_loss, converted_layers
from attnlab.distill.losses import distillation_loss
from attnlab.distill.student import transfer_config
from attnlab.eval.bpb import position_curve, position_losses
from attnlab.eval.passkey import score_prompts
from attnlab.model import Transformer
from attnlab.model.flops import flops_per_token
from attnlab.train.config import TrainConfig
from attnlab.train.fit_loop import Batch, fit
from attnlab.train.trainable import frozen_state_keys, set_trainable

METHODS = ("ce", "kd", "match", "match_kd")


@dataclass(frozen=True)
class Heal:
    """One healing run: ``method`` (`METHODS`), optimizer ``steps`` and peak ``lr`` (cosine to
    lr / 10 after ``warmup`` steps), ``seed`` (the data order), and for ``match_kd`` the
    matching stage's ``match_steps`` / ``match_lr`` (``steps`` / ``lr`` are then the KD stage's)."""

    method: str
    steps: int
    lr: float
    seed: int = 0
    warmup: int = 2
    match_steps: int = 0
    match_lr: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"heal method={self.method!r} must be one of {', '.join(METHODS)}")
        for name in ("steps", "warmup") + (("match_steps",) if self.method == "match_kd" else ()):
            v = getattr(self, name)
            low = 0 if name == "warmup" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"heal {name}={v!r} must be an int >= {low}")
        for name in ("lr",) + (("match_lr",) if self.method == "match_kd" else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"heal {name}={v!r} must be a finite number > 0")


def convert(teacher: Transformer, attention: dict, layer_pattern: list[str]) -> Transformer:
    """A new model: the teacher's weights with the layout ``attention`` / ``layer_pattern``."""
    student = Transformer(transfer_config(teacher.config, attention, layer_pattern))
    student.load_state_dict(teacher.state_dict())
    return student


def attention_flops(model_cfg, seq_len: int) -> float:
    """Training attention FLOPs per token at ``seq_len`` (mask-exact; RoPE context is not
    needed for counting, so the config's context is raised when shorter)."""
    cfg = replace(model_cfg, context=max(model_cfg.context, seq_len))
    return flops_per_token(cfg, seq_len)["attention"]


def _train_config(steps: int, lr: float, heal: Heal, device: str, trainable) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(heal.warmup, steps - 1), weight_decay=0.0,
                       eval_every=0, log_every=1, ckpt_every=0, seed=heal.seed, device=device, progress=False,
                       logger="jsonl", trainable=trainable)


def _fit(student, step_loss, corpus, cfg: TrainConfig, run_dir: Path, record: dict):
    set_trainable(student, cfg.trainable)
    resume = (run_dir / "checkpoints").exists()
    fitted = fit(student, step_loss, corpus, cfg, run_dir, evaluate=dict, record=record, resume=resume,
                 frozen_keys=frozen_state_keys(student))
    for p in student.parameters():
        p.requires_grad_(False)
    return {"steps": cfg.steps, "lr": cfg.lr, "last_train_loss": fitted.last.get("train_loss"),
            "seconds": fitted.elapsed_s}


def heal(student: Transformer, teacher: Transformer, how: Heal, corpus, run_dir, device: str = "cpu") -> dict:
    """Train ``student`` in place by ``how`` on ``corpus`` (whose config seed should be
    ``how.seed``); ``teacher`` is the dense original (KD targets, matching inputs). Stages
    write under ``run_dir`` (``<run_dir>/<stage>``). Returns each stage's summary."""
    run_dir = Path(run_dir)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    stages = {}
    record = {"heal": how.__dict__, "attention": student.config.attention,
              "layer_pattern": student.config.layer_pattern}

    def ce(batch: Batch, model, _extra) -> dict:
        _, loss = model(batch.x, batch.y, **batch.kwargs)
        return {"loss": loss}

    def kd(batch: Batch, model, _extra) -> dict:
        with torch.no_grad():
            t_logits, _ = teacher(batch.x, **batch.kwargs)
        s_logits, _ = model(batch.x, **batch.kwargs)
        return distillation_loss(s_logits, t_logits, batch.y, kind="forward_kl", temperature=1.0, weight_soft=1.0,
                                 weight_hard=0.0)

    layers = converted_layers(student, teacher)

    def match(batch: Batch, model, _extra) -> dict:
        out = attention_match_loss(model, teacher, batch.x, layers, doc_ids=batch.kwargs.get("doc_ids"))
        return {"loss": out["loss"]}

    match_params = [f"layers.{i}.self_attn.*" for i in layers]
    if how.method in ("match", "match_kd"):
        steps, lr = (how.match_steps, how.match_lr) if how.method == "match_kd" else (how.steps, how.lr)
        stages["match"] = _fit(student, match, corpus, _train_config(steps, lr, how, device, match_params),
                               run_dir / "match", record)
    if how.method in ("kd", "match_kd"):
        stages["kd"] = _fit(student, kd, corpus, _train_config(how.steps, how.lr, how, device, "attention"),
                            run_dir / "kd", record)
    if how.method == "ce":
        stages["ce"] = _fit(student, ce, corpus, _train_config(how.steps, how.lr, how, device, "attention"),
                            run_dir / "ce", record)
    student.eval()
    return stages


@torch.no_grad()
def evaluate_model(model: Transformer, val_batches, byte_lengths, prompts=(), device: str = "cpu") -> dict:
    """``val_bpb``, ``window_bpb`` (each validation window's), ``buckets`` (bpb by position in
    powers of two), ``bpb_by_position`` and, with passkey ``prompts``, per-prompt results and
    accuracy / mean answer log-probability by distance."""
    model.eval().to(device)
    byte_lengths = torch.as_tensor(byte_lengths, dtype=torch.int64)
    sums = position_losses(model, val_batches, byte_lengths, device)
    curve = position_curve(sums["loss"], sums["bytes"])
    window_bpb = sums["window_loss"] / (math.log(2) * np.maximum(sums["window_bytes"], 1))
    out = {"val_bpb": curve["val_bpb"], "window_bpb": window_bpb.tolist(), "windows": sums["windows"],
           "buckets": curve["buckets"], "bpb_by_position": curve["bpb_by_position"]}
    if prompts:
        scores = score_prompts(model, list(prompts), device=device)
        by_distance: dict[int, list] = {}
        for p, s in zip(prompts, scores, strict=True):
            by_distance.setdefault(p.distance, []).append(s)
        out["passkey"] = {str(d): {"correct": sum(s["correct"] for s in v), "n": len(v),
                                   "mean_logprob": float(np.mean([s["logprob"] for s in v]))}
                          for d, v in sorted(by_distance.items())}
    return out
