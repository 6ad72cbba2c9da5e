"""Packing for the bfloat16 GEMM on CPUs with AVX-512 BF16 (VDPBF16PS).

VDPBF16PS multiplies 32 bfloat16 pairs and adds each pair's two products to one of 16 float32
lanes: twice the multiply-adds of a float32 FMA per instruction. It wants the two values of a
pair to be neighbours along K, so the packed slivers hold uint32 words, each two bfloat16 bit
patterns (the lower 16 bits the even K index, the upper the odd one):

* A sliver (MR rows): word ``q*MR + r`` is (A[r, 2q], A[r, 2q+1]);
* B sliver (NR columns): word ``q*NR + c`` is (B[2q, c], B[2q+1, c]).

``kp = ceil(kb / 2)`` pairs per sliver; an odd ``kb`` ends in a pair whose upper half is zero,
rows past ``mb`` and columns past ``nb`` are zero words. The micro-kernel is ``_gemm.ukernel``
on uint32 slivers (``_gemm.HAS_BF16_DOT``), and ``_gemm.macro_kernel`` runs unchanged with
``kb = kp``. Packing reads the bfloat16 bits where they are (any strides): no widening pass.
"""

from __future__ import annotations

import numba

from kernelkit.kernels.numba._gemm import _JIT, _U, cdiv, tile

_W = numba.uint32


@numba.njit(inline="always", **_JIT)
def _pair(lo, hi):
    return _W(lo) | (_W(hi) << _W(16))


@numba.njit(**_JIT)
def pack_a_pairs(src, off, s_m, s_k, mb, kb, dst, doff):
    """Pack the mb x kb bfloat16 region ``src[off + i*s_m + p*s_k]`` (uint16 bits, a flat view,
    element strides of any sign) into MR-row slivers of K pairs at ``dst[doff:]`` (uint32)."""
    mr, _ = tile(dst)
    kp = (kb + 1) // 2
    kf = kb // 2
    rows_outer = abs(s_k) <= abs(s_m)  # read along the smaller stride
    for s in range(cdiv(mb, mr)):
        base = doff + s * mr * kp
        rows = min(mr, mb - s * mr)
        o0 = off + s * mr * s_m
        if rows_outer:
            for r in range(rows):
                o = o0 + r * s_m
                for q in range(kf):
                    dst[_U(base + q * mr + r)] = _pair(src[_U(o + 2 * q * s_k)],
                                                       src[_U(o + (2 * q + 1) * s_k)])
        else:
            for q in range(kf):
                o = o0 + 2 * q * s_k
                d = base + q * mr
                for r in range(rows):
                    dst[_U(d + r)] = _pair(src[_U(o + r * s_m)], src[_U(o + s_k + r * s_m)])
        if kb > 2 * kf:  # the odd last K: a pair with a zero upper half
            o = o0 + (kb - 1) * s_k
            d = base + kf * mr
            for r in range(rows):
                dst[_U(d + r)] = _W(src[_U(o + r * s_m)])
        if rows < mr:
            for q in range(kp):
                for r in range(rows, mr):
                    dst[_U(base + q * mr + r)] = _W(0)


@numba.njit(**_JIT)
def pack_b_pairs(src, off, s_k, s_n, kb, nb, dst, doff, s0, s1):
    """Pack NR-column slivers ``s0 .. s1`` of the kb x nb bfloat16 region ``src[off + p*s_k +
    j*s_n]`` (uint16 bits) as K pairs; sliver ``s`` goes to ``dst[doff + s*NR*kp:]`` (uint32)."""
    _, nr = tile(dst)
    kp = (kb + 1) // 2
    kf = kb // 2
    cols_outer = abs(s_k) < abs(s_n)
    for s in range(s0, s1):
        base = doff + s * nr * kp
        cols = min(nr, nb - s * nr)
        o0 = off + s * nr * s_n
        if cols_outer:
            for c in range(cols):
                o = o0 + c * s_n
                for q in range(kf):
                    dst[_U(base + q * nr + c)] = _pair(src[_U(o + 2 * q * s_k)],
                                                       src[_U(o + (2 * q + 1) * s_k)])
        else:
            for q in range(kf):
                o = o0 + 2 * q * s_k
                d = base + q * nr
                if s_n == 1:
                    for c in range(cols):
                        dst[_U(d + c)] = _pair(src[_U(o + c)], src[_U(o + s_k + c)])
                else:
                    for c in range(cols):
                        dst[_U(d + c)] = _pair(src[_U(o + c * s_n)], src[_U(o + s_k + c * s_n)])
        if kb > 2 * kf:
            o = o0 + (kb - 1) * s_k
            d = base + kf * nr
            for c in range(cols):
                dst[_U(d + c)] = _W(src[_U(o + c * s_n)])
        if cols < nr:
            for q in range(kp):
                for c in range(cols, nr):
                    dst[_U(base + q * nr + c)] = _W(0)
