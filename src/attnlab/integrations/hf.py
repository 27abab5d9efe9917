"""attnlab's attention inside Hugging Face transformers models (Llama and other models that
dispatch through transformers' ``AttentionInterface``).

    from attnlab.integrations.hf import register

    register("attnlab", specs=[AttentionSpec(kind="sliding_window", causal=True, window=64), None])
    model = LlamaForCausalLM.from_pretrained(dir, attn_implementation="attnlab")
    # or, on a loaded model: model.set_attn_implementation("attnlab")

Each attention layer then calls ``attention(q, k, v, spec, impl=...)`` with the spec of its
layer (``module.layer_idx``): ``specs`` is one spec for every layer, or a list with one per
layer (None = dense causal); an `AttentionSpec` or a dict of its arguments. Without
``specs`` a model uses the ``attnlab_attention`` list of its config.json (what
`python -m attnlab.export` writes for a converted model), else dense causal attention. The
spec replaces the mask transformers' own attention would compute: a sliding-window spec on a
Llama makes a sliding-window model. Specs must be causal (a causal LM).

Masks. transformers builds its boolean mask for this attention as it does for ``sdpa``
(`register` registers that mask function under the same name: without it transformers would
pass no mask at all, and padding would be lost). Each layer reads the mask back exactly:

- every query row that attends to its own position (a real token; a padding token never
  sees itself) must see exactly one contiguous run of keys ending at its own position: the
  causal mask of left or right padding, of packed sequences, or of a KV cache. The runs
  become per-row document ids (``doc_ids``; padding tokens form their own documents), which
  attnlab ANDs with the spec. Rows of padding tokens are left free (their outputs are
  garbage in transformers too, and no real token sees them).
- keys that no query may see at the end of the cache (a static cache's unwritten slots) are
  dropped, so the queries sit bottom-right, attnlab's convention (Nq < Nk when decoding).
- any other mask (padding in the middle of a row, a sliding-window or bidirectional mask
  built by transformers, additive biases) raises ``ValueError``: never a silently different mask.
  So does a spec whose mask depends on absolute positions (``sink``, ``block_sparse``,
  ``custom``) on rows that do not start at position 0 (left padding, packed sequences):
  its sinks and blocks would be counted from the padding.

No attention weights are returned (``output_attentions`` gets None); attention dropout
(``attention_dropout > 0`` in training) is refused.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence

import torch

from attnlab.attention import AttentionSpec, attention
from attnlab.attention.registry import IMPLS

INSTALL_HINT = "pip install 'transformers>=4.53' (or the attnlab[hf] extra)"
_BUILTIN = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4",
            "paged|eager")
_DENSE_CAUSAL = AttentionSpec(kind="dense", causal=True)
_POSITIONAL = "a sink, block_sparse or custom spec counts positions from the row's first key"


def _transformers():
    try:
        import transformers  # noqa: F401
        from transformers import AttentionInterface
    except (ModuleNotFoundError, ImportError) as err:
        raise ModuleNotFoundError(f"attnlab.integrations.hf needs transformers with AttentionInterface: "
                                  f"{INSTALL_HINT} ({err})") from None
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # transformers < 4.53 builds 4-D masks in the model; read them as they come
        AttentionMaskInterface = sdpa_mask = None
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


# ---------------------------------------------------------------------- specs
def _as_spec(entry, where: str) -> AttentionSpec:
    if entry is None:
        return _DENSE_CAUSAL
    if isinstance(entry, AttentionSpec):
        spec = entry
    elif isinstance(entry, Mapping):
        try:
            spec = AttentionSpec(**{"causal": True, **entry})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}={dict(entry)!r}: {err}") from None
    else:
        raise ValueError(f"{where}={entry!r} must be an AttentionSpec, a dict of its arguments or None (dense)")
    if not spec.causal:
        raise ValueError(f"{where}: {spec!r} is not causal; a causal LM's layers need causal=True")
    return spec


def _normalize_specs(specs) -> AttentionSpec | tuple[AttentionSpec, ...] | None:
    if specs is None:
        return None
    if isinstance(specs, AttentionSpec | Mapping):
        return _as_spec(specs, "specs")
    if isinstance(specs, Sequence) and not isinstance(specs, str) and specs:
        return tuple(_as_spec(s, f"specs[{i}]") for i, s in enumerate(specs))
    raise ValueError(f"specs={specs!r} must be None, an AttentionSpec (or dict) for every layer, or a non-empty "
                     "list with one per layer")


_config_specs: dict[str, AttentionSpec] = {}  # JSON of an attnlab_attention entry -> its spec


def _layer_spec(module, specs) -> AttentionSpec:
    config = getattr(module, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    layer = getattr(module, "layer_idx", None)
    if isinstance(specs, AttentionSpec):
        return specs
    if specs is None:
        specs = getattr(config, "attnlab_attention", None)
        if specs is None:
            return _DENSE_CAUSAL
        where = "config.attnlab_attention"
    else:
        where = "specs"
    if not isinstance(layer, int):
        raise ValueError(f"{type(module).__name__} has no integer layer_idx, so per-layer {where} cannot apply; "
                         "give one spec for every layer")
    if n_layers is not None and len(specs) != n_layers:
        raise ValueError(f"{where} has {len(specs)} entries but the model has num_hidden_layers={n_layers}")
    if not 0 <= layer < len(specs):
        raise ValueError(f"layer_idx={layer} has no entry in {where} ({len(specs)} entries)")
    entry = specs[layer]
    if isinstance(entry, AttentionSpec):
        return entry
    key = json.dumps(entry, sort_keys=True, default=repr)
    if key not in _config_specs:
        _config_specs[key] = _as_spec(entry, f"{where}[{layer}]")
    return _config_specs[key]


# ---------------------------------------------------------------------- masks
def _allowed(mask: torch.Tensor, batch: int, n_q: int, n_k: int) -> torch.Tensor:
    """bool ``[B, Nq, Nk]`` (True = attend) of a 4-D bool / additive mask or a 2-D padding mask."""
    if mask.dim() == 2:  # [B, Nk] padding (1 = token): causal, bottom-right
        if mask.shape[-1] != n_k:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} keys but the layer has {n_k}")
        rows = torch.arange(n_q, device=mask.device)[:, None] + (n_k - n_q)
        causal = torch.arange(n_k, device=mask.device)[None, :] <= rows  # (Nq, Nk)
        return causal[None] & mask.bool()[:, None, :]
    if mask.dim() != 4:
        raise ValueError(f"attention_mask of shape {tuple(mask.shape)}: attnlab reads 2-D [B, Nk] or 4-D "
                         "[B, 1, Nq, Nk] masks")
    if mask.shape[-2:] != (n_q, n_k) or mask.shape[0] not in (1, batch):
        raise ValueError(f"attention_mask of shape {tuple(mask.shape)} does not fit queries [{batch}, H, {n_q}] "
                         f"and keys [{batch}, H, {n_k}]")
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        allowed = mask == 0
        blocked = mask <= torch.finfo(mask.dtype).min / 2  # -inf or the dtype's minimum, as transformers writes
        if not bool((allowed | blocked).all()):
            raise ValueError("attention_mask holds additive biases other than 0 and -inf (e.g. ALiBi); attnlab's "
                             "adapter reads masks, not biases")
    else:
        raise ValueError(f"attention_mask of dtype {mask.dtype}: attnlab reads bool or additive float masks")
    if allowed.shape[1] != 1:
        if not bool((allowed == allowed[:, :1]).all()):
            raise ValueError("attention_mask differs between heads; attnlab's adapter takes one mask for all heads")
    return allowed[:, 0].expand(batch, n_q, n_k)


def mask_to_documents(mask: torch.Tensor, batch: int, n_q: int, n_k: int) -> tuple[int, torch.Tensor | None, bool]:
    """Read transformers' attention mask (module docstring) as ``(n_keys, doc_ids, shifted)``:
    attend to the first ``n_keys`` keys, bottom-right aligned, within each row's documents
    (``doc_ids [B, n_keys]`` int64, non-decreasing; None: one document per row); ``shifted``:
    some real row starts after key 0 (left padding, packing). ``ValueError`` when the mask is
    not of that form."""
    allowed = _allowed(mask, batch, n_q, n_k)  # (B, Nq, Nk)
    seen = allowed.any(dim=(0, 1)).nonzero()
    n_keys = max(n_q, int(seen[-1]) + 1) if len(seen) else n_k
    allowed = allowed[..., :n_keys]  # keys no query sees (a static cache's unwritten end) dropped
    device = allowed.device
    pos = torch.arange(n_q, device=device) + (n_keys - n_q)  # each query's own key, bottom-right (Nq,)
    keys = torch.arange(n_keys, device=device)
    real = allowed.gather(2, pos.expand(batch, n_q)[..., None])[..., 0]  # (B, Nq): sees itself
    start = allowed.int().argmax(dim=-1)  # (B, Nq): first key each row sees
    run = (keys[None, None, :] >= start[..., None]) & (keys[None, None, :] <= pos[None, :, None])  # (B, Nq, Nk)
    bad = real[..., None] & (allowed != run)
    if bool(bad.any()):
        b, i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"attention_mask cannot be expressed by attnlab's adapter: row {b}, query {i} (key position "
            f"{int(pos[i])}) does not see one run of keys ending at itself (key {j} is "
            f"{'allowed' if bool(allowed[b, i, j]) else 'masked'}); supported: causal masks with left or right "
            "padding, packed sequences and KV caches"
        )
    starts = torch.where(real, start, n_keys)  # a document starts at each real row's first key
    marks = torch.zeros(batch, n_keys + 1, dtype=torch.bool, device=device)
    marks.scatter_(1, starts, torch.ones_like(starts, dtype=torch.bool))
    marks = marks[:, :n_keys]
    marks[:, 0] = False
    if not bool(marks.any()):
        return n_keys, None, False
    doc = marks.long().cumsum(dim=1)  # (B, n_keys) non-decreasing
    same = doc.gather(1, start.clamp(max=n_keys - 1)) == doc.gather(1, pos.expand(batch, n_q))
    if not bool((same | ~real).all()):
        b, i = (int(x) for x in (~same & real).nonzero()[0])
        raise ValueError(
            f"attention_mask cannot be expressed by attnlab's adapter: row {b}, query {i} sees keys from "
            f"{int(start[b, i])} on, across the start of another row's run (a sliding-window or otherwise "
            "overlapping mask); supported: causal masks with left or right padding, packed sequences and KV caches"
        )
    return n_keys, doc, True


_memo: list = [None, None, None]  # (weakref to the last mask, its (version, B, Nq, Nk), result)


def _documents(mask, batch: int, n_q: int, n_k: int):
    """`mask_to_documents`, reused across the layers of one forward (they share the mask)."""
    key = (mask._version, batch, n_q, n_k)
    ref, memo_key, result = _memo
    if ref is not None and ref() is mask and memo_key == key:
        return result
    result = mask_to_documents(mask, batch, n_q, n_k)
    _memo[:] = [weakref.ref(mask), key, result]
    return result


# ---------------------------------------------------------------------- the attention function
def attnlab_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask, scaling: float | None = None, dropout: float = 0.0, *,
                              specs=None, impl: str = "auto", name: str = "attnlab", **kwargs):
    """transformers' attention-function signature: ``query [B, Hq, Nq, D]``, ``key / value
    [B, Hkv, Nk, D]`` (RoPE applied, cache appended) -> ``(out [B, Nq, Hq, D], None)``."""
    if dropout:
        raise NotImplementedError(f"attention dropout={dropout} is not in attnlab's attention; set "
                                  "config.attention_dropout=0 (or run in eval mode)")
    for arg in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(arg) is not None:
            raise ValueError(f"this model asks for {arg}={kwargs[arg]!r} in its attention; attnlab's adapter does "
                             "not apply the model's own variants: put the window / softcap / sink in the attnlab spec")
    if kwargs.get("is_causal", getattr(module, "is_causal", True)) is False:
        raise ValueError(f"{type(module).__name__} is bidirectional (is_causal=False); attnlab's adapter serves "
                         "causal models")
    spec = _layer_spec(module, specs)
    batch, _, n_q, _ = query.shape
    n_k = key.shape[2]
    if n_q > n_k:
        raise ValueError(f"{n_q} queries but {n_k} keys: attnlab aligns queries with the last keys (Nq <= Nk)")
    if attention_mask is None:
        _check_mask_registered(module, name)
        # transformers skips the mask when it is plain causal: Nq == Nk, one query, or (a static
        # cache's prefill) Nq < Nk with the queries at the first positions (top-left, as sdpa's is_causal)
        n_keys, doc_ids, shifted = (n_q if 1 < n_q < n_k else n_k), None, False
    elif isinstance(attention_mask, torch.Tensor):
        n_keys, doc_ids, shifted = _documents(attention_mask, batch, n_q, n_k)
    else:
        raise ValueError(f"attention_mask of type {type(attention_mask).__name__} (a flex BlockMask?) is not read "
                         "by attnlab's adapter; it takes the boolean masks transformers builds for sdpa")
    if shifted and (spec.sink or spec.kind in ("block_sparse", "custom")):
        raise ValueError(f"{spec.name} on rows that do not start at key 0 (left padding or packed sequences): "
                         f"{_POSITIONAL}, which would be padding here; pad on the right or run rows one by one")
    if n_keys < n_k:
        key, value = key[:, :, :n_keys], value[:, :, :n_keys]
    out = attention(query, key, value, spec, impl=impl, scale=scaling, doc_ids=doc_ids)  # (B, Hq, Nq, D)
    return out.transpose(1, 2).contiguous(), None  # (B, Nq, Hq, D)


def _check_mask_registered(module, name: str) -> None:
    _, AttentionMaskInterface, _ = _transformers()
    if AttentionMaskInterface is None:
        return
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    used = getattr(getattr(module, "config", None), "_attn_implementation", name) or name
    if used not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"attn_implementation={used!r} has no mask function registered, so transformers passes no "
                         f"attention mask and padding would be lost; call attnlab.integrations.hf.register({used!r})")


def register(name: str = "attnlab", specs=None, impl: str = "auto") -> str:
    """Register attnlab's attention with transformers under ``name`` (and the mask function it
    reads, sdpa's); returns ``name``. Then ``attn_implementation=name`` when loading a model, or
    ``model.set_attn_implementation(name)``. ``specs``: see the module docstring (validated here);
    ``impl``: the attnlab implementation (auto, reference, sdpa, flex, triton). Registering a
    name again replaces its specs; transformers' own names cannot be taken."""
    AttentionInterface, AttentionMaskInterface, sdpa_mask = _transformers()
    if not isinstance(name, str) or not name or name in _BUILTIN:
        raise ValueError(f"name={name!r} must be a new attention name (not one of transformers' own: "
                         f"{', '.join(_BUILTIN)})")
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is unknown; allowed: auto, {', '.join(IMPLS)}")
    normalized = _normalize_specs(specs)

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return attnlab_attention_forward(module, query, key, value, attention_mask, scaling, dropout,
                                         specs=normalized, impl=impl, name=name, **kwargs)

    forward.__name__ = f"attnlab_attention_{name}"
    AttentionInterface.register(name, forward)
    if AttentionMaskInterface is not None:
        AttentionMaskInterface.register(name, sdpa_mask)
    return name
