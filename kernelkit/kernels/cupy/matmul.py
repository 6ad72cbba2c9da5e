"""CuPy matmul: C[b] = act(A[b] @ B[b] + bias), batched, with a fused fp32 epilogue.

The CUDA C source, ``matmul.cu`` beside this file, is a shared-memory tiled, double-buffered SIMT
GEMM with a TM x TN register tile per thread (see the comment at its top). It takes any element
strides, so transposed views and broadcast (stride 0) batch dimensions need no copy.

Each (dtype, config, device) is compiled on first use with ``cupy.RawModule`` (NVRTC; cupy also
caches the binary on disk) and kept in memory. Nothing here imports cupy at module import time, so
the package imports on machines without it.

The project's tuner picks a :class:`MatmulConfig` from :data:`SHIPPED_CONFIGS` (through
:meth:`MatmulConfig.space`) and passes it to :func:`matmul_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernelkit.kernels import ACTIVATIONS
from kernelkit.kernels.config import next_pow2
from kernelkit.kernels.cupy import _common
from kernelkit.kernels.cupy._common import (
    ACT_CODES,
    DTYPES,
    INT32_MAX,
    SMEM_PAD,
    RegisterTileConfig,
    elem_strides,
)

SOURCE_PATH = Path(__file__).with_name("matmul.cu")


@dataclass(frozen=True)
class MatmulConfig(RegisterTileConfig):
    """Block tile (BM x BN, K step BK) and per-thread register tile (TM x TN).

    threads per block = (BM / TM) * (BN / TN).
    """

    _label = "cupy matmul config"

    def _kernel_problems(self, nt: int) -> list[str]:
        problems = []
        if (self.BM * self.BK) % nt or (self.BK * self.BN) % nt:
            problems.append(f"BM*BK and BK*BN must be multiples of the thread count {nt}")
        for t, name in ((self.TM, "TM"), (self.TN, "TN")):
            if t > 3 and t % 4:
                problems.append(f"{name} must be 1, 2, 3 or a multiple of 4")
        return problems

    @property
    def smem_bytes(self) -> int:
        """Static shared memory of the kernel: two float stages of A and B tiles."""
        return 2 * self.BK * (self.BM + self.BN + 2 * SMEM_PAD) * 4

    @classmethod
    def default(cls, dtype=None) -> MatmulConfig:
        """The safe default: valid for every problem, and the best general choice for large ones."""
        return SHIPPED_CONFIGS[0]

    @classmethod
    def space(cls, dtype, m: int, n: int, k: int) -> list[MatmulConfig]:
        """The shipped configs worth trying for an (m, n, k) problem, default first.

        A config is dropped when its block tile is more than twice the (power-of-two rounded)
        problem along M or N (but 32 always fits), or its BK is more than the rounded K (but 8
        always fits); the default always stays.
        """
        _check_dtype(dtype)
        cap_m, cap_n = (max(32, 2 * next_pow2(x)) for x in (m, n))
        cap_k = max(8, next_pow2(k))
        default = cls.default(dtype)
        out = [default]
        for cfg in SHIPPED_CONFIGS:
            if cfg == default:
                continue
            if cap_m >= cfg.BM and cap_n >= cfg.BN and cap_k >= cfg.BK:
                out.append(cfg)
        return out


SHIPPED_CONFIGS: tuple[MatmulConfig, ...] = (
    MatmulConfig(128, 128, 8, 8, 8),  # default
    MatmulConfig(128, 128, 16, 8, 8),
    MatmulConfig(128, 64, 8, 8, 4),
    MatmulConfig(64, 128, 8, 4, 8),
    MatmulConfig(64, 64, 8, 4, 4),
    MatmulConfig(64, 64, 16, 4, 4),
    MatmulConfig(32, 32, 8, 4, 4),
)


CONFIG = MatmulConfig


def space(problem) -> list[MatmulConfig]:
    """The configs worth timing for a matmul ``Problem`` (shapes (B, M, K), (B, K, N))."""
    (_, m, k), (_, _, n) = problem.shapes
    return MatmulConfig.space(problem.dtype, m, n, k)


# The kernel forms tile counts and row/column/K indices in int: a size within a tile of 2**31
# wraps ((K + BK - 1) / BK went negative and the K loop never ran: act(bias) came back).
SIZE_LIMIT = INT32_MAX - max(max(c.BM, c.BN, c.BK) for c in SHIPPED_CONFIGS)  # (2**31 - 129)


def supports(problem) -> str | None:
    (_, m, k), (_, _, n) = problem.shapes
    if max(m, n, k) > SIZE_LIMIT:
        return f"M, N, K must be at most {SIZE_LIMIT} (the kernel indexes in int32)"
    return None


def _check_dtype(dtype) -> str:
    return _common.check_dtype("matmul", dtype)


def kernel_name(dtype, config: MatmulConfig) -> str:
    """The extern "C" name of the kernel for (dtype, config) in matmul.cu."""
    tag, _ = DTYPES[_check_dtype(dtype)]
    c = config
    return f"kk_matmul_{tag}_{c.BM}x{c.BN}x{c.BK}_{c.TM}x{c.TN}"


def compile_options(dtype, config: MatmulConfig) -> tuple[str, ...]:
    """Compiler options that make matmul.cu instantiate only the (dtype, config) kernel."""
    tag, ctype = DTYPES[_check_dtype(dtype)]
    c = config
    return (
        "-std=c++17",
        "-DKK_SINGLE=1",
        f"-DKK_DT={tag}",
        f"-DKK_T={ctype}",
        f"-DKK_BM={c.BM}",
        f"-DKK_BN={c.BN}",
        f"-DKK_BK={c.BK}",
        f"-DKK_TM={c.TM}",
        f"-DKK_TN={c.TN}",
    )


def source() -> str:
    return _common.source(SOURCE_PATH)


_kernels = _common.KernelCache()


def get_kernel(dtype, config: MatmulConfig, device_id: int | None = None):
    """The compiled ``cupy.RawKernel`` for (dtype, config) on a device (default: the current one)."""
    import cupy

    name = _check_dtype(dtype)
    if device_id is None:
        device_id = cupy.cuda.Device().id

    def build():
        with cupy.cuda.Device(device_id):
            module = cupy.RawModule(code=source(),
                                    options=compile_options(name, config) + _common.header_options())
            kern = module.get_function(kernel_name(name, config))
            kern.compile()  # compile errors surface here, not at the first launch
        return kern

    return _kernels.get((name, config, int(device_id)), build)


def launch_geometry(batch: int, m: int, n: int, config: MatmulConfig) -> tuple[int, int, int, int]:
    """(blocks, threads per block, tiles_m, tiles_n) of a launch; the grid is 1-D (batch folded in)."""
    tiles_m = -(-m // config.BM)
    tiles_n = -(-n // config.BN)
    blocks = tiles_m * tiles_n * batch
    if blocks > INT32_MAX:
        raise ValueError(f"cupy matmul: {blocks} thread blocks exceed the grid limit")
    return blocks, config.threads, tiles_m, tiles_n


def matmul_forward(a, b, bias=None, activation: str | None = None,
                   config: MatmulConfig | None = None, allow_tf32: bool = False):
    """act(a @ b + bias) for cupy arrays a (B, M, K) and b (B, K, N) of float32 or float16.

    Any strides are accepted (0 for a broadcast batch, transposed or sliced views). ``bias`` is
    None or (N,) (cast to the input dtype). Accumulates in float32 and returns a new C-contiguous
    (B, M, N) array of the input dtype on the inputs' device. K == 0 gives act(bias or 0).
    """
    import cupy
    import numpy as np

    if not isinstance(a, cupy.ndarray) or not isinstance(b, cupy.ndarray):
        raise TypeError(
            f"cupy matmul: a and b must be cupy arrays, got {type(a).__name__}, {type(b).__name__}"
        )
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"cupy matmul: a and b must be 3-D (B, M, K) and (B, K, N), got "
                         f"{a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"cupy matmul: a and b must have the same dtype, got {a.dtype}, {b.dtype}")
    dtype = _check_dtype(a.dtype)
    batch, m, k = a.shape
    bb, kb, n = b.shape
    if bb != batch or kb != k:
        raise ValueError(f"cupy matmul: shapes {a.shape} and {b.shape} do not match")
    if activation not in ACT_CODES:
        raise ValueError(f"cupy matmul: activation must be one of None, {', '.join(ACTIVATIONS)}; "
                         f"got {activation!r}")
    if bias is not None and (not isinstance(bias, cupy.ndarray) or bias.shape != (n,)):
        raise ValueError(f"cupy matmul: bias must be a cupy array of shape ({n},), got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    if a.device.id != b.device.id or (bias is not None and bias.device.id != a.device.id):
        raise ValueError("cupy matmul: all arrays must be on the same device")
    if bias is not None and bias.dtype != a.dtype:
        with bias.device:  # (astype allocates on the current device)
            bias = bias.astype(a.dtype)
    config = config or MatmulConfig.default(dtype)
    if not isinstance(config, MatmulConfig):
        raise TypeError(f"cupy matmul: config must be a MatmulConfig, got {type(config).__name__}")

    with a.device:
        out = cupy.empty((batch, m, n), dtype=a.dtype)
        if out.size == 0:
            return out
        limit = INT32_MAX - max(config.BM, config.BN, config.BK)  # (SIZE_LIMIT's, per config)
        if max(m, n, k) > limit:
            raise ValueError(f"cupy matmul: M, N, K must be at most {limit} (within a tile of "
                             f"2**31 the kernel's int32 indices wrap), got {m}, {n}, {k}")
        blocks, threads, tiles_m, tiles_n = launch_geometry(batch, m, n, config)
        isz = a.itemsize
        sab, sam, sak = elem_strides("matmul", a.strides, isz)
        sbb, sbk, sbn = elem_strides("matmul", b.strides, isz)
        if bias is None:
            bias_arg, sbias, has_bias = out, 0, 0  # never read
        else:
            bias_arg, (sbias,), has_bias = bias, elem_strides("matmul", bias.strides, isz), 1
        kern = get_kernel(dtype, config, a.device.id)
        i32, i64 = np.int32, np.int64
        kern(
            (blocks, 1, 1),
            (threads, 1, 1),
            (a, b, bias_arg, out, i32(m), i32(n), i32(k), i32(tiles_m), i32(tiles_n),
             i64(sab), i64(sam), i64(sak), i64(sbb), i64(sbk), i64(sbn), i64(sbias),
             i32(has_bias), i32(ACT_CODES[activation])),
        )
    return out
