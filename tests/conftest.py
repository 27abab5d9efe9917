"""Test-wide setup. Runs before any test module imports triton kernels.

- The Triton interpreter must be switched on before any ``@triton.jit`` function runs,
  so CPU machines can run the kernels (DESIGN.md). On a CUDA machine the real compiler
  is used unless the user already set TRITON_INTERPRET.
- One torch thread per test process: two threads on a busy 2-core box are far slower.
- wandb never reaches the network from tests.
"""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run `make gpu-check` on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # a marker, not a parameter id "gpu"
            item.add_marker(skip_gpu)
