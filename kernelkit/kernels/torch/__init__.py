"""The vendor libraries through torch: MKL/OpenBLAS/oneDNN on the CPU, cuBLAS/cuDNN on the GPU.

Every op has a torch candidate, so the tuner can never do worse than the vendor library.
"""

from kernelkit import devices
from kernelkit.core import Backend

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_DTYPES = {"matmul": _FLOATS, "conv2d": _FLOATS}


def _missing() -> str | None:
    return devices.module_missing("torch")


# The preprocessing chain (crop, .float(), interpolate, normalise, stack) streams each image
# through float32 copies several times where a fused kernel reads it once: about 3x the memory
# traffic (measured on the Zen 3 box: the fused Numba kernel runs 1.7-3.6x torch's chain,
# docs/performance.md). Without this prior the untuned guess picked torch for preprocess.
_CPU_ROOFLINE = (5e-6, 1.5e11, 2e10)
_CPU_ROOFLINES = {"preprocess": (5e-6, 1.5e11, 2e10 / 3)}

BACKENDS = (
    Backend(name="torch", device="cpu", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=_CPU_ROOFLINE, rooflines=_CPU_ROOFLINES),
    Backend(name="torch", device="cuda", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=(1e-5, 5e14, 2e12)),
)
