"""`AttentionSpec`: a frozen description of which query-key pairs interact.

Legend: B batch, H heads, Nq / Nk query / key lengths, D head dim, bs block size,
Mb / Kb = ceil(Nq / bs) / ceil(Nk / bs) query / key blocks.

Positions. Query row ``i`` sits at the aligned position ``p = i + Nk - Nq`` (bottom-right
alignment, the flash-attn >= 2.1 convention), so with ``Nq == Nk`` simply ``p = i``.

Token-level rules (combined with AND):

* ``causal``: key ``j`` allowed iff ``j <= p``.
* ``window=W`` (int >= 1): causal -> ``p - W < j <= p`` (the W most recent keys including
  itself, the Mistral / FlexAttention convention); non-causal -> ``|p - j| < W``.
* ``window=(left, right)`` (ints >= 0, or -1 = unbounded on that side, as flash-attn's
  ``window_size``): ``p - left <= j <= p + right``; ``causal`` additionally requires ``j <= p``.
* ``kind="custom"``: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (FlexAttention's signature, raw
  row / column indices: ``q_idx`` is the query row i, not its aligned position) must be True;
  evaluated with ``b = 0`` (batch-dependent masks are documents, below) and ``h = 0``, or each
  ``h < heads`` when ``heads`` is given (per-head masks).

* ``kind="topk_blocks"`` (MoBA-style, content-selected): each query block of ``block_size``
  rows attends the key blocks chosen from q and k (`attnlab.attention.selection`: the diagonal
  blocks plus the ``top_k`` best by pooled ``qbar . kbar``); the token rules above apply inside
  them. Its mask depends on the data: ``dense_mask`` / ``flops`` take ``q=`` and ``k=``.

Sinks: ``sink=S`` (int >= 0) ORs in the keys ``j < S`` (StreamingLLM's attention sinks),
whatever the kind's other rules, except causality (``j <= p`` still holds when causal).
Documents (below) still apply to sink keys.

Scores: ``softcap=c`` (float > 0) turns each scaled score ``s`` into ``c * tanh(s / c)``
before masking (Gemma 2, flash-attn ``softcap``). It changes values, not which pairs interact.

Block-level rule (``kind="block_sparse"``): the (query block, key block) pair must be True
in the layout, given explicitly (``layout``) or generated from ``pattern``; the token
rules above still apply inside each block.

Documents (packed sequences): the boundaries are per-batch data, not part of the spec.
`dense_mask`, `allowed_pairs`, `mask_density` and `flops` take ``doc_ids=`` or
``cu_seqlens=`` (see `attnlab.attention.documents`): key j is then allowed only if it lies
in the document of the query's aligned position p, ANDed with every rule above.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from attnlab.attention import patterns as _patterns
from attnlab.attention import selection as _selection
from attnlab.attention.documents import resolve_documents, same_document
from attnlab.errors import check_seed

KINDS = ("dense", "sliding_window", "block_sparse", "custom", "topk_blocks")
PATTERNS = _patterns.PATTERNS
MODES = {"fwd": (1, 1), "bwd": (5, 2), "fwd_bwd": (7, 2)}  # (num, den) multiples of the forward
_ROW_CHUNK = 1024  # query rows per chunk when counting pairs (bounds memory at long N)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """Which (query, key) pairs attend. See the module docstring for the exact rules.

    Args:
        kind: ``"dense"``, ``"sliding_window"`` or ``"block_sparse"``.
        causal: keys after the query's aligned position are masked.
        window: sliding_window (required) or block_sparse (optional): an int ``W >= 1``
            or a ``(left, right)`` pair of ints ``>= 0``.
        block_size: block_sparse only: tokens per layout block, a power of two (default 64).
        pattern: block_sparse only, instead of ``layout``: one of ``local``, ``strided``,
            ``bigbird``, ``longformer``, ``random``. Parameters (in blocks):
            ``local_blocks`` (band half-width: query block r sees key blocks c with
            ``|r' - c| < local_blocks``, r' the aligned block row; local, strided,
            bigbird, longformer), ``stride`` (strided: also every block c with
            ``(r' - c) % stride == 0``), ``global_blocks`` (bigbird, longformer: the first
            g key blocks are seen by every query and the first g query blocks see every
            key), ``random_blocks`` (bigbird: extra random key blocks per query block),
            ``density`` (random: probability each block is kept; the diagonal is always
            kept), ``seed`` (random parts; same seed -> same layout), ``heads`` (random
            parts: draw a different layout for each of this many heads).
        layout: block_sparse only, instead of ``pattern``: bool tensor
            ``[H or 1, Mb, Kb]``, True = the block is computed.
        sink: keys ``j < sink`` are always visible (causality still applies); any kind.
        softcap: scores become ``softcap * tanh(s / softcap)`` (None: off); any kind.
        mask_mod: kind="custom" only: ``fn(b, h, q_idx, kv_idx) -> bool tensor`` (module
            docstring); ``heads`` (optional) = how many heads it distinguishes.
        top_k: kind="topk_blocks" only: key blocks per query block (>= 1), with ``block_size``
            (a power of two, default 64).
    """

    kind: str = "dense"
    causal: bool = False
    window: int | tuple[int, int] | None = None
    block_size: int | None = None
    pattern: str | None = None
    layout: torch.Tensor | None = None
    local_blocks: int | None = None
    stride: int | None = None
    global_blocks: int | None = None
    random_blocks: int | None = None
    density: float | None = None
    seed: int = 0
    heads: int | None = None
    sink: int = 0
    softcap: float | None = None
    mask_mod: Callable | None = None
    top_k: int | None = None
    _pattern_fields: tuple = field(default=(), init=False, repr=False)

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AttentionSpec.kind={self.kind!r} is unknown; allowed: {', '.join(KINDS)}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"AttentionSpec.causal={self.causal!r} must be a bool (True or False)")
        check_seed("AttentionSpec.seed", self.seed)
        self._check_window()
        self._check_sink_softcap()
        if self.kind == "custom":
            self._check_custom()
        elif self.mask_mod is not None:
            raise ValueError(
                f"AttentionSpec.mask_mod is only allowed with kind='custom', not kind={self.kind!r}"
            )
        if self.kind == "topk_blocks":
            self._check_topk()
        elif self.top_k is not None:
            raise ValueError(f"AttentionSpec.top_k={self.top_k!r} is only allowed with kind='topk_blocks', not kind={self.kind!r}")
        if self.kind == "block_sparse":
            self._check_block_sparse()
        else:
            for name in ("block_size", "pattern", "layout", *_patterns.PARAMS):
                if name == "heads" and self.kind == "custom":
                    continue
                if name == "block_size" and self.kind == "topk_blocks":
                    continue
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"AttentionSpec.{name}={_show(getattr(self, name))} is only allowed with "
                        f"kind='block_sparse', not kind={self.kind!r}"
                    )

    def _check_window(self):
        w = self.window
        if self.kind == "dense" and w is not None:
            raise ValueError(
                f"AttentionSpec.window={w!r} is not allowed with kind='dense'; "
                "use kind='sliding_window' (or block_sparse) for a window"
            )
        if self.kind == "sliding_window" and w is None:
            raise ValueError(
                "AttentionSpec.window=None: kind='sliding_window' needs a window, an int >= 1 "
                "or a (left, right) pair of ints >= 0"
            )
        if w is None:
            return
        if isinstance(w, list):  # YAML / OmegaConf lists
            w = tuple(w)
            object.__setattr__(self, "window", w)
        if _is_int(w):
            if w < 1:
                raise ValueError(f"AttentionSpec.window={w} must be >= 1 (the number of keys a query sees)")
        elif isinstance(w, tuple):
            if len(w) != 2 or not all(_is_int(x) for x in w) or min(w) < -1:
                raise ValueError(
                    f"AttentionSpec.window={w!r}: a window pair must be (left, right) with ints >= 0, "
                    "or -1 for unbounded on that side (flash-attn's window_size)"
                )
        else:
            raise ValueError(
                f"AttentionSpec.window={w!r} must be an int >= 1 or a (left, right) pair of ints >= 0 "
                "(-1 = unbounded)"
            )

    def _check_sink_softcap(self):
        if not _is_int(self.sink) or self.sink < 0:
            raise ValueError(
                f"AttentionSpec.sink={self.sink!r} must be an int >= 0 (keys j < sink are always visible)"
            )
        cap = self.softcap
        if cap is None:
            return
        if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap <= 0:
            raise ValueError(f"AttentionSpec.softcap={cap!r} must be a finite number > 0, or None (no capping)")
        object.__setattr__(self, "softcap", float(cap))

    def _check_custom(self):
        fn = self.mask_mod
        if fn is None or not callable(fn):
            raise ValueError(
                f"AttentionSpec.mask_mod={fn!r}: kind='custom' needs a callable "
                "mask_mod(b, h, q_idx, kv_idx) -> bool tensor"
            )
        try:
            inspect.signature(fn).bind(0, 0, 0, 0)
        except TypeError as e:
            raise ValueError(
                f"AttentionSpec.mask_mod={_show(fn)} must take 4 arguments (b, h, q_idx, kv_idx): {e}"
            ) from None
        except ValueError:  # no signature (some builtins): the trial call below decides
            pass
        if self.heads is not None and (not _is_int(self.heads) or self.heads < 1):
            raise ValueError(f"AttentionSpec.heads={self.heads!r} must be an int >= 1 (heads mask_mod distinguishes)")
        self._custom_mask(torch.arange(3), 3, 3)  # a trial call: bad callables fail here, named

    def _check_block_size(self):
        """block_size: a power of two, default 64 (block_sparse and topk_blocks)."""
        bs = 64 if self.block_size is None else self.block_size
        if not _is_int(bs) or bs < 1 or bs & (bs - 1):
            raise ValueError(f"AttentionSpec.block_size={bs!r} must be a positive power of two (e.g. 16, 64, 128)")
        object.__setattr__(self, "block_size", bs)

    def _check_topk(self):
        if self.window is not None:
            raise ValueError(f"AttentionSpec.window={self.window!r} is not allowed with kind='topk_blocks' "
                             "(the chosen blocks take only the causal, document and sink rules)")
        self._check_block_size()
        if not _is_int(self.top_k) or self.top_k < 1:
            raise ValueError(f"AttentionSpec.top_k={self.top_k!r}: kind='topk_blocks' needs an int >= 1 "
                             "(key blocks per query block)")

    def _check_block_sparse(self):
        self._check_block_size()
        if (self.pattern is None) == (self.layout is None):
            raise ValueError(
                "AttentionSpec: kind='block_sparse' needs exactly one of pattern "
                f"({', '.join(PATTERNS)}) or layout (a bool tensor [H or 1, Mb, Kb]); "
                f"got pattern={self.pattern!r}, layout={_show(self.layout)}"
            )
        if self.layout is not None:
            lay = self.layout
            if not isinstance(lay, torch.Tensor) or lay.dtype != torch.bool or lay.dim() != 3:
                raise ValueError(
                    f"AttentionSpec.layout={_show(lay)} must be a bool tensor of shape [H or 1, Mb, Kb]"
                )
            if min(lay.shape) < 1:
                raise ValueError(f"AttentionSpec.layout has an empty shape {tuple(lay.shape)}")
            if lay.device.type == "meta":
                raise ValueError("AttentionSpec.layout is on the meta device (no data); give a real bool tensor")
            # A private copy: the caller editing its tensor in place must not change this
            # frozen spec (its mask, its hash, the kernels' per-layout caches).
            object.__setattr__(self, "layout", lay.detach().to("cpu", copy=True).contiguous())
            for name in _patterns.PARAMS:
                if getattr(self, name) is not None:
                    raise ValueError(f"AttentionSpec.{name} is a pattern parameter; it is not used with layout=")
        else:
            used = _patterns.check_params(self)
            object.__setattr__(self, "_pattern_fields", used)

    # ------------------------------------------------------------------ identity
    def _key(self):
        vals = []
        for f in fields(self):
            if f.name == "_pattern_fields":
                continue
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = (tuple(v.shape), hashlib.sha1(v.numpy().tobytes()).hexdigest())
            vals.append(v)
        return tuple(vals)

    def __eq__(self, other):
        return isinstance(other, AttentionSpec) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        parts = [f"kind={self.kind!r}", f"causal={self.causal}"]
        for f in fields(self):
            if f.name in ("kind", "causal", "_pattern_fields", "seed"):
                continue
            v = getattr(self, f.name)
            if v is not None:
                parts.append(f"{f.name}={_show(v)}")
        if self.pattern in ("bigbird", "random"):
            parts.append(f"seed={self.seed}")
        if not self.sink:
            parts = [p for p in parts if not p.startswith("sink=")]
        return f"AttentionSpec({', '.join(parts)})"

    @property
    def name(self) -> str:
        """A short label for tables and plots, e.g. ``sliding_window(w=256,causal)``."""
        bits = []
        if self.window is not None:
            bits.append(f"w={self.window[0]}:{self.window[1]}" if isinstance(self.window, tuple) else f"w={self.window}")
        if self.kind == "block_sparse":
            bits.append(self.pattern or "layout")
            bits.append(f"bs={self.block_size}")
        if self.kind == "custom":
            bits.append(getattr(self.mask_mod, "__name__", "mask_mod"))
        if self.kind == "topk_blocks":
            bits += [f"top{self.top_k}", f"bs={self.block_size}"]
        if self.sink:
            bits.append(f"sink={self.sink}")
        if self.softcap is not None:
            bits.append(f"cap={self.softcap:g}")
        if self.causal:
            bits.append("causal")
        return f"{self.kind}({','.join(bits)})" if bits else self.kind

    # ------------------------------------------------------------------ geometry
    def window_bounds(self) -> tuple[int | None, int | None]:
        """(left, right): key j allowed iff ``p - left <= j <= p + right`` (None = unbounded).

        Causality is separate (``self.causal``); this is only the window.
        """
        w = self.window
        if w is None:
            return None, None
        if isinstance(w, tuple):
            return tuple(None if x == -1 else x for x in w)
        return (w - 1, None) if self.causal else (w - 1, w - 1)

    def num_heads(self) -> int:
        """1 if every head shares the mask, else the number of distinct per-head layouts."""
        if self.kind == "custom":
            return self.heads or 1
        if self.kind != "block_sparse":
            return 1
        if self.layout is not None:
            return self.layout.shape[0]
        return self.heads if (self.heads and self.pattern in _patterns.RANDOM_PATTERNS) else 1

    def block_layout(self, n_q: int, n_k: int) -> torch.Tensor:
        """bool [H or 1, Mb, Kb] on CPU: which blocks are computed (block_sparse only)."""
        if self.kind != "block_sparse":
            raise ValueError(f"block_layout() needs kind='block_sparse', not kind={self.kind!r}")
        bs = self.block_size
        mb, kb = math.ceil(n_q / bs), math.ceil(n_k / bs)
        if self.layout is not None:
            if tuple(self.layout.shape[1:]) != (mb, kb):
                raise ValueError(
                    f"AttentionSpec.layout has shape {tuple(self.layout.shape)} but n_q={n_q}, n_k={n_k} "
                    f"with block_size={bs} need [H or 1, {mb}, {kb}]"
                )
            return self.layout
        return _patterns.make_layout(self, mb, kb)

    def _token_mask(self, rows: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
        """bool [len(rows), Nk] from causal + window for the given query rows."""
        p = (rows + (n_k - n_q))[:, None]  # aligned positions, [R, 1]
        j = torch.arange(n_k, device=rows.device)[None, :]  # [1, Nk]
        allowed = torch.ones(rows.numel(), n_k, dtype=torch.bool, device=rows.device)
        left, right = self.window_bounds()
        if left is not None:
            allowed &= j >= p - left
        if right is not None:
            allowed &= j <= p + right
        if self.causal:
            allowed &= j <= p
        return allowed

    def _sink_mask(self, rows: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
        """bool [len(rows), Nk]: the sink pairs (``j < sink``, and ``j <= p`` when causal)."""
        j = torch.arange(n_k, device=rows.device)[None, :]
        sink = (j < self.sink).expand(rows.numel(), n_k)
        return sink & (j <= (rows + (n_k - n_q))[:, None]) if self.causal else sink

    def _custom_mask(self, rows: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
        """bool [H or 1, len(rows), Nk] from ``mask_mod``; a bad callable is a ValueError
        naming mask_mod."""
        heads = self.heads or 1
        h = torch.arange(heads, device=rows.device)[:, None, None]
        b = torch.zeros((), dtype=torch.long, device=rows.device)
        q_idx, kv_idx = rows[None, :, None], torch.arange(n_k, device=rows.device)[None, None, :]
        try:
            out = self.mask_mod(b, h, q_idx, kv_idx)
        except Exception as e:  # noqa: BLE001 - the user's function: report it, named
            raise ValueError(
                f"AttentionSpec.mask_mod={_show(self.mask_mod)} raised {type(e).__name__}: {e} "
                "(it is called with int64 tensors b, h [H, 1, 1], q_idx [1, R, 1], kv_idx [1, 1, Nk])"
            ) from e
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
            got = f"{out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"AttentionSpec.mask_mod={_show(self.mask_mod)} must return a bool tensor, got {got}")
        try:
            return out.expand(heads, rows.numel(), n_k)
        except RuntimeError:
            raise ValueError(
                f"AttentionSpec.mask_mod={_show(self.mask_mod)} returned shape {tuple(out.shape)}, which "
                f"does not broadcast to [heads={heads}, rows={rows.numel()}, keys={n_k}]"
            ) from None

    def _rows_mask(self, rows: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
        """bool [H or 1, len(rows), Nk] for the given query rows."""
        mask = self._token_mask(rows, n_q, n_k)[None]
        if self.kind == "block_sparse":
            bs = self.block_size
            lay = self.block_layout(n_q, n_k).to(rows.device)  # [H, Mb, Kb]
            cols = torch.arange(n_k, device=rows.device) // bs
            mask = mask & lay[:, rows // bs][:, :, cols]
        elif self.kind == "custom":
            mask = mask & self._custom_mask(rows, n_q, n_k)
        elif self.kind == "topk_blocks":  # no data here: the estimate `flops` documents
            bs = self.block_size
            lay = _selection.nearest_blocks(self, n_q, n_k)[0].to(rows.device)  # [1, Mb, Kb]
            cols = torch.arange(n_k, device=rows.device) // bs
            mask = mask & lay[:, rows // bs][:, :, cols]
        if self.sink:
            mask = mask | self._sink_mask(rows, n_q, n_k)[None]
        return mask

    def _docs(self, n_q, n_k, doc_ids, cu_seqlens, device=None):
        """Validated doc ids [B or 1, Nk] (on `device` when given), or None."""
        _check_lengths(n_q, n_k)
        ids = resolve_documents(doc_ids, cu_seqlens, n_q=n_q, n_k=n_k)
        return ids if ids is None or device is None else ids.to(device)

    def selected_mask(self, q: torch.Tensor, k: torch.Tensor, docs=None) -> torch.Tensor:
        """kind="topk_blocks": bool [B, Hq, Nq, Nk] on q's device from q [B, Hq, Nq, D] and
        k [B, Hkv, Nk, D] (the chosen blocks AND the token rules, OR sinks; AND documents
        given as validated ids [B or 1, Nk])."""
        n_q, n_k = q.shape[2], k.shape[2]
        rows = torch.arange(n_q, device=q.device)
        lay = _selection.select_blocks(self, q, k)  # [B, Hq, Mb, Kb]
        mask = _selection.expand_to_tokens(lay, self.block_size, n_q, n_k) & self._token_mask(rows, n_q, n_k)
        if self.sink:
            mask = mask | self._sink_mask(rows, n_q, n_k)
        if docs is not None:
            mask = mask & same_document(docs, rows, n_q, n_k)[:, None]
        return mask

    def dense_mask(self, n_q: int, n_k: int, device=None, *, doc_ids=None, cu_seqlens=None,
                   q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> torch.Tensor:
        """The ground truth, True = query i attends key j.

        Without documents: bool ``[H or 1, n_q, n_k]`` (H when block layouts differ per head).
        With ``doc_ids`` / ``cu_seqlens``: bool ``[B or 1, H or 1, n_q, n_k]``, B the rows of
        ``doc_ids`` (1 for 1-D ``doc_ids`` or one shared ``cu_seqlens``); it broadcasts
        against scores ``[B, Hq, n_q, n_k]``. ``device``: default the doc ids' device (or CPU).
        kind="topk_blocks" needs ``q`` [B, Hq, n_q, D] and ``k`` [B, Hkv, n_k, D] and returns
        bool ``[B, Hq, n_q, n_k]`` on q's device.
        """
        if self.kind == "topk_blocks":
            if q is None or k is None:
                raise ValueError("AttentionSpec(kind='topk_blocks').dense_mask needs q= and k=: its blocks are chosen from them")
            _check_qk(q, k, n_q, n_k)
            return self.selected_mask(q, k, self._docs(n_q, n_k, doc_ids, cu_seqlens, q.device))
        docs = self._docs(n_q, n_k, doc_ids, cu_seqlens, device)
        if docs is not None and device is None:
            device = docs.device
        rows = torch.arange(n_q, device=device)
        mask = self._rows_mask(rows, n_q, n_k)
        if docs is None:
            return mask
        return mask[None] & same_document(docs, rows, n_q, n_k)[:, None]

    def allowed_pairs(self, n_q: int, n_k: int, *, doc_ids=None, cu_seqlens=None) -> torch.Tensor:
        """int64 on CPU: allowed (q, k) pairs per distinct head mask, ``[H or 1]``; with
        documents ``[B or 1, H or 1]`` (per doc-id row, as `dense_mask`)."""
        docs = self._docs(n_q, n_k, doc_ids, cu_seqlens)
        device = docs.device if docs is not None else None
        shape = (self.num_heads(),) if docs is None else (docs.shape[0], self.num_heads())
        total = torch.zeros(shape, dtype=torch.int64, device=device)
        for start in range(0, n_q, _ROW_CHUNK):
            rows = torch.arange(start, min(n_q, start + _ROW_CHUNK), device=device)
            mask = self._rows_mask(rows, n_q, n_k)  # [H or 1, R, Nk]
            if docs is not None:
                mask = mask[None] & same_document(docs, rows, n_q, n_k)[:, None]  # [B or 1, H or 1, R, Nk]
            total += mask.sum(dim=(-2, -1))
        return total.cpu()

    def mask_density(self, n_q: int, n_k: int, *, doc_ids=None, cu_seqlens=None) -> float:
        """Fraction of the n_q x n_k pairs that are computed (averaged over heads and doc-id rows)."""
        pairs = self.allowed_pairs(n_q, n_k, doc_ids=doc_ids, cu_seqlens=cu_seqlens)
        return float(pairs.double().mean()) / (n_q * n_k)

    def flops(
        self, batch: int, heads: int, n_q: int, n_k: int, head_dim: int, mode: str = "fwd",
        *, doc_ids=None, cu_seqlens=None, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
    ) -> int:
        """Mask-exact FLOPs: ``4 * head_dim`` per allowed (q, k) pair per head for the
        forward (QK^T and PV, 2 FLOPs per multiply-add); ``bwd`` is 2.5x, ``fwd_bwd`` 3.5x.
        With documents the pairs are counted per doc-id row: ``doc_ids`` with B rows needs
        ``batch == B``; one shared row counts ``batch`` times.

        kind="topk_blocks": with ``q`` and ``k`` the pairs of the blocks chosen for them
        (exact); without, the pairs of the layout whose free choices are the candidate blocks
        nearest the diagonal, which equals every selection's count when Nq == Nk and there are
        no sinks or documents (each non-diagonal candidate block is then wholly allowed)."""
        if mode not in MODES:
            raise ValueError(f"flops(mode={mode!r}) is unknown; allowed: {', '.join(MODES)}")
        for name, val in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
            if not _is_int(val) or val < 1:
                raise ValueError(f"flops({name}={val!r}) must be a positive int")
        if (q is None) != (k is None) or (q is not None and self.kind != "topk_blocks"):
            raise ValueError("flops(q=, k=) go together, and only with kind='topk_blocks'")
        if q is not None:
            if tuple(q.shape[:2]) != (batch, heads):
                raise ValueError(f"flops(batch={batch}, heads={heads}) do not match q's shape {tuple(q.shape)}")
            num, den = MODES[mode]
            pairs = int(self.dense_mask(n_q, n_k, doc_ids=doc_ids, cu_seqlens=cu_seqlens, q=q, k=k).sum())
            return 4 * head_dim * pairs * num // den
        pairs = self.allowed_pairs(n_q, n_k, doc_ids=doc_ids, cu_seqlens=cu_seqlens)
        if pairs.dim() == 1:
            pairs, batch_mult = pairs[None], batch
        elif pairs.shape[0] == 1:
            batch_mult = batch
        elif pairs.shape[0] == batch:
            batch_mult = 1
        else:
            raise ValueError(f"flops(batch={batch}) does not match the {pairs.shape[0]} rows of doc_ids; use 1 or {batch}")
        if pairs.shape[1] == 1:
            total_pairs = int(pairs.sum()) * heads
        elif pairs.shape[1] == heads:
            total_pairs = int(pairs.sum())
        else:
            raise ValueError(f"flops(heads={heads}) does not match the spec's {pairs.shape[1]} per-head layouts")
        num, den = MODES[mode]
        return 4 * head_dim * total_pairs * batch_mult * num // den  # exact: 4 * ... is even


def _check_qk(q, k, n_q, n_k):
    for name, t, n in (("q", q, n_q), ("k", k, n_k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[2] != n:
            raise ValueError(f"{name} must be a tensor [B, H, {n}, D], got {_show(t)}")
    if q.shape[1] % k.shape[1] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (batch, head dim, Hq % Hkv == 0)")


def _check_lengths(n_q, n_k):
    for name, val in (("n_q", n_q), ("n_k", n_k)):
        if not _is_int(val) or val < 1:
            raise ValueError(f"{name}={val!r} must be a positive int")


def _show(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"Tensor(shape={tuple(v.shape)}, dtype={v.dtype})"
    if callable(v) and hasattr(v, "__qualname__"):
        return v.__qualname__
    return repr(v)
