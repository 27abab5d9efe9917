"""FlashAttention-2 style Triton kernels: dense, causal and sliding-window attention, fwd + bwd.

- ``flash_attention``: the fused kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).
- ``flash_attention_reference``: the pure-PyTorch oracle with the same semantics.
- ``flash_attention_mask``: the bool ``[Nq, Nk]`` mask those semantics define.
"""

from .interface import flash_attention
from .reference import flash_attention_mask, flash_attention_reference

__all__ = ["flash_attention", "flash_attention_mask", "flash_attention_reference"]
