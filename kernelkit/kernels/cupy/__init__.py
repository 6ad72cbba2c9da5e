"""CuPy GPU kernels: CUDA C through cupy.RawModule (GEMM, conv2d, fused preprocessing)."""

from kernelkit import devices
from kernelkit.core import Backend

BACKENDS = (
    Backend(
        name="cupy", device="cuda", native="cupy", package=__name__,
        dtypes={"matmul": ("float16", "float32"), "conv2d": ("float16", "float32")},
        missing=lambda: None if devices.cupy_available() else "cupy is not installed or sees no device",
        roofline=(1e-5, 5e13, 2e12),
    ),
)
