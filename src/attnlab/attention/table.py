"""The README's attention table (kinds x impls), generated from the registry.

`python -m attnlab.attention` prints it; tests/test_readme.py keeps the README equal to it.
"""

from __future__ import annotations

import os
from unittest import mock

import torch

from attnlab.attention.registry import IMPLS
from attnlab.attention.spec import AttentionSpec

EXAMPLES = {
    "dense": AttentionSpec(kind="dense", causal=True),
    "sliding_window": AttentionSpec(kind="sliding_window", causal=True, window=256),
    "block_sparse": AttentionSpec(kind="block_sparse", pattern="bigbird", causal=True),
}


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
    lines = ["| kind | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for kind, spec in EXAMPLES.items():
        lines.append(f"| `{kind}` | " + " | ".join(_cell(IMPLS[n], spec) for n in names) + " |")
    return "\n".join(lines)
