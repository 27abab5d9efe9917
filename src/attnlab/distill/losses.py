"""Distillation losses, usable outside the trainer. Plain functions of logits (fp32 math).

Legend: ``[..., V]`` logits over the vocabulary (any leading dims: ``[B, N, V]`` or
``[B*N, V]``); ``mask [...]`` bool, True = a position that counts; ``T`` temperature.
``p_t = softmax(teacher / T)``, ``p_s = softmax(student / T)``.

- `forward_kl`: ``KL(p_t || p_s) * T^2`` (Hinton et al. 2015: the ``T^2`` keeps the soft
  gradients' scale independent of T). Mean over positions; equals
  ``F.kl_div(log p_s, log p_t, log_target=True, reduction="batchmean") * T^2`` on ``[M, V]``.
- `reverse_kl`: ``KL(p_s || p_t) * T^2`` (mode seeking; MiniLLM).
- `generalized_jsd`: ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t +
  (1 - beta) p_s`` (Agarwal et al. 2024, GKD), times ``T^2``. Liger-Kernel / TRL
  convention: ``beta = 0`` is `forward_kl` and ``beta = 1`` is `reverse_kl` (the mixture
  formula itself vanishes at both ends, ~``beta KL(p_t||p_s)`` near 0, so the ends are
  defined as those limits of ``JSD_beta / (beta (1 - beta))``); ``beta = 0.5`` is the
  symmetric JSD. ``scaled=True`` returns ``JSD_beta / (beta (1 - beta))`` for every beta,
  which is continuous on [0, 1] with the same end points.
- Top-k teacher (`TopK`): the teacher's k largest logits and their ids, for teachers
  whose full distributions are too large to keep. ``p_t`` is the softmax over those k
  (renormalized). `forward_kl` uses the student's full-vocabulary log-probs at the k ids
  (a true ``KL(p_t^k || p_s)``: the student is pushed to put its mass on the k); the
  reverse KL and JSD restrict the student to the same k ids and renormalize it there too
  (outside the teacher's support they would be infinite). With ``k = V`` every loss equals
  its full-distribution form.
- `soft_loss` dispatches by name; `distillation_loss` mixes it with the hard-label
  cross-entropy: ``weight_hard * CE(student, targets) + weight_soft * soft`` (Liger's
  ``weight_hard_loss`` / ``weight_soft_loss``). The CE uses T = 1.
- `hidden_state_loss` (and the `HiddenStateLoss` module with learned projections):
  MSE or cosine distance between student and teacher hidden states through a layer map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SOFT_LOSSES = ("forward_kl", "reverse_kl", "jsd")
HIDDEN_LOSSES = ("mse", "cosine")


@dataclass
class TopK:
    """A teacher's top-k logits: ``values [..., k]`` (float) and ``indices [..., k]`` (int64)."""

    values: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, k: int) -> TopK:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= logits.shape[-1]:
            raise ValueError(f"top_k={k!r} must be an int in [1, vocab={logits.shape[-1]}]")
        values, indices = torch.topk(logits, k, dim=-1)  # (..., k) each
        return cls(values, indices)

    def to(self, device) -> TopK:
        return TopK(self.values.to(device), self.indices.to(device))

    @property
    def shape(self) -> torch.Size:
        return self.values.shape


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast to float32 for the math (float64 stays float64: gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


def _check(temperature: float, student: torch.Tensor, teacher) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be a number > 0")
    t_shape = teacher.values.shape[:-1] if isinstance(teacher, TopK) else teacher.shape
    s_shape = student.shape[:-1] if isinstance(teacher, TopK) else student.shape
    if t_shape != s_shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher {'top-k ' if isinstance(teacher, TopK) else ''}"
            f"logits {tuple(teacher.shape)} do not match (same positions and vocabulary needed)"
        )


def _reduce(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """``per_position [...]`` -> mean over (masked) positions, sum, or as is."""
    if mask is not None:
        per_position = per_position * mask.to(per_position.dtype)
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if reduction == "mean":
        count = per_position.numel() if mask is None else mask.sum()
        return per_position.sum() / torch.clamp(torch.as_tensor(count, device=per_position.device), min=1)
    raise ValueError(f"reduction={reduction!r} must be one of mean, sum, none")


def _log_probs(student: torch.Tensor, teacher, temperature: float, restrict_student: bool):
    """``(log p_s, log p_t)`` on the teacher's support: ``[..., V]`` each, or ``[..., k]``
    for a `TopK` teacher (``log p_s`` full-vocab at the k ids unless ``restrict_student``)."""
    s = _f32(student) / temperature
    if not isinstance(teacher, TopK):
        return F.log_softmax(s, dim=-1), F.log_softmax(_f32(teacher) / temperature, dim=-1)
    log_t = F.log_softmax(_f32(teacher.values) / temperature, dim=-1)  # (..., k) renormalized
    picked = s.gather(-1, teacher.indices.long())  # (..., k)
    log_s = F.log_softmax(picked, dim=-1) if restrict_student else picked - torch.logsumexp(s, dim=-1, keepdim=True)
    return log_s, log_t


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per position over the last dim (0 * log 0 = 0)."""
    p = log_p.exp()
    zero = torch.zeros_like(p)
    log_p, log_q = torch.where(p > 0, log_p, zero), torch.where(p > 0, log_q, zero)  # no 0 * inf, no NaN grads
    return (p * (log_p - log_q)).sum(-1)


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0, mask=None, reduction: str = "mean"):
    """``KL(p_t || p_s) * T^2``, averaged over positions (see the module docstring)."""
    _check(temperature, student_logits, teacher_logits)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature, restrict_student=False)
    return _reduce(_kl(log_t, log_s) * temperature**2, mask, reduction)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0, mask=None, reduction: str = "mean"):
    """``KL(p_s || p_t) * T^2``, averaged over positions (see the module docstring)."""
    _check(temperature, student_logits, teacher_logits)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature, restrict_student=True)
    return _reduce(_kl(log_s, log_t) * temperature**2, mask, reduction)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5, temperature: float = 1.0, mask=None,
                    reduction: str = "mean", scaled: bool = False):
    """``[beta KL(p_t || m) + (1 - beta) KL(p_s || m)] * T^2`` with ``m = beta p_t + (1 - beta) p_s``;
    beta = 0: forward KL, beta = 1: reverse KL. ``scaled`` divides by ``beta (1 - beta)``."""
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} must be a number in [0, 1] (0 = forward KL, 1 = reverse KL)")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature, mask, reduction)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature, mask, reduction)
    _check(temperature, student_logits, teacher_logits)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature, restrict_student=True)
    log_m = torch.logsumexp(torch.stack((log_t + math.log(beta), log_s + math.log1p(-beta))), dim=0)  # (..., V)
    jsd = beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)
    if scaled:
        jsd = jsd / (beta * (1.0 - beta))
    return _reduce(jsd * temperature**2, mask, reduction)


def soft_loss(kind: str, student_logits, teacher_logits, temperature: float = 1.0, beta: float = 0.5,
              mask=None, reduction: str = "mean"):
    """The soft (teacher-matching) loss named ``kind``: forward_kl | reverse_kl | jsd."""
    if kind == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature, mask, reduction)
    if kind == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature, mask, reduction)
    if kind == "jsd":
        return generalized_jsd(student_logits, teacher_logits, beta, temperature, mask, reduction)
    raise ValueError(f"distill.loss={kind!r} is unknown; allowed: {', '.join(SOFT_LOSSES)}")


def hard_loss(student_logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy against the data's next tokens (``targets [...]``, -100 ignored)."""
    return F.cross_entropy(_f32(student_logits.reshape(-1, student_logits.shape[-1])), targets.reshape(-1),
                           ignore_index=ignore_index)


def distillation_loss(student_logits, teacher_logits, targets=None, kind: str = "forward_kl",
                      temperature: float = 1.0, beta: float = 0.5, weight_hard: float = 0.0,
                      weight_soft: float = 1.0, ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """``{"loss", "soft", "hard"}``: ``loss = weight_hard * hard + weight_soft * soft``.

    ``hard`` (CE on ``targets``) is computed when ``targets`` is given (else 0 and
    ``weight_hard`` must be 0); positions whose target is ``ignore_index`` are left out of
    the soft loss too. ``teacher_logits`` may be a `TopK`.
    """
    for name, w in (("weight_hard", weight_hard), ("weight_soft", weight_soft)):
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
            raise ValueError(f"distill.{name}={w!r} must be a number >= 0")
    mask = None if targets is None else targets != ignore_index
    soft = soft_loss(kind, student_logits, teacher_logits, temperature, beta, mask=mask)
    if targets is None:
        if weight_hard:
            raise ValueError("distill.weight_hard > 0 needs targets (the data's next tokens)")
        hard = torch.zeros((), device=student_logits.device)
    else:
        hard = hard_loss(student_logits, targets, ignore_index)
    return {"loss": weight_hard * hard + weight_soft * soft, "soft": soft, "hard": hard}


# ---------------------------------------------------------------------------- hidden states
def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str = "mse",
                      mask=None) -> torch.Tensor:
    """Distance between hidden states ``[..., C]`` of equal width (project the student's first):
    ``mse`` = mean squared error per channel; ``cosine`` = mean of ``1 - cos``. Averaged
    over positions."""
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states {tuple(student_hidden.shape)} (student) and {tuple(teacher_hidden.shape)} (teacher) "
            "differ; project the student's to the teacher's width first (HiddenStateLoss does)"
        )
    s, t = _f32(student_hidden), _f32(teacher_hidden)
    if kind == "mse":
        per_position = (s - t).pow(2).mean(-1)
    elif kind == "cosine":
        per_position = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"distill.hidden_loss={kind!r} is unknown; allowed: {', '.join(HIDDEN_LOSSES)}")
    return _reduce(per_position, mask, "mean")


class HiddenStateLoss(nn.Module):
    """Hidden-state matching through a layer map: ``layer_map[i] = (student layer, teacher layer)``;
    the loss is the mean over pairs of `hidden_state_loss(proj_i(h_s), h_t)`. ``proj_i`` is a
    learned ``Linear(d_student, d_teacher, bias=False)`` (TinyBERT's W_h) when the widths
    differ, else the identity. Train its parameters with the student's."""

    def __init__(self, layer_map: list[tuple[int, int]], d_student: int, d_teacher: int, kind: str = "mse"):
        super().__init__()
        if kind not in HIDDEN_LOSSES:
            raise ValueError(f"distill.hidden_loss={kind!r} is unknown; allowed: {', '.join(HIDDEN_LOSSES)}")
        if not layer_map:
            raise ValueError("HiddenStateLoss needs a non-empty layer map of (student layer, teacher layer) pairs")
        self.layer_map, self.kind = [(int(s), int(t)) for s, t in layer_map], kind
        if d_student == d_teacher:
            self.proj = nn.ModuleList(nn.Identity() for _ in self.layer_map)
        else:
            self.proj = nn.ModuleList(nn.Linear(d_student, d_teacher, bias=False) for _ in self.layer_map)
            for p in self.proj:
                nn.init.normal_(p.weight, std=d_student**-0.5)

    def forward(self, student_hidden: dict[int, torch.Tensor], teacher_hidden: dict[int, torch.Tensor],
                mask=None) -> torch.Tensor:
        losses = [
            hidden_state_loss(proj(student_hidden[s]), teacher_hidden[t].to(student_hidden[s].dtype), self.kind, mask)
            for proj, (s, t) in zip(self.proj, self.layer_map, strict=True)
        ]
        return torch.stack(losses).mean()
