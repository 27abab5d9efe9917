"""PyTorch's own kernels as impls (the baselines): `sdpa` and `flex`.

Both serve document masks (packed sequences, ``doc_ids [B or 1, Nk]``): sdpa ANDs a
per-batch bool mask into the spec's, flex builds a per-batch block mask whose mask_mod
compares document ids (cached per doc-ids tensor, so the layers of one forward share it).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from attnlab.attention.documents import TensorCache, same_document
from attnlab.attention.registry import Impl, dtype_name, register, why_not_bf16


@functools.lru_cache(maxsize=16)
def _spec_mask(spec, n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    return spec.dense_mask(n_q, n_k, device=device)  # [H or 1, Nq, Nk]


@functools.lru_cache(maxsize=16)
def _mask_and_rows(spec, n_q: int, n_k: int, device: torch.device):
    """(mask [H or 1, Nq, Nk] with empty rows opened up, has_key [H or 1, Nq, 1]).

    No data-dependent Python branch here, so models using it compile with fullgraph=True."""
    mask = _spec_mask(spec, n_q, n_k, device)
    has_key = mask.any(dim=-1, keepdim=True)
    return mask | ~has_key, has_key


def _needs_mask(spec, n_q: int, n_k: int) -> bool:
    return not (spec.kind == "dense" and (not spec.causal or n_q == n_k))


def sdpa_attention(q, k, v, spec, scale: float, doc_ids=None) -> torch.Tensor:
    """`F.scaled_dot_product_attention`: `is_causal` when the spec is plain causal with
    Nq == Nk (SDPA aligns causal top-left), else a bool mask from `spec.dense_mask`
    (ANDed with a per-batch same-document mask ``[B or 1, 1, Nq, Nk]`` given ``doc_ids``).
    SDPA returns NaN for a row with no allowed key; such rows are opened up to avoid the
    NaN and then multiplied by 0, which also zeroes their gradients."""
    n_q, n_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if spec.kind == "topk_blocks":  # blocks chosen from q and k: a per-(batch, head) mask
        return _sdpa_with_mask(q, k, v, spec.selected_mask(q, k, doc_ids), scale, gqa)  # [B, Hq, Nq, Nk]
    if doc_ids is not None:
        rows = torch.arange(n_q, device=q.device)
        same_doc = same_document(doc_ids, rows, n_q, n_k)[:, None]  # [B or 1, 1, Nq, Nk]
        mask = _spec_mask(spec, n_q, n_k, q.device)[None] & same_doc  # [B or 1, H or 1, Nq, Nk]
        return _sdpa_with_mask(q, k, v, mask, scale, gqa)
    if not _needs_mask(spec, n_q, n_k):
        return F.scaled_dot_product_attention(q, k, v, is_causal=spec.causal, scale=scale, enable_gqa=gqa)
    mask, has_key = _mask_and_rows(spec, n_q, n_k, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], scale=scale, enable_gqa=gqa)
    return out * has_key[None].to(out.dtype)


def _sdpa_with_mask(q, k, v, mask, scale: float, gqa: bool):
    """SDPA under a per-call bool mask [B or 1, H or 1, Nq, Nk], rows without a key opened up
    (no NaN) and zeroed after (zero gradients too)."""
    has_key = mask.any(dim=-1, keepdim=True)  # [B or 1, H or 1, Nq, 1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, scale=scale, enable_gqa=gqa)
    return out * has_key.to(out.dtype)


def _mask_mod(spec, n_q: int, n_k: int, device, doc_ids=None, selected=None):
    """FlexAttention mask_mod of the spec (ANDed with same-document when ``doc_ids`` [B or 1, Nk])."""
    left, right = spec.window_bounds()
    offset = n_k - n_q
    layout = None
    if spec.kind == "block_sparse":
        layout = spec.block_layout(n_q, n_k).to(device)
        bs = spec.block_size
        per_head = layout.shape[0] > 1
    per_batch = doc_ids is not None and doc_ids.shape[0] > 1
    custom = spec.mask_mod if spec.kind == "custom" else None

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + offset
        ok = kv_idx >= 0
        if left is not None:
            ok = ok & (kv_idx >= p - left)
        if right is not None:
            ok = ok & (kv_idx <= p + right)
        if spec.causal:
            ok = ok & (kv_idx <= p)
        if layout is not None:
            ok = ok & layout[h if per_head else 0, q_idx // bs, kv_idx // bs]
        if selected is not None:  # topk_blocks: chosen blocks [B, Hq, Mb, Kb]
            ok = ok & selected[b, h, q_idx // spec.block_size, kv_idx // spec.block_size]
        if custom is not None:  # the contract: b = 0, and h = 0 unless the spec sets heads
            ok = ok & custom(b * 0, h if spec.heads else h * 0, q_idx, kv_idx)
        if spec.sink:
            sink = kv_idx < spec.sink
            ok = ok | ((sink & (kv_idx <= p)) if spec.causal else sink)
        if doc_ids is not None:
            row = b if per_batch else 0
            ok = ok & (doc_ids[row, p] == doc_ids[row, kv_idx])
        return ok

    return mask_mod


@functools.lru_cache(maxsize=16)
def _block_mask(spec, n_q: int, n_k: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    heads = spec.num_heads()
    return create_block_mask(
        _mask_mod(spec, n_q, n_k, device), B=None, H=heads if heads > 1 else None,
        Q_LEN=n_q, KV_LEN=n_k, device=device,
    )


_DOC_BLOCK_MASKS = TensorCache(size=8)


def _doc_block_mask(spec, n_q: int, n_k: int, device: torch.device, doc_ids: torch.Tensor):
    """Block mask with documents, B = doc_ids rows (None when shared), cached per doc-ids
    tensor (`TensorCache`): the layers of one forward pass share it."""
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        heads, rows = spec.num_heads(), doc_ids.shape[0]
        return create_block_mask(
            _mask_mod(spec, n_q, n_k, device, doc_ids), B=rows if rows > 1 else None,
            H=heads if heads > 1 else None, Q_LEN=n_q, KV_LEN=n_k, device=device,
        )

    if torch.compiler.is_compiling():
        return build()
    return _DOC_BLOCK_MASKS.get(doc_ids, (spec, n_q, n_k, str(device)), build)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _aux_request():
    """FlexAttention's ``AuxRequest`` (torch >= 2.9: ``return_aux=AuxRequest(lse=True)``
    replaces the deprecated ``return_lse``), or None on older torch."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return None
    return AuxRequest


@functools.lru_cache(maxsize=16)
def _softcap_score_mod(cap: float):
    def score_mod(score, b, h, q_idx, kv_idx):  # flex hands it the scaled score
        return cap * torch.tanh(score / cap)

    return score_mod


def flex_attention(q, k, v, spec, scale: float, doc_ids=None, return_lse: bool = False):
    """FlexAttention with a block mask built from the spec (compiled on CUDA, eager on CPU);
    with ``doc_ids`` [B or 1, Nk] a per-batch block mask that also compares document ids;
    soft-capping as a score_mod; ``return_lse``: also the natural-log LSE (fp32, -inf for
    empty rows). FlexAttention gives empty rows zeros (and zero gradients)."""
    if q.device.type == "cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError(
                "impl='flex' has no backward on CPU (PyTorch's FlexAttention supports CPU forward "
                "only); use impl='sdpa' or 'reference' for gradients on CPU"
            )
        # No graph is recorded (no_grad / inference): PyTorch's CPU flex still refuses inputs
        # that require grad, so hand it the same data without the flag.
        q, k, v = q.detach(), k.detach(), v.detach()
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    if spec.kind == "topk_blocks":  # content-selected: a fresh block mask per call, per (batch, head)
        from torch.nn.attention.flex_attention import create_block_mask

        from attnlab.attention.selection import select_blocks

        selected = select_blocks(spec, q, k)
        block_mask = create_block_mask(
            _mask_mod(spec, q.shape[2], k.shape[2], q.device, doc_ids, selected), B=q.shape[0], H=q.shape[1],
            Q_LEN=q.shape[2], KV_LEN=k.shape[2], device=q.device,
        )
    elif doc_ids is None:
        block_mask = _block_mask(spec, q.shape[2], k.shape[2], q.device)
    else:
        block_mask = _doc_block_mask(spec, q.shape[2], k.shape[2], q.device, doc_ids)
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if spec.softcap is not None:
        kwargs["score_mod"] = _softcap_score_mod(spec.softcap)
    aux = _aux_request() if return_lse else None
    if return_lse:
        kwargs.update(return_aux=aux(lse=True)) if aux else kwargs.update(return_lse=True)
    if q.device.type == "cuda":
        result = _compiled_flex()(q, k, v, **kwargs)
    else:
        with warnings.catch_warnings():  # eager flex warns that it is unfused: expected on CPU
            warnings.simplefilter("ignore", UserWarning)
            result = eager_flex(q, k, v, **kwargs)
    if not return_lse:
        return result
    out, lse = result
    lse = (lse.lse if aux else lse).float()
    return out, torch.where(lse > float("-inf"), lse, float("-inf"))  # empty rows: -inf


# Compiled FlexAttention on CUDA (Inductor's Triton template): head dim >= 16 (tl.dot; smaller
# raises "NYI: embedding dimension ... must be at least 16") and the dtypes PyTorch tests it
# with; fp64 is not one of them. On CPU it runs eagerly: any float dtype and head dim.
FLEX_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLEX_CUDA_MIN_HEAD_DIM = 16


def _flex_why_not(spec, device, requires_grad, dtype=None, head_dim=None):
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on cpu and cuda, not {device.type}"
    if device.type == "cpu":
        return "FlexAttention has no backward on CPU (forward only there)" if requires_grad else None
    if dtype is not None and dtype not in FLEX_CUDA_DTYPES:
        return (f"compiled FlexAttention on cuda takes dtype {', '.join(map(dtype_name, FLEX_CUDA_DTYPES))}, "
                f"not dtype={dtype_name(dtype)}")
    if head_dim is not None and head_dim < FLEX_CUDA_MIN_HEAD_DIM:
        return f"compiled FlexAttention on cuda needs head dim D >= {FLEX_CUDA_MIN_HEAD_DIM}, not D={head_dim}"
    return why_not_bf16(device, dtype, "compiled FlexAttention")


def _sdpa_why_not(spec, device, requires_grad, dtype=None, head_dim=None):
    if spec.softcap is not None:
        return "SDPA has no soft-capping (softcap=); flex, triton and reference cap scores"
    return None


register(
    Impl(
        name="sdpa",
        run=sdpa_attention,
        why_not=_sdpa_why_not,
        description="torch scaled_dot_product_attention (is_causal or a bool mask)",
    )
)
register(
    Impl(
        name="flex",
        run=flex_attention,
        why_not=_flex_why_not,
        description="torch FlexAttention with a block mask (compiled on CUDA; CPU forward only)",
        lse=True,
        lse_grad=True,
    )
)
