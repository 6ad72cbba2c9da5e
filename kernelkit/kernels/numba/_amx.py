"""The bfloat16 GEMM on Intel AMX (TDPBF16PS): tile intrinsics, packing, and one share's product.

AMX adds eight tile registers of up to 16 rows x 64 bytes and an instruction, TDPBF16PS, that
multiplies a 16 x 32 bfloat16 tile of A by a 32 x 16 tile of B into a 16 x 16 float32 tile of C:
8192 multiply-adds per instruction, 16 times the multiply-adds of the AVX-512 BF16 dot product
(VDPBF16PS) that ``_bf16dot`` feeds. torch's bfloat16 matmul uses it through oneDNN where the CPU
has it, so on such a CPU only AMX can keep up (see docs/performance.md).

How the tiles are fed:

* A: 16 rows of 32 bfloat16 values along K; ``pack_a`` writes each tile as 1 KiB in a row, the
  tiles of a 16-row strip one after the other along K (zero-padded to multiples of 32 rows and
  32 K), so both operands are read as contiguous 1 KiB blocks.
* B: 16 rows of 16 uint32 words, each the pair (B[2q, c], B[2q+1, c]) (the "VNNI" layout
  TDPBF16PS wants); ``pack_b`` writes 16-column slivers of K pairs, so one B tile is 1 KiB
  contiguous (row stride 64 bytes).
* C: 2 x 2 tiles (a 32 x 32 block) held across a K block of ``kc`` values, then stored to a
  float32 row buffer; after the last K block the buffer is copied out with the epilogue.

Tile registers: 0-3 hold C, 4-5 A, 6-7 B. The tile configuration (palette 1, every tile 16 rows
of 64 bytes) is loaded by each share (``LDTILECFG``; it is per-thread state) and released at the
end. Linux hands tile data to a process only after it asks (``arch_prctl(ARCH_REQ_XCOMP_PERM)``);
``available`` asks once, and nothing here is compiled on a machine without AMX (LLVM cannot select
the intrinsics there).
"""

from __future__ import annotations

import ctypes
import platform
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernelkit.kernels.numba._gemm import _JIT, _U, cdiv, compiler_has, epilogue, flat_view, span
from kernelkit.kernels.numba._half import (
    _bf16_round,
    _float_to_half_bits,
    _half_bits_to_float,
    bits_f32,
    f32_bits,
)
from kernelkit.kernels.numba._pool import _atomic_add

MB = NB = 32  # the C block of the 2 x 2 tiles
KSTEP = 32  # K values per TDPBF16PS


_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_AVAILABLE: list = []


def available() -> bool:
    """The CPU and the compiler have AMX-BF16, and Linux let this process use the tile registers
    (asked once, on the first call)."""
    if not _AVAILABLE:
        _AVAILABLE.append(compiler_has("amx-tile") and compiler_has("amx-bf16")
                          and _request_tile_data())
    return _AVAILABLE[0]


def _request_tile_data() -> bool:
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@numba.njit(**_JIT)
def tile_config():
    """LDTILECFG's 64 bytes: palette 1, tiles 0-7 of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64  # bytes per row (little-endian uint16)
        cfg[48 + t] = 16  # rows
    return cfg


# ------------------------------------------------------------------------------ tile intrinsics
# Tile numbers are immediates: the typing accepts integer literals only (numba retries a call
# with literal arguments), so each call site names its tile.

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_PTR = ir.IntType(8).as_pointer()


def _call(builder, name: str, arg_types: list, args: list) -> None:
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), arg_types), name)
    builder.call(fn, args)


def _literals(*tys) -> bool:
    return all(isinstance(t, types.IntegerLiteral) for t in tys)


@intrinsic
def _ldtilecfg(typingctx, addr):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [builder.inttoptr(args[0], _PTR)])
        return context.get_dummy_value()
    return types.void(types.intp), codegen


@intrinsic
def _tilerelease(typingctx):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _tilezero(typingctx, tile):
    if not _literals(tile):
        return None
    tn = tile.literal_value

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [ir.Constant(_I8, tn)])
        return context.get_dummy_value()
    return types.void(tile), codegen


def _mem_op(name):
    def typer(typingctx, tile, addr, stride):
        if not _literals(tile):
            return None
        tn = tile.literal_value

        def codegen(context, builder, sig, args):
            _call(builder, name, [_I8, _PTR, _I64],
                  [ir.Constant(_I8, tn), builder.inttoptr(args[1], _PTR), args[2]])
            return context.get_dummy_value()
        return types.void(tile, types.intp, types.intp), codegen
    return intrinsic(typer)


_tileload = _mem_op("llvm.x86.tileloadd64")  # tile <- 16 rows of 64 bytes at addr + r*stride
_tilestore = _mem_op("llvm.x86.tilestored64")


@intrinsic
def _tdpbf16ps(typingctx, c, a, b):
    if not _literals(c, a, b):
        return None
    tiles = [ir.Constant(_I8, t.literal_value) for t in (c, a, b)]

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbf16ps", [_I8] * 3, tiles)
        return context.get_dummy_value()
    return types.void(c, a, b), codegen


# -------------------------------------------------------------------------------------- packing

@numba.njit(**_JIT)
def pack_a(src, off, s_m, s_k, mb, kb, dst, rows):
    """Rows ``0 .. rows`` (a multiple of 16) of the mb x kb bfloat16 region ``src[off + i*s_m +
    p*s_k]`` (uint16 bits, any strides) as A tiles: 16-row strips of 32-value K steps, each
    tile 16 rows of 32 values (1 KiB) in a row, so that a strip's tiles follow each other in
    memory (contiguous 1 KiB reads stream; a tile's rows read at the row stride of A did not).
    Element (i, p) of the padded region sits at ``((i // 16) * ksteps + p // 32) * 512 + (i %
    16) * 32 + p % 32``; zero past mb rows and past kb."""
    ksteps = cdiv(kb, KSTEP)
    z = np.uint16(0)
    for i in range(rows):
        d0 = (i // 16) * ksteps * 512 + (i % 16) * 32
        if i < mb:
            o = off + i * s_m
            for t in range(ksteps):
                d = d0 + t * 512
                p0 = t * KSTEP
                width = min(KSTEP, kb - p0)
                if s_k == 1:
                    for v in range(width):
                        dst[_U(d + v)] = src[_U(o + p0 + v)]
                else:
                    for v in range(width):
                        dst[_U(d + v)] = src[_U(o + (p0 + v) * s_k)]
                for v in range(width, KSTEP):
                    dst[_U(d + v)] = z
        else:
            for t in range(ksteps):
                d = d0 + t * 512
                for v in range(KSTEP):
                    dst[_U(d + v)] = z


@numba.njit(**_JIT)
def pack_b(src, off, s_k, s_n, kb, nb, dst, slivers):
    """The kb x nb bfloat16 region ``src[off + p*s_k + j*s_n]`` (uint16 bits, any strides) as
    ``slivers`` 16-column slivers of K pairs: word ``(s*kp + q)*16 + c`` of ``dst`` is
    (B[2q, 16s + c], B[2q+1, 16s + c]), zero past nb columns and past kb (kp: kb in pairs,
    padded to a multiple of 16 pairs)."""
    kp = cdiv(kb, KSTEP) * (KSTEP // 2)
    kf = kb // 2
    w = np.uint32
    for s in range(slivers):
        base = s * kp * 16
        cols = max(0, min(16, nb - s * 16))
        o0 = off + s * 16 * s_n
        for q in range(kf):
            o = o0 + 2 * q * s_k
            d = base + q * 16
            if s_n == 1:  # rows of B contiguous: a vector loop
                for c in range(cols):
                    dst[_U(d + c)] = w(src[_U(o + c)]) | (w(src[_U(o + s_k + c)]) << w(16))
            else:
                for c in range(cols):
                    lo = w(src[_U(o + c * s_n)])
                    hi = w(src[_U(o + s_k + c * s_n)])
                    dst[_U(d + c)] = lo | (hi << w(16))
            for c in range(cols, 16):
                dst[_U(d + c)] = w(0)
        for q in range(kf, kp):  # the odd last K (upper half zero), then zero pairs
            d = base + q * 16
            for c in range(16):
                dst[_U(d + c)] = w(0)
            if q == kf and kb > 2 * kf:
                o = o0 + (kb - 1) * s_k
                for c in range(cols):
                    dst[_U(d + c)] = w(src[_U(o + c * s_n)])


# ------------------------------------------------------------- float16 as two bfloat16 halves
# This generation has no float16 tile product (AMX-FP16 came with Granite Rapids), but a float16
# value x is exactly hi + lo with hi = bfloat16(x) (x has 11 significant bits, hi its top 8,
# rounded) and lo = x - hi (at most 4 significant bits, so a bfloat16 holds it exactly; every
# float16, subnormals included, is a normal bfloat16). Then A B = Ah Bh + Ah Bl + Al Bh + Al Bl,
# every product of two bfloat16s exact in float32; the last term is at most 2^-18 |A||B| per
# product (|lo| <= 2^-9 |x|), below float32's own rounding of a sum of a few dozen terms, and is
# dropped. What is left is one bfloat16 GEMM over K' = 3L (L: K rounded up to even, so that no
# K pair straddles two segments): A' = [Ah Ah Al] and B' = [Bh; Bl; Bh] by segments of L,
# packed straight from the float16 operands. Inf and NaN cannot be split (Inf * 0 from a zero lo
# half would make NaN): the packers count them and the caller falls back.

@numba.njit(inline="always", **_JIT)
def f16_segment(k):
    """L, the length of each of the three K segments of a float16 product of depth ``k``."""
    return k + (k & 1)


@numba.njit(inline="always", **_JIT)
def split_f16(h):
    """float16 bits -> (hi, lo, bad): bfloat16 bits with hi + lo == the value exactly, and 1
    for Inf and NaN (whose lo is 0); selects rather than branches, so that loops of it
    vectorise (per element and branchy, packing 256 x 256 of B took 0.52 ms; this way 0.056)."""
    x = _half_bits_to_float(h)
    hi = _bf16_round(f32_bits(x))
    lo = np.uint16(f32_bits(x - bits_f32(np.uint32(np.uint32(hi) << np.uint32(16))))
                   >> np.uint32(16))
    bad = (h & np.uint16(0x7C00)) == np.uint16(0x7C00)
    return hi, np.uint16(0) if bad else lo, np.int64(bad)


@numba.njit(**_JIT)
def pack_a_f16(src, off, s_m, s_k, mb, kb, dst, rows):
    """``pack_a`` of the mb x 3L region A' = [hi | hi | lo] (``f16_segment``) of the float16
    region ``src[off + i*s_m + p*s_k]`` (uint16 bits, zero past kb in each segment), split by
    ``split_f16``; returns how many Inf/NaN it read."""
    seg = f16_segment(kb)
    ksteps = cdiv(3 * seg, KSTEP)
    halves = np.zeros((2, seg), np.uint16)  # one row's hi and lo (zero past kb)
    bad = 0
    for i in range(rows):
        d0 = (i // 16) * ksteps * 512 + (i % 16) * 32
        if i < mb:
            o = off + i * s_m
            for p in range(kb):
                hi, lo, b = split_f16(src[_U(o + p * s_k)])
                halves[0, _U(p)] = hi
                halves[1, _U(p)] = lo
                bad += b
        else:
            halves[:, :] = 0
        # the three segments, in runs that stay inside one 32-value K step
        for g in range(3):
            h = halves[1 if g == 2 else 0]
            p = 0
            while p < seg:
                q = g * seg + p
                run = min(KSTEP - (q & 31), seg - p)
                d = d0 + (q >> 5) * 512 + (q & 31)
                for v in range(run):
                    dst[_U(d + v)] = h[_U(p + v)]
                p += run
        for q in range(3 * seg, ksteps * KSTEP):  # zero K padding
            dst[_U(d0 + (q >> 5) * 512 + (q & 31))] = np.uint16(0)
    return bad


@numba.njit(**_JIT)
def pack_b_f16(src, off, s_k, s_n, kb, nb, dst, slivers):
    """``pack_b`` of the 3L x nb region B' = [hi; lo; hi] (``f16_segment``) of the float16
    region ``src[off + p*s_k + j*s_n]`` (uint16 bits, zero past kb in each segment), split by
    ``split_f16``; returns how many Inf/NaN it read."""
    seg = f16_segment(kb)
    half = seg // 2  # pairs per segment
    kp = cdiv(3 * seg, KSTEP) * (KSTEP // 2)
    w = np.uint32
    bad = 0
    for s in range(slivers):
        base = s * kp * 16
        cols = max(0, min(16, nb - s * 16))
        o0 = off + s * 16 * s_n
        for q in range(half):
            o = o0 + 2 * q * s_k
            has1 = 2 * q + 1 < kb
            d = base + q * 16
            for c in range(cols):
                hi0, lo0, b0 = split_f16(src[_U(o + c * s_n)])
                x1 = src[_U(o + s_k + c * s_n)] if has1 else np.uint16(0)
                hi1, lo1, b1 = split_f16(x1)
                hw = w(hi0) | (w(hi1) << w(16))
                dst[_U(d + c)] = hw
                dst[_U(d + half * 16 + c)] = w(lo0) | (w(lo1) << w(16))
                dst[_U(d + 2 * half * 16 + c)] = hw
                bad += b0 + b1
            for c in range(cols, 16):
                dst[_U(d + c)] = w(0)
                dst[_U(d + half * 16 + c)] = w(0)
                dst[_U(d + 2 * half * 16 + c)] = w(0)
        for q in range(3 * half, kp):  # zero K padding
            for c in range(16):
                dst[_U(base + q * 16 + c)] = w(0)
    return bad


# ---------------------------------------------------------------------------------- the product

@numba.njit(inline="always", **_JIT)
def round64(nbytes):
    """``nbytes`` rounded up to a cache line: scratch parts start on 64-byte boundaries, where a
    tile row of 64 bytes sits in one line (unaligned, every tile load touched twice the lines:
    about half the speed)."""
    return (nbytes + 63) // 64 * 64


@numba.njit(inline="always", **_JIT)
def round_out(out, dst, ldd, bits, src, lds, rows, cols):
    """``out[dst + r*ldd + q]`` = float32 bits ``bits[src + r*lds + q]`` rounded to bfloat16, for
    a rows x cols block: the AMX kernels' last step after their epilogue."""
    for r in range(rows):
        for q in range(cols):
            out[_U(dst + r * ldd + q)] = _bf16_round(bits[_U(src + r * lds + q)])


@numba.njit(inline="always", **_JIT)
def round_out_f16(out, dst, ldd, vals, src, lds, rows, cols):
    """``round_out`` to float16 from float32 ``vals``."""
    for r in range(rows):
        for q in range(cols):
            out[_U(dst + r * ldd + q)] = _float_to_half_bits(vals[_U(src + r * lds + q)])


@numba.njit(**_JIT)
def block_product(cfg, ap, rows, bp, kp, ncols, kc, nc, cbuf, c, coff, ldc, mb, nb, bias,
                  has_bias, b0, act, f16):
    """``c[coff + i*ldc + j] = act(sum_p A[i, p] B[p, j] + bias[b0 + j])`` for i < mb, j < nb
    (``c``: bfloat16 bits, or float16 bits where ``f16``, rounded once from the float32 sums),
    from packed A (``rows`` rows, a multiple of 32: ``pack_a``) and packed B (``ncols`` columns,
    a multiple of 32, ``kp`` pairs per sliver: ``pack_b``); ``cbuf`` (>= 32 * nc float32,
    64-byte aligned) holds a 32-row strip of C while K blocks accumulate.

    Blocking (multiples of 32): ``nc`` columns of B at a time (kc x nc of B in L2); for each
    32-row strip of A, each block of ``kc`` K values (32 x kc of A in L1) passes all those
    columns. The calling thread's tiles are configured and released here."""
    kpad = 2 * kp
    cbits = cbuf.view(np.uint32)
    _ldtilecfg(cfg.ctypes.data)
    a0 = ap.ctypes.data
    b_base = bp.ctypes.data
    cb = cbuf.ctypes.data
    strip = kp * 64  # bytes of one 16-row strip of A or 16-column sliver of B
    sc = nc * 4
    for jc in range(0, ncols, nc):
        ncb = min(nc, ncols - jc)
        c_n = min(ncb, nb - jc)
        for i in range(0, rows, MB):
            arow0 = a0 + (i // 16) * strip
            arow1 = arow0 + strip
            for pc in range(0, kpad, kc):
                kend = min(kpad, pc + kc)
                for j in range(0, ncb, NB):
                    cp = cb + j * 4
                    if pc == 0:
                        _tilezero(0)
                        _tilezero(1)
                        _tilezero(2)
                        _tilezero(3)
                    else:
                        _tileload(0, cp, sc)
                        _tileload(1, cp + 64, sc)
                        _tileload(2, cp + 16 * sc, sc)
                        _tileload(3, cp + 16 * sc + 64, sc)
                    bcol0 = b_base + ((jc + j) // 16) * strip
                    bcol1 = bcol0 + strip
                    for p in range(pc, kend, KSTEP):
                        _tileload(4, arow0 + p * 32, 64)  # K step p/32: 1 KiB in
                        _tileload(6, bcol0 + p * 32, 64)
                        _tdpbf16ps(0, 4, 6)
                        _tileload(7, bcol1 + p * 32, 64)
                        _tdpbf16ps(1, 4, 7)
                        _tileload(5, arow1 + p * 32, 64)
                        _tdpbf16ps(2, 5, 6)
                        _tdpbf16ps(3, 5, 7)
                    _tilestore(0, cp, sc)
                    _tilestore(1, cp + 64, sc)
                    _tilestore(2, cp + 16 * sc, sc)
                    _tilestore(3, cp + 16 * sc + 64, sc)
            # this strip of C is final: through the epilogue, out rounded to bfloat16
            r_n = min(MB, mb - i)
            if r_n > 0 and c_n > 0:
                epilogue(cbuf, 0, nc, r_n, c_n, bias, has_bias, b0 + jc, act)
                if f16:
                    round_out_f16(c, coff + i * ldc + jc, ldc, cbuf, 0, nc, r_n, c_n)
                else:
                    round_out(c, coff + i * ldc + jc, ldc, cbits, 0, nc, r_n, c_n)
    _tilerelease()


# ------------------------------------------------------------------ conv2d: the shifted GEMM on AMX
# An NCHW convolution of one image is, per kernel tap, a GEMM of the tap's weights (K x C) by the
# zero-padded input shifted by the tap: on the padded grid (width wp), output pixel j = oy*wp +
# ox reads input pixel j + shift(tap) (columns ox >= wo are computed and dropped). With stride st
# the padded input is split into its st x st stride phases (every st-th row and column from
# each offset): tap (r, s) reads the phase (r*dh % st, s*dw % st) shifted by (r*dh // st) rows
# and (s*dw // st) columns, and the grid is a phase's.
# The input is packed once per image as planes of channel pairs (uint32 words (x[2q], x[2q+1])),
# so a B tile is 16 pair planes x 16 consecutive pixels, loaded in place at any shift (row
# stride: the plane); the weights as one A block per tap (``pack_a``).

@numba.njit(inline="always", **_JIT)
def _image(x4):
    """(flat view, its offset, element strides of image, channel, row, column) of a 4-D
    input."""
    isz = x4.itemsize
    lo, length = span(x4.shape, x4.strides, isz)
    return (flat_view(x4, lo, length), lo, x4.strides[0] // isz, x4.strides[1] // isz,
            x4.strides[2] // isz, x4.strides[3] // isz)


@numba.njit(**_JIT)
def pad_pairs(xf, xoff, c, h, w, s_c, s_h, s_w, ph, pw, dst, doff, cqp, q, st, wp, plane):
    """Channel pair q (channels 2q, 2q+1 of ``x[c, y, x] = xf[xoff + c*s_c + y*s_h + x*s_w]``,
    uint16 bits) of one image, zero-padded (``ph`` rows above, ``pw`` columns left) and split
    into the ``st`` x ``st`` stride phases of the padded grid: padded pixel (Y, X) is word
    ``((Y%st * st + X%st) * cqp + q) * plane + (Y//st) * wp + X//st`` of ``dst[doff:]`` (``wp``:
    a phase's width), the pair (x[2q], x[2q+1]); zero in the padding, past the channels and up to
    each plane's end."""
    z = np.uint32(0)
    w32 = np.uint32
    for phase in range(st * st):
        base = doff + (phase * cqp + q) * plane
        for i in range(plane):
            dst[_U(base + i)] = z
    c0 = 2 * q
    if c0 >= c:
        return
    pair = c0 + 1 < c
    for y in range(h):
        yy = y + ph
        o = xoff + c0 * s_c + y * s_h
        if st == 1:
            d = doff + q * plane + yy * wp + pw
            if pair and s_w == 1:
                for xx in range(w):
                    dst[_U(d + xx)] = w32(xf[_U(o + xx)]) | (w32(xf[_U(o + s_c + xx)]) << w32(16))
                continue
            for xx in range(w):
                lo = w32(xf[_U(o + xx * s_w)])
                hi = w32(xf[_U(o + s_c + xx * s_w)]) if pair else z
                dst[_U(d + xx)] = lo | (hi << w32(16))
            continue
        row = (yy % st) * st
        for b in range(st):  # the phase of padded columns b, b + st, ...: in order, no division
            d = doff + ((row + b) * cqp + q) * plane + (yy // st) * wp
            m0 = (pw - b + st - 1) // st if pw > b else 0  # its first column inside the image
            for m in range(m0, wp):
                xx = b + st * m - pw
                if xx >= w:
                    break
                lo = w32(xf[_U(o + xx * s_w)])
                hi = w32(xf[_U(o + s_c + xx * s_w)]) if pair else z
                dst[_U(d + m)] = lo | (hi << w32(16))


@numba.njit(**_JIT)
def pack_conv_weight(t, nthr, wf, k, c, taps, dst, rows):
    """Thread t's share (rows split evenly) of weight ``wf`` ((K, C, R, S) contiguous uint16
    bits, ``taps`` = R*S) as one A block per tap, laid out as ``pack_a`` lays out the (K, C)
    matrix of that tap: tap t's block starts at ``t * rows * cpad`` (``rows``: K rounded up to
    32, ``cpad``: C rounded up to 32), zero past K and C. Reads the weight in order, writes
    each tap's block."""
    cpad = cdiv(c, KSTEP) * KSTEP
    ksteps = cpad // KSTEP
    blk = rows * cpad
    z = np.uint16(0)
    i0, i1 = rows * t // nthr, rows * (t + 1) // nthr
    for i in range(i0, i1):
        row = (i // 16) * ksteps * 512 + (i % 16) * 32
        for tap in range(taps):
            d0 = tap * blk + row
            o = i * c * taps + tap  # a row of the weight (C x taps) stays in L1 over the taps
            for pb in range(ksteps):
                d = d0 + pb * 512
                width = min(KSTEP, c - pb * KSTEP) if i < k else 0
                for v in range(max(width, 0)):
                    dst[_U(d + v)] = wf[_U(o + (pb * KSTEP + v) * taps)]
                for v in range(max(width, 0), KSTEP):
                    dst[_U(d + v)] = z


@numba.njit(**_JIT)
def conv_product(cfg, ap, rows, cqp, shifts, xq, xoff, plane, j0, j1, outp, ooff, ldo):
    """``outp[ooff + kk*ldo + j] = sum_t sum_c A_t[kk, c] X[c, j + shifts[t]]`` for kk < rows
    (a multiple of 32) and j in [j0, j1) (multiples of 32): A_t packed by ``pack_conv_weight``,
    X the pair planes at ``xq[xoff:]`` (``cqp`` planes, a multiple of 16). The calling thread's
    tiles are configured and released here."""
    _ldtilecfg(cfg.ctypes.data)
    strip = cqp * 64  # bytes of a 16-row strip of A_t (cqp pairs = 2*cqp values per row)
    tap_bytes = rows * cqp * 4
    a_base = ap.ctypes.data
    x_base = xq.ctypes.data + xoff * 4
    o_base = outp.ctypes.data + ooff * 4
    sx = plane * 4
    so = ldo * 4
    # out-channel blocks outside: one block's weights (taps x 32 rows x C, L2) pass every pixel
    # block (the pair planes: L2); the other way round, a deep layer's weights (4.7 MB at 512
    # channels) were read from memory once per 32 pixels
    for kk in range(0, rows, MB):
        for j in range(j0, j1, NB):
            _tilezero(0)
            _tilezero(1)
            _tilezero(2)
            _tilezero(3)
            for t in range(shifts.size):
                a0 = a_base + t * tap_bytes + (kk // 16) * strip
                b0 = x_base + (j + shifts[t]) * 4
                for cb in range(0, cqp, 16):
                    at = a0 + cb * 64  # K step cb/16: its 1 KiB tile
                    bt = b0 + cb * sx
                    _tileload(4, at, 64)
                    _tileload(6, bt, sx)
                    _tdpbf16ps(0, 4, 6)
                    _tileload(7, bt + 64, sx)
                    _tdpbf16ps(1, 4, 7)
                    _tileload(5, at + strip, 64)
                    _tdpbf16ps(2, 5, 6)
                    _tdpbf16ps(3, 5, 7)
            cp = o_base + (kk * ldo + j) * 4
            _tilestore(0, cp, so)
            _tilestore(1, cp + 64, so)
            _tilestore(2, cp + 16 * so, so)
            _tilestore(3, cp + 16 * so + 64, so)
    _tilerelease()


@numba.njit(**_JIT)
def conv_pack_part(t, nthr, x4, xq, cqp, st, plane, wp, ph, pw):
    """Thread t's share of the pair planes (``pad_pairs``) of every image of ``x4`` ((N, C, H, W)
    uint16 bits, any strides): (image, pair) units split evenly over the threads; image i's
    planes start at ``i * st*st * cqp * plane``."""
    n, c, h, w = x4.shape
    xf, lo, s_n, s_c, s_h, s_w = _image(x4)
    total = n * cqp
    u0, u1 = total * t // nthr, total * (t + 1) // nthr
    for u in range(u0, u1):
        img, q = u // cqp, u % cqp
        pad_pairs(xf, img * s_n - lo, c, h, w, s_c, s_h, s_w, ph, pw, xq,
                  img * st * st * cqp * plane, cqp, q, st, wp, plane)


@numba.njit(**_JIT)
def conv_part(t, nthr, ap, rows, cqp, shifts, xq, image, plane, outp, ncols, out4, bias,
              has_bias, act, wp):
    """Thread t's share of the convolution: (image, 32-pixel column block) units split evenly;
    each block's products go to ``outp`` (rows x ncols per image, on a phase's grid of width
    ``wp``), then its valid pixels through the epilogue (bias per row) to ``out4`` ((N, K, Ho,
    Wo) bfloat16 bits, rounded once). An image's pair planes are ``image`` words apart in
    ``xq``."""
    n, k, ho, wo = out4.shape
    out = out4.reshape(-1)
    obits = outp.view(np.uint32)
    cfg = tile_config()
    blocks = ncols // NB
    total = n * blocks
    u0, u1 = total * t // nthr, total * (t + 1) // nthr
    u = u0
    while u < u1:
        img = u // blocks
        b1 = min(u1 - img * blocks, blocks)
        j0, j1 = (u % blocks) * NB, b1 * NB
        ooff = img * rows * ncols
        conv_product(cfg, ap, rows, cqp, shifts, xq, img * image, plane, j0, j1, outp, ooff,
                     ncols)
        for y in range(j0 // wp, min(ho, (j1 - 1) // wp + 1)):
            xs = max(0, j0 - y * wp)
            xe = min(wo, j1 - y * wp)
            if xe <= xs:
                continue
            for kk in range(k):
                src = ooff + kk * ncols + y * wp
                dst = ((img * k + kk) * ho + y) * wo
                epilogue(outp, src + xs, ncols, 1, xe - xs, bias, has_bias, kk, act, True)
                round_out(out, dst + xs, wo, obits, src + xs, ncols, 1, xe - xs)
        u = img * blocks + b1


# ------------------------------------------- conv2d: image columns by the weight read in place
# A deep layer at a small batch holds more weight than image: at 512 channels and 7 px, 4.7 MB
# of weights against 0.45 MB of image columns, and packing the weights per tap
# (``pack_conv_weight``, a gather at the tap stride) took longer than the products. Here the
# GEMM's K runs over (channel, tap) in the weight's own order, so an A tile is 16 out-channel
# rows of 32 consecutive values of the (K, C*R*S) weight, loaded in place at its row stride,
# and B is the image's columns (im2col), packed as ``pack_b``'s K-pair slivers.

@numba.njit(**_JIT)
def cols_pack_part(t, nthr, x4, dst, kp, ncols, r, s, st_h, st_w, top, bottom, left, right, dh,
                   dw, ho, wo, claim):
    """A share of the image columns of ``x4`` ((N, C, H, W) uint16 bits, any strides): the
    (C*R*S, N*Ho*Wo) matrix ``B[(c, i, j), (img, oy, ox)] = x[img, c, oy*st_h + i*dh - top,
    ox*st_w + j*dw - left]`` (zero outside the image, past C*R*S values and past N*Ho*Wo
    columns) as rows of K pairs: word ``q * ncols + col`` of ``dst`` is (B[2q, col],
    B[2q+1, col]), for q < ``kp``. Blocks of 8 pair rows are claimed from ``claim[0]`` until
    none is left (a thread that starts late takes fewer). Per image, a block's channels are
    first copied into zero-padded planes, so that every row of B is read without a bounds
    test (with one, at 7-28 px, the short edge loops cost 3x the copy)."""
    n, c, h, w = x4.shape
    xf, lo, s_n, s_c, s_h, s_w = _image(x4)
    plane = ho * wo
    ptot = n * plane
    taps = r * s
    kall = c * taps
    hp, wp = h + top + bottom, w + left + right
    pad_plane = hp * wp
    # a block's 16 K values span at most this many channels
    pads = np.zeros(((16 + taps - 1) // taps + 1, pad_plane), np.uint16)
    w32 = np.uint32
    z = w32(0)
    blocks = cdiv(kp, 8)
    while True:
        blk = _atomic_add(claim, 0, 1)
        if blk >= blocks:
            break
        q0, q1 = blk * 8, min(kp, blk * 8 + 8)
        for q in range(q0, q1):
            for col in range(ptot if 2 * q < kall else 0, ncols):
                dst[_U(q * ncols + col)] = z
        if 2 * q0 >= kall:
            continue
        c0 = 2 * q0 // taps
        c1 = min(c, (2 * q1 - 1) // taps + 1)
        for img in range(n):
            for ci in range(c0, c1):  # zero-padded planes (the border stays zero)
                pl = pads.reshape(-1)[(ci - c0) * pad_plane:(ci - c0 + 1) * pad_plane]
                o = img * s_n + ci * s_c - lo
                for y in range(h):
                    d = (y + top) * wp + left
                    for xx in range(w):
                        pl[_U(d + xx)] = xf[_U(o + y * s_h + xx * s_w)]
            for q in range(q0, q1):
                k0, k1 = 2 * q, 2 * q + 1
                if k0 >= kall:
                    break
                ci0, tap0 = k0 // taps, k0 % taps
                p0 = ((ci0 - c0) * hp + (tap0 // s) * dh) * wp + (tap0 % s) * dw
                if k1 < kall:
                    ci1, tap1 = k1 // taps, k1 % taps
                    p1 = ((ci1 - c0) * hp + (tap1 // s) * dh) * wp + (tap1 % s) * dw
                    keep = w32(0xFFFF)
                else:  # the odd last K: its partner is zero
                    p1, keep = p0, z
                pf = pads.reshape(-1)
                for oy in range(ho):
                    d = q * ncols + img * plane + oy * wo
                    a = p0 + oy * st_h * wp
                    b = p1 + oy * st_h * wp
                    if st_w == 1:  # contiguous reads: a vector loop
                        for ox in range(wo):
                            dst[_U(d + ox)] = (w32(pf[_U(a + ox)])
                                               | ((w32(pf[_U(b + ox)]) & keep) << w32(16)))
                    else:
                        for ox in range(wo):
                            dst[_U(d + ox)] = (w32(pf[_U(a + ox * st_w)])
                                               | ((w32(pf[_U(b + ox * st_w)]) & keep)
                                                  << w32(16)))


@numba.njit(**_JIT)
def cols_conv_part(t, nthr, ap, lda, a_strip, a_kstep, ksteps, bq, ncols, chunk, by_chunk, ws,
                   share, out4, bias, has_bias, act, claim):
    """A share of ``out4 = act(A @ B + bias)`` ((N, K, Ho, Wo) bfloat16 bits, rounded once from
    the float32 sums; column (img, oy, ox) of B is pixel (oy, ox) of image img): units of
    (32-row strip of A, ``chunk`` columns of B), strip by strip (a strip of A, read in place
    from memory once, passes the chunks from L2) or, with ``by_chunk`` (more columns than rows),
    chunk by chunk (a chunk of B passes every strip while it is in L2), claimed from
    ``claim[0]`` until none is left (a thread whose core wakes late takes fewer).
    A tile (strip i, K step p) is 16 rows at ``lda`` bytes from ``ap``'s data + ``(i // 16) *
    a_strip + p * a_kstep`` bytes (the weight in place, or ``pack_a``'s layout); B is
    ``cols_pack_part``'s rows of K pairs; a unit's 32 x chunk float32 sums sit in thread t's
    ``share`` bytes of ``ws`` until the epilogue writes them out."""
    n, k, ho, wo = out4.shape
    plane = ho * wo
    ptot = n * plane
    out = out4.reshape(-1)
    cbuf = ws[t * share:(t + 1) * share].view(np.float32)
    cbits = cbuf.view(np.uint32)
    cfg = tile_config()
    _ldtilecfg(cfg.ctypes.data)
    a0 = ap.ctypes.data
    b0 = bq.ctypes.data
    cb = cbuf.ctypes.data
    ldb = ncols * 4
    kstep_b = 16 * ldb
    sc = chunk * 4
    nch = cdiv(ncols, chunk)
    strips = cdiv(k, MB)
    units = strips * nch
    while True:
        u = _atomic_add(claim, 0, 1)
        if u >= units:
            break
        if by_chunk:  # a chunk of B passes every strip of A (B the larger)
            i, j0 = (u % strips) * MB, (u // strips) * chunk
        else:  # a strip of A passes every chunk of B
            i, j0 = (u // nch) * MB, (u % nch) * chunk
        j1 = min(ncols, j0 + chunk)
        arow0 = a0 + (i // 16) * a_strip
        arow1 = arow0 + a_strip
        for j in range(j0, j1, NB):
            bcol0 = b0 + j * 4
            bcol1 = bcol0 + 64
            _tilezero(0)
            _tilezero(1)
            _tilezero(2)
            _tilezero(3)
            for p in range(ksteps):
                _tileload(4, arow0 + p * a_kstep, lda)
                _tileload(6, bcol0 + p * kstep_b, ldb)
                _tdpbf16ps(0, 4, 6)
                _tileload(7, bcol1 + p * kstep_b, ldb)
                _tdpbf16ps(1, 4, 7)
                _tileload(5, arow1 + p * a_kstep, lda)
                _tdpbf16ps(2, 5, 6)
                _tdpbf16ps(3, 5, 7)
            cp = cb + (j - j0) * 4
            _tilestore(0, cp, sc)
            _tilestore(1, cp + 64, sc)
            _tilestore(2, cp + 16 * sc, sc)
            _tilestore(3, cp + 16 * sc + 64, sc)
        # the strip's sums for these columns through the epilogue, then out image by image,
        # rounded to bfloat16 (no float32 output and no narrowing pass over it)
        r_n = min(MB, k - i)
        jend = min(j1, ptot)
        epilogue(cbuf, 0, chunk, r_n, jend - j0, bias, has_bias, i, act, True)
        jj = j0
        while jj < jend:
            img, pix = jj // plane, jj % plane
            run = min(jend - jj, plane - pix)
            round_out(out, (img * k + i) * plane + pix, plane, cbits, jj - j0, chunk, r_n, run)
            jj += run
    _tilerelease()
