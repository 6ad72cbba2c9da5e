"""Triton matmul: C[b] = act(A[b] @ B[b] + bias), batched, with a fused fp32 epilogue.

The kernel follows the structure of Triton's matmul tutorial: each program computes one
BLOCK_M x BLOCK_N tile of C, walking K in BLOCK_K steps with plain pointer arithmetic and masks
(no block pointers or tensor descriptors, so it builds on Triton 3.6 as well as 3.9+). Tiles are
visited in GROUP_M-row super-groups for L2 reuse, and the batch index is folded into program_id(0),
so any batch size fits in the grid.

There is no ``@triton.autotune`` here: the project's tuner picks a :class:`MatmulConfig` from
:data:`SHIPPED_CONFIGS` (through :meth:`MatmulConfig.space`) and passes it to :func:`matmul_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernelkit.devices import triton_interpret
from kernelkit.kernels import check_activation, check_flag
from kernelkit.kernels.config import next_pow2
from kernelkit.kernels.triton._common import (
    INT32_MAX,
    TileConfig,
    apply_activation,
    check_dtype,
    dot_acc,
    dot_args,
    grouped_tile,
    in_memory,
    max_offset,
    on_its_device,
)


@triton.jit
def matmul_kernel(
    # Pointers to the matrices (bias_ptr is unused unless HAS_BIAS).
    a_ptr, b_ptr, bias_ptr, c_ptr,
    # Matrix sizes.
    M, N, K,
    # Strides, in elements: batch, row, column of each operand.
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_biasn,
    stride_cb, stride_cm, stride_cn,
    # Meta-parameters.
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "", "relu", "gelu", "gelu_tanh" or "silu"
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32" (only matters for float32 operands)
    DOT_IN_FP32: tl.constexpr,  # interpreter only: its tl.dot is wrong on bfloat16 operands
    INDEX_I64: tl.constexpr,  # a matrix spans 2**31 elements, or M, N or K nearly does
):
    # -----------------------------------------------------------
    # Map the program id to the batch and the tile of C it computes, in grouped order so that
    # GROUP_M consecutive tile rows share the same columns of B while they are hot in L2.
    pid = tl.program_id(axis=0)
    if INDEX_I64:
        # (a size within a tile of 2**31 wraps in int32: in cdiv's M + BLOCK_M - 1, the tile
        # counts went negative and the last program stored before C; in pid_m * BLOCK_M too)
        # (tl.cast, not .to: triton passes a size of 1 as a constexpr, which has no .to)
        M = tl.cast(M, tl.int64)
        N = tl.cast(N, tl.int64)
        K = tl.cast(K, tl.int64)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_per_batch = num_pid_m * num_pid_n
    pid_b = pid // num_pid_per_batch
    pid_m, pid_n = grouped_tile(pid % num_pid_per_batch, num_pid_m, num_pid_n, GROUP_M)

    # -----------------------------------------------------------
    # Pointers to the first K block of A and B. Rows of A and columns of B past the edge wrap
    # around (% M, % N) so their loads need no mask; those rows/columns of C are never stored.
    # The batch offset is 64-bit: a whole batch easily spans more than 2**31 elements.
    pid_b = pid_b.to(tl.int64)
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    if INDEX_I64:
        offs_am = offs_am.to(tl.int64)
        offs_bn = offs_bn.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    a_ptrs = a_ptr + pid_b * stride_ab + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + pid_b * stride_bb + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
    if INDEX_I64:  # (a K step over rows 2**25 apart passes 2**31 elements)
        step_a = tl.cast(stride_ak, tl.int64) * BLOCK_K
        step_b = tl.cast(stride_bk, tl.int64) * BLOCK_K
    else:
        step_a = stride_ak * BLOCK_K
        step_b = stride_bk * BLOCK_K

    # -----------------------------------------------------------
    # Accumulate a [BLOCK_M, BLOCK_N] tile of C in float32. The K edge is masked with zeros on
    # both operands, so the padding adds exact zeros (never 0 * Inf).
    accumulator = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_remaining = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_remaining, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_remaining, other=0.0)
        accumulator = dot_acc(a, b, accumulator, INPUT_PRECISION, DOT_IN_FP32)
        a_ptrs += step_a
        b_ptrs += step_b

    # -----------------------------------------------------------
    # Fused epilogue, in float32: bias, then the activation, then one cast to C's type.
    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if INDEX_I64:
        offs_cm = offs_cm.to(tl.int64)
        offs_cn = offs_cn.to(tl.int64)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_cn * stride_biasn, mask=offs_cn < N, other=0.0)
        accumulator += bias.to(tl.float32)[None, :]
    accumulator = apply_activation(accumulator, ACTIVATION)
    c = accumulator.to(c_ptr.dtype.element_ty)

    c_ptrs = c_ptr + pid_b * stride_cb + (offs_cm[:, None] * stride_cm + offs_cn[None, :] * stride_cn)
    c_mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
    tl.store(c_ptrs, c, mask=c_mask)


# ---------------------------------------------------------------------------------------------
# Configurations


@dataclass(frozen=True)
class MatmulConfig(TileConfig):
    """One launch configuration of :func:`matmul_kernel`: tile sizes, grouping, warps and stages."""

    @classmethod
    def default(cls, dtype: torch.dtype) -> MatmulConfig:
        """A safe, reasonably fast choice for any problem size (<= 96 KiB of shared memory)."""
        check_dtype("matmul", dtype)
        return _FP32_DEFAULT if dtype == torch.float32 else _HALF_DEFAULT

    @classmethod
    def space(cls, dtype: torch.dtype, m: int, n: int, k: int, *,
              max_shared: int | None = None) -> list[MatmulConfig]:
        """The shipped configs worth trying for an (m, k) @ (k, n) problem, default first.

        A config is dropped when one of its blocks exceeds the problem's size rounded up to a
        power of two (unless no shipped config has a smaller block in that dimension), or when
        ``max_shared`` is given and :meth:`shared_bytes` exceeds it. The default always comes first.
        """
        family = shipped_configs(dtype)
        cap_m = max(next_pow2(m), min(c.BLOCK_M for c in family))
        cap_n = max(next_pow2(n), min(c.BLOCK_N for c in family))
        cap_k = max(next_pow2(k), min(c.BLOCK_K for c in family))
        default = cls.default(dtype)
        out = [default]
        for c in family:
            if c == default or cap_m < c.BLOCK_M or cap_n < c.BLOCK_N or cap_k < c.BLOCK_K:
                continue
            if max_shared is not None and c.shared_bytes(dtype) > max_shared:
                continue
            out.append(c)
        return out


_C = MatmulConfig.of


# Tuned for H100-class GPUs (the tile shapes of Triton's matmul tutorial). Every config fits the
# shared memory of sm_80 and sm_90 for the dtypes it is shipped for (checked by the compile tests).
# 128 x 128 tiles take 8 warps: with 4, Triton 3.6 (the GPU machines') sits at 254-255 registers.
_HALF_DEFAULT = _C(128, 128, 64, 8, 3)
_HALF_CONFIGS: tuple[MatmulConfig, ...] = (
    _HALF_DEFAULT,
    _C(128, 256, 64, 8, 3),
    _C(256, 128, 64, 8, 3),
    _C(128, 128, 64, 8, 4),
    _C(128, 128, 32, 8, 4),
    _C(64, 256, 32, 8, 4),
    _C(128, 64, 32, 4, 4),
    _C(64, 128, 32, 4, 4),
    _C(64, 64, 64, 4, 3),
    _C(64, 64, 32, 4, 4),
    _C(128, 32, 32, 4, 4),
    _C(64, 32, 32, 2, 5),
    _C(32, 64, 32, 2, 5),
    _C(32, 32, 64, 2, 4),
)
# float32 (IEEE or TF32): twice the bytes per element, so smaller K blocks.
_FP32_DEFAULT = _C(128, 128, 32, 8, 3)
_FP32_CONFIGS: tuple[MatmulConfig, ...] = (
    _FP32_DEFAULT,
    _C(128, 128, 32, 8, 4),
    _C(128, 128, 16, 8, 4),
    _C(128, 64, 32, 8, 4),
    _C(64, 128, 32, 8, 4),
    _C(64, 64, 32, 4, 4),
    _C(64, 32, 32, 4, 4),
    _C(32, 64, 32, 2, 4),
    _C(32, 32, 32, 2, 4),
)
SHIPPED_CONFIGS: tuple[MatmulConfig, ...] = tuple(dict.fromkeys(_HALF_CONFIGS + _FP32_CONFIGS))


CONFIG = MatmulConfig


def space(problem) -> list[MatmulConfig]:
    """The configs worth timing for a matmul ``Problem`` (shapes (B, M, K), (B, K, N))."""
    (_, m, k), (_, _, n) = problem.shapes
    return MatmulConfig.space(getattr(torch, problem.dtype), m, n, k)


def shipped_configs(dtype: torch.dtype) -> tuple[MatmulConfig, ...]:
    """The subset of :data:`SHIPPED_CONFIGS` shipped for ``dtype`` (before size pruning)."""
    check_dtype("matmul", dtype)
    return _FP32_CONFIGS if dtype == torch.float32 else _HALF_CONFIGS


# ---------------------------------------------------------------------------------------------
# Launcher


def _needs_index_i64(M: int, N: int, K: int, config: MatmulConfig, *offsets: int) -> bool:
    """Whether the kernel must index in int64: an operand reaches past 2**31 elements, or a size
    comes within a tile of it (the tile counts, `pid_m * BLOCK_M + arange` and the K loop's bound
    are formed from the sizes, which triton passes as int32 below 2**31)."""
    reach = max(M + config.BLOCK_M, N + config.BLOCK_N, K + config.BLOCK_K)
    return reach > INT32_MAX or max(offsets) > INT32_MAX


@on_its_device
def matmul_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    config: MatmulConfig | None = None,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """act(a @ b + bias) for a (B, M, K) and b (B, K, N), any strides (batch stride 0 included).

    Returns a new contiguous (B, M, N) tensor of a's dtype; the product is accumulated in float32
    and the epilogue runs in float32 before the final cast. TF32 is used only if ``allow_tf32``.
    """
    # Check the arguments.
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"matmul (triton): a and b must be torch tensors, got {type(a)} and {type(b)}")
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"matmul (triton): a and b must be 3-D (B, M, K) and (B, K, N), "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    check_dtype("matmul", a.dtype)
    if b.dtype != a.dtype:
        raise TypeError(f"matmul (triton): a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if b.device != a.device:
        raise ValueError(f"matmul (triton): a and b must be on one device, got {a.device} and {b.device}")
    if not a.is_cuda and not triton_interpret():
        raise ValueError(f"matmul (triton): tensors must be on a CUDA device (or run with "
                         f"TRITON_INTERPRET=1), got {a.device}")
    batch, M, K = a.shape
    if b.shape[0] != batch or b.shape[1] != K:
        raise ValueError(f"matmul (triton): b must have shape ({batch}, {K}, N), got {tuple(b.shape)}")
    N = b.shape[2]
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (N,):
            raise ValueError(f"matmul (triton): bias must be a tensor of shape ({N},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias)}")
        if bias.dtype != a.dtype or bias.device != a.device:
            raise TypeError(f"matmul (triton): bias must be {a.dtype} on {a.device}, "
                            f"got {bias.dtype} on {bias.device}")
    check_activation("matmul (triton)", activation)
    check_flag("matmul (triton)", "allow_tf32", allow_tf32)  # ("no" is true: TF32 on)
    a, b, bias = in_memory(a), in_memory(b), in_memory(bias)
    if config is None:
        config = MatmulConfig.default(a.dtype)
    elif not isinstance(config, MatmulConfig):
        raise TypeError(f"matmul (triton): config must be a MatmulConfig, got {type(config)}")

    # Allocate the output.
    c = torch.empty((batch, M, N), dtype=a.dtype, device=a.device)
    if batch == 0 or M == 0 or N == 0:
        return c  # nothing to compute; K == 0 still launches: C = act(bias or 0)

    # Launch: one program per (batch, tile of C), batch-major.
    index_i64 = _needs_index_i64(M, N, K, config, max_offset((M, K), a.stride()[1:]),
                                 max_offset((K, N), b.stride()[1:]),
                                 max_offset((M, N), c.stride()[1:]),
                                 max_offset((N,), bias.stride()) if bias is not None else 0)
    grid = (batch * triton.cdiv(M, config.BLOCK_M) * triton.cdiv(N, config.BLOCK_N),)
    if grid[0] > INT32_MAX:
        raise ValueError(f"matmul (triton): {grid[0]} tiles exceed the grid limit; use larger blocks")
    matmul_kernel[grid](
        a, b, bias if bias is not None else c, c,
        M, N, K,
        a.stride(0), a.stride(1), a.stride(2),
        b.stride(0), b.stride(1), b.stride(2),
        bias.stride(0) if bias is not None else 0,
        c.stride(0), c.stride(1), c.stride(2),
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M,
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "",
        **dot_args(a.dtype, allow_tf32),
        INDEX_I64=index_i64,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return c
