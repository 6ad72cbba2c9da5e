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

from kernelkit.kernels.numba._gemm import _JIT, _U, cdiv, epilogue

MB = NB = 32  # the C block of the 2 x 2 tiles
KSTEP = 32  # K values per TDPBF16PS


def _compiler_has_amx() -> bool:
    """Whether Numba compiles for a CPU with AMX-TILE and AMX-BF16 (NUMBA_CPU_FEATURES, else the
    host's), with an LLVM that knows them."""
    feats = ("amx-tile", "amx-bf16")
    if numba.config.CPU_FEATURES is not None:
        have = set(numba.config.CPU_FEATURES.replace(" ", "").split(","))
        return all(f"+{f}" in have for f in feats)
    try:
        from llvmlite import binding as ll

        fmap = ll.get_host_cpu_features()
        return all(fmap.get(f, False) for f in feats)
    except Exception:  # noqa: BLE001 - no feature probe: no AMX
        return False


_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_AVAILABLE: list = []


def available() -> bool:
    """The CPU and the compiler have AMX-BF16, and Linux let this process use the tile registers
    (asked once, on the first call)."""
    if not _AVAILABLE:
        _AVAILABLE.append(_compiler_has_amx() and _request_tile_data())
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


# ---------------------------------------------------------------------------------- the product

@numba.njit(inline="always", **_JIT)
def round64(nbytes):
    """``nbytes`` rounded up to a cache line: scratch parts start on 64-byte boundaries, where a
    tile row of 64 bytes sits in one line (unaligned, every tile load touched twice the lines:
    about half the speed)."""
    return (nbytes + 63) // 64 * 64


@numba.njit(**_JIT)
def block_product(cfg, ap, rows, bp, kp, ncols, kc, nc, cbuf, c, coff, ldc, mb, nb, bias,
                  has_bias, b0, act):
    """``c[coff + i*ldc + j] = act(sum_p A[i, p] B[p, j] + bias[b0 + j])`` for i < mb, j < nb,
    from packed A (``rows`` rows, a multiple of 32: ``pack_a``) and packed B (``ncols`` columns,
    a multiple of 32, ``kp`` pairs per sliver: ``pack_b``); ``cbuf`` (>= 32 * nc float32,
    64-byte aligned) holds a 32-row strip of C while K blocks accumulate.

    Blocking (multiples of 32): ``nc`` columns of B at a time (kc x nc of B in L2); for each
    32-row strip of A, each block of ``kc`` K values (32 x kc of A in L1) passes all those
    columns. The calling thread's tiles are configured and released here."""
    kpad = 2 * kp
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
            # this strip of C is final: out, through the epilogue
            r_n = min(MB, mb - i)
            if r_n > 0 and c_n > 0:
                for r in range(r_n):
                    o = coff + (i + r) * ldc + jc
                    for q in range(c_n):
                        c[_U(o + q)] = cbuf[_U(r * nc + q)]
                epilogue(c, coff + i * ldc + jc, ldc, r_n, c_n, bias, has_bias, b0 + jc, act)
    _tilerelease()
