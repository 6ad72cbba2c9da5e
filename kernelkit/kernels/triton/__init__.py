"""Triton GPU kernels: tiled GEMM, implicit-GEMM and direct conv2d, fused preprocessing."""

from kernelkit import devices
from kernelkit.core import Backend

_GPU_FLOATS = ("float16", "bfloat16", "float32")

BACKENDS = (
    Backend(
        name="triton", device="cuda", native="torch", package=__name__,
        dtypes={"matmul": _GPU_FLOATS, "conv2d": _GPU_FLOATS},
        missing=lambda: devices.module_missing("triton"),
        roofline=(2e-5, 4e14, 2e12),
    ),
)
