"""`TrainConfig`: optimisation, evaluation, checkpointing and logging settings (validated)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnlab.errors import UserInputError, check_seed

DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("none", "jsonl", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
DISTRIBUTED = ("none", "ddp", "fsdp")


@dataclass
class LoraConfig:
    """``train.lora``: LoRA adapters (`attnlab.model.lora`), used when ``train.trainable``
    names ``lora``. rank: r. alpha: the update is scaled by alpha / rank. targets: projection
    names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self):
        from attnlab.model.lora import check_lora_args

        if isinstance(self.targets, tuple):
            self.targets = list(self.targets)
        try:
            check_lora_args(self.targets, self.rank, self.alpha)
        except ValueError as err:
            raise UserInputError(f"train.lora.{err}") from None


@dataclass
class TrainConfig:
    """Args:
    steps: optimizer steps. lr / min_lr: peak and final learning rate (cosine decay after
    `warmup_steps` of linear warm-up). weight_decay: AdamW decay for matrices (norms, biases
    and embeddings get none). grad_clip: max global grad norm (0 = off). grad_accum:
    micro-batches per step. eval_every / log_every / ckpt_every: in steps (0 = only at the
    end). eval_batches: cap on fixed validation batches (None = all). seed: model init and
    dropout. device: auto | cpu | cuda. compile: torch.compile the model. stop_at: end this
    process after that step as if interrupted (tests of resume; None = run to `steps`).
    logger: none | jsonl | wandb (jsonl is always written; wandb adds a wandb run).
    distributed: none | ddp | fsdp: data parallel over the processes torchrun starts (each
    takes its rows of the global batch; see `attnlab.train.distributed`).
    trainable: which parameters train (`attnlab.train.trainable`): all | attention | mlp |
    norms | embeddings | lora, or a list of groups and parameter-name globs; the rest is frozen.
    lora: `LoraConfig` (a dict is converted), used when ``trainable`` names lora.
    """

    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 250
    eval_batches: int | None = None
    log_every: int = 10
    ckpt_every: int = 500
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    stop_at: int | None = None
    progress: bool = True
    logger: str = "wandb"
    wandb_mode: str = "offline"
    wandb_project: str = "attnlab"
    wandb_group: str | None = None
    distributed: str = "none"
    trainable: str | list[str] = "all"
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        ints = {"steps": 1, "warmup_steps": 0, "grad_accum": 1, "eval_every": 0, "log_every": 0, "ckpt_every": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"train.{name}={v!r} must be an int >= {low}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"train.{name}={v!r} must be a finite number >= 0")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr!r} must be > 0")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr={self.min_lr!r} must be <= train.lr={self.lr!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ValueError(f"train.{name}={v!r} must be in [0, 1)")
        check_seed("train.seed", self.seed)
        if self.eval_batches is not None and (isinstance(self.eval_batches, bool) or not isinstance(self.eval_batches, int) or self.eval_batches < 1):
            raise ValueError(f"train.eval_batches={self.eval_batches!r} must be a positive int or null")
        if self.stop_at is not None and (not isinstance(self.stop_at, int) or not 1 <= self.stop_at <= self.steps):
            raise ValueError(f"train.stop_at={self.stop_at!r} must be null or an int in [1, steps={self.steps}]")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"train.device={self.device!r} must be one of {', '.join(DEVICES)} (or cuda:N)")
        if self.logger not in LOGGERS:
            raise ValueError(f"train.logger={self.logger!r} must be one of {', '.join(LOGGERS)}")
        for name in ("compile", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name}={getattr(self, name)!r} must be true or false")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"train.distributed={self.distributed!r} must be one of {', '.join(DISTRIBUTED)}")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"train.wandb_mode={self.wandb_mode!r} must be one of {', '.join(WANDB_MODES)}")
        from attnlab.configs import from_dict
        from attnlab.train.trainable import parse_trainable

        parse_trainable(self.trainable)
        if isinstance(self.trainable, tuple):
            self.trainable = list(self.trainable)
        if isinstance(self.lora, dict):
            self.lora = from_dict(LoraConfig, self.lora, "train.lora")
        elif not isinstance(self.lora, LoraConfig):
            raise ValueError(f"train.lora={self.lora!r} must be a mapping with keys rank, alpha, targets")

    @property
    def frozen(self) -> bool:
        """Something is frozen (``trainable`` is not ``all``)."""
        return self.trainable != "all" and self.trainable != ["all"]
