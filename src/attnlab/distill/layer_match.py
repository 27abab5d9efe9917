"""Layer-wise attention-output matching (LoLCATs-style "attention transfer", Zhang et al. 2024).

Before end-to-end healing, each converted attention layer of a student (the teacher's
weights with another attention layout, `attnlab.distill.student.transfer_config`) is trained
to reproduce the dense teacher layer's output from the *teacher's* input to that layer
(teacher forcing: one teacher pass gives every layer's input and target, so errors do not
compound through depth and each layer learns on its own):

    loss_i = mean((attn_i^student(h_i) - attn_i^teacher(h_i))^2) / mean(attn_i^teacher(h_i)^2)

``h_i`` is layer i's normalized input in the teacher (after ``input_layernorm``), RoPE
tables and document ids included. The loss is the mean over the matched layers of this
relative squared error (scale-free, so a layer with large outputs does not dominate).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def converted_layers(student, teacher) -> list[int]:
    """Indices of the layers whose attention spec differs between the two models (the layers a
    conversion changed; the others equal the teacher's and need no matching)."""
    s_specs, t_specs = student.config.layer_specs(), teacher.config.layer_specs()
    if len(s_specs) != len(t_specs):
        raise ValueError(f"student has {len(s_specs)} layers, teacher {len(t_specs)}: matching needs the same depth")
    return [i for i, (s, t) in enumerate(zip(s_specs, t_specs, strict=True)) if s != t]


@contextlib.contextmanager
def capture_attention_io(model: nn.Module, layers):
    """Within the block, every forward of ``model`` stores ``(args, kwargs, output)`` of the
    attention module of each layer in ``layers`` into the yielded dict (layer id -> triple)."""
    store: dict[int, tuple] = {}
    handles = []
    for i in sorted(set(layers)):
        if not 0 <= i < len(model.layers):
            raise ValueError(f"layer {i} is out of range for a {len(model.layers)}-layer model")

        def hook(_m, args, kwargs, out, i=i):
            store[i] = (args, kwargs, out)

        handles.append(model.layers[i].self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def attention_match_loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor, layers, doc_ids=None) -> dict:
    """``{"loss": mean relative squared error over ``layers``, "layer_<i>": each layer's}`` of
    the student's attention modules fed the teacher's inputs (module docstring). The teacher
    runs without gradients; only the student's attention modules are differentiated."""
    layers = sorted(set(layers))
    if not layers:
        raise ValueError("attention matching needs at least one layer (the student converts none of the teacher's)")
    with torch.no_grad(), capture_attention_io(teacher, layers) as io:
        teacher(x, doc_ids=doc_ids)
    out, total = {}, 0.0
    for i in layers:
        args, kwargs, target = io[i]
        pred = student.layers[i].self_attn(*args, **kwargs)
        target = target.float()
        err = (pred.float() - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
        out[f"layer_{i}"] = err.detach()
        total = total + err
    out["loss"] = total / len(layers)
    return out
