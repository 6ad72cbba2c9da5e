"""Where Triton kernels run in tests: the interpreter on CPU tensors, or a real CUDA device."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
needs_runtime = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="needs a CUDA device or TRITON_INTERPRET=1 (set by conftest.py when there is no GPU)",
)
