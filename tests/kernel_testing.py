"""Device and marks for the Triton kernel tests (CUDA, or CPU under TRITON_INTERPRET=1)."""

import pytest
import torch
from attnlab.kernels.flash import common

KERNEL_MARKS = [
    pytest.mark.skipif(
        not (torch.cuda.is_available() or common.interpreting()),
        reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU machines)",
    ),
    # Triton 3.6's interpreter converts 1-element loop bounds with a deprecated numpy call.
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]
DEVICE = "cuda" if torch.cuda.is_available() and not common.interpreting() else "cpu"
