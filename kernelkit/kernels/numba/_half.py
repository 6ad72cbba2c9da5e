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

import numpy as np

HALF_CHARS = "eH"  # numpy dtype chars: float16, and uint16 (bfloat16 bit patterns)


def compute_dtype(dtype: str) -> np.dtype:
    """The dtype the kernels compute `dtype` in: float32 for the half-precision ones."""
    return np.dtype("float32" if dtype in ("float16", "bfloat16") else dtype)


def widen(x: np.ndarray | None) -> np.ndarray | None:
    """float16 or bfloat16-as-uint16 -> float32 (exact); other arrays as they are."""
    if x is None:
        return None
    if x.dtype.char == "e":
        return x.astype(np.float32)
    if x.dtype.char == "H":
        # bfloat16 is the top half of a float32: shift the bits into place
        return (x.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return x


def narrow(x: np.ndarray, char: str) -> np.ndarray:
    """float32 -> float16 (char "e") or bfloat16 bits as uint16 (char "H"), rounded to nearest
    even; NaN stays NaN (quiet), overflow becomes Inf."""
    if char == "e":
        with np.errstate(over="ignore"):  # beyond float16's range is Inf, as torch gives
            return x.astype(np.float16)
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    # round to nearest even: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # the carry above could turn a NaN with a small payload into Inf
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out.reshape(x.shape)


def in_float32(entry):
    """Wrap a kernel entry point whose first argument sets the dtype: half-precision array
    arguments are widened to float32, the result is narrowed back to the first argument's dtype."""

    @functools.wraps(entry)
    def wrapper(first, *args, **kwargs):
        char = first.dtype.char
        if char not in HALF_CHARS:
            return entry(first, *args, **kwargs)
        args = [widen(a) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {k: widen(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        return narrow(entry(widen(first), *args, **kwargs), char)

    return wrapper
