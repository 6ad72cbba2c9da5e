"""Building blocks of the Numba preprocess kernel: raw pointers, float conversions, the passes.

Images are read through raw typed pointers (an address plus element strides per image), so one
compiled kernel serves a 4-D batch and a ragged list of arrays of any strides alike. The separable
resize of one output row is two passes through small per-thread buffers:

* ``vpass``: the ``K`` source lines of the row's y window, weighted and summed over the span of
  source pixels that the x taps read, into ``tmp`` (interleaved, ``tmp[j * C + c]``);
* ``hpass``: each output column's x taps over ``tmp``, into ``res`` (interleaved,
  ``res[x * C + c]``; three channels in one 4-lane register when C == 3).

``affine_row`` samples the composed affine map of a rotated image for one output row instead.
``store_row`` applies the channel permutation and the normalisation, converts to the output dtype
and writes the row with the output's strides.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernelkit.kernels.numba import _cache
from kernelkit.kernels.numba._half import _float_to_half_bits, f32_bits
from kernelkit.kernels.taps import NEAREST_ROUND

_cache.install()  # cache=True below: in the keyed dir (see _cache.py), never stale
_JIT = dict(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
# Unsigned indices skip Numba's negative-index wraparound (every index cast is >= 0).
_U = numba.uintp
# Sums start from -0.0, the exact additive identity (0.0 + -0.0 would lose the sign of -0.0).
_NEG0 = np.float32(-0.0)

# output dtype codes
OUT_F32, OUT_F16, OUT_BF16, OUT_U8 = 0, 1, 2, 3
OUT_CODES = {"float32": OUT_F32, "float16": OUT_F16, "bfloat16": OUT_BF16, "uint8": OUT_U8}
OUT_DTYPES = {OUT_F32: np.float32, OUT_F16: np.uint16, OUT_BF16: np.uint16, OUT_U8: np.uint8}


def _make_ptr(nbty):
    @intrinsic
    def as_ptr(typingctx, addr):
        sig = types.CPointer(nbty)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(nbty).as_pointer())

        return sig, codegen

    return as_ptr


# llvm.prefetch is overloaded on the pointer type; LLVM >= 15 (opaque pointers) names it "p0"
_PREFETCH = "llvm.prefetch.p0"

u8_ptr = _make_ptr(types.uint8)
u16_ptr = _make_ptr(types.uint16)
f32_ptr = _make_ptr(types.float32)


@intrinsic
def prefetch(typingctx, addr):
    """Prefetch the cache line at byte address ``addr`` for reading (llvm.prefetch, into L1)."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        ptr = builder.inttoptr(args[0], i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def prefetch_lines(addr, a, b, sc, cch, nk, span, isz):
    """Prefetch ``nk`` source lines starting at byte ``addr`` (line stride ``a`` elements), each
    the ``span`` pixels a vertical pass reads (contiguous lines only; others are left alone)."""
    if not (sc == 1 and b == cch):
        return
    nbytes = span * cch * isz
    for k in range(nk):
        o = addr + k * a * isz
        for j in range(0, nbytes + 63, 64):
            prefetch(o + j)


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma.f32): the same result in every loop, vectorised or not."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3),
                                            "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(inline="always", **_JIT)
def f16_bits(x):
    """float32 -> IEEE half bits (round to nearest even; vcvtps2ph where the compile target has
    F16C, integer code where not: `_half._float_to_half_bits`)."""
    return _float_to_half_bits(np.float32(x))


@numba.njit(inline="always", **_JIT)
def bf16_bits(v):
    """float32 -> bfloat16 bits, round to nearest even; NaN -> 0x7FC0 (as torch converts)."""
    if v != v:
        return np.uint16(0x7FC0)
    u = np.uint32(f32_bits(v))
    u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16(u >> np.uint32(16))


@numba.njit(inline="always", **_JIT)
def u8_sat(v):
    """Round to nearest (half to even, as np.rint) and saturate to 0..255; NaN -> 0."""
    if v > 255.0:
        v = np.float32(255.0)
    if not (v >= 0.0):
        v = np.float32(0.0)
    return np.uint8(np.rint(v))


def _sum_taps(builder, nk, zero, tap):
    """IR of sum_{k < nk} tap k in two accumulators (even taps, odd taps; the last odd tap goes to
    the even one), added at the end: the order every horizontal pass sums in. ``tap(k, acc)``
    emits acc += (tap k); ``zero`` is the accumulators' start value."""
    intp = nk.type
    one = ir.Constant(intp, 1)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
    with cgutils.for_range(builder, builder.ashr(nk, one)) as loop:
        k2 = builder.shl(loop.index, one)
        tap(k2, accs[0])
        tap(builder.add(k2, one), accs[1])
    odd = builder.icmp_signed("!=", builder.and_(nk, one), ir.Constant(intp, 0))
    with builder.if_then(odd):
        tap(builder.sub(nk, one), accs[0])
    return builder.fadd(builder.load(accs[0]), builder.load(accs[1]))


@intrinsic
def taps3(typingctx, tmp, o, wx, wo, nk, res, q):
    """res[q : q+4] = sum_{k < nk} wx[wo + k] * tmp[o + 3k : o + 3k + 4]: the three channels of
    one output pixel (and one junk lane, which the next pixel overwrites) in one xmm register.
    ``tmp``, ``wx``, ``res``: 1-D contiguous float32 arrays; two accumulators (even / odd taps)."""
    sig = types.void(tmp, o, wx, wo, nk, res, q)

    def codegen(context, builder, sig, args):
        tmp_v, o_v, wx_v, wo_v, nk_v, res_v, q_v = args
        intp = context.get_value_type(types.intp)
        o_v, wo_v, nk_v, q_v = (context.cast(builder, v, t, types.intp) for v, t in zip(
            (o_v, wo_v, nk_v, q_v), (sig.args[1], sig.args[3], sig.args[4], sig.args[6])))
        vty = ir.VectorType(ir.FloatType(), 4)
        vptr = vty.as_pointer()
        data = lambda i, v: context.make_array(sig.args[i])(context, builder, v).data
        T = builder.gep(data(0, tmp_v), [o_v])
        W = builder.gep(data(2, wx_v), [wo_v])
        R = builder.gep(data(5, res_v), [q_v])
        fma4 = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty] * 3), "llvm.fma.v4f32")
        zero = ir.Constant(vty, [-0.0] * 4)   # the additive identity (keeps -0.0)
        undef = ir.Constant(vty, ir.Undefined)
        splat0 = ir.Constant(ir.VectorType(ir.IntType(32), 4), [0] * 4)
        i32_0 = ir.Constant(ir.IntType(32), 0)
        def tap(k, acc):
            w = builder.load(builder.gep(W, [k]), align=4)
            wv = builder.shuffle_vector(builder.insert_element(undef, w, i32_0), undef, splat0)
            t = builder.gep(T, [builder.mul(k, ir.Constant(intp, 3))])
            tv = builder.load(builder.bitcast(t, vptr), align=4)
            builder.store(builder.call(fma4, [wv, tv, builder.load(acc)]), acc)

        total = _sum_taps(builder, nk_v, zero, tap)
        builder.store(total, builder.bitcast(R, vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def taps3x4(typingctx, tmp, o0, o1, o2, o3, we, wq, wst, nk, res, q):
    """Four output pixels of taps3 at once, in one 16-lane register: lanes 4i .. 4i+3 =
    sum_{k < nk} we[wq + k*wst + 4i] * tmp[o_i + 3k : o_i + 3k + 4] (``we`` holds each pixel's
    weight repeated over 4 lanes). The same FMAs in the same order as taps3 (two accumulators,
    even / odd taps), so every lane equals taps3's. Stores res[q : q+16] (pixel stride 4)."""
    sig = types.void(tmp, o0, o1, o2, o3, we, wq, wst, nk, res, q)

    def codegen(context, builder, sig, args):
        tmp_v, we_v, res_v = args[0], args[5], args[9]
        intp = context.get_value_type(types.intp)
        cast = lambda i: context.cast(builder, args[i], sig.args[i], types.intp)
        offs = [cast(i) for i in (1, 2, 3, 4)]
        wq_v, wst_v, nk_v, q_v = cast(6), cast(7), cast(8), cast(10)
        f32 = ir.FloatType()
        v4, v8, v16 = (ir.VectorType(f32, n) for n in (4, 8, 16))
        data = lambda i, v: context.make_array(sig.args[i])(context, builder, v).data
        T = data(0, tmp_v)
        Ts = [builder.gep(T, [o]) for o in offs]
        W = builder.gep(data(5, we_v), [wq_v])
        R = builder.gep(data(9, res_v), [q_v])
        fma16 = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.fma.v16f32")
        zero = ir.Constant(v16, [-0.0] * 16)   # the additive identity (keeps -0.0)
        c3 = ir.Constant(intp, 3)

        def tap(k, acc):
            w = builder.load(builder.bitcast(builder.gep(W, [builder.mul(k, wst_v)]),
                                             v16.as_pointer()), align=4)
            tk = builder.mul(k, c3)
            parts = [builder.load(builder.bitcast(builder.gep(t, [tk]), v4.as_pointer()), align=4)
                     for t in Ts]
            lo = builder.shuffle_vector(parts[0], parts[1], ir.Constant(
                ir.VectorType(ir.IntType(32), 8), list(range(8))))
            hi = builder.shuffle_vector(parts[2], parts[3], ir.Constant(
                ir.VectorType(ir.IntType(32), 8), list(range(8))))
            tv = builder.shuffle_vector(lo, hi, ir.Constant(
                ir.VectorType(ir.IntType(32), 16), list(range(16))))
            builder.store(builder.call(fma16, [w, tv, builder.load(acc)]), acc)

        total = _sum_taps(builder, nk_v, zero, tap)
        builder.store(total, builder.bitcast(R, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def nt_copy16(typingctx, dst, src, so, nvec):
    """Non-temporal copy of ``nvec`` blocks of 16 float32, src[so + 16i : ...] -> byte address
    ``dst + 64i`` (``dst`` 64-byte aligned): whole cache lines written without being read first."""
    sig = types.void(dst, src, so, nvec)

    def codegen(context, builder, sig, args):
        dst_v, src_v, so_v, nv_v = args
        intp = context.get_value_type(types.intp)
        so_v = context.cast(builder, so_v, sig.args[2], types.intp)
        nv_v = context.cast(builder, nv_v, sig.args[3], types.intp)
        v16 = ir.VectorType(ir.FloatType(), 16)
        S = builder.gep(context.make_array(sig.args[1])(context, builder, src_v).data, [so_v])
        D = builder.inttoptr(dst_v, v16.as_pointer())
        md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, nv_v) as loop:
            i = loop.index
            v = builder.load(builder.bitcast(builder.gep(S, [builder.mul(i, ir.Constant(intp, 16))]),
                                             v16.as_pointer()), align=4)
            st = builder.store(v, builder.gep(D, [i]), align=64)
            st.set_metadata("nontemporal", md)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sfence(typingctx):
    """Order the non-temporal stores before whatever follows (llvm.x86.sse.sfence)."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def deint4(typingctx, res, rowb, out_w, nblk):
    """rowb[out_w*(1+c) + x] = res[4x + c], c < 3, for x < 16*nblk: 16 pixels per step with
    constant shuffles (no gathers)."""
    sig = types.void(res, rowb, out_w, nblk)

    def codegen(context, builder, sig, args):
        res_v, rb_v, ow_v, nb_v = args
        intp = context.get_value_type(types.intp)
        ow_v = context.cast(builder, ow_v, sig.args[2], types.intp)
        nb_v = context.cast(builder, nb_v, sig.args[3], types.intp)
        f32 = ir.FloatType()
        v16, v32, v64 = (ir.VectorType(f32, n) for n in (16, 32, 64))
        idx = lambda lst: ir.Constant(ir.VectorType(ir.IntType(32), len(lst)), lst)
        S = context.make_array(sig.args[0])(context, builder, res_v).data
        D = context.make_array(sig.args[1])(context, builder, rb_v).data
        with cgutils.for_range(builder, nb_v) as loop:
            i = loop.index
            base = builder.gep(S, [builder.mul(i, ir.Constant(intp, 64))])
            vs = [builder.load(builder.bitcast(builder.gep(base, [ir.Constant(intp, 16 * j)]),
                                               v16.as_pointer()), align=4) for j in range(4)]
            a = builder.shuffle_vector(vs[0], vs[1], idx(list(range(32))))
            b = builder.shuffle_vector(vs[2], vs[3], idx(list(range(32))))
            for c in range(3):
                # lanes c, c+4, ... of the 64 floats: 8 from each half
                lo = builder.shuffle_vector(a, a, idx([c + 4 * t for t in range(8)]))
                hi = builder.shuffle_vector(b, b, idx([c + 4 * t for t in range(8)]))
                v = builder.shuffle_vector(lo, hi, idx(list(range(16))))
                off = builder.add(builder.mul(ow_v, ir.Constant(intp, 1 + c)),
                                  builder.mul(i, ir.Constant(intp, 16)))
                builder.store(v, builder.bitcast(builder.gep(D, [off]), v16.as_pointer()),
                              align=4)
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------------------------------------------ passes

@numba.njit(**_JIT)
def vpass(src, base, a, b, sc, cch, ys, nk, w, tmp, span):
    """tmp[j*C + c] = sum_k w[k] * src[base + (ys+k)*a + j*b + c*sc], j < span, c < C.

    ``base`` already points at the first pixel of the span; ``a`` is the element stride along
    the y-tap axis, ``b`` along the x-tap axis, ``sc`` between channels. Every path sums in the
    same order with explicit FMAs (w0*p0, then fma(w_k, p_k, .)), so results do not depend on the
    source's strides.
    """
    n = span * cch
    if sc == 1 and b == cch:
        # contiguous source lines (HWC rows): one flat, vectorisable loop per pair of taps
        o0 = base + ys * a
        w0 = w[0]
        if nk == 1:
            for j in range(n):
                tmp[_U(j)] = w0 * np.float32(src[o0 + j])
        else:
            w1 = w[1]
            o1 = o0 + a
            for j in range(n):
                tmp[_U(j)] = fma(w1, np.float32(src[o1 + j]), w0 * np.float32(src[o0 + j]))
            k = 2
            while k + 1 < nk:
                wa, wb = w[k], w[k + 1]
                oa = o0 + k * a
                ob = oa + a
                for j in range(n):
                    tmp[_U(j)] = fma(wb, np.float32(src[ob + j]),
                                     fma(wa, np.float32(src[oa + j]), tmp[_U(j)]))
                k += 2
            if k < nk:
                wa = w[k]
                oa = o0 + k * a
                for j in range(n):
                    tmp[_U(j)] = fma(wa, np.float32(src[oa + j]), tmp[_U(j)])
    else:
        for k in range(nk):
            wk = w[k]
            ok = base + (ys + k) * a
            for j in range(span):
                o = ok + j * b
                for c in range(cch):
                    if k == 0:
                        tmp[_U(j * cch + c)] = wk * np.float32(src[o + c * sc])
                    else:
                        tmp[_U(j * cch + c)] = fma(wk, np.float32(src[o + c * sc]),
                                                   tmp[_U(j * cch + c)])


@numba.njit(**_JIT)
def hpass(tmp, cch, xs, xoff, nk, wx, wo, kst, x0, x1, res):
    """res[x*C + c] = sum_k w[x,k] * tmp[(xs[x]-xoff+k)*C + c] for output columns x0 <= x < x1,
    where w[x, k] = wx[wo + x*kst + k] (flat weights). ``tmp`` and ``res`` need one float of
    padding past their ends for C == 3 (4-lane loads and stores)."""
    if cch == 3:
        if nk == 2:
            for x in range(x0, x1):
                o = 3 * (xs[_U(x)] - xoff)
                wi = wo + x * kst
                w0, w1 = wx[_U(wi)], wx[_U(wi + 1)]
                q = 3 * x
                res[_U(q)] = w0 * tmp[_U(o)] + w1 * tmp[_U(o + 3)]
                res[_U(q + 1)] = w0 * tmp[_U(o + 1)] + w1 * tmp[_U(o + 4)]
                res[_U(q + 2)] = w0 * tmp[_U(o + 2)] + w1 * tmp[_U(o + 5)]
        else:
            for x in range(x0, x1):
                taps3(tmp, 3 * (xs[_U(x)] - xoff), wx, wo + x * kst, nk, res, 3 * x)
    elif cch == 1:
        if nk == 2:
            for x in range(x0, x1):
                o = xs[_U(x)] - xoff
                wi = wo + x * kst
                res[_U(x)] = wx[_U(wi)] * tmp[_U(o)] + wx[_U(wi + 1)] * tmp[_U(o + 1)]
        else:
            for x in range(x0, x1):
                o = xs[_U(x)] - xoff
                wi = wo + x * kst
                v = _NEG0
                for k in range(nk):
                    v += wx[_U(wi + k)] * tmp[_U(o + k)]
                res[_U(x)] = v
    else:
        for x in range(x0, x1):
            o = cch * (xs[_U(x)] - xoff)
            wi = wo + x * kst
            for c in range(cch):
                v = _NEG0
                for k in range(nk):
                    v += wx[_U(wi + k)] * tmp[_U(o + k * cch + c)]
                res[_U(x * cch + c)] = v


@numba.njit(**_JIT)
def nonzero_span(w, wo, nk):
    """(k0, k1): taps k0 <= k < k1 of the window whose weights are w[wo : wo + nk], from its first
    to its last nonzero weight. An image's windows are padded with zero weights to one length (the
    tap tables); a tap outside this span is not the window's own, and reading it would multiply
    an inf or NaN there by 0 into the output (kernels/taps.py: "Non-finite input")."""
    k0 = 0
    while k0 < nk - 1 and w[_U(wo + k0)] == 0:
        k0 += 1
    k1 = nk
    while k1 > k0 + 1 and w[_U(wo + k1 - 1)] == 0:
        k1 -= 1
    return k0, k1


@numba.njit(**{**_JIT, "fastmath": {"reassoc"}})
def all_finite(res, lo, hi):
    """Whether res[lo:hi] holds no inf or NaN: x * 0 is 0 for finite x. Reassociation lets the sum
    vectorise (in order, it is one long chain of dependent adds); it does not fold x * 0, which
    would need the no-NaN / no-inf flags."""
    s = np.float32(0.0)
    for j in range(lo, hi):
        s += res[_U(j)] * np.float32(0.0)
    return s == 0


@numba.njit(**_JIT)
def has_zero(w, k0, k1):
    """Whether a weight of w[k0:k1] is 0 (a bicubic window can weigh a pixel inside it 0)."""
    for k in range(k0, k1):  # noqa: SIM110 (a loop: Numba compiles no generator into any())
        if w[_U(k)] == 0:
            return True
    return False


@numba.njit(**_JIT)
def vpass_nonzero(src, base, a, b, sc, cch, ys, nk, w, tmp, span):
    """vpass without reading the source lines of weight 0 (an inf or NaN there would make the sum
    NaN); the same sums otherwise (w0 * p0, then fma(w_k, p_k, .) in tap order)."""
    first = True
    for k in range(nk):
        wk = w[_U(k)]
        if wk == 0:
            continue
        ok = base + (ys + k) * a
        for j in range(span):
            o = ok + j * b
            for c in range(cch):
                if first:
                    tmp[_U(j * cch + c)] = wk * np.float32(src[o + c * sc])
                else:
                    tmp[_U(j * cch + c)] = fma(wk, np.float32(src[o + c * sc]),
                                               tmp[_U(j * cch + c)])
        first = False


@numba.njit(**_JIT)
def hpass_nonzero(tmp, cch, ps, xs, xoff, nk, wx, wo, kst, x0, x1, res):
    """hpass (pixel stride ``ps`` in ``res``) without reading the taps of weight 0: the pass an
    output row is redone with when a zero-weight tap (the padding of the tables' windows) may
    have multiplied an inf or NaN into it. The same sums otherwise (C == 3 with other than 2
    taps: two accumulators, even and odd taps), so a finite output keeps its value."""
    for x in range(x0, x1):
        o = cch * (xs[_U(x)] - xoff)
        wi = wo + x * kst
        for c in range(cch):
            a0 = _NEG0
            a1 = _NEG0
            for k in range(nk):
                wk = wx[_U(wi + k)]
                if wk != 0:
                    t = wk * tmp[_U(o + k * cch + c)]
                    if cch == 3 and nk != 2 and k % 2 == 1:
                        a1 += t
                    else:
                        a0 += t
            res[_U(x * ps + c)] = a0 + a1


@numba.njit(**_JIT)
def expand_wx(wx, wo, kst, nk, out_w, we):
    """we[(k*out_w + x)*4 + l] = w[x, k] for l < 4: each column's weight of tap k over 4 lanes, the
    taps k of 4 neighbouring columns in 16 consecutive floats (the weights of taps3x4)."""
    for k in range(nk):
        for x in range(out_w):
            v = wx[_U(wo + x * kst + k)]
            b = (k * out_w + x) * 4
            for l in range(4):
                we[_U(b + l)] = v


@numba.njit(**_JIT)
def hpass3(tmp, xs, xoff, nk, wx, wo, kst, we, out_w, x0, x1, res):
    """hpass for C == 3 into res[x*4 + c] (pixel stride 4, lane 3 junk): 4 columns at a time in
    16 lanes (taps3x4, weights ``we`` from expand_wx), taps3 for the rest. Same sums as hpass."""
    x = x0
    wst = 4 * out_w
    while x + 4 <= x1:
        taps3x4(tmp, 3 * (xs[_U(x)] - xoff), 3 * (xs[_U(x + 1)] - xoff),
                3 * (xs[_U(x + 2)] - xoff), 3 * (xs[_U(x + 3)] - xoff), we, 4 * x, wst, nk,
                res, 4 * x)
        x += 4
    while x < x1:
        taps3(tmp, 3 * (xs[_U(x)] - xoff), wx, wo + x * kst, nk, res, 4 * x)
        x += 1


@numba.njit(**_JIT)
def _px(src, off, inside, fillv):
    return np.float32(src[off]) if inside else fillv


@numba.njit(**_JIT)
def affine_row(src, base, sh, sw, sc, cch, r0, r1, c0, c1, m, fillv, nearest, y, out_w, res):
    """One output row of a rotated image: source (col, row) = m @ (x, y, 1); ``fillv`` outside
    rows [r0, r1) x columns [c0, c1); bilinear (4 taps) or nearest (taps.NEAREST_ROUND). Writes
    res[x*C + c] (input channel order, not normalised)."""
    yf = np.float64(y)
    bx = m[0, 1] * yf + m[0, 2]
    by = m[1, 1] * yf + m[1, 2]
    for x in range(out_w):
        xf = np.float64(x)
        fx = m[0, 0] * xf + bx
        fy = m[1, 0] * xf + by
        if nearest:
            ix = np.int64(math.floor(fx + NEAREST_ROUND))
            iy = np.int64(math.floor(fy + NEAREST_ROUND))
            inside = (ix >= c0) & (ix < c1) & (iy >= r0) & (iy < r1)
            off = base + iy * sh + ix * sw
            for c in range(cch):
                res[_U(x * cch + c)] = _px(src, off + c * sc, inside, fillv)
        else:
            x0f = math.floor(fx)
            y0f = math.floor(fy)
            ax = np.float32(fx - x0f)
            ay = np.float32(fy - y0f)
            x0 = np.int64(x0f)
            y0 = np.int64(y0f)
            ix0 = (x0 >= c0) & (x0 < c1)
            ix1 = (x0 + 1 >= c0) & (x0 + 1 < c1)
            iy0 = (y0 >= r0) & (y0 < r1)
            iy1 = (y0 + 1 >= r0) & (y0 + 1 < r1)
            off = base + y0 * sh + x0 * sw
            w00 = (1 - ax) * (1 - ay)
            w01 = ax * (1 - ay)
            w10 = (1 - ax) * ay
            w11 = ax * ay
            for c in range(cch):
                o = off + c * sc
                v = (w00 * _px(src, o, ix0 & iy0, fillv) + w01 * _px(src, o + sw, ix1 & iy0, fillv)
                     + w10 * _px(src, o + sh, ix0 & iy1, fillv)
                     + w11 * _px(src, o + sh + sw, ix1 & iy1, fillv))
                res[_U(x * cch + c)] = v


@numba.njit(**_JIT)
def store_planes3(res, ps, out_w, p, o0, o1, o2, m0, m1, m2, s0, s1, s2):
    """float32 planes p[o_i + x] = (res[x*ps + i] - m_i) * s_i for the three input channels i
    (``ps`` 3 or 4): constant lane offsets, so the loads vectorise as shuffles, not gathers."""
    if ps == 4:
        for x in range(out_w):
            b = _U(4 * x)
            p[o0 + x] = (res[b] - m0) * s0
            p[o1 + x] = (res[b + 1] - m1) * s1
            p[o2 + x] = (res[b + 2] - m2) * s2
    else:
        for x in range(out_w):
            b = _U(3 * x)
            p[o0 + x] = (res[b] - m0) * s0
            p[o1 + x] = (res[b + 1] - m1) * s1
            p[o2 + x] = (res[b + 2] - m2) * s2


@numba.njit(**_JIT)
def store_row(res, cch, ps, out_w, perm, inv, mean, scale, code, out_addr, off, oc, ox, rowb,
              nt):
    """Output channel c of one row, ``(res[x*ps + perm[c]] - mean[c]) * scale[c]`` (``ps``: the
    pixel stride of ``res``, C or 4), converted to the
    output dtype and written at element offset ``off + c*oc + x*ox`` of the output. ``inv``: the
    inverse of ``perm`` when it is a permutation of 3 channels (else inv[0] < 0). ``nt``:
    write float32 rows with non-temporal stores through ``rowb`` (else plain stores)."""
    if not nt and code == OUT_F32 and ox == 1 and inv[0] >= 0:
        # input channel i goes to output plane inv[i]
        d0, d1, d2 = inv[0], inv[1], inv[2]
        store_planes3(res, ps, out_w, f32_ptr(out_addr), off + d0 * oc, off + d1 * oc,
                      off + d2 * oc, mean[d0], mean[d1], mean[d2], scale[d0], scale[d1],
                      scale[d2])
        return
    # streaming: 3 channels at pixel stride 4 de-interleaved once (constant strides: shuffles, no
    # gathers) into planes rowb[out_w + c*out_w + x]; rowb[:out_w] is the output row
    planar = nt and code == OUT_F32 and ox == 1 and out_w >= 64 and ps == 4 and cch == 3
    if planar:
        nb = out_w >> 4
        deint4(res, rowb, out_w, nb)
        for x in range(nb * 16, out_w):
            rowb[_U(out_w + x)] = res[_U(4 * x)]
            rowb[_U(2 * out_w + x)] = res[_U(4 * x + 1)]
            rowb[_U(3 * out_w + x)] = res[_U(4 * x + 2)]
    for c in range(cch):
        pc, m, s = perm[c], mean[c], scale[c]
        o = off + c * oc
        if code == OUT_F32:
            p = f32_ptr(out_addr)
            if nt and ox == 1 and out_w >= 64:
                # the row in ``rowb``, then out whole 64-byte lines with non-temporal stores
                if planar:
                    pb = pc * out_w
                    for x in range(out_w):
                        rowb[_U(x)] = (rowb[_U(pb + out_w + x)] - m) * s
                else:
                    for x in range(out_w):
                        rowb[_U(x)] = (res[_U(x * ps + pc)] - m) * s
                ba = out_addr + o * 4
                head = min(out_w, ((64 - (ba & 63)) & 63) >> 2)
                nv = (out_w - head) >> 4
                for x in range(head):
                    p[o + x] = rowb[_U(x)]
                nt_copy16(ba + head * 4, rowb, head, nv)
                for x in range(head + nv * 16, out_w):
                    p[o + x] = rowb[_U(x)]
            elif ox == 1:
                for x in range(out_w):
                    p[o + x] = (res[_U(x * ps + pc)] - m) * s
            else:
                for x in range(out_w):
                    p[o + x * ox] = (res[_U(x * ps + pc)] - m) * s
        elif code == OUT_U8:
            q = u8_ptr(out_addr)
            for x in range(out_w):
                q[o + x * ox] = u8_sat((res[_U(x * ps + pc)] - m) * s)
        elif code == OUT_F16:
            h = u16_ptr(out_addr)
            for x in range(out_w):
                h[o + x * ox] = f16_bits((res[_U(x * ps + pc)] - m) * s)
        else:
            h = u16_ptr(out_addr)
            for x in range(out_w):
                h[o + x * ox] = bf16_bits((res[_U(x * ps + pc)] - m) * s)
