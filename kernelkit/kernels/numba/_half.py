"""Half precision on the CPU: float16 and bfloat16 in, float32 arithmetic, one rounding out.

numpy has no bfloat16, so bfloat16 arrays reach a CPU kernel as their uint16 bit patterns (see
``kernelkit.arrays``) and leave the same way. A CPU without half-precision dot-product
instructions (no AVX-512 BF16 / FP16: every AVX2 machine) computes in float32 anyway, so the
kernels widen their inputs once (O(MK + KN) work beside the O(MNK) product), run the float32
kernel, which accumulates in float32, and round the result once, to nearest even. torch's own
half-precision CPU matmul on such a machine falls back to scalar code (about 1.4 GFLOP/s on a Zen 3
core against 48 for float32), so this is the fast path there, and a more accurate one: one
rounding per output instead of one per partial sum.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from kernelkit import threads as _threads
from kernelkit.kernels.numba import _gemm, _workspace
from kernelkit.kernels.numba._gemm import _JIT, _U
from kernelkit.kernels.numba._pool import run as _run

HALF_CHARS = "eH"  # numpy dtype chars: float16, and uint16 (bfloat16 bit patterns)


# -- float16 <-> float32 with the CPU's conversion instructions ----------------------------------
# numpy converts float16 element by element (about 3 ns each here: the fp16 matmul spent 40% of
# its time widening and narrowing); LLVM's fpext / fptrunc on `half` compile to F16C's vcvtph2ps /
# vcvtps2ph, 8 lanes at a time (10-20x numpy here), on both cores for large arrays. Without F16C
# in the compile target LLVM calls a runtime helper (__extendhfsf2, __truncsfhf2) that Numba does
# not link, and the process aborted ("LLVM ERROR: Symbol not found"; every preprocess call and
# every bfloat16 matmul compiles a float16 branch): there the conversions are integer code.
@intrinsic
def _hw_half_bits_to_float(typingctx, bits):
    """float16 bit pattern (uint16) -> float32, exact (F16C's vcvtph2ps)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _hw_float_to_half_bits(typingctx, x):
    """float32 -> float16 bit pattern (uint16), round to nearest even (F16C's vcvtps2ph)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


def _half_bits_to_float(bits):
    """float16 bit pattern (uint16) -> float32, exact: F16C where the compile target has it,
    else integer code (`_soft_half_bits_to_float`)."""


def _float_to_half_bits(x):
    """float32 -> float16 bit pattern (uint16), rounded to nearest even (IEEE), overflow to Inf,
    NaN to a quiet NaN: F16C where the compile target has it, else integer code."""


@overload(_half_bits_to_float, inline="always")
def _half_bits_to_float_ov(bits):
    if bits != types.uint16:
        return None
    if f16c():
        return lambda bits: _hw_half_bits_to_float(bits)
    return lambda bits: _soft_half_bits_to_float(bits)


@overload(_float_to_half_bits, inline="always")
def _float_to_half_bits_ov(x):
    if x != types.float32:
        return None
    if f16c():
        return lambda x: _hw_float_to_half_bits(x)
    return lambda x: _soft_float_to_half_bits(x)


@intrinsic
def f32_bits(typingctx, x):
    """float32 -> its bit pattern (uint32)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, u):
    """uint32 bit pattern -> float32."""
    if u != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@numba.njit(inline="always", **_JIT)
def _soft_half_bits_to_float(bits):
    """`_half_bits_to_float` in integer code (targets without F16C): the exponent rebased, a
    subnormal through one float subtraction, Inf and NaN kept (F. Giesen's half_to_float)."""
    h = np.uint32(bits)
    o = (h & np.uint32(0x7FFF)) << np.uint32(13)
    e = o & np.uint32(0x0F800000)  # the exponent, in place
    o += np.uint32(112 << 23)  # (127 - 15) << 23
    if e == np.uint32(0x0F800000):  # Inf, NaN: the top exponent
        o += np.uint32(112 << 23)
    elif e == np.uint32(0):  # zero, subnormal: renormalised by the float subtraction
        o += np.uint32(1 << 23)
        o = f32_bits(bits_f32(np.uint32(o)) - bits_f32(np.uint32(113 << 23)))
    # (numba widens uint32 arithmetic to 64 bits: the word cast back)
    return bits_f32(np.uint32(o | ((h & np.uint32(0x8000)) << np.uint32(16))))


@numba.njit(inline="always", **_JIT)
def _soft_float_to_half_bits(x):
    """`_float_to_half_bits` in integer code (targets without F16C): round to nearest even, from
    65520 up Inf, NaN a quiet NaN of the same sign, below 2^-14 a subnormal rounded by one float
    addition (F. Giesen's float_to_half_fast3_rtne)."""
    u = f32_bits(x)
    sign = u & np.uint32(0x80000000)
    u ^= sign
    if u >= np.uint32(143 << 23):  # 65536 and up, Inf, NaN
        o = np.uint32(0x7E00) if u > np.uint32(0x7F800000) else np.uint32(0x7C00)
    elif u < np.uint32(113 << 23):  # below 2^-14: the float addition rounds the subnormal
        o = f32_bits(bits_f32(np.uint32(u)) + bits_f32(np.uint32(126 << 23))) \
            - np.uint32(126 << 23)
    else:
        odd = (u >> np.uint32(13)) & np.uint32(1)
        u = u - np.uint32(112 << 23) + np.uint32(0xFFF) + odd  # rebased, rounded half to even
        o = u >> np.uint32(13)
    return np.uint16(o | (sign >> np.uint32(16)))


# Below PARALLEL_MIN elements one core converts faster than both do with a parallel launch
# (measured on the 2-core Zen 3 when these were prange loops, 45 us a launch: 2^16 elements take
# 6 us on one core and 56 us on two, 2^20 140 / 190 us, 2^22 1.5 / 1.0 ms). The serial loops and
# the shares are separate functions: Numba's on-disk cache keys a function by its name.
# (unsigned indices: without Numba's negative-index wraparound the loops vectorise)
PARALLEL_MIN = 1 << 21


@numba.njit(**_JIT)
def _widen_f16_serial(src, dst):  # 1-D uint16 -> 1-D float32, both contiguous
    for i in range(src.size):
        dst[_U(i)] = _half_bits_to_float(src[_U(i)])


@numba.njit(**_JIT)
def _widen_f16(t, nthr, src, dst):  # thread t's share (`_convert`)
    for i in range(t * src.size // nthr, (t + 1) * src.size // nthr):
        dst[_U(i)] = _half_bits_to_float(src[_U(i)])


@numba.njit(**_JIT)
def _narrow_f16_serial(src, dst):  # 1-D float32 -> 1-D uint16, both contiguous
    for i in range(src.size):
        dst[_U(i)] = _float_to_half_bits(src[_U(i)])


@numba.njit(**_JIT)
def _narrow_f16(t, nthr, src, dst):  # thread t's share (`_convert`)
    for i in range(t * src.size // nthr, (t + 1) * src.size // nthr):
        dst[_U(i)] = _float_to_half_bits(src[_U(i)])


# -- bfloat16 <-> float32: bit shifts, as Numba loops (numpy's chain of temporaries took 8.9 ms
# to narrow 2^22 elements on a Zen 5 core: a quarter of the 2048^3 bfloat16 product's time)
_M16 = np.uint32(0xFFFF)


@numba.njit(inline="always", **_JIT)
def _bf16_round(u):
    """float32 bits -> bfloat16 bits, round to nearest even; NaN stays NaN (quieted, payload
    kept: the carry of the rounding could turn a small payload into Inf)."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(((u >> np.uint32(16)) | np.uint32(0x40)) & _M16)
    return np.uint16(((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                      >> np.uint32(16)) & _M16)


@numba.njit(**_JIT)
def _widen_bf16_serial(src, dst):  # 1-D uint16 -> 1-D uint32 (float32 bits), both contiguous
    for i in range(src.size):
        dst[_U(i)] = np.uint32(src[_U(i)]) << np.uint32(16)


@numba.njit(**_JIT)
def _widen_bf16(t, nthr, src, dst):  # thread t's share (`_convert`)
    for i in range(t * src.size // nthr, (t + 1) * src.size // nthr):
        dst[_U(i)] = np.uint32(src[_U(i)]) << np.uint32(16)


@numba.njit(**_JIT)
def _narrow_bf16_serial(src, dst):  # 1-D uint32 (float32 bits) -> 1-D uint16, both contiguous
    for i in range(src.size):
        dst[_U(i)] = _bf16_round(src[_U(i)])


@numba.njit(**_JIT)
def _narrow_bf16(t, nthr, src, dst):  # thread t's share (`_convert`)
    for i in range(t * src.size // nthr, (t + 1) * src.size // nthr):
        dst[_U(i)] = _bf16_round(src[_U(i)])


@numba.njit(inline="always", **_JIT)
def widen1(u, bf16):
    """One float16 (``bf16`` False) or bfloat16 bit pattern -> float32, inside jitted loops."""
    if bf16:
        return bits_f32(np.uint32(np.uint32(u) << np.uint32(16)))
    return _half_bits_to_float(u)


@numba.njit(inline="always", **_JIT)
def narrow1(x, bf16):
    """float32 -> one float16 (``bf16`` False) or bfloat16 bit pattern, rounded as ``narrow``."""
    if bf16:
        return _bf16_round(f32_bits(x))
    return _float_to_half_bits(x)


def f16c() -> bool:
    """The compile target converts float16 in hardware (F16C: every x86-64 since Ivy Bridge /
    Piledriver; not a baseline or ``NUMBA_CPU_NAME=generic`` target, nor QEMU's qemu64). The
    compile target's, not the host's: code for a target without it cannot use it."""
    return _gemm.compiler_has("f16c")


def warm_f16() -> None:
    """Compile (or load) the float16 conversion loops."""
    if f16c():
        _widen_f16_serial(np.zeros(1, np.uint16), np.empty(1, np.float32))
        _narrow_f16_serial(np.zeros(1, np.float32), np.empty(1, np.uint16))
        _widen_f16(0, 1, np.zeros(1, np.uint16), np.empty(1, np.float32))
        _narrow_f16(0, 1, np.zeros(1, np.float32), np.empty(1, np.uint16))


def warm_bf16() -> None:
    """Compile (or load) the bfloat16 conversion loops."""
    _widen_bf16_serial(np.zeros(1, np.uint16), np.empty(1, np.uint32))
    _narrow_bf16_serial(np.zeros(1, np.uint32), np.empty(1, np.uint16))
    _widen_bf16(0, 1, np.zeros(1, np.uint16), np.empty(1, np.uint32))
    _narrow_bf16(0, 1, np.zeros(1, np.uint32), np.empty(1, np.uint16))


def _convert(serial, shares, src: np.ndarray, dst: np.ndarray) -> None:
    """dst = convert(src), 1-D: on one thread below PARALLEL_MIN elements, else in shares on the
    Numba kernels' threads (`_pool.run`)."""
    nthr = _threads.kernel_threads()
    if src.size < PARALLEL_MIN or nthr <= 1:
        serial(src, dst)
    else:
        _run(shares, nthr, src, dst)


def _f16_to_f32(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if not f16c():
        out[...] = x
        return out
    src = np.ascontiguousarray(x).view(np.uint16)
    _convert(_widen_f16_serial, _widen_f16, src.reshape(-1), out.reshape(-1))
    return out


def _f32_to_f16(x: np.ndarray) -> np.ndarray:
    if not f16c():
        with np.errstate(over="ignore"):  # beyond float16's range is Inf, as torch gives
            return x.astype(np.float16)
    src = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.uint16)
    _convert(_narrow_f16_serial, _narrow_f16, src.reshape(-1), out.reshape(-1))
    return out.view(np.float16)


def compute_dtype(dtype: str) -> np.dtype:
    """The dtype the kernels compute `dtype` in: float32 for the half-precision ones."""
    return np.dtype("float32" if dtype in ("float16", "bfloat16") else dtype)


def widen(x: np.ndarray | None, slot: int | None = None) -> np.ndarray | None:
    """float16 or bfloat16-as-uint16 -> float32 (exact); other arrays as they are.

    With ``slot``, the float32 copy is this thread's operand buffer ``slot`` (``_workspace.operand``),
    valid until the next widening into that slot: for copies that live only through one kernel
    call. A new array per call page-faults on every 4 KiB page it writes wherever glibc serves it
    from a fresh mapping: on a 2-core Zen 4 VM the float16 512^3 product took 2.0x the float32
    time with two new operand copies (736 faults a call, about 2 us each) and 1.15x with kept
    ones (``bench/probes/half_widen_probe.py``, docs/performance.md)."""
    if x is None or x.dtype.char not in HALF_CHARS:
        return x
    char = x.dtype.char
    dtype = np.float32 if char == "e" else np.uint32  # (bfloat16: float32 bits)
    out = (np.empty(x.shape, dtype) if slot is None
           else _workspace.operand(x.size, dtype, slot).reshape(x.shape))
    if char == "e":
        return _f16_to_f32(x, out)
    # bfloat16 is the top half of a float32: shift the bits into place
    src = np.ascontiguousarray(x)
    _convert(_widen_bf16_serial, _widen_bf16, src.reshape(-1), out.reshape(-1))
    return out.view(np.float32)


def narrow(x: np.ndarray, char: str) -> np.ndarray:
    """float32 -> float16 (char "e") or bfloat16 bits as uint16 (char "H"), rounded to nearest
    even; NaN stays NaN (quiet), overflow becomes Inf."""
    if char == "e":
        return _f32_to_f16(x)
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    out = np.empty(x.shape, np.uint16)
    _convert(_narrow_bf16_serial, _narrow_bf16, bits.reshape(-1), out.reshape(-1))
    return out


def in_float32(entry):
    """Wrap a kernel entry point whose first argument sets the dtype: half-precision array
    arguments are widened to float32, the result is narrowed back to the first argument's dtype."""

    @functools.wraps(entry)
    def wrapper(first, *args, **kwargs):
        char = first.dtype.char
        if char not in HALF_CHARS:
            return entry(first, *args, **kwargs)
        # (each array in an operand slot of its own: they live only through this call)
        slots = iter(range(1, 1 + len(args) + len(kwargs)))
        args = [widen(a, next(slots)) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {k: widen(v, next(slots)) if isinstance(v, np.ndarray) else v
                  for k, v in kwargs.items()}
        return narrow(entry(widen(first, 0), *args, **kwargs), char)

    return wrapper
