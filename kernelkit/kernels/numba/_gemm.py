"""Building blocks of the Numba GEMM: a register-tile micro-kernel, panel packing, the epilogue.

Layout of the packed panels (GotoBLAS / BLIS style, row-major C):

* A block (mb x kb) is packed into ``ceil(mb / MR)`` slivers. Sliver ``s`` holds rows
  ``s*MR .. s*MR+MR`` as ``kb`` groups of ``MR`` consecutive values (column ``p`` of the sliver at
  ``s*MR*kb + p*MR``). Rows past ``mb`` are zero.
* B panel (kb x nb) is packed into ``ceil(nb / NR)`` slivers. Sliver ``s`` holds columns
  ``s*NR .. s*NR+NR`` as ``kb`` rows of ``NR`` consecutive values (row ``p`` at
  ``s*NR*kb + p*NR``). Columns past ``nb`` are zero.

The micro-kernel ``ukernel`` multiplies one A sliver by one B sliver and writes (or adds) the
``MR x NR`` tile to a flat C at ``coff`` with row stride ``ldc``. It is written as LLVM IR (a Numba
intrinsic) so that the ``MR * NR / W`` accumulators are SSA vector values that live in registers for
the whole K loop: one broadcast per row of A, ``NR / W`` vector loads of B and ``MR * NR / W`` vector
FMAs per step of K. ``W`` is the target's vector width (zmm with AVX-512: 16 float32 or 8 float64
lanes; ymm with AVX2; xmm otherwise) and ``TILE`` follows it. Nothing here depends on what the
panels were packed from, so an implicit-GEMM convolution can reuse ``ukernel`` and
``macro_kernel`` with its own packing.

All functions take flat 1-D buffers plus integer offsets, and 2-D source views of any layout, so
one compilation per dtype covers every stride pattern.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

from kernelkit.kernels import ACT_CODES
from kernelkit.kernels.numba import _cache, _native


def compiler_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with LLVM feature ``feature`` ("avx512f", "amx-tile"):
    NUMBA_CPU_FEATURES, else the host's (False where nothing can be probed: a baseline x86-64)."""
    return feature in _compiler_features()


@functools.cache
def _compiler_features() -> frozenset:
    if numba.config.CPU_FEATURES is not None:
        return frozenset(f[1:] for f in numba.config.CPU_FEATURES.replace(" ", "").split(",")
                         if f.startswith("+"))
    try:
        from llvmlite import binding as ll

        return frozenset(f for f, on in ll.get_host_cpu_features().items() if on)
    except Exception:  # noqa: BLE001 - no feature probe
        return frozenset()


def _target_features() -> tuple[int, bool, bool]:
    """(vector bits, has FMA, has AVX-512 BF16) of what Numba compiles for (``compiler_has``)."""
    has = compiler_has
    bits = 512 if has("avx512f") else 256 if has("avx") else 128
    # (the BF16 intrinsics take <32 x bfloat> from LLVM 17 on, <16 x i32> before: only the former
    # is emitted; an older LLVM takes the float32 fallback)
    return bits, has("fma"), bits == 512 and has("avx512bf16") and _llvm_version() >= (17,)


@functools.cache
def _llvm_version() -> tuple:
    """The LLVM llvmlite links ((0,) where it cannot say)."""
    try:
        from llvmlite import binding as ll

        return tuple(ll.llvm_version_info)
    except Exception:  # noqa: BLE001
        return (0,)


_VEC_BITS, _HAS_FMA, HAS_BF16_DOT = _target_features()
# Register tile (MR rows x NR columns) per dtype and vector width; NR is two vectors. The
# accumulators (MR * 2 vectors) plus two B vectors and a broadcast fit the register file:
# 12 x 2 zmm + 3 of AVX-512's 32 registers, 6 x 2 ymm + 3 (4 x 2 xmm + 3) of 16.
_MR = {512: 12, 256: 6, 128: 4}[_VEC_BITS]
TILE: dict[str, tuple[int, int]] = {
    "float32": (_MR, 2 * _VEC_BITS // 32),
    "float64": (_MR, 2 * _VEC_BITS // 64),
}
# bfloat16 pairs: slivers of uint32, each two bfloat16 neighbours along K (``_bf16dot``); one
# VDPBF16PS (AVX-512 BF16 only) multiplies and adds both into a float32 lane, so the tile is the
# float32 one and a K step covers two values of K.
TILE["uint32"] = TILE["float32"]

# Epilogue activation codes (module constants: numba freezes them into the jitted code).
ACT_NONE, ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU = (
    ACT_CODES[a] for a in (None, "relu", "gelu", "gelu_tanh", "silu"))

_cache.install()  # cache=True below: in the keyed dir (see _cache.py), never stale
_JIT = dict(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
# Indexing with an unsigned index skips Numba's negative-index wraparound, which otherwise turns
# contiguous copies into scalar (or gather) code. Every index cast this way is known to be >= 0.
_U = numba.uintp


def warm_result(before: int) -> str:
    """What a kernel module's ``warm`` reports: "compiled" if any entry point was compiled since
    ``COMPILED[0]`` was ``before``, else "loaded" (from the on-disk cache, or already in memory)."""
    return "compiled" if COMPILED[0] > before else "loaded"


_TILE_OF: dict = {}  # tile_shape's answers by the argument: np.dtype(...).name costs microseconds


def tile_shape(dtype) -> tuple[int, int]:
    """(MR, NR) of the micro-kernel for ``dtype`` (float32 or float64)."""
    t = _TILE_OF.get(dtype)
    if t is None:
        t = _TILE_OF[dtype] = TILE[np.dtype(dtype).name]
    return t


COMPILED = [0]  # entry points compiled in this process, not loaded from the on-disk cache


def entry_point(disp, sig):
    """``disp`` compiled (or loaded from numba's cache) for exactly ``sig``: its entry point, which
    a launcher calls without the dispatcher's type matching (arrays of every layout unbox into an
    'A' signature; the launcher has checked ndim and dtype). A share entry point
    ``fn(t, nthr, ...)`` also gets its native trampoline (``_native.prepare``: ``_pool`` then
    runs its shares without Python)."""
    misses = getattr(disp, "_cache_misses", None)
    before = sum(misses.values()) if misses is not None else 0
    disp.compile(sig)
    if misses is not None and sum(misses.values()) > before:
        COMPILED[0] += 1
    cres = disp.overloads.get(sig.args)
    ep = getattr(cres, "entry_point", None) or disp
    _native.prepare(ep, disp, sig)
    return ep


def _dtype_name(nbtype) -> str:
    return {types.float32: "float32", types.uint32: "uint32"}.get(nbtype, "float64")


def tile(x):
    """(MR, NR) for the dtype of array ``x``, as compile-time constants inside jitted code."""
    return tile_shape(x.dtype)


@overload(tile, inline="always")
def _tile_ov(x):
    mr, nr = TILE[_dtype_name(x.dtype)]
    return lambda x: (mr, nr)


def _ukernel_typing(arrays):
    """(MR, NR) when ``arrays`` (A, B, C) are 1-D arrays of one float dtype, or A and B bfloat16
    pair slivers (uint32) and C float32 where the target has AVX-512 BF16; else None (no match)."""
    if not all(isinstance(t, types.Array) and t.ndim == 1 for t in arrays):
        return None
    a, b, c = (t.dtype for t in arrays)
    if HAS_BF16_DOT and a == b == types.uint32 and c == types.float32:
        return TILE["uint32"]
    if not (a == b == c and a in (types.float32, types.float64)):
        return None
    return TILE[_dtype_name(a)]


@intrinsic
def ukernel(typingctx, kc, ap, aoff, bp, boff, cp, coff, ldc, accumulate):
    """C[coff + i*ldc + j] (+)= sum_p ap[aoff + p*MR + i] * bp[boff + p*NR + j], i < MR, j < NR.

    ``ap``, ``bp``, ``cp`` are 1-D contiguous arrays of one float dtype; ``accumulate`` != 0 adds
    to C, else overwrites it. ``kc`` may be 0 (writes zeros or leaves C unchanged). With uint32
    ``ap`` and ``bp`` (bfloat16 pairs, AVX-512 BF16 only) and float32 ``cp``, each product is the
    sum of a pair's two products and ``kc`` counts pairs.
    """
    tile_mn = _ukernel_typing((ap, bp, cp))
    if tile_mn is None:
        return None
    sig = types.void(kc, ap, aoff, bp, boff, cp, coff, ldc, accumulate)

    def codegen(context, builder, sig, args):
        kc_v, ap_v, aoff_v, bp_v, boff_v, cp_v, coff_v, ldc_v, acc_v = args
        # packed slivers: A's rows 1 apart and columns MR apart, B's rows NR apart (constants)
        _ukernel_body(context, builder, sig, tile_mn, kc_v, True, ap_v, aoff_v, None, None,
                      bp_v, boff_v, None, cp_v, coff_v, ldc_v, acc_v, (0, 2, 4, 6, 7, 8))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def ukernel_strided(typingctx, kc, ap, aoff, a_rs, a_cs, bp, boff, b_rs, cp, coff, ldc,
                    accumulate):
    """C[coff + i*ldc + j] (+)= sum_p ap[aoff + i*a_rs + p*a_cs] * bp[boff + p*b_rs + j].

    The micro-kernel reading A and B where they are (any element strides of A; B's rows must
    hold NR consecutive elements from ``boff + p*b_rs``): the unpacked small-matrix path.
    """
    tile_mn = _ukernel_typing((ap, bp, cp))
    if tile_mn is None:
        return None
    sig = types.void(kc, ap, aoff, a_rs, a_cs, bp, boff, b_rs, cp, coff, ldc, accumulate)

    def codegen(context, builder, sig, args):
        kc_v, ap_v, aoff_v, a_rs_v, a_cs_v, bp_v, boff_v, b_rs_v, cp_v, coff_v, ldc_v, acc_v = args
        _ukernel_body(context, builder, sig, tile_mn, kc_v, False, ap_v, aoff_v, a_rs_v, a_cs_v,
                      bp_v, boff_v, b_rs_v, cp_v, coff_v, ldc_v, acc_v,
                      (0, 2, 3, 4, 6, 7, 9, 10, 11))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def ukernel_rows(typingctx, kc, ap, aoff, roffs, a_cs, bp, boff, cp, coff, ldc, accumulate):
    """C[coff + i*ldc + j] (+)= sum_p ap[aoff + roffs[i] + p*a_cs] * bp[boff + p*NR + j].

    A's MR rows lie anywhere (``roffs``, int64: MR offsets, read once before the K loop), its
    columns ``a_cs`` apart; B is a packed sliver. A conv's output pixels as A's rows, read in
    place from a zero-padded copy of the input (row i: that pixel's first tap; columns: the
    input's channels, a plane apart), against the weight packed as output-channel slivers
    (``_rows``): nothing of the input is packed or copied per tap.
    """
    tile_mn = _ukernel_typing((ap, bp, cp))
    if tile_mn is None or not (isinstance(roffs, types.Array) and roffs.ndim == 1
                               and roffs.dtype == types.int64):
        return None
    sig = types.void(kc, ap, aoff, roffs, a_cs, bp, boff, cp, coff, ldc, accumulate)

    def codegen(context, builder, sig, args):
        kc_v, ap_v, aoff_v, roffs_v, acs_v, bp_v, boff_v, cp_v, coff_v, ldc_v, acc_v = args
        kc_v, aoff_v, acs_v, boff_v, coff_v, ldc_v, acc_v = (
            context.cast(builder, v, sig.args[i], types.intp) for v, i in
            zip((kc_v, aoff_v, acs_v, boff_v, coff_v, ldc_v, acc_v), (0, 2, 4, 6, 8, 9, 10)))
        mr, nr = tile_mn
        vty, nvec, esize, cst, lty, fma, A, B, C = _frame(
            context, builder, nr, (sig.args[1], ap_v, aoff_v), (sig.args[5], bp_v, boff_v),
            (sig.args[7], cp_v, coff_v))
        rows = context.make_array(sig.args[3])(context, builder, roffs_v).data
        a_rows = [builder.load(builder.gep(rows, [cst(i)])) for i in range(mr)]
        finals = _k_loop(builder, kc_v, mr * nvec, vty, cst, lambda p, accs: _k_step(
            builder, builder.gep(A, [builder.mul(p, acs_v)]), a_rows,
            builder.gep(B, [builder.mul(p, cst(nr))]), accs, fma, lty, esize, cst))
        _store_tile(builder, C, ldc_v, acc_v, finals, mr, nvec, vty.count, vty.as_pointer(),
                    esize, cst)
        return context.get_dummy_value()

    return sig, codegen


def _ukernel_body(context, builder, sig, tile_mn, kc_v, packed, ap_v, aoff_v, a_rs_v, a_cs_v,
                  bp_v, boff_v, b_rs_v, cp_v, coff_v, ldc_v, acc_v, int_idx):
    """The micro-kernel's LLVM IR: MR x NR accumulators as SSA vectors over the K loop.

    ``packed``: A and B are packed slivers with constant strides; else A element
    (i, p) is at ``i*a_rs + p*a_cs`` and B row p at ``p*b_rs`` (runtime strides).
    ``int_idx``: the positions in ``sig.args`` of the integer arguments, in the order they are
    cast to intp (kc, aoff, [a_rs, a_cs,] boff, [b_rs,] coff, ldc, accumulate).
    """
    mr, nr = tile_mn
    ints = [kc_v, aoff_v] + ([] if packed else [a_rs_v, a_cs_v]) + [boff_v] \
        + ([] if packed else [b_rs_v]) + [coff_v, ldc_v, acc_v]
    ints = [context.cast(builder, v, sig.args[i], types.intp) for v, i in zip(ints, int_idx)]
    if not packed:
        kc_v, aoff_v, a_rs_v, a_cs_v, boff_v, b_rs_v, coff_v, ldc_v, acc_v = ints
    else:
        kc_v, aoff_v, boff_v, coff_v, ldc_v, acc_v = ints
    a_ty = sig.args[1]
    b_ty = sig.args[3] if packed else sig.args[5]
    c_ty = sig.args[5] if packed else sig.args[8]
    vty, nvec, esize, cst, lty, fma, A, B, C = _frame(
        context, builder, nr, (a_ty, ap_v, aoff_v), (b_ty, bp_v, boff_v), (c_ty, cp_v, coff_v))
    if not packed:  # row offsets of A: loop invariants, hoisted out of the K loop
        a_rows = [builder.mul(a_rs_v, cst(i)) for i in range(mr)]
    else:
        a_rows = [cst(i) for i in range(mr)]
    a_step = cst(mr) if packed else a_cs_v
    b_step = cst(nr) if packed else b_rs_v
    finals = _k_loop(builder, kc_v, mr * nvec, vty, cst, lambda p, accs: _k_step(
        builder, builder.gep(A, [builder.mul(p, a_step)]), a_rows,
        builder.gep(B, [builder.mul(p, b_step)]), accs, fma, lty, esize, cst))
    _store_tile(builder, C, ldc_v, acc_v, finals, mr, nvec, vty.count, vty.as_pointer(), esize,
                cst)


def _frame(context, builder, nr, a, b, c):
    """What every micro-kernel body starts from, given (array type, array, element offset) of A,
    B and C: the accumulators' vector type (C's element, the target's width), vectors per row
    of the tile, C's element size, an intp constant maker, the type A and B are loaded as and the
    multiply-add (float FMA; VDPBF16PS on i32 lanes for bfloat16 pairs), and the three base
    pointers."""
    intp = context.get_value_type(types.intp)
    elt = context.get_value_type(c[0].dtype)
    esize = context.get_abi_sizeof(elt)
    w = min(_VEC_BITS // (8 * esize), nr)  # narrower than a register: a narrow tile's vectors
    vty = ir.VectorType(elt, w)
    if a[0].dtype == types.uint32:  # bfloat16 pairs: loaded as i32 lanes, multiplied in pairs
        lty, fma = ir.VectorType(ir.IntType(32), w), _dpbf16(builder, w)
    else:
        lty, fma = vty, _fma(builder, vty, w, esize)
    base = [builder.gep(context.make_array(ty)(context, builder, v).data, [off])
            for ty, v, off in (a, b, c)]
    return (vty, nr // w, esize, lambda v: ir.Constant(intp, v), lty, fma, *base)


def _k_loop(builder, kc_v, nacc, vty, cst, step):
    """Emit ``for p in range(kc): accs = step(p, accs)`` with ``nacc`` vector accumulators as
    SSA values (phis, zero on entry) that stay in registers; their values after the loop."""
    intp = kc_v.type
    zero = ir.Constant(vty, [0.0] * vty.count)
    pre = builder.block
    loop = builder.append_basic_block("uk.loop")
    done = builder.append_basic_block("uk.done")
    builder.cbranch(builder.icmp_signed(">", kc_v, cst(0)), loop, done)

    builder.position_at_end(loop)
    p = builder.phi(intp)
    p.add_incoming(cst(0), pre)
    accs = []
    for _ in range(nacc):
        ph = builder.phi(vty)
        ph.add_incoming(zero, pre)
        accs.append(ph)
    new = step(p, accs)
    pn = builder.add(p, cst(1))
    p.add_incoming(pn, loop)
    for ph, nv in zip(accs, new):
        ph.add_incoming(nv, loop)
    builder.cbranch(builder.icmp_signed("<", pn, kc_v), loop, done)

    builder.position_at_end(done)
    finals = []
    for i in range(nacc):
        ph = builder.phi(vty)
        ph.add_incoming(zero, pre)
        ph.add_incoming(new[i], loop)
        finals.append(ph)
    return finals


def _taps_tile(parts: int, toffs, arrays):
    """(MR, NR / ``parts``) for a taps micro-kernel on ``arrays`` (A, B, C) with tap offsets
    ``toffs``, or None (no match: not int64 offsets, not a micro-kernel's operands). Every
    target's NR divides by 4 (a quarter tile of float64 is 4 lanes with AVX-512, 2 with AVX2:
    an xmm, 1 with SSE), so every narrow tile exists wherever its caller compiles."""
    tile_mn = _ukernel_typing(arrays)
    if tile_mn is None or not (isinstance(toffs, types.Array) and toffs.ndim == 1
                               and toffs.dtype == types.int64):
        return None
    return tile_mn[0], tile_mn[1] // parts


def _taps_intrinsic(parts: int, name: str, doc: str):
    """``ukernel_taps`` on a tile of NR / ``parts`` columns."""

    def taps(typingctx, kc, ntap, toffs, ap, aoff, a_tap, bp, boff, b_rs, cp, coff, ldc,
             accumulate):
        tile_mn = _taps_tile(parts, toffs, (ap, bp, cp))
        if tile_mn is None:
            return None
        sig = types.void(kc, ntap, toffs, ap, aoff, a_tap, bp, boff, b_rs, cp, coff, ldc,
                         accumulate)

        def codegen(context, builder, sig, args):
            kc_v, nt_v, toffs_v, ap_v, aoff_v, atap_v = args[:6]
            _taps_body(context, builder, sig, tile_mn, (kc_v, nt_v, toffs_v),
                       (3, ap_v, aoff_v), None, atap_v, args[6:], 6)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(taps, name, doc)


def _taps_strided_intrinsic(parts: int, name: str, doc: str):
    """``ukernel_taps_strided`` on a tile of NR / ``parts`` columns."""

    def taps_strided(typingctx, kc, ntap, toffs, ap, aoff, a_rs, a_cs, a_tap, bp, boff, b_rs,
                     cp, coff, ldc, accumulate):
        tile_mn = _taps_tile(parts, toffs, (ap, bp, cp))
        if tile_mn is None:
            return None
        sig = types.void(kc, ntap, toffs, ap, aoff, a_rs, a_cs, a_tap, bp, boff, b_rs, cp,
                         coff, ldc, accumulate)

        def codegen(context, builder, sig, args):
            kc_v, nt_v, toffs_v, ap_v, aoff_v, ars_v, acs_v, atap_v = args[:8]
            _taps_body(context, builder, sig, tile_mn, (kc_v, nt_v, toffs_v),
                       (3, ap_v, aoff_v), (ars_v, acs_v, sig.args[5], sig.args[6]), atap_v,
                       args[8:], 8)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(taps_strided, name, doc)


def _named_intrinsic(fn, name: str, doc: str):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return intrinsic(fn)


_TAPS_DOC = """C[coff + i*ldc + j] (+)= sum_t sum_p ap[aoff + t*a_tap + p*MR + i]
    * bp[boff + toffs[t] + p*b_rs + j], i < MR, j < NR, t < ntap.

    The micro-kernel over ``ntap`` GEMMs at once, the accumulators staying in registers from one
    to the next: A is a packed sliver per tap (``a_tap`` apart), B is read in place (rows
    ``b_rs`` apart holding NR consecutive elements) at a shift ``toffs[t]`` per tap. The shifted
    GEMM's convolution taps: one C tile load and store per call instead of one per tap. As in
    ``ukernel``, uint32 A and B are bfloat16 pairs (VDPBF16PS) into float32 C, ``kc`` pairs deep.
    """
_TAPS_STRIDED_DOC = """``ukernel_taps`` with A read where it lies: element (i, p) of tap t at
    ``ap[aoff + i*a_rs + p*a_cs + t*a_tap]`` (a conv weight (K, C, R, S) as given: a_rs = C*R*S,
    a_cs = R*S, a_tap = 1), so that nothing is packed where each weight sliver meets only a few
    column slivers (batch 1 on small planes)."""
_NARROW_DOC = " On NR / {} columns (j < NR / {}): a grid's last columns."
ukernel_taps = _taps_intrinsic(1, "ukernel_taps", _TAPS_DOC)
ukernel_taps_strided = _taps_strided_intrinsic(1, "ukernel_taps_strided", _TAPS_STRIDED_DOC)
# Narrow tiles (NR / 2 and NR / 4 columns, the same MR rows) for a grid's last columns: a 14 px
# plane's 196 columns are six 32-column slivers and 4 columns more, which a full tile computes
# as 32 (conv2d.SHIFT_NARROW_TAIL).
ukernel_taps_half = _taps_intrinsic(2, "ukernel_taps_half", "``ukernel_taps``"
                                    + _NARROW_DOC.format(2, 2))
ukernel_taps_quarter = _taps_intrinsic(4, "ukernel_taps_quarter", "``ukernel_taps``"
                                       + _NARROW_DOC.format(4, 4))
ukernel_taps_strided_half = _taps_strided_intrinsic(
    2, "ukernel_taps_strided_half", "``ukernel_taps_strided``" + _NARROW_DOC.format(2, 2))
ukernel_taps_strided_quarter = _taps_strided_intrinsic(
    4, "ukernel_taps_strided_quarter", "``ukernel_taps_strided``" + _NARROW_DOC.format(4, 4))


def _taps_body(context, builder, sig, tile_mn, loop, a, a_strides, atap_v, rest, ri):
    """The LLVM IR of ``ukernel_taps`` (``a_strides`` None: A packed) and of
    ``ukernel_taps_strided`` (``a_strides``: the values and types of a_rs and a_cs).
    ``loop``: kc, ntap, toffs; ``a``: (position of A in sig.args, A, aoff); ``rest``: bp, boff,
    b_rs, cp, coff, ldc, accumulate, from position ``ri`` of sig.args; a_tap is at ri - 1."""
    kc_v, nt_v, toffs_v = loop
    ai, ap_v, aoff_v = a
    bp_v, boff_v, brs_v, cp_v, coff_v, ldc_v, acc_v = rest

    def cast(v, i):
        return context.cast(builder, v, sig.args[i], types.intp)

    kc_v, nt_v, aoff_v = cast(kc_v, 0), cast(nt_v, 1), cast(aoff_v, ai + 1)
    atap_v = cast(atap_v, ri - 1)
    boff_v, brs_v, coff_v, ldc_v, acc_v = (cast(v, ri + i) for v, i in
                                           zip((boff_v, brs_v, coff_v, ldc_v, acc_v),
                                               (1, 2, 4, 5, 6)))
    mr, nr = tile_mn
    intp = context.get_value_type(types.intp)
    vty, nvec, esize, cst, lty, fma, A, B, C = _frame(
        context, builder, nr, (sig.args[ai], ap_v, aoff_v), (sig.args[ri], bp_v, boff_v),
        (sig.args[ri + 3], cp_v, coff_v))
    if a_strides is None:
        a_rows, a_step = [cst(i) for i in range(mr)], cst(mr)
    else:  # row offsets: loop invariants, hoisted out of both loops
        ars_v, acs_v, ars_t, acs_t = a_strides
        ars_v = context.cast(builder, ars_v, ars_t, types.intp)
        a_step = context.cast(builder, acs_v, acs_t, types.intp)
        a_rows = [builder.mul(ars_v, cst(i)) for i in range(mr)]
    w = vty.count
    vptr = vty.as_pointer()
    T = context.make_array(sig.args[2])(context, builder, toffs_v).data
    zero = ir.Constant(vty, [0.0] * w)

    pre = builder.block
    outer = builder.append_basic_block("ukt.outer")
    inner = builder.append_basic_block("ukt.inner")
    latch = builder.append_basic_block("ukt.latch")
    done = builder.append_basic_block("ukt.done")
    go = builder.and_(builder.icmp_signed(">", kc_v, cst(0)),
                      builder.icmp_signed(">", nt_v, cst(0)))
    builder.cbranch(go, outer, done)

    builder.position_at_end(outer)
    t = builder.phi(intp)
    t.add_incoming(cst(0), pre)
    acc_o = []
    for _ in range(mr * nvec):
        ph = builder.phi(vty)
        ph.add_incoming(zero, pre)
        acc_o.append(ph)
    a_t = builder.gep(A, [builder.mul(t, atap_v)])
    b_t = builder.gep(B, [builder.load(builder.gep(T, [t]))])
    builder.branch(inner)

    builder.position_at_end(inner)
    p = builder.phi(intp)
    p.add_incoming(cst(0), outer)
    acc_i = []
    for i in range(mr * nvec):
        ph = builder.phi(vty)
        ph.add_incoming(acc_o[i], outer)
        acc_i.append(ph)
    new = _k_step(builder, builder.gep(a_t, [builder.mul(p, a_step)]), a_rows,
                  builder.gep(b_t, [builder.mul(p, brs_v)]), acc_i, fma, lty, esize, cst)
    pn = builder.add(p, cst(1))
    p.add_incoming(pn, inner)
    for ph, nv in zip(acc_i, new):
        ph.add_incoming(nv, inner)
    builder.cbranch(builder.icmp_signed("<", pn, kc_v), inner, latch)

    builder.position_at_end(latch)
    tn = builder.add(t, cst(1))
    t.add_incoming(tn, latch)
    for ph, nv in zip(acc_o, new):
        ph.add_incoming(nv, latch)
    builder.cbranch(builder.icmp_signed("<", tn, nt_v), outer, done)

    builder.position_at_end(done)
    finals = []
    for i in range(mr * nvec):
        ph = builder.phi(vty)
        ph.add_incoming(zero, pre)
        ph.add_incoming(new[i], latch)
        finals.append(ph)
    _store_tile(builder, C, ldc_v, acc_v, finals, mr, nvec, w, vptr, esize, cst)


def _k_step(builder, arow, a_rows, brow, accs, fma, vty, esize, cst):
    """One step of K: load B's row (NR / W vectors), broadcast each of A's MR values (at
    ``arow`` + ``a_rows[i]``) and FMA them into the MR * NR / W accumulators; the new values.

    ``vty`` is the type B and the broadcasts load as (the accumulators' type, but for bfloat16
    pairs: i32 lanes, which ``fma``, VDPBF16PS there, reads as two bfloat16 each)."""
    w = vty.count
    nvec = len(accs) // len(a_rows)
    vptr = vty.as_pointer()
    undef = ir.Constant(vty, ir.Undefined)
    splat0 = ir.Constant(ir.VectorType(ir.IntType(32), w), [0] * w)
    bv = [builder.load(builder.bitcast(builder.gep(brow, [cst(j * w)]), vptr), align=esize)
          for j in range(nvec)]
    new = []
    for i, a_off in enumerate(a_rows):
        s = builder.load(builder.gep(arow, [a_off]), align=esize)
        sv = builder.shuffle_vector(
            builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)), undef, splat0)
        for j in range(nvec):
            new.append(fma(sv, bv[j], accs[i * nvec + j]))
    return new


class _BFloat16(ir.Type):
    """LLVM's ``bfloat`` (llvmlite's IR builder has no such type): the operand type of the
    AVX-512 BF16 intrinsics since LLVM 17."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat16)

    def __hash__(self):
        return hash("bfloat")


def _dpbf16(builder, w: int = 16):
    """acc + a[0::2] * b[0::2] + a[1::2] * b[1::2] on ``w`` float32 lanes (16, 8 or 4) from
    2 * w bfloat16 pairs given as <w x i32> (VDPBF16PS: products exact, sums in float32, round
    to nearest even, denormal inputs and outputs flushed to zero)."""
    f16 = ir.VectorType(ir.FloatType(), w)
    b32 = ir.VectorType(_BFloat16(), 2 * w)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f16, [f16, b32, b32]),
                                        f"llvm.x86.avx512bf16.dpbf16ps.{32 * w}")
    return lambda a, b, acc: builder.call(fn, [acc, builder.bitcast(a, b32),
                                              builder.bitcast(b, b32)])


def _fma(builder, vty, w, esize):
    """x * y + z on vectors: llvm.fma where the target has FMA, else a multiply and an add
    (there llvm.fma would become a libm call per lane)."""
    if not _HAS_FMA:
        return lambda x, y, z: builder.fadd(builder.fmul(x, y), z)
    fma_fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{w}f{esize * 8}")
    return lambda x, y, z: builder.call(fma_fn, [x, y, z])


def _store_tile(builder, C, ldc_v, acc_v, finals, mr, nvec, w, vptr, esize, cst):
    """Store (accumulate != 0: add) the MR x NR accumulators to C (rows ldc apart)."""
    doacc = builder.icmp_signed("!=", acc_v, cst(0))
    with builder.if_else(doacc) as (then, otherwise):
        for add, blk in ((True, then), (False, otherwise)):
            with blk:
                for i in range(mr):
                    crow = builder.gep(C, [builder.mul(ldc_v, cst(i))])
                    for j in range(nvec):
                        ptr = builder.bitcast(builder.gep(crow, [cst(j * w)]), vptr)
                        v = finals[i * nvec + j]
                        if add:
                            v = builder.fadd(builder.load(ptr, align=esize), v)
                        builder.store(v, ptr, align=esize)


# ------------------------------------------------------------------------------------ row copies

PAD_ROW_LANES = 16  # words per ``pad_row`` call, and of each phase per ``deinterleave2`` call
DEINTERLEAVE_LANES = 2 * PAD_ROW_LANES  # input words per ``deinterleave2`` call


def _row_copy_intrinsic(phases: int, name: str, doc: str, pairs: bool = False):
    """An intrinsic ``fn(src, so, lo, hi, dst, d0, d1, n)`` that loads PAD_ROW_LANES * ``phases``
    words from ``src[so:]`` (lanes outside [lo, hi) as zeros, never touched) and stores lane
    ``phases * i + b`` to ``dst[db + i]`` (b < phases: d0, d1) for i < min(n, PAD_ROW_LANES).

    ``pairs``: ``fn(src, so, hc, two, lo, hi, dst, d0, d1, n)`` on bfloat16 bits (uint16
    ``src``, uint32 ``dst``), whose word is the pair of ``src[so + l]`` (lower half) and
    ``src[so + hc + l]`` (upper half: the next channel; zero, unread, where ``two`` is false:
    the odd last channel of a group), both loads masked alike."""

    def row_copy(typingctx, src, so, lo, hi, dst, d0, d1, n):
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
                and src.ndim == dst.ndim == 1 and src.dtype == dst.dtype
                and src.dtype in (types.float32, types.float64, types.uint32)):
            return None
        sig = types.void(src, so, lo, hi, dst, d0, d1, n)

        def codegen(context, builder, sig, args):
            src_v, so_v, lo_v, hi_v, dst_v, d0_v, d1_v, n_v = args
            sptr = builder.gep(context.make_array(sig.args[0])(context, builder, src_v).data,
                               [context.cast(builder, so_v, sig.args[1], types.intp)])
            _row_copy_body(context, builder, sig, phases, args[2:], (2, 3, 4, 5, 6, 7),
                           lambda lanes, mask: _masked_load(context, builder, sptr, lanes,
                                                            mask))
            return context.get_dummy_value()

        return sig, codegen

    def pair_copy(typingctx, src, so, hc, two, lo, hi, dst, d0, d1, n):
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
                and src.ndim == dst.ndim == 1 and src.dtype == types.uint16
                and dst.dtype == types.uint32 and isinstance(two, types.Boolean)):
            return None
        sig = types.void(src, so, hc, two, lo, hi, dst, d0, d1, n)

        def codegen(context, builder, sig, args):
            src_v, so_v, hc_v, two_v = args[:4]
            base = context.make_array(sig.args[0])(context, builder, src_v).data
            so_v = context.cast(builder, so_v, sig.args[1], types.intp)
            hc_v = context.cast(builder, hc_v, sig.args[2], types.intp)
            lo_ptr = builder.gep(base, [so_v])
            hi_ptr = builder.gep(base, [builder.add(so_v, hc_v)])
            partner = context.cast(builder, two_v, sig.args[3], types.boolean)

            def load(lanes, mask):
                i32 = ir.VectorType(ir.IntType(32), lanes)
                low = builder.zext(_masked_load(context, builder, lo_ptr, lanes, mask), i32)
                both = builder.and_(mask, builder.shuffle_vector(  # (no partner: no load)
                    builder.insert_element(ir.Constant(mask.type, None), partner,
                                           ir.Constant(ir.IntType(32), 0)),
                    ir.Constant(mask.type, None),
                    ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)))
                high = builder.zext(_masked_load(context, builder, hi_ptr, lanes, both), i32)
                return builder.or_(low, builder.shl(high, ir.Constant(i32, [16] * lanes)))

            _row_copy_body(context, builder, sig, phases, args[4:], (4, 5, 6, 7, 8, 9), load)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(pair_copy if pairs else row_copy, name, doc)


def _masked_load(context, builder, ptr, lanes: int, mask):
    """<lanes x elt> from ``ptr`` (a pointer to elt), lanes off in ``mask`` zero and unread."""
    elt = ptr.type.pointee
    esize = context.get_abi_sizeof(elt)
    vty = ir.VectorType(elt, lanes)
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty.as_pointer(), i32, mask.type, vty]),
        f"llvm.masked.load.v{lanes}{_vec_suffix(elt)}.{_ptr_suffix(lanes, elt)}")
    zero = ir.Constant(vty, [0] * lanes if isinstance(elt, ir.IntType) else [0.0] * lanes)
    return builder.call(fn, [builder.bitcast(ptr, vty.as_pointer()), ir.Constant(i32, esize),
                             mask, zero])


def _row_copy_body(context, builder, sig, phases: int, args, argi, load):
    """The stores of ``_row_copy_intrinsic``: ``args`` are (lo, hi, dst, d0, d1, n) (their
    types ``sig.args[i]`` for i in ``argi``), ``load(lanes, mask)`` the row's words."""
    half = PAD_ROW_LANES
    lanes = half * phases
    lo_v, hi_v, dst_v, d0_v, d1_v, n_v = args
    lo_v, hi_v, d0_v, d1_v, n_v = (context.cast(builder, v, sig.args[i], types.intp) for v, i
                                   in zip((lo_v, hi_v, d0_v, d1_v, n_v),
                                          (argi[0], argi[1], argi[3], argi[4], argi[5])))
    dbase = context.make_array(sig.args[argi[2]])(context, builder, dst_v).data
    elt = dbase.type.pointee
    esize = context.get_abi_sizeof(elt)
    intp = context.get_value_type(types.intp)
    i1, i32 = ir.IntType(1), ir.IntType(32)
    narrow = ir.VectorType(elt, half)

    def lane_mask(count, lo, hi):
        vty = ir.VectorType(intp, count)
        idx = ir.Constant(vty, list(range(count)))
        zeros = ir.Constant(ir.VectorType(i32, count), [0] * count)
        lo_s, hi_s = (builder.shuffle_vector(
            builder.insert_element(ir.Constant(vty, None), v, ir.Constant(i32, 0)),
            ir.Constant(vty, None), zeros) for v in (lo, hi))
        return builder.and_(builder.icmp_signed(">=", idx, lo_s),
                            builder.icmp_signed("<", idx, hi_s))

    row = load(lanes, lane_mask(lanes, lo_v, hi_v))
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [narrow, narrow.as_pointer(), i32,
                                                        ir.VectorType(i1, half)]),
        f"llvm.masked.store.v{half}{_vec_suffix(elt)}.{_ptr_suffix(half, elt)}")
    keep = lane_mask(half, ir.Constant(intp, 0), n_v)
    for b, d_v in zip(range(phases), (d0_v, d1_v)):
        part = row if phases == 1 else builder.shuffle_vector(row, row, ir.Constant(
            ir.VectorType(i32, half), list(range(b, lanes, phases))))
        builder.call(store, [part, builder.bitcast(builder.gep(dbase, [d_v]),
                                                   narrow.as_pointer()),
                             ir.Constant(i32, esize), keep])


deinterleave2 = _row_copy_intrinsic(2, "deinterleave2", """dst[d0 + i] = src[so + 2i],
    dst[d1 + i] = src[so + 2i + 1] for i < min(n, 16), reading only the lanes l = 2i, 2i + 1 in
    [lo, hi) and taking 0 for the others.

    A stride-2 conv's padded copy split into its two column phases (``_conv._pair_row``): one
    masked load of 32 words (the padding and the row's ends come from the mask, nothing past
    them is touched), two shuffles and two masked stores per 16 words of each phase, where the
    element loops ran scalar on rows this short (a 28 px row is 14 words per phase).""")
pad_row = _row_copy_intrinsic(1, "pad_row", """dst[d0 + i] = src[so + i] for lo <= i < hi,
    0 for the other i < min(n, 16) (``d1`` unused): a row of a stride-1 padded copy
    (``_conv._pad_row``), 16 words per masked load and store, where the element loops ran
    scalar on rows of 7-16 words.""")


deinterleave2_pairs = _row_copy_intrinsic(2, "deinterleave2_pairs", """``deinterleave2`` on
    bfloat16 channel pairs: dst[d0 + i] = pair(src[so + 2i], src[so + hc + 2i]), dst[d1 + i] =
    pair(src[so + 2i + 1], src[so + hc + 2i + 1]) for i < min(n, 16), the lower channel in the
    lower half, reading only lanes in [lo, hi) of either channel (``two`` false: a zero upper
    half).""",
    pairs=True)
pad_row_pairs = _row_copy_intrinsic(1, "pad_row_pairs", """``pad_row`` on bfloat16 channel
    pairs: dst[d0 + i] = pair(src[so + i], src[so + hc + i]) for lo <= i < hi, 0 for the other
    i < min(n, 16) (``two`` false: a zero upper half): the stride-1 padded copy of the bfloat16 shifted
    GEMM (``_conv._pad_row``), where the element loop ran scalar, 3 ns a word on rows of 7-9
    (512 channels at 7 px, Zen 4).""", pairs=True)


def _vec_suffix(elt) -> str:
    """LLVM's overload suffix of a vector element type ("f32", "f64", "i32")."""
    if isinstance(elt, ir.IntType):
        return f"i{elt.width}"
    return "f32" if isinstance(elt, ir.FloatType) else "f64"


def _ptr_suffix(lanes: int, elt) -> str:
    """LLVM's overload suffix of a pointer to <lanes x elt>: "p0" (opaque pointers, LLVM 15
    on), "p0v16f32" before."""
    return "p0" if _llvm_version() >= (15,) else f"p0v{lanes}{_vec_suffix(elt)}"


# ----------------------------------------------------------------------------------- strided views

@intrinsic
def flat_view(typingctx, arr, lo, length):
    """1-D contiguous view of ``length`` elements starting ``lo`` elements from ``arr``'s data.

    Unchecked: the caller keeps every index inside the memory ``arr`` spans (see ``span``). Lets
    jitted code address any strided array through element strides, one compilation for all layouts.
    """
    if not isinstance(arr, types.Array):
        return None
    rty = types.Array(arr.dtype, 1, "C", readonly=not arr.mutable)
    sig = rty(arr, lo, length)

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        src = context.make_array(aty)(context, builder, args[0])
        lo_v = context.cast(builder, args[1], sig.args[1], types.intp)
        len_v = context.cast(builder, args[2], sig.args[2], types.intp)
        dst = context.make_array(rty)(context, builder)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(aty.dtype)))
        context.populate_array(
            dst, data=builder.gep(src.data, [lo_v]), shape=cgutils.pack_array(builder, [len_v]),
            strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize,
            meminfo=src.meminfo)
        return impl_ret_borrowed(context, builder, rty, dst._getvalue())

    return sig, codegen


@numba.njit(**_JIT)
def span(shape, strides, itemsize):
    """(lo, length): element offset of the lowest address an array touches, and how many it spans.

    ``strides`` in bytes (multiples of ``itemsize``, may be negative or 0). For an empty array
    returns (0, 0).
    """
    lo = 0
    hi = 0
    for d in range(len(shape)):
        if shape[d] == 0:
            return 0, 0
        ext = (shape[d] - 1) * (strides[d] // itemsize)
        if ext < 0:
            lo += ext
        else:
            hi += ext
    return lo, hi - lo + 1


# ----------------------------------------------------------------------------------------- packing

@numba.njit(**_JIT)
def pack_a(src, off, s_m, s_k, mb, kb, dst, doff):
    """Pack the mb x kb region ``src[off + i*s_m + p*s_k]`` into MR-row slivers at ``dst[doff:]``.

    ``src`` is a flat view, strides are in elements (any sign). Rows past ``mb`` are zeroed.
    """
    mr, _ = tile(dst)
    zero = dst.dtype.type(0)
    rows_outer = abs(s_k) <= abs(s_m)  # read along the smaller stride
    for s in range((mb + mr - 1) // mr):
        base = doff + s * mr * kb
        rows = min(mr, mb - s * mr)
        o0 = off + s * mr * s_m
        if rows == mr and s_m != 1:
            # A full sliver K-outer unless its rows are contiguous (the copy below): MR reads
            # (MR constant: unrolled, one stream per row, which the prefetchers follow) and one
            # contiguous MR-value store per K step. For row-major A this ran 0.5-0.7 ns per element
            # against 1.3-1.5 reading along each row (a scatter of 4-byte stores MR*4 bytes
            # apart), 2-vCPU Xeon (bench/probes/gemm_gap_probe.py; docs/performance.md).
            for p in range(kb):
                o = o0 + p * s_k
                d = base + p * mr
                for r in range(mr):
                    dst[_U(d + r)] = src[_U(o + r * s_m)]
        elif rows_outer:
            for r in range(rows):
                o = o0 + r * s_m
                if s_k == 1:
                    for p in range(kb):
                        dst[_U(base + p * mr + r)] = src[_U(o + p)]
                else:
                    for p in range(kb):
                        dst[_U(base + p * mr + r)] = src[_U(o + p * s_k)]
        else:
            for p in range(kb):
                o = o0 + p * s_k
                d = base + p * mr
                if s_m == 1:
                    for r in range(rows):
                        dst[_U(d + r)] = src[_U(o + r)]
                else:
                    for r in range(rows):
                        dst[_U(d + r)] = src[_U(o + r * s_m)]
        if rows < mr:
            for p in range(kb):
                for r in range(rows, mr):
                    dst[_U(base + p * mr + r)] = zero


@numba.njit(**_JIT)
def pack_b(src, off, s_k, s_n, kb, nb, dst, doff, s0, s1):
    """Pack NR-column slivers ``s0 .. s1`` of the kb x nb region ``src[off + p*s_k + j*s_n]``.

    Sliver ``s`` goes to ``dst[doff + s*NR*kb:]``; columns past ``nb`` are zeroed.
    """
    _, nr = tile(dst)
    zero = dst.dtype.type(0)
    if abs(s_k) >= abs(s_n):
        # B's rows are its runs: each row read once, left to right, its NR-wide pieces dealt to
        # the slivers. Walking sliver by sliver instead read NR elements per row at a row's
        # stride, which the prefetchers follow poorly: row-major float32 B 0.35-1.21 -> 0.33-0.52
        # ns per element over four runs, the product 1.00-1.08x in three (0.78-1.38x in a noisy
        # fourth), on the Xeon of docs/performance.md (bench/probes/pack_b_probe.py)
        for p in range(kb):
            o = off + p * s_k
            for s in range(s0, s1):
                d = doff + s * nr * kb + p * nr
                cols = min(nr, nb - s * nr)
                o_s = o + s * nr * s_n
                if cols == nr and s_n == 1:
                    for c in range(nr):
                        dst[_U(d + c)] = src[_U(o_s + c)]
                else:
                    for c in range(cols):
                        dst[_U(d + c)] = src[_U(o_s + c * s_n)]
                    for c in range(cols, nr):
                        dst[_U(d + c)] = zero
        return
    for s in range(s0, s1):  # B's columns are its runs: one sliver at a time, column by column
        base = doff + s * nr * kb
        cols = min(nr, nb - s * nr)
        o0 = off + s * nr * s_n
        for c in range(cols):
            o = o0 + c * s_n
            if s_k == 1:
                for p in range(kb):
                    dst[_U(base + p * nr + c)] = src[_U(o + p)]
            else:
                for p in range(kb):
                    dst[_U(base + p * nr + c)] = src[_U(o + p * s_k)]
        if cols < nr:
            for p in range(kb):
                for c in range(cols, nr):
                    dst[_U(base + p * nr + c)] = zero


# ---------------------------------------------------------------------------------------- epilogue

# float32 activations use code LLVM vectorises instead of libm calls (~10 ns each): GELU through
# erfc as a Chebyshev fit times expf (`gelu_f32`); SiLU and tanh-GELU are x / (1 + exp(-z)) with
# Cephes' expf, as accurate as torch's SiLU (a few ulp where |y| > 1e-3).
_F = np.float32
_F0, _F05, _F1 = _F(0.0), _F(0.5), _F(1.0)
_SQRT1_2 = _F(0.7071067811865476)
_M2SQRT2_PI = _F(-1.5957691216057308)  # -2 sqrt(2 / pi)
_GELU_C = _F(0.044715)
# exp_f32: Cephes' expf (Cody-Waite reduction by ln 2, degree-6 polynomial, ~1 ulp), scaled by
# 2^k in two normal halves, so the whole float32 range comes out: up to ln(FLT_MAX), and down
# through the subnormals to ln(2^-150), below which it is 0. (Clamped at 88 before, SiLU of
# x in (-88.72, -88) was -0.0 where torch gives -3e-37.)
_EXP_HI, _EXP_LO = _F(88.72283), _F(-103.97)
# erfc_f32: Numerical Recipes' erfcc (a Chebyshev fit, relative error below 1.2e-7 for z >= 0)
_ERFC = tuple(_F(v) for v in (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
                              -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223))
_F2 = _F(2.0)
_LOG2E = _F(1.4426950408889634)
_LN2_HI, _LN2_LO = _F(0.693359375), _F(-2.12194440e-4)
_EP = tuple(_F(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                            1.6666665459e-1, 5.0000001201e-1))
_ROUND = _F(12582912.0)  # 1.5 * 2^23: (t + _ROUND) - _ROUND rounds t to the nearest integer
_INF = _F(np.inf)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return sig, codegen


@numba.njit(inline="always", **_JIT)
def cdiv(a, b):
    return (a + b - 1) // b


@numba.njit(inline="always", **_JIT)
def exp_f32(x):
    """exp of a float32, vectorisable (~1 ulp, subnormal results too): +inf past ln(FLT_MAX),
    0 below ln(2^-150), NaN kept."""
    y = x if x < _EXP_HI else _EXP_HI  # NaN -> _EXP_HI (no NaN reaches the int conversion)
    y = y if y > _EXP_LO else _EXP_LO
    kf = (y * _LOG2E + _ROUND) - _ROUND
    r = y - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p = r * _EP[0] + _EP[1]
    p = r * p + _EP[2]
    p = r * p + _EP[3]
    p = r * p + _EP[4]
    p = r * p + _EP[5]
    e = (p * (r * r) + r) + _F1
    k = numba.int32(kf)
    k1 = k >> numba.int32(1)  # 2^k as 2^k1 * 2^(k - k1): both normal for k in [-150, 128]
    e = e * _f32_from_bits((k1 + numba.int32(127)) << numba.int32(23))
    e = e * _f32_from_bits((k - k1 + numba.int32(127)) << numba.int32(23))
    return _INF if x > _EXP_HI else (_F0 if x < _EXP_LO else (e if x == x else x))


@numba.njit(inline="always", **_JIT)
def gelu_f32(x):
    """Exact GELU of a float32, 0.5 x erfc(-x / sqrt 2), vectorisable: erfc of |x| / sqrt 2 by
    Numerical Recipes' fit (relative error 1.2e-7 in exact arithmetic), and erfc(-z) = 2 -
    erfc(z). In float32 the rounding of z before it is squared dominates for x < 0: relative
    error up to 2e-6 on [-5, 0), 7e-6 on [-10, -5), 1.5e-5 near -13 (30, 115, 251 ulp; a review
    measured it against scipy). Before, 0.5 x (1 + erf(x / sqrt 2)) cancelled: 97 ulp off at
    x = -2.5, 3.7x the value at -5.45 (torch's own: 0.18x)."""
    z = (x if x > _F0 else -x) * _SQRT1_2
    t = _F1 / (_F1 + _F05 * z)
    p = t * _ERFC[0] + _ERFC[1]
    for i in range(2, 10):
        p = t * p + _ERFC[i]
    e = t * exp_f32(-z * z + p)
    return _F05 * x * (e if x < _F0 else _F2 - e)


def act_row(c, o, cols, act):
    """In place: c[o + j] = act(c[o + j]) for j < cols (act != ACT_NONE). Jitted code only."""
    raise NotImplementedError("act_row is only callable from jitted code")


@overload(act_row, jit_options=_JIT, inline="always")
def _act_row_ov(c, o, cols, act):
    if c.dtype == types.float32:
        def impl(c, o, cols, act):
            if act == ACT_RELU:
                for j in range(cols):
                    v = c[_U(o + j)]
                    c[_U(o + j)] = _F0 if v < _F0 else v
            elif act == ACT_GELU:
                for j in range(cols):
                    v = c[_U(o + j)]
                    c[_U(o + j)] = gelu_f32(v)
            elif act == ACT_GELU_TANH:
                # 0.5 x (1 + tanh(u)) == x * sigmoid(2u) == x / (1 + exp(-2u)), u = sqrt(2/pi) *
                # (x + 0.044715 x^3): no cancellation of 1 + tanh(u) near -1 for negative x.
                for j in range(cols):
                    v = c[_U(o + j)]
                    c[_U(o + j)] = v / (_F1 + exp_f32(_M2SQRT2_PI * v * (_F1 + _GELU_C * v * v)))
            elif act == ACT_SILU:
                # x * sigmoid(x) == x / (1 + exp(-x)) for x >= 0 (torch's formula and its
                # accuracy), x e / (1 + e) with e = exp(x) below: exp(-x) overflowed past
                # -88.72, and SiLU was -0.0 where it is a float32 normal down to -91.8
                for j in range(cols):
                    v = c[_U(o + j)]
                    e = exp_f32(-abs(v))
                    c[_U(o + j)] = (v if v >= _F0 else v * e) / (_F1 + e)
        return impl

    def impl(c, o, cols, act):
        for j in range(cols):
            c[_U(o + j)] = activate(c[_U(o + j)], act)
    return impl


@numba.njit(inline="always", **_JIT)
def activate(x, act):
    """Activation ``act`` (an ACT_* code) of one scalar with libm, in float64."""
    if act == ACT_RELU:
        return 0.0 if x < 0.0 else x * 1.0
    if act == ACT_GELU:
        # 0.5 x (1 + erf(x / sqrt 2)) == 0.5 x erfc(-x / sqrt 2), without the cancellation
        return 0.5 * x * math.erfc(x * -0.7071067811865476)
    if act == ACT_GELU_TANH:
        # 0.5 x (1 + tanh(u)) == x / (1 + exp(-2u)), without the cancellation near tanh = -1
        return x / (1.0 + math.exp(-1.5957691216057308 * (x + 0.044715 * x * x * x)))
    if act == ACT_SILU:  # (x e / (1 + e), e = exp(x), below 0: exp(-x) overflows past -709.78)
        e = math.exp(-abs(x))
        return (x * e if x < 0.0 else x) / (1.0 + e)
    return x * 1.0


@numba.njit(**_JIT)
def epilogue(c, coff, ldc, rows, cols, bias, has_bias, b0, act, bias_rows=False):
    """``c[i, j] = act(c[i, j] + bias[b0 + j])`` on a rows x cols tile of flat C at ``coff``;
    ``bias[b0 + i]`` instead when ``bias_rows`` (conv2d's NCHW GEMM: rows are output channels)."""
    if not has_bias and act == ACT_NONE:
        return
    for i in range(rows):
        o = coff + i * ldc
        if has_bias:
            if bias_rows:
                bv = bias[_U(b0 + i)]
                for j in range(cols):
                    c[_U(o + j)] += bv
            else:
                for j in range(cols):
                    c[_U(o + j)] += bias[_U(b0 + j)]
        if act != ACT_NONE:
            act_row(c, o, cols, act)


# ------------------------------------------------------------------------------------ macro-kernel

@numba.njit(**_JIT)
def macro_kernel(mb, nb, kb, ap, aoff, bp, boff, c, coff, ldc, first, last,
                 ct, ctoff, bias, has_bias, b0, act, bias_rows=False):
    """C[mb x nb at coff] (+)= packed A block (mb x kb) @ packed B panel (kb x nb); epilogue if last.

    ``first``: overwrite C instead of adding. ``ct[ctoff : ctoff + MR*NR]`` is scratch for edge
    tiles. ``b0``: index in ``bias`` of C's first column (of its first row when ``bias_rows``).
    """
    mr, nr = tile(ap)
    acc = 0 if first else 1
    for jr in range(0, nb, nr):
        cols = min(nr, nb - jr)
        bo = boff + jr * kb
        for i0 in range(0, mb, mr):
            rows = min(mr, mb - i0)
            ao = aoff + i0 * kb
            co = coff + i0 * ldc + jr
            if rows == mr and cols == nr:
                ukernel(kb, ap, ao, bp, bo, c, co, ldc, acc)
            else:
                ukernel(kb, ap, ao, bp, bo, ct, ctoff, nr, 0)
                for i in range(rows):
                    if first:
                        for j in range(cols):
                            c[_U(co + i * ldc + j)] = ct[_U(ctoff + i * nr + j)]
                    else:
                        for j in range(cols):
                            c[_U(co + i * ldc + j)] += ct[_U(ctoff + i * nr + j)]
            if last:
                epilogue(c, co, ldc, rows, cols, bias, has_bias, b0 + (i0 if bias_rows else jr),
                         act, bias_rows)
