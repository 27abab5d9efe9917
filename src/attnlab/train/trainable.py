"""Which parameters a run trains: ``train.trainable`` (all by default), and LoRA adapters.

``train.trainable`` is one group name or a list of group names and parameter-name globs
(`fnmatch` over ``model.named_parameters()`` names, e.g. ``layers.*.self_attn.q_proj.weight``):

| group        | parameters                                                            |
|--------------|-----------------------------------------------------------------------|
| ``all``      | every parameter (the default; alone only)                             |
| ``attention``| ``layers.*.self_attn.*`` (q, k, v, o projections)                     |
| ``mlp``      | ``layers.*.mlp.*`` (gate, up, down)                                   |
| ``norms``    | the RMSNorm weights (``layers.*.*_layernorm.weight``, ``norm.weight``) |
| ``embeddings``| ``embed_tokens.weight`` and ``lm_head.weight`` (one tensor when tied) |
| ``lora``     | LoRA adapters (`attnlab.model.lora`) on ``train.lora.targets``, added  |

Every other parameter is frozen: ``requires_grad=False``, left out of the optimizer, so it
stays bitwise what it was. A frozen run's checkpoints hold only what it trains (plus the
source it started from and that file's checksum: ``attnlab.train.loop``).
"""

from __future__ import annotations

import fnmatch

from torch import nn

from attnlab.errors import UserInputError
from attnlab.model.lora import apply_lora

GROUPS = {
    "all": ("*",),
    "attention": ("layers.*.self_attn.*",),
    "mlp": ("layers.*.mlp.*",),
    "norms": ("layers.*.input_layernorm.*", "layers.*.post_attention_layernorm.*", "norm.*"),
    "embeddings": ("embed_tokens.*", "lm_head.*"),
    "lora": ("*.lora_A", "*.lora_B"),
}
GLOB_CHARS = "*?[."
_ALLOWED = (f"one of {', '.join(GROUPS)}, or a list of groups and parameter-name globs "
            "(e.g. [norms, 'layers.*.self_attn.q_proj.weight'])")


def parse_trainable(value, key: str = "train.trainable") -> list[str]:
    """The items of a ``train.trainable`` value (a group, or a list of groups and globs),
    checked without a model: `UserInputError` naming ``key`` for an unknown group name, an
    empty list, a non-string item, or ``all`` with other items."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise UserInputError(f"{key}={value!r} is not allowed: {_ALLOWED}")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UserInputError(f"{key}={value!r}: item {item!r} is not allowed: {_ALLOWED}")
        if item not in GROUPS and not any(c in item for c in GLOB_CHARS):
            raise UserInputError(f"{key}={value!r}: {item!r} is not a group or a parameter-name glob; allowed: "
                                 f"{_ALLOWED}")
    if "all" in items and len(items) > 1:
        raise UserInputError(f"{key}={value!r}: 'all' trains every parameter, so it stands alone")
    return list(items)


def wants_lora(value) -> bool:
    return "lora" in parse_trainable(value)


def set_trainable(model: nn.Module, value, lora=None, key: str = "train.trainable") -> dict[str, int]:
    """Apply ``train.trainable`` to ``model`` in place: add LoRA adapters when it names
    ``lora`` (``lora``: an object with ``targets``, ``rank``, ``alpha``), then set
    ``requires_grad`` on exactly the selected parameters. A glob that matches no parameter is
    a `UserInputError`. Returns ``{"trainable": n, "frozen": n}`` parameter counts."""
    items = parse_trainable(value, key)
    if "lora" in items:
        if lora is None:
            raise UserInputError(f"{key}={value!r} names lora but no train.lora settings were given")
        try:
            apply_lora(model, list(lora.targets), lora.rank, lora.alpha)
        except ValueError as err:
            raise UserInputError(f"train.lora.{err}") from None
    # every name of every parameter: a tied tensor is selected by either of its names
    named = list(model.named_parameters(remove_duplicate=False))
    selected: set[int] = set()
    for item in items:
        patterns = GROUPS.get(item, (item,))
        hit = {id(p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
        if not hit:
            example = ", ".join(n for n, _ in named[:3])
            raise UserInputError(f"{key}={value!r}: {item!r} matches no parameter of this model (names look like "
                                 f"{example}, ...)")
        selected |= hit
    counts = {"trainable": 0, "frozen": 0}
    for param in model.parameters():
        param.requires_grad_(id(param) in selected)
        counts["trainable" if id(param) in selected else "frozen"] += param.numel()
    return counts


def check_trainable(model_cfg, cfg) -> None:
    """`set_trainable` on a weightless copy of the model (meta device): a bad
    ``train.trainable`` or ``train.lora`` fails before anything is loaded or trained."""
    import torch

    from attnlab.model import Transformer

    with torch.device("meta"):
        set_trainable(Transformer(model_cfg), cfg.trainable, cfg.lora)


def frozen_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of frozen parameters (both names of a tied tensor)."""
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in frozen}
