"""`attention(q, k, v, spec, impl)`: one call for every implementation.

Legend: B batch, Hq / Hkv query / key-value heads (``Hq % Hkv == 0``: GQA / MQA),
Nq / Nk query / key lengths, D head dim.

Packed sequences: ``doc_ids=`` / ``cu_seqlens=`` restrict attention to each token's own
document (`attnlab.attention.documents`); every impl serves them.
"""

from __future__ import annotations

import math

import torch

from attnlab.attention import reference, torch_impls, triton_impl  # noqa: F401  (register impls)
from attnlab.attention.documents import resolve_documents
from attnlab.attention.registry import IMPLS
from attnlab.attention.spec import AttentionSpec

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available_impls(spec: AttentionSpec, device="cpu", requires_grad: bool = False, *,
                    dtype: torch.dtype | None = None, head_dim: int | None = None) -> list[str]:
    """Names of the impls that can serve `spec` on `device` (with a backward if asked), for
    inputs of ``dtype`` and head dim ``head_dim`` when given (None: not checked)."""
    device = torch.device(device)
    return [name for name, impl in IMPLS.items()
            if impl.why_not(spec, device, requires_grad, dtype=dtype, head_dim=head_dim) is None]


def why_not(impl: str, spec: AttentionSpec, device="cpu", requires_grad: bool = False, *,
            dtype: torch.dtype | None = None, head_dim: int | None = None) -> str | None:
    """Why ``impl`` cannot serve `spec` on `device` for such inputs, or None when it can."""
    if impl not in IMPLS:
        return f"impl={impl!r} is unknown; known: auto, {', '.join(IMPLS)}"
    return IMPLS[impl].why_not(spec, torch.device(device), requires_grad, dtype=dtype, head_dim=head_dim)


def choose_impl(spec: AttentionSpec, device="cpu", requires_grad: bool = False, *,
                dtype: torch.dtype | None = None, head_dim: int | None = None,
                return_lse: bool = False) -> str:
    """What ``impl="auto"`` runs: the first of triton, flex, sdpa that serves the spec, the
    device, the dtype and the head dim (and returns the LSE when asked) on CUDA; sdpa on CPU;
    else the reference."""
    device = torch.device(device)
    order = ("triton", "flex", "sdpa") if device.type == "cuda" else ("sdpa",)
    for name in order:
        if return_lse and not IMPLS[name].lse:
            continue
        if IMPLS[name].why_not(spec, device, requires_grad, dtype=dtype, head_dim=head_dim) is None:
            return name
    return "reference"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    impl: str = "auto",
    scale: float | None = None,
    *,
    doc_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    return_lse: bool = False,
    layout: str = "bhnd",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over k, v restricted to the pairs `spec` allows (and, with document
    boundaries, to each token's own document).

    Args:
        q: [B, Hq, Nq, D]; k, v: [B, Hkv, Nk, D] with Hq % Hkv == 0. Same dtype and device.
        spec: which (query, key) pairs interact (see `AttentionSpec`).
        impl: ``reference``, ``sdpa``, ``flex``, ``triton`` or ``auto`` (triton on CUDA
            when it serves the spec, else the fastest correct PyTorch path).
        scale: softmax scale; default ``1 / sqrt(D)``.
        doc_ids: packed sequences: int32 / int64 ``[Nk]`` or ``[B or 1, Nk]``, non-decreasing
            per row, equal ids = one document, on q's device. Query row i takes the id of
            its aligned key position ``i + Nk - Nq`` (so ``Nq <= Nk``).
        cu_seqlens: instead of ``doc_ids``: int32 / int64 ``[num_docs + 1]`` (flash-attn
            varlen convention, ``0 = cu[0] < ... < cu[-1] = Nk``) shared by every row, or a
            list of B such tensors, one per row.

        return_lse: also return the log-sum-exp ``[B, Hq, Nq]`` (fp32; fp64 from the reference
            for fp64 inputs): natural log of the sum of ``exp`` of the scaled (and capped) scores
            over the allowed keys, ``-inf`` for a query with none. For merging partial
            attentions and for distillation. Served by reference, flex and triton, all
            differentiable through it; sdpa cannot return it.
        layout: ``"bhnd"`` (default, ``[B, H, N, D]``) or ``"bnhd"`` (``[B, N, H, D]``, the
            flash-attn convention): q, k, v and the output use it; the LSE stays ``[B, H, N]``.

    Returns:
        [B, Hq, Nq, D] (or [B, Nq, Hq, D] with layout="bnhd") in q's dtype, and the LSE with
        ``return_lse``. A query with no allowed key gets zeros (and zero gradients), never NaN.
    """
    if layout not in ("bhnd", "bnhd"):
        raise ValueError(f"layout={layout!r} is unknown; allowed: 'bhnd' ([B, H, N, D]) or 'bnhd' ([B, N, H, D])")
    if not isinstance(return_lse, bool):
        raise ValueError(f"return_lse={return_lse!r} must be a bool")
    if layout == "bnhd":
        for name, t in (("q", q), ("k", k), ("v", v)):
            if isinstance(t, torch.Tensor) and t.dim() != 4:
                raise ValueError(f"{name} must be 4-D [B, N, H, D] (layout='bnhd'), got shape {tuple(t.shape)}")
        q, k, v = (t.transpose(1, 2) if isinstance(t, torch.Tensor) else t for t in (q, k, v))
    result = _attention(q, k, v, spec, impl, scale, doc_ids, cu_seqlens, return_lse)
    if layout == "bhnd":
        return result
    if return_lse:
        return result[0].transpose(1, 2), result[1]
    return result.transpose(1, 2)


def _attention(q, k, v, spec, impl, scale, doc_ids, cu_seqlens, return_lse):
    _check_inputs(q, k, v, spec, scale)
    docs = resolve_documents(
        doc_ids, cu_seqlens, n_q=q.shape[2], n_k=k.shape[2], batch=q.shape[0], device=q.device
    )  # [B or 1, Nk] or None
    if not isinstance(impl, str):
        raise ValueError(f"impl={impl!r} must be a string: auto, {', '.join(IMPLS)}")
    requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    inputs = dict(dtype=q.dtype, head_dim=q.shape[-1])
    name = choose_impl(spec, q.device, requires_grad, return_lse=return_lse, **inputs) if impl == "auto" else impl
    if name not in IMPLS:
        raise NotImplementedError(
            f"impl={impl!r} is unknown; known: auto, {', '.join(IMPLS)}; for this spec on "
            f"{q.device.type}: {', '.join(available_impls(spec, q.device, requires_grad, **inputs))}"
        )
    reason = IMPLS[name].why_not(spec, q.device, requires_grad, **inputs)
    if reason is not None:
        raise NotImplementedError(
            f"impl={name!r} cannot serve {spec.name} on {q.device.type} with {q.dtype} and head dim "
            f"D={q.shape[-1]}: {reason}. Impls that can: "
            f"{', '.join(available_impls(spec, q.device, requires_grad, **inputs))}"
        )
    if return_lse and not IMPLS[name].lse:
        can = [n for n in available_impls(spec, q.device, requires_grad, **inputs) if IMPLS[n].lse]
        raise NotImplementedError(
            f"impl={name!r} cannot return the log-sum-exp (return_lse=True). Impls that can: {', '.join(can)}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    kwargs = {}
    if docs is not None:
        kwargs["doc_ids"] = docs
    if return_lse:
        kwargs["return_lse"] = True
    return IMPLS[name].run(q, k, v, spec, scale, **kwargs)


def _check_inputs(q, k, v, spec, scale):
    if not isinstance(spec, AttentionSpec):
        raise ValueError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be >= 1")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported; allowed: float16, bfloat16, float32, float64")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    b, hq, _, d = q.shape
    if k.shape[0] != b:
        raise ValueError(f"batch sizes differ: q has {b}, k/v have {k.shape[0]}")
    if k.shape[3] != d:
        raise ValueError(f"head dims differ: q has D={d}, k/v have D={k.shape[3]}")
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads Hq={hq} must be a multiple of key/value heads Hkv={hkv} (GQA/MQA)")
    spec_heads = spec.num_heads()
    if spec_heads not in (1, hq):
        raise ValueError(f"spec has {spec_heads} per-head layouts but q has Hq={hq} heads; use 1 or {hq}")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool)
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale={scale!r} must be a positive finite number (or None for 1/sqrt(D))")
