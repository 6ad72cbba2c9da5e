"""The vendor libraries through torch: MKL/OpenBLAS/oneDNN on the CPU, cuBLAS/cuDNN on the GPU.

Every op has a torch candidate, so the tuner can never do worse than the vendor library.
"""

from kernelkit import devices
from kernelkit.core import Backend
from kernelkit.kernels.config import vendor_space

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_DTYPES = {"matmul": _FLOATS, "conv2d": _FLOATS}


def _missing() -> str | None:
    return devices.module_missing("torch")


# Half precision on the CPU: oneDNN runs bfloat16 on AVX-512 BF16 / AMX and float16 on
# AVX-512 FP16 / AMX-FP16; without them torch falls back to scalar loops (measured: 1.4 GFLOP/s
# on a Zen 3 core against 48 for float32; 0.27 GFLOP/s for float16 on a 2-core Zen 5).
_HALF_INSTRUCTIONS = {"bfloat16": ("avx512_bf16", "amx_bf16"),
                      "float16": ("avx512_fp16", "amx_fp16")}
SCALAR_HALF_RATE = 1 / 30  # of the float32 rate: the prior, until a measurement says better


def _cpu_rate_scale(dtype: str) -> float:
    need = _HALF_INSTRUCTIONS.get(dtype)
    if need is None or any(flag in devices.cpu_flags() for flag in need):
        return 1.0
    return SCALAR_HALF_RATE


# The preprocessing chain (crop, .float(), interpolate, normalise, stack) streams each image
# through float32 copies several times where a fused kernel reads it once: about 3x the memory
# traffic (measured on the Zen 3 box: the fused Numba kernel runs 1.7-3.6x torch's chain,
# docs/performance.md). Without this prior the untuned guess picked torch for preprocess.
_CPU_ROOFLINE = (5e-6, 1.5e11, 2e10)
_CPU_ROOFLINES = {"preprocess": (5e-6, 1.5e11, 2e10 / 3)}

BACKENDS = (
    Backend(name="torch", device="cpu", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=_CPU_ROOFLINE, rooflines=_CPU_ROOFLINES,
            # matmul on numpy data only where numpy's BLAS can stand in for it: torch's OpenMP
            # pool waits behind OpenBLAS's spinning workers, so its plan steps aside to numpy's
            # BLAS after kernelkit's numpy BLAS calls (Backend.own_data_only, tuner.stand_in,
            # ops/dispatch.py _bound); MKL beat OpenBLAS by up to 1.6x on a Xeon
            rate_scale=_cpu_rate_scale, own_data_only=("matmul",), own_supports=False,
            space=vendor_space),
    Backend(name="torch", device="cuda", native="torch", package=__name__, dtypes=_DTYPES,
            missing=_missing, vendor=True, roofline=(1e-5, 5e14, 2e12), own_supports=False,
            space=vendor_space),
)
