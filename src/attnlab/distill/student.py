"""Students: layer maps, initialization from a teacher, attention transfer, hidden states.

Layer maps. ``layer_map[i]`` is the teacher layer that student layer ``i`` copies (init)
or is matched to (hidden-state loss). By name, for ``Ls`` student and ``Lt`` teacher layers:

- ``every_other``: ``2 i`` (DistilBERT: a 6-layer student from a 12-layer teacher's
  layers 0, 2, ..., 10); needs ``2 (Ls - 1) < Lt``;
- ``uniform``: ``round(i (Lt - 1) / (Ls - 1))``, first to first and last to last;
- ``top``: ``(i + 1) Lt // Ls - 1``, the last layer of each of ``Ls`` equal groups (the
  usual hidden-state pairing: the student's last layer meets the teacher's last);
- ``identity``: ``i`` (same depth, e.g. attention transfer);
- or an explicit list of ``Ls`` teacher layer ids.

Initialization (``distill.init``): ``random`` (the model's own init), ``layer_map`` (copy
embeddings, final norm, lm_head and the mapped blocks; widths, heads and MLP sizes must
match the teacher's), ``teacher`` (attention transfer: the teacher's architecture and
every weight, with the student's attention layout; `transfer_config`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict

import torch

from attnlab.model import ModelConfig, Transformer

LAYER_MAPS = ("every_other", "uniform", "top", "identity")
INITS = ("random", "layer_map", "teacher")


def layer_map(spec, n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer of each student layer (see the module docstring)."""
    if isinstance(spec, str):
        if spec == "every_other":
            ids = [2 * i for i in range(n_student)]
        elif spec == "uniform":
            ids = [0] if n_student == 1 else [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]
        elif spec == "top":
            ids = [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]
        elif spec == "identity":
            ids = list(range(n_student))
        else:
            raise ValueError(f"layer map {spec!r} is unknown; allowed: {', '.join(LAYER_MAPS)} or a list of layer ids")
        if n_student > n_teacher or ids[-1] >= n_teacher:
            raise ValueError(
                f"layer map {spec!r} needs more teacher layers than the teacher's {n_teacher} for a "
                f"{n_student}-layer student ({ids}); use another map or an explicit list"
            )
        return ids
    if isinstance(spec, list | tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        ids = list(spec)
        if len(ids) != n_student or not all(0 <= i < n_teacher for i in ids):
            raise ValueError(
                f"layer map {ids} must list {n_student} teacher layer ids (one per student layer), "
                f"each in [0, {n_teacher - 1}]"
            )
        return ids
    raise ValueError(f"layer map {spec!r} must be one of {', '.join(LAYER_MAPS)} or a list of teacher layer ids")


def transfer_config(teacher: ModelConfig, attention: dict, layer_pattern: list[str], **overrides) -> ModelConfig:
    """The teacher's config with another attention layout (attention transfer); ``overrides``
    (e.g. ``attn_impl``, ``dropout``) set other fields."""
    d = asdict(teacher)
    d.update(attention={k: dict(v) for k, v in attention.items()}, layer_pattern=list(layer_pattern), **overrides)
    return ModelConfig.from_dict(d)


def _copy(dst: torch.nn.Module, src: torch.nn.Module, dst_prefix: str, src_prefix: str, copied: dict) -> None:
    src_state = src.state_dict()
    for name, tensor in dst.state_dict().items():
        if name not in src_state or src_state[name].shape != tensor.shape:
            got = tuple(src_state[name].shape) if name in src_state else "missing"
            raise ValueError(
                f"cannot initialize student {dst_prefix}{name} {tuple(tensor.shape)} from teacher "
                f"{src_prefix}{name} ({got}): init=layer_map needs the teacher's widths, heads and MLP size"
            )
        with torch.no_grad():
            tensor.copy_(src_state[name].to(tensor.dtype))
        copied[f"{dst_prefix}{name}"] = f"{src_prefix}{name}"


def init_from_teacher(student: Transformer, teacher: Transformer, ids: list[int]) -> dict[str, str]:
    """Copy the teacher's embeddings, final norm, lm_head and blocks ``ids[i] -> i`` into the
    student. Returns ``{student key: teacher key}`` of every copied tensor."""
    if len(ids) != len(student.layers):
        raise ValueError(f"layer map {ids} has {len(ids)} entries for a {len(student.layers)}-layer student")
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(
            f"student vocab_size={student.config.vocab_size} != teacher vocab_size={teacher.config.vocab_size}"
        )
    copied: dict[str, str] = {}
    _copy(student.embed_tokens, teacher.embed_tokens, "embed_tokens.", "embed_tokens.", copied)
    _copy(student.norm, teacher.norm, "norm.", "norm.", copied)
    if not student.config.tie_embeddings:
        _copy(student.lm_head, teacher.lm_head, "lm_head.", "lm_head.", copied)
    for i, j in enumerate(ids):
        _copy(student.layers[i], teacher.layers[j], f"layers.{i}.", f"layers.{j}.", copied)
    return copied


@contextlib.contextmanager
def capture_hidden(model: Transformer, layers):
    """Within the block, every forward of ``model`` stores the output ``[B, N, C]`` of each
    block in ``layers`` into the yielded dict (layer id -> tensor)."""
    store: dict[int, torch.Tensor] = {}
    handles = []
    for i in sorted(set(layers)):
        if not 0 <= i < len(model.layers):
            raise ValueError(f"layer {i} is out of range for a {len(model.layers)}-layer model")
        handles.append(model.layers[i].register_forward_hook(lambda _m, _a, out, i=i: store.__setitem__(i, out)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
