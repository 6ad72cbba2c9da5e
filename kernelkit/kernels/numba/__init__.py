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


def warmed_on_disk(module: str, dtype: str) -> bool:
    """`module`'s kernels for `dtype` sit compiled in the on-disk cache (``kernelkit.compiling``
    asks before it would import torch for a stand-in: loading them takes about 0.6 s)."""
    from ._cache import warmed

    return warmed(module, dtype)


def compile_lock_dir():
    """Where ``kernelkit.compiling`` keeps the file locks that let one process at a time compile
    a (module, dtype): beside the compiled kernels they guard, so that processes sharing a Numba
    cache and not an autotune cache (a test's fresh autotune cache per case, a job's own cache
    beside an image's kernels) wait for each other; None where the kernels have no folder."""
    from ._cache import cache_dir

    root = cache_dir()
    return None if root is None else root / "compile-locks"


def mark_warmed(module: str, dtype: str) -> None:
    """Called by ``kernelkit.compiling`` once `module`'s kernels for `dtype` are compiled or loaded."""
    from ._cache import mark_warmed as mark

    mark(module, dtype)
