"""Numba CPU kernels: packed-panel GEMM, implicit-GEMM / direct conv2d, fused preprocessing."""

from kernelkit import devices
from kernelkit.core import Backend

BACKENDS = (
    Backend(
        name="numba", device="cpu", native="numpy", package=__name__,
        # half precision is computed in float32 and rounded once (kernels/numba/_half.py)
        dtypes={"matmul": ("float16", "bfloat16", "float32", "float64"),
                "conv2d": ("float16", "bfloat16", "float32", "float64")},
        missing=lambda: devices.module_missing("numba"),
        # launch: 32^3 fp32 through the op took 9.4 us against numpy's 2.5 us (2-core Zen 3)
        roofline=(6e-6, 1.2e11, 2e10),
        compiles=True,
    ),
)
