"""`DistillConfig`: what the student learns from the teacher, and how it starts (validated).

The other sections of a distillation run reuse existing dataclasses: the student is a
`ModelConfig` (``model``: conf/model + conf/attention), the corpus a `DataConfig`
(``data``) and the optimization a `TrainConfig` (``train``: steps, lr schedule, eval,
checkpoints, logging, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.distill.losses import HIDDEN_LOSSES, SOFT_LOSSES
from attnlab.distill.student import INITS, LAYER_MAPS

TEACHER_DTYPES = ("auto", "float32", "bfloat16")
BASELINES = ("none", "scratch")


def _number(name, v, low=0.0, strict=False):
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or (v <= low if strict else v < low):
        raise ValueError(f"distill.{name}={v!r} must be a number {'>' if strict else '>='} {low}")


def _layer_map_ok(name, v):
    if v is None or v in LAYER_MAPS:
        return
    if isinstance(v, list | tuple) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return
    raise ValueError(f"distill.{name}={v!r} must be null, one of {', '.join(LAYER_MAPS)}, or a list of teacher layer ids")


@dataclass
class DistillConfig:
    """Args:
    loss: soft loss, forward_kl | reverse_kl | jsd (`attnlab.distill.losses`).
    temperature: softmax temperature of the soft loss (scaled by T^2). beta: JSD's
    (0 = forward KL, 1 = reverse KL). weight_soft / weight_hard: ``loss = weight_hard * CE
    + weight_soft * soft (+ hidden_weight * hidden)``.
    top_k: keep only the teacher's k largest logits (renormalized); null = the full
    distribution. offline: read the teacher's top-k logits of each train batch from the
    on-disk cache (built on first use; needs top_k), instead of running the teacher.
    init: random | layer_map (copy the teacher's layers by ``layer_map``) | teacher (the
    teacher's architecture and weights with the student's attention: attention transfer).
    layer_map: every_other | uniform | top | identity | list of teacher layer ids.
    hidden_weight: weight of the hidden-state loss (0 = off); hidden_loss: mse | cosine;
    hidden_layer_map: which teacher layer each student layer matches (null = top).
    teacher_dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16.
    cache_dir: offline logits and teacher evals (null = <data cache dir>/distill).
    throughput_batches: timed forward passes for the student/teacher tokens/s ratio.
    """

    loss: str = "forward_kl"
    temperature: float = 2.0
    beta: float = 0.5
    weight_soft: float = 1.0
    weight_hard: float = 0.0
    top_k: int | None = None
    offline: bool = False
    init: str = "random"
    layer_map: str | list[int] | None = None
    hidden_weight: float = 0.0
    hidden_loss: str = "mse"
    hidden_layer_map: str | list[int] | None = None
    teacher_dtype: str = "auto"
    cache_dir: str | None = None
    throughput_batches: int = 3

    def __post_init__(self):
        if self.loss not in SOFT_LOSSES:
            raise ValueError(f"distill.loss={self.loss!r} is unknown; allowed: {', '.join(SOFT_LOSSES)}")
        _number("temperature", self.temperature, strict=True)
        _number("beta", self.beta)
        if self.beta > 1:
            raise ValueError(f"distill.beta={self.beta!r} must be in [0, 1] (0 = forward KL, 1 = reverse KL)")
        for name in ("weight_soft", "weight_hard", "hidden_weight"):
            _number(name, getattr(self, name))
        if self.weight_soft == 0 and self.weight_hard == 0 and self.hidden_weight == 0:
            raise ValueError("distill.weight_soft, weight_hard and hidden_weight are all 0: nothing to learn from")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"distill.top_k={self.top_k!r} must be a positive int or null (the full distribution)")
        if self.offline and self.top_k is None:
            raise ValueError("distill.offline=true stores the teacher's top-k logits: set distill.top_k (e.g. 32)")
        if self.offline and self.hidden_weight > 0:
            raise ValueError("distill.hidden_weight > 0 needs the teacher's hidden states, so distill.offline must be false")
        if self.init not in INITS:
            raise ValueError(f"distill.init={self.init!r} is unknown; allowed: {', '.join(INITS)}")
        _layer_map_ok("layer_map", self.layer_map)
        _layer_map_ok("hidden_layer_map", self.hidden_layer_map)
        if self.init == "layer_map" and self.layer_map is None:
            raise ValueError("distill.init=layer_map needs distill.layer_map (e.g. every_other, or [0, 2, 4])")
        if self.layer_map is not None:
            self.layer_map = self.layer_map if isinstance(self.layer_map, str) else list(self.layer_map)
        if self.hidden_layer_map is not None and not isinstance(self.hidden_layer_map, str):
            self.hidden_layer_map = list(self.hidden_layer_map)
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"distill.hidden_loss={self.hidden_loss!r} is unknown; allowed: {', '.join(HIDDEN_LOSSES)}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"distill.teacher_dtype={self.teacher_dtype!r} must be one of {', '.join(TEACHER_DTYPES)}")
        if isinstance(self.throughput_batches, bool) or not isinstance(self.throughput_batches, int) \
                or self.throughput_batches < 0:
            raise ValueError(f"distill.throughput_batches={self.throughput_batches!r} must be an int >= 0")
