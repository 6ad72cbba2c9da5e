"""What the Triton kernels share: the tile-config dataclass, the grouped tile order, the dot with
its float32 accumulator, the fused activation epilogue, and the launchers' small checks."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernelkit.devices import triton_interpret
from kernelkit.kernels.config import KernelConfig

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------- jit helpers

@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid``, in GROUP_M-row super-groups: consecutive programs share
    the same columns of B while they are hot in L2 (Triton's matmul tutorial order)."""
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def dot_acc(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc + a @ b in float32; DOT_IN_FP32 (interpreter only, whose tl.dot is wrong on bfloat16
    operands) upcasts the operands first."""
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr):
    """Elementwise activation on a float32 tile; NaN and +-Inf propagate as in torch."""
    if ACTIVATION == "relu":
        x = tl.where(x < 0.0, 0.0, x)  # not tl.maximum: NaN must stay NaN
    elif ACTIVATION == "gelu":
        x = _gelu(x)
    elif ACTIVATION == "gelu_tanh":
        # 0.5 * x * (1 + tanh(y)) == x * sigmoid(2 * y), without tanh's cancellation near -1.
        y = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = x / (1.0 + tl.exp(-2.0 * y))
    elif ACTIVATION == "silu":
        # x / (1 + exp(-x)), as x e / (1 + e) with e = exp(x) for x < 0: exp(-x) overflowed
        # below -88.72 and SiLU was -0.0 where it is a float32 normal down to -91.8
        e = tl.exp(-tl.abs(x))
        x = tl.where(x < 0.0, x * e, x) / (1.0 + e)
    return x


@triton.jit
def _gelu(x):
    """Exact GELU, 0.5 x erfc(-x / sqrt 2), as the Numba epilogue computes it (`_gemm.gelu_f32`):
    erfc of z = |x| / sqrt 2 by Numerical Recipes' fit (relative error 1.2e-7 in exact
    arithmetic; in float32 the rounding of z before it is squared leaves up to 1.5e-5 near -13),
    and erfc(-z) = 2 - erfc(z) for x >= 0. Before, 0.5 x (1 + erf(x / sqrt 2)) cancelled for
    x < 0: 100% off below -5, -0 below -5.9 (found by review). Branch-free, one exp and one
    rsqrt per element (libdevice's erfcf is branchy: on a whole tile of accumulators ptxas
    spilled with its erff)."""
    z = tl.abs(x) * 0.7071067811865476
    d = 1.0 + 0.5 * z
    t = tl.math.rsqrt(d * d)  # (1 / d: one MUFU op; a division made ptxas spill a 128x256 tile)
    p = t * 0.17087277 - 0.82215223
    p = t * p + 1.48851587
    p = t * p - 1.13520398
    p = t * p + 0.27886807
    p = t * p - 0.18628806
    p = t * p + 0.09678418
    p = t * p + 0.37409196
    p = t * p + 1.00002368
    p = t * p - 1.26551223
    e = t * tl.exp(p - z * z)
    return 0.5 * x * tl.where(x < 0.0, e, 2.0 - e)


# --------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TileConfig(KernelConfig):
    """Output tile, reduction step, tile grouping, warps and stages of a tiled GEMM-like kernel."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        name_ = type(self).__name__
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 16 or v & (v - 1):
                raise ValueError(f"{name_}: {name} must be a power of two >= 16, got {v!r}")
        if (not isinstance(self.num_warps, int) or self.num_warps < 1
                or self.num_warps & (self.num_warps - 1)):
            raise ValueError(f"{name_}: num_warps must be a power of two, got {self.num_warps!r}")
        if not isinstance(self.GROUP_M, int) or self.GROUP_M < 1:
            raise ValueError(f"{name_}: GROUP_M must be an int >= 1, got {self.GROUP_M!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"{name_}: num_stages must be an int >= 1, got {self.num_stages!r}")

    @classmethod
    def of(cls, bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8):
        """The shipped-table shorthand: blocks, warps, stages, then GROUP_M."""
        return cls(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, num_warps=warps,
                   num_stages=stages)

    def shared_bytes(self, dtype: torch.dtype) -> int:
        """Shared memory bound: num_stages buffers of an A and a B block.

        Exact for Hopper's wgmma pipeline; Ampere's keeps num_stages - 1 (checked by the compile
        tests, which also check that it never undercounts).
        """
        size = dtype.itemsize
        return (self.BLOCK_M + self.BLOCK_N) * self.BLOCK_K * size * self.num_stages


# ------------------------------------------------------------------------------- launcher checks

def on_its_device(launcher):
    """Run `launcher` (whose first argument is a tensor, or a list of them) with its tensor's GPU
    as the current device. Triton launches on the current device and its current stream, not on
    the tensor's: `cuda:1` data while device 0 was current ran the kernel on device 0 (an illegal
    address, or with peer access a race against the data's own stream). The usual case (the
    data's device is current) costs a comparison and ``torch.cuda.current_device()``. Anything
    else as the first argument (None, a generator, ...) goes through untouched, for the
    launcher's own checks to name."""
    first_name = next(iter(inspect.signature(launcher).parameters))

    @functools.wraps(launcher)
    def run(*args, **kwargs):
        first = args[0] if args else kwargs.get(first_name)
        t = first[0] if isinstance(first, (list, tuple)) and first else first
        if (isinstance(t, torch.Tensor) and t.device.type == "cuda"
                and t.device.index != torch.cuda.current_device()):
            with torch.cuda.device(t.device):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    return run


def in_memory(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` with the values its memory holds: torch negates some views lazily (``x.conj().imag``,
    ``torch._neg_view``: a flag on the tensor, the memory un-negated), and a kernel reads the
    memory. A copy only for such a view (rare); otherwise `t` itself."""
    return t.resolve_neg() if t is not None and t.is_neg() else t


def check_dtype(op: str, dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op} (triton): dtype must be float16, bfloat16 or float32, got {dtype}")


def max_offset(sizes, strides) -> int:
    """The largest element offset a tensor of these sizes and strides reaches."""
    return sum((s - 1) * abs(st) for s, st in zip(sizes, strides, strict=True) if s > 0)


def dot_args(dtype: torch.dtype, allow_tf32: bool) -> dict[str, object]:
    """The INPUT_PRECISION and DOT_IN_FP32 meta-parameters of a launch (see dot_acc)."""
    return dict(INPUT_PRECISION="tf32" if allow_tf32 and dtype == torch.float32 else "ieee",
                DOT_IN_FP32=triton_interpret() and dtype != torch.float32)
