"""The README's attention table (kinds x impls), generated from the registry.

`python -m attnlab.attention` prints it; tests/test_readme.py keeps the README equal to it.
"""

from __future__ import annotations

import os
from unittest import mock

import torch

from attnlab.attention.registry import IMPLS
from attnlab.attention.spec import AttentionSpec


def _lower_left(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


EXAMPLES = {
    "`dense`": AttentionSpec(kind="dense", causal=True),
    "`sliding_window`": AttentionSpec(kind="sliding_window", causal=True, window=256),
    "`block_sparse`": AttentionSpec(kind="block_sparse", pattern="bigbird", causal=True),
    "`custom` (`mask_mod=`)": AttentionSpec(kind="custom", causal=True, mask_mod=_lower_left),
    "`topk_blocks` (`top_k=`)": AttentionSpec(kind="topk_blocks", causal=True, top_k=4),
    "any kind + `sink=`": AttentionSpec(kind="sliding_window", causal=True, window=256, sink=4),
    "any kind + `softcap=`": AttentionSpec(kind="sliding_window", causal=True, window=256, softcap=30.0),
}
LSE_ROW = "`return_lse=True`"


def _cell(impl, spec) -> str:
    parts = []
    for dev in ("cuda", "cpu"):
        env = {"TRITON_INTERPRET": "0"}
        with mock.patch.dict(os.environ, env):
            device = torch.device(dev)
            if impl.why_not(spec, device, True) is None:
                parts.append(f"{dev} fwd+bwd")
            elif impl.why_not(spec, device, False) is None:
                parts.append(f"{dev} fwd")
    if impl.name == "triton" and parts:
        parts.append("cpu via `TRITON_INTERPRET=1` (tests)")
    return ", ".join(parts) if parts else "—"


def impl_table() -> str:
    names = list(IMPLS)
    lines = ["| kind / option | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, spec in EXAMPLES.items():
        lines.append(f"| {label} | " + " | ".join(_cell(IMPLS[n], spec) for n in names) + " |")
    lse = ["yes, differentiable" if IMPLS[n].lse_grad else "yes" if IMPLS[n].lse else "—" for n in names]
    lines.append(f"| {LSE_ROW} | " + " | ".join(lse) + " |")
    return "\n".join(lines)
