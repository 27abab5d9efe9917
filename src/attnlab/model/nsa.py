"""Native Sparse Attention (NSA, DeepSeek 2025) as a model layer: ``kind: nsa`` in
``model.attention``.

Three branches over the same RoPE'd q, k, v, mixed per head by learned sigmoid gates:

- compression: keys / values of each block of ``block_size`` tokens pooled by a learned map
  (a linear layer over the block's ``block_size * Dh`` values plus a learned intra-block
  position embedding, shared by the kv heads); query i attends the compressed blocks that end
  at or before i (whole blocks in the past);
- selection: each query block's importance of key block j is the compression branch's
  attention probability of compressed block j at the block's first row, summed over the query
  heads of its GQA group (not differentiated). The paper selects per query token; one choice
  per query block is what the block-sparse kernels take, and it must come from the block's
  first row: pooling over the block's rows (as ``topk_blocks`` does) would let a row's choice
  depend on the queries after it. The query block attends its diagonal block plus
  the most important others up to ``top_k`` blocks (the ``topk_blocks`` rules of
  `attnlab.attention.selection`, with these scores), through the block-sparse kernels;
- sliding window: the ``window`` most recent keys.

Simplification (said here and in the README): the paper's compression block, stride and
selection block (32, 16, 64) are one ``block_size`` here (stride = block). Causal only;
packed documents are refused.

Legend: B batch, N length, C d_model, Hq / Hkv heads, Dh head dim, l block_size,
T = N // l complete blocks, Mb = ceil(N / l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import AttentionSpec, attention
from attnlab.attention.selection import choose, expand_to_tokens, max_chosen
from attnlab.attention.spec import MODES


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class NSASpec:
    """An NSA layer's settings (what `ModelConfig.layer_specs` returns for ``kind: nsa``)."""

    kind: str = "nsa"
    block_size: int = 16
    top_k: int = 4
    window: int = 64
    causal: bool = True

    def __post_init__(self):
        if self.kind != "nsa":
            raise ValueError(f"NSASpec.kind={self.kind!r} must be 'nsa'")
        if not self.causal:
            raise ValueError("kind='nsa' is causal only (model.objective=causal)")
        bs = self.block_size
        if not _is_int(bs) or bs < 1 or bs & (bs - 1):
            raise ValueError(f"nsa block_size={bs!r} must be a positive power of two (e.g. 16, 32, 64)")
        for name in ("top_k", "window"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"nsa {name}={v!r} must be an int >= 1")

    @property
    def name(self) -> str:
        return f"nsa(bs={self.block_size},top{self.top_k},w={self.window})"

    def num_heads(self) -> int:
        return 1

    def branch_specs(self) -> dict[str, AttentionSpec]:
        """The mask-level specs of the selection and window branches (for FLOPs)."""
        return {
            "selection": AttentionSpec(kind="topk_blocks", block_size=self.block_size, top_k=self.top_k, causal=True),
            "window": AttentionSpec(kind="sliding_window", window=self.window, causal=True),
        }

    def flops(self, batch: int, heads: int, n_q: int, n_k: int, head_dim: int, mode: str = "fwd",
              *, doc_ids=None, cu_seqlens=None) -> int:
        """Attention FLOPs of the three branches (4 * Dh per pair forward, as `AttentionSpec.flops`):
        compressed pairs (query i with the whole blocks before it), the selection branch's pairs
        (the nearest-blocks layout: exact for Nq == Nk) and the window's. The compression maps'
        matmuls are not included."""
        if doc_ids is not None or cu_seqlens is not None:
            raise ValueError("kind='nsa' does not serve packed documents (doc_ids / cu_seqlens)")
        specs = self.branch_specs()
        total = sum(s.flops(batch=batch, heads=heads, n_q=n_q, n_k=n_k, head_dim=head_dim, mode=mode)
                    for s in specs.values())  # fmt: skip
        shift = n_k - n_q
        cmp_pairs = sum(max(0, (i + shift + 1) // self.block_size) for i in range(n_q))
        num, den = MODES[mode]  # checked by the branch specs' flops above
        return total + 4 * head_dim * cmp_pairs * batch * heads * num // den


class NSAAttention(nn.Module):
    """The NSA layer (module docstring); same projections and names as `Attention`, plus the
    compression maps and the gate."""

    def __init__(self, cfg, spec: NSASpec):
        super().__init__()
        self.spec, self.impl = spec, cfg.attn_impl
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        bl, dh = spec.block_size, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * dh, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * dh, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * dh, bias=False)
        self.o_proj = nn.Linear(self.n_heads * dh, cfg.d_model, bias=False)
        self.compress_k = nn.Linear(bl * dh, dh, bias=False)
        self.compress_v = nn.Linear(bl * dh, dh, bias=False)
        self.block_pos = nn.Parameter(torch.zeros(bl, dh))
        self.gate = nn.Linear(cfg.d_model, 3 * self.n_heads, bias=True)
        self.window_spec = spec.branch_specs()["window"]
        with torch.no_grad():  # a block mean to start with: the compressed key is the block's average
            eye = torch.eye(dh).repeat(1, bl) / bl  # [Dh, l * Dh]
            self.compress_k.weight.copy_(eye)
            self.compress_v.weight.copy_(eye)

    def _compress(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """[B, Hkv, N, Dh] -> [B, Hkv, T, Dh], one vector per whole block."""
        b, h, n, dh = x.shape
        bl = self.spec.block_size
        t = n // bl
        blocks = x[:, :, : t * bl].reshape(b, h, t, bl, dh) + self.block_pos
        return proj(blocks.reshape(b, h, t, bl * dh))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, doc_ids: torch.Tensor | None = None):
        from attnlab.model.rope import apply_rope

        if doc_ids is not None:
            raise ValueError("kind='nsa' does not serve packed documents (doc_ids)")
        B, N, _ = x.shape
        hq, hkv, dh, bl = self.n_heads, self.n_kv_heads, self.head_dim, self.spec.block_size
        q = apply_rope(self.q_proj(x).view(B, N, hq, dh).transpose(1, 2), cos, sin)  # (B, Hq, N, Dh)
        k = apply_rope(self.k_proj(x).view(B, N, hkv, dh).transpose(1, 2), cos, sin)  # (B, Hkv, N, Dh)
        v = self.v_proj(x).view(B, N, hkv, dh).transpose(1, 2)  # (B, Hkv, N, Dh)
        group = hq // hkv

        # compression branch: query i sees compressed blocks t with (t + 1) * l - 1 <= i
        kc = self._compress(k, self.compress_k).repeat_interleave(group, 1)  # (B, Hq, T, Dh)
        vc = self._compress(v, self.compress_v).repeat_interleave(group, 1)
        t = kc.shape[2]
        seen = (torch.arange(t, device=x.device)[None, :] + 1) * bl - 1 <= torch.arange(N, device=x.device)[:, None]
        scores = (q @ kc.transpose(-1, -2)) / math.sqrt(dh)  # (B, Hq, N, T)
        scores = scores.masked_fill(~seen, float("-inf"))
        has = seen.any(-1)[:, None]  # (N, 1): rows with at least one whole block behind them
        probs = torch.softmax(scores.masked_fill(~has, 0.0), -1) * has
        o_cmp = probs @ vc  # (B, Hq, N, Dh)

        # selection branch: importance of key block j = compressed block j's probability at the
        # query block's first row (a later row would leak the future into earlier rows' choice)
        mb = math.ceil(N / bl)
        imp = probs.detach().float()[:, :, ::bl]  # (B, Hq, Mb, T)
        imp = imp.view(B, hkv, group, mb, t).sum(2)  # shared by the GQA group
        imp = F.pad(imp, (0, mb - t), value=0.0)  # Kb = Mb (Nq = Nk); a partial last key block has no compressed vector
        chosen = choose(self.spec.branch_specs()["selection"], imp, N, N)  # (B, Hkv, Mb, Kb)
        chosen = chosen.repeat_interleave(group, 1)  # (B, Hq, Mb, Kb)
        o_sel = _blocks_attention(q, k, v, chosen, bl, max_chosen(self.spec.top_k), self.impl)

        o_win = attention(q, k, v, self.window_spec, impl=self.impl)
        g = torch.sigmoid(self.gate(x)).view(B, N, hq, 3).permute(0, 2, 1, 3)  # (B, Hq, N, 3)
        y = g[..., 0:1] * o_cmp + g[..., 1:2] * o_sel + g[..., 2:3] * o_win  # (B, Hq, N, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, N, hq * dh))

    def extra_repr(self) -> str:
        return f"spec={self.spec.name}, impl={self.impl}"


def _blocks_attention(q, k, v, chosen, bs: int, max_per_row: int, impl: str) -> torch.Tensor:
    """Causal attention over chosen key blocks (bool [B, Hq, Mb, Kb], at most ``max_per_row``
    True per row): the triton kernels on
    CUDA (or when asked), else SDPA with the mask materialised."""
    from attnlab.attention.triton_impl import chosen_blocks_attention, interpreter_on

    use_triton = impl == "triton" or (impl == "auto" and q.device.type == "cuda")
    if use_triton and (q.device.type == "cuda" or interpreter_on()):
        kw = dict(causal=True, scale=1 / math.sqrt(q.shape[-1]))
        return chosen_blocks_attention(q, k, v, chosen, bs, max_per_row, kw)
    n = q.shape[2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    mask = expand_to_tokens(chosen, bs, n, n) & causal
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
