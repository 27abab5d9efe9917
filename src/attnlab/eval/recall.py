"""Recall tasks on a run trained on one (``tasks=[copy]``, ``[mqar]``, ``[passkey]``): the task's
fixed validation set through the training loop's ``evaluate_task``.

The task config is the run's own (``Pretrained.data``, from its checkpoint record), with the
non-null ``task.*`` overrides applied (e.g. ``task.distances=[8,16,128]`` for distances the
run never trained on, ``task.val_sequences=512`` for a larger set, ``task.seed=1`` for
another one). Overrides are validated as the task's config fields (errors name ``task.<key>``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch

from attnlab.configs import from_dict
from attnlab.data.recall import TaskConfig, build_task, distance_bucket
from attnlab.train.config import TrainConfig
from attnlab.train.loop import evaluate_task, resolve_device


def task_config(pre, task: str, overrides: dict | None = None) -> TaskConfig:
    """The run's config of recall task ``task`` with ``overrides`` (None values ignored);
    ``ValueError`` if ``pre`` was not trained on ``task``."""
    data = pre.data
    if not isinstance(data, TaskConfig) or data.name != task:
        trained = f"the recall task data.name={data.name!r}" if isinstance(data, TaskConfig) else (
            "text" if data is not None else "text (a GGUF model)")
        raise ValueError(f"tasks={task}: source={pre.source} was trained on {trained}, not on data={task}; "
                         f"tasks=[{task}] runs the task's validation set on a run trained with data={task}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(type(data)) if f.init} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"task.{unknown[0]}={overrides[unknown[0]]!r}: not a field of data={task}; "
                         f"allowed: {', '.join(sorted(known))}")
    try:
        cfg = from_dict(type(data), {**asdict(data), **overrides}, "task")
    except ValueError as err:  # the dataclass names data.<field>; here it was task.<field>
        raise ValueError(str(err).replace("data.", "task.", 1)) from None
    if cfg.context > pre.config.context:
        raise ValueError(f"task.context={cfg.context} exceeds the model's context={pre.config.context}")
    return cfg


def evaluate_recall(pre, cfg: TaskConfig, device: str = "auto") -> dict:
    """Loss and answer accuracy (overall and by distance) of ``pre`` on ``cfg``'s validation set."""
    task = build_task(cfg)
    dev = resolve_device(device)
    model = pre.model.to(dev).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    t0 = time.perf_counter()
    out = evaluate_task(model, task, TrainConfig(device=str(dev)), dev, autocast)
    seconds = time.perf_counter() - t0
    model.eval()
    answers: dict[int, int] = {}
    for _, y, dist in task.val_set():
        buckets = distance_bucket(cfg.name, dist)[y != -100]
        for b, n in zip(*torch.unique(buckets, return_counts=True), strict=True):
            answers[int(b)] = answers.get(int(b), 0) + int(n)
    return {
        "mode": "task",
        "source": pre.source,
        "task": cfg.name,
        "data": asdict(cfg),
        "chance_accuracy": task.chance_accuracy,
        **out,
        "answers_by_distance": {str(b): answers[b] for b in sorted(answers)},
        "distance": ("exact distance" if cfg.name in ("copy", "passkey")
                     else "power-of-two bucket b: b <= distance < 2b"),
        "seconds": seconds,
        "device": str(dev),
    }
