"""The vendor libraries through torch: MKL/OpenBLAS/oneDNN on the CPU, cuBLAS/cuDNN on the GPU.

Every op has a torch candidate, so the tuner can never do worse than the vendor library.
"""

from kernelkit import devices
from kernelkit.core import Backend

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_DTYPES = {"matmul": _FLOATS, "conv2d": _FLOATS}


def _missing() -> str | None:
    return devices.module_missing("torch")


BACKENDS = (
    Backend(name="torch", device="cpu", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=(5e-6, 1.5e11, 2e10)),
    Backend(name="torch", device="cuda", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=(1e-5, 5e14, 2e12)),
)
