"""`BenchConfig`: the benchmark grid as a plain, validated dataclass (no Hydra here).

The grid is impls x specs x seq_lens x head_dims x dtypes x modes at one
(batch, heads, kv_heads). Every value is checked when the config is built, before any
timing: a bad value raises `ValueError` naming the key, the value and what is allowed.

    cfg = BenchConfig(impls=("reference", "sdpa"), seq_lens=(256,), modes=("fwd",))
    cfg = BenchConfig.from_dict({"impls": ["sdpa"], "specs": [{"kind": "dense"}]})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from attnlab.attention import IMPLS, AttentionSpec
from attnlab.errors import SEED_MAX

# Bench-only impls: `attention(..., impl="sdpa")` pinned to one SDPA backend
# (torch.nn.attention.SDPBackend member names).
SDPA_VARIANTS = {
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
    "sdpa_math": "MATH",
}
# Bench-only: kind="topk_blocks" without the attention, i.e. what impl="triton" computes before
# its kernels (the selection and the kernels' index lists), forward mode only.
SELECTION_IMPL = "triton_selection"
MODES = ("fwd", "bwd", "fwd_bwd")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
                 "float": "float32", "fp64": "float64", "double": "float64"}


def known_impls() -> tuple[str, ...]:
    """Every impl name the bench accepts: the registry's, ``auto``, the SDPA variants and the
    selection alone."""
    return (*IMPLS, "auto", *SDPA_VARIANTS, SELECTION_IMPL)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_tuple(key: str, value) -> tuple:
    if isinstance(value, str | int | float | dict):  # one value where a list is expected
        value = [value]
    if value is None or not isinstance(value, list | tuple):
        raise ValueError(f"bench config: {key}={value!r} must be a list")
    if len(value) == 0:
        raise ValueError(f"bench config: {key}=[] is empty; give at least one value")
    return tuple(value)


def _check_names(key: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"bench config: {key} contains {v!r}; allowed: {', '.join(allowed)}")


def _check_positive_ints(key: str, values) -> None:
    for v in values:
        if not _is_int(v) or v < 1:
            raise ValueError(f"bench config: {key} contains {v!r}; allowed: positive ints")


def _default_specs() -> tuple[dict, ...]:
    return (
        {"name": "dense_causal", "kind": "dense", "causal": True},
        {"name": "swa64", "kind": "sliding_window", "causal": True, "window": 64},
        {"name": "bigbird", "kind": "block_sparse", "causal": True, "pattern": "bigbird", "block_size": 64},
    )


@dataclass
class BenchConfig:
    """The benchmark grid. Lists may be given as lists or tuples; they are stored as tuples.

    Args:
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        impls: impl names (see `known_impls`): registry impls, ``auto``, and the bench-only
            ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` / ``sdpa_math``, and
            ``triton_selection``: for ``kind="topk_blocks"`` specs in mode ``fwd``, the time of
            the selection and the kernels' index lists alone (no FLOPs; other rows skipped).
        baseline: impl whose time every row is divided by (``speedup = t_base / t_impl``),
            or None. It is measured in the same run (added to ``impls`` if missing).
        baselines: more baselines, one ratio column each (after ``baseline``).
        specs: dicts of `AttentionSpec` kwargs, each with an optional ``name`` (default
            ``spec.name``), e.g. ``{name: swa256, kind: sliding_window, causal: true, window: 256}``,
            and an optional bench-only ``documents: K``: every sequence packs K documents of
            (nearly) equal length, passed to the impls as ``cu_seqlens`` (document masking on
            top of the spec's mask; FLOPs count only the pairs inside a document).
        seq_lens, head_dims: N (= Nq = Nk) and D values.
        dtypes: ``float16``, ``bfloat16``, ``float32``, ``float64`` (or fp16, bf16, fp32, fp64).
        modes: ``fwd``, ``bwd`` (backward only), ``fwd_bwd``.
        batch, heads, kv_heads: B, Hq, Hkv (``heads % kv_heads == 0``).
        warmup_ms, rep_ms: warm-up and measuring time per case (median of the reps).
        seed: inputs are drawn from this seed, identical for every impl of a case.
        plot: write plot.png (entry point only).
    """

    device: str = "auto"
    impls: tuple[str, ...] = ("reference", "sdpa", "flex")
    baseline: str | None = "sdpa"
    baselines: tuple[str, ...] = ()
    specs: tuple[dict, ...] = field(default_factory=_default_specs)
    seq_lens: tuple[int, ...] = (256, 512)
    head_dims: tuple[int, ...] = (64,)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = ("fwd", "fwd_bwd")
    batch: int = 1
    heads: int = 4
    kv_heads: int = 2
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    seed: int = 0
    plot: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> BenchConfig:
        """Build from a plain dict (e.g. ``OmegaConf.to_container(cfg)``); unknown keys are errors."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"bench config: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        return cls(**values)

    def __post_init__(self):
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(f"bench config: device={self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"bench config: device={self.device!r} but CUDA is not available here; use auto or cpu")

        self.impls = _as_tuple("impls", self.impls)
        _check_names("impls", self.impls, known_impls())
        if self.baseline is not None:
            _check_names("baseline", [self.baseline], known_impls())
        if self.baselines is None or (isinstance(self.baselines, list | tuple) and len(self.baselines) == 0):
            self.baselines = ()
        else:
            self.baselines = _as_tuple("baselines", self.baselines)
        _check_names("baselines", self.baselines, known_impls())

        self.seq_lens = _as_tuple("seq_lens", self.seq_lens)
        _check_positive_ints("seq_lens", self.seq_lens)
        self.head_dims = _as_tuple("head_dims", self.head_dims)
        _check_positive_ints("head_dims", self.head_dims)
        for key in ("batch", "heads", "kv_heads"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"bench config: {key}={value!r}; allowed: a positive int")
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"bench config: seed={self.seed!r}; allowed: an int in [0, 2**63 - 1]")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"bench config: heads={self.heads} is not a multiple of kv_heads={self.kv_heads}; "
                "allowed: kv_heads dividing heads (GQA / MQA)"
            )

        self.dtypes = _as_tuple("dtypes", self.dtypes)
        _check_names("dtypes", self.dtypes, (*DTYPES, *DTYPE_ALIASES))
        self.dtypes = tuple(dict.fromkeys(DTYPE_ALIASES.get(d, d) for d in self.dtypes))
        self.modes = _as_tuple("modes", self.modes)
        _check_names("modes", self.modes, MODES)

        for key in ("warmup_ms", "rep_ms"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"bench config: {key}={value!r}; allowed: a positive number of milliseconds")
        if not isinstance(self.plot, bool):
            raise ValueError(f"bench config: plot={self.plot!r}; allowed: true or false")

        self.specs = _as_tuple("specs", self.specs)
        self._named_specs = self._build_specs()

    def _build_specs(self) -> tuple[tuple[str, AttentionSpec], ...]:
        named = []
        self._documents: dict[str, int | None] = {}
        for i, entry in enumerate(self.specs):
            if not isinstance(entry, dict):
                raise ValueError(
                    f"bench config: specs[{i}]={entry!r} must be a dict of AttentionSpec kwargs "
                    "with an optional name, e.g. {name: swa256, kind: sliding_window, causal: true, window: 256}"
                )
            kwargs = dict(entry)
            name = kwargs.pop("name", None)
            docs = kwargs.pop("documents", None)
            if docs is not None and (not _is_int(docs) or docs < 1 or docs > min(self.seq_lens)):
                raise ValueError(
                    f"bench config: specs[{i}] has documents={docs!r}; allowed: an int from 1 to the "
                    f"smallest of seq_lens ({min(self.seq_lens)}), or leave it out for no document masking"
                )
            try:
                spec = AttentionSpec(**kwargs)
            except (TypeError, ValueError) as err:
                raise ValueError(f"bench config: specs[{i}]={entry!r} is not a valid AttentionSpec: {err}") from None
            name = spec.name if name is None else str(name)
            if spec.num_heads() not in (1, self.heads):
                raise ValueError(
                    f"bench config: specs[{i}] ({name}) has {spec.num_heads()} per-head layouts but heads={self.heads}; "
                    f"allowed: 1 or {self.heads}"
                )
            named.append((name, spec))
            self._documents[name] = docs
        names = [n for n, _ in named]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"bench config: specs names must be unique; repeated: {', '.join(dupes)}")
        return tuple(named)

    # ------------------------------------------------------------------ derived
    @property
    def named_specs(self) -> tuple[tuple[str, AttentionSpec], ...]:
        """((name, AttentionSpec), ...) in config order."""
        return self._named_specs

    def documents(self, spec_name: str) -> int | None:
        """The ``documents`` count of a spec (None: no document masking)."""
        return self._documents[spec_name]

    @property
    def ratio_baselines(self) -> tuple[str, ...]:
        """Baselines in column order: ``baseline`` first, then ``baselines``, without repeats."""
        first = () if self.baseline is None else (self.baseline,)
        return tuple(dict.fromkeys((*first, *self.baselines)))

    @property
    def all_impls(self) -> tuple[str, ...]:
        """Impls measured: ``impls`` then any baseline not already in it."""
        return tuple(dict.fromkeys((*self.impls, *self.ratio_baselines)))

    @property
    def num_cases(self) -> int:
        """Rows of the grid: impls x specs x dtypes x head dims x seq lens x modes."""
        return math.prod(map(len, (self.all_impls, self.named_specs, self.dtypes, self.head_dims, self.seq_lens,
                                   self.modes)))

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
