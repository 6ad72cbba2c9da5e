"""TF32 for one vendor call, set only where it can matter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def with_tf32(flags: Any, x: torch.Tensor, allow_tf32: bool, fn: Callable[[], torch.Tensor]):
    """``fn()`` with ``flags.allow_tf32`` (``torch.backends.cuda.matmul`` or
    ``torch.backends.cudnn``) as asked, restored after.

    Only a float32 product on CUDA reads the flag, so for every other call, and where the flag
    already says what is asked, it is left alone: each write costs about 1 us of a call (a
    2-vCPU Xeon), goes through the legacy TF32 switch that torch 2.9 deprecated, and was one of
    two differences between kernelkit's torch candidate and a plain `torch.matmul` when the op ran
    0.91x of it at 4096^3 float16 on an H200 (docs/performance.md, "GPU, first run")."""
    if not (x.is_cuda and x.dtype == torch.float32) or flags.allow_tf32 == allow_tf32:
        return fn()
    prev = flags.allow_tf32
    flags.allow_tf32 = allow_tf32
    try:
        return fn()
    finally:
        flags.allow_tf32 = prev
