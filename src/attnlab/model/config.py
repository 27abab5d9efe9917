"""`ModelConfig`: the shared transformer's size, objective and per-layer attention (validated).

Per-layer attention. ``attention`` names spec kwargs (``AttentionSpec`` fields except
``causal``) and ``layer_pattern`` lists names that are cycled to depth: layer ``i`` uses
``layer_pattern[i % len(layer_pattern)]`` (the Gemma-2/3 convention for local/global
interleaving). A last, partial cycle is allowed (6 layers with ``[swa, swa, swa, dense]``
-> swa swa swa dense swa swa); a pattern longer than ``n_layers`` is an error (its tail
would be silently unused). Names in ``attention`` that the pattern does not use are
allowed, so Hydra option files can merge into a preset's dict.

Objective. ``causal`` (next-token LM) sets ``causal=True`` in every layer's spec, ``mlm``
(masked LM) sets ``causal=False`` (bidirectional). A spec that sets ``causal`` against the
objective is an error.

Mask token. A byte vocabulary (256) has no spare id, so an ``mlm`` model reserves one
extra embedding row: ``mask_token_id == vocab_size`` and ``embed_rows == vocab_size + 1``.
The model still predicts only the ``vocab_size`` real tokens (logits ``[B, N, vocab_size]``).

``vocab_size=None`` is allowed in a config (the training job fills it from the tokenizer
with ``dataclasses.replace``); building a ``Transformer`` from it is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from attnlab.attention import IMPLS, AttentionSpec

OBJECTIVES = ("causal", "mlm")
FFN_MULTIPLE = 64  # the default SwiGLU width is rounded up to a multiple of this


def default_ffn_dim(d_model: int) -> int:
    """Llama's SwiGLU width: ``8/3 * d_model`` (two thirds of 4 d, so the three matrices of a
    gated MLP cost what two 4 d matrices would), rounded up to a multiple of 64.
    E.g. 128 -> 384, 384 -> 1024, 576 -> 1536 (SmolLM2-135M's width)."""
    hidden = int(8 * d_model / 3)
    return FFN_MULTIPLE * math.ceil(hidden / FFN_MULTIPLE)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class ModelConfig:
    """Args:
    vocab_size: real tokens (None until the tokenizer is known). d_model: residual width.
    n_layers: blocks. n_heads: query heads. n_kv_heads: key/value heads (None = n_heads;
    fewer = GQA, 1 = MQA). d_ff: SwiGLU hidden width (None = `default_ffn_dim`).
    context: longest sequence (RoPE tables are built for it). rope_base: RoPE theta.
    norm_eps: RMSNorm epsilon. tie_embeddings: lm_head shares the embedding matrix.
    dropout: on each residual branch (after o_proj and down_proj), in [0, 1).
    attn_impl: ``auto`` or an `attnlab.attention` impl name. objective: ``causal`` | ``mlm``.
    attention / layer_pattern: per-layer attention, see the module docstring.
    """

    vocab_size: int | None = None
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    context: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dropout: float = 0.0
    attn_impl: str = "auto"
    objective: str = "causal"
    attention: dict[str, dict] = field(default_factory=lambda: {"dense": {"kind": "dense"}})
    layer_pattern: list[str] = field(default_factory=lambda: ["dense"])

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return default_ffn_dim(self.d_model) if self.d_ff is None else self.d_ff

    @property
    def mask_token_id(self) -> int | None:
        """The reserved ``[MASK]`` id of an mlm model (== vocab_size); None for causal."""
        if self.objective != "mlm":
            return None
        self._need_vocab("mask_token_id")
        return self.vocab_size

    @property
    def embed_rows(self) -> int:
        """Rows of the embedding table: vocab_size, plus one ``[MASK]`` row for mlm."""
        self._need_vocab("embed_rows")
        return self.vocab_size + (1 if self.objective == "mlm" else 0)

    def _need_vocab(self, what: str) -> None:
        if self.vocab_size is None:
            raise ValueError(
                f"model.vocab_size=None: {what} needs it; set it, or let the training job fill "
                "it from the tokenizer (dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size))"
            )

    # ------------------------------------------------------------------ attention
    def layer_names(self) -> list[str]:
        """The attention name of each layer (the pattern cycled to ``n_layers``)."""
        return [self.layer_pattern[i % len(self.layer_pattern)] for i in range(self.n_layers)]

    def layer_specs(self) -> list[AttentionSpec]:
        """One `AttentionSpec` per layer, ``causal`` set by the objective."""
        specs = {name: self._spec(name) for name in set(self.layer_pattern)}
        return [specs[name] for name in self.layer_names()]

    def _spec(self, name: str) -> AttentionSpec:
        kwargs = dict(self.attention[name])
        causal = self.objective == "causal"
        if "causal" in kwargs and kwargs["causal"] != causal:
            raise ValueError(
                f"model.attention.{name}.causal={kwargs['causal']!r} contradicts "
                f"model.objective={self.objective!r}, which needs causal={causal}; drop the key "
                "(the objective sets it)"
            )
        kwargs["causal"] = causal
        try:
            if kwargs.get("kind") == "nsa":  # a model layer with its own parameters (attnlab.model.nsa)
                from attnlab.model.nsa import NSASpec

                return NSASpec(**kwargs)
            return AttentionSpec(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model.attention.{name}={dict(self.attention[name])!r}: {err}") from None

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        if self.vocab_size is not None and (not _is_int(self.vocab_size) or self.vocab_size < 1):
            raise ValueError(f"model.vocab_size={self.vocab_size!r} must be a positive int (or null until known)")
        for name in ("d_model", "n_layers", "n_heads", "context"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"model.{name}={v!r} must be a positive int")
        for name in ("n_kv_heads", "d_ff"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ValueError(f"model.{name}={v!r} must be a positive int or null (the default)")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads} "
                "(head_dim = d_model / n_heads)"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.kv_heads} "
                "(GQA: each key/value head serves n_heads / n_kv_heads query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = model.d_model / model.n_heads = {self.head_dim} must be even (RoPE "
                "rotates pairs of channels)"
            )
        for name in ("rope_base", "norm_eps"):
            v = getattr(self, name)
            if not _is_number(v) or v <= 0:
                raise ValueError(f"model.{name}={v!r} must be a positive number")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout={self.dropout!r} must be a number in [0, 1)")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"model.tie_embeddings={self.tie_embeddings!r} must be true or false")
        if self.attn_impl != "auto" and self.attn_impl not in IMPLS:
            raise ValueError(f"model.attn_impl={self.attn_impl!r} is unknown; allowed: auto, {', '.join(IMPLS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"model.objective={self.objective!r} is unknown; allowed: {', '.join(OBJECTIVES)}")
        self._check_attention()

    def _check_attention(self):
        if not isinstance(self.attention, Mapping) or not self.attention:
            raise ValueError(
                f"model.attention={self.attention!r} must be a non-empty mapping of name -> AttentionSpec "
                "kwargs, e.g. {dense: {kind: dense}}"
            )
        for name, kwargs in self.attention.items():
            if not isinstance(name, str) or not isinstance(kwargs, Mapping):
                raise ValueError(
                    f"model.attention entry {name!r}: {kwargs!r} must map a name (str) to a dict of "
                    "AttentionSpec kwargs, e.g. swa: {kind: sliding_window, window: 64}"
                )
        pattern = self.layer_pattern
        if isinstance(pattern, str) or not isinstance(pattern, list | tuple) or not pattern:
            raise ValueError(f"model.layer_pattern={pattern!r} must be a non-empty list of attention names")
        unknown = [p for p in pattern if p not in self.attention]
        if unknown:
            raise ValueError(
                f"model.layer_pattern={list(pattern)!r} uses unknown names {unknown}; "
                f"defined in model.attention: {', '.join(map(str, self.attention))}"
            )
        if len(pattern) > self.n_layers:
            raise ValueError(
                f"model.layer_pattern has {len(pattern)} entries but model.n_layers={self.n_layers}; "
                "the pattern is cycled to depth, so it may be at most n_layers long"
            )
        for spec in self.layer_specs():  # builds (and so validates) each used spec
            if spec.num_heads() not in (1, self.n_heads):
                raise ValueError(
                    f"{spec!r} has {spec.num_heads()} per-head layouts; allowed: 1 or "
                    f"model.n_heads={self.n_heads}"
                )

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        """From a plain dict (e.g. ``OmegaConf.to_container(cfg.model, resolve=True)``);
        unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model: unknown keys {unknown}; allowed: {', '.join(sorted(known))}")
        d = dict(d)
        if "attention" in d and isinstance(d["attention"], Mapping):
            d["attention"] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in d["attention"].items()}
        if "layer_pattern" in d and isinstance(d["layer_pattern"], tuple | list):
            d["layer_pattern"] = list(d["layer_pattern"])
        return cls(**d)
