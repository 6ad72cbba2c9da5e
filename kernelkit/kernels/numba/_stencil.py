"""A 3x3 stencil over LANES flat outputs of a plane, as explicit vector IR (a Numba intrinsic).

The small-plane depthwise conv (7-28 px planes) computes each plane, borders included, in blocks
of LANES flat outputs. Written as a Numba loop, LLVM vectorises such a block but guards every entry
to it with runtime checks that the output does not overlap the input (about 70 instructions
against the block's 40), and runs the border outputs through selects it builds itself. Here the
block is nine unaligned vector loads, four lane masks from the plane's row and column of each
output, and one vector store: no aliasing question arises, since every load precedes the store.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernelkit.kernels.numba._gemm import _fma

# Outputs per block: one zmm of float32 (two ymm without AVX-512, two zmm of float64; LLVM splits
# the vector type into what the target has).
LANES = 16


@intrinsic
def dw3_block(typingctx, xf, q, pitch, c, o, col, row, p, last_col, last_row, ws, b):
    """c[o + e] = b + sum over the 3x3 taps (dr, dc) of ws[3(dr+1) + dc+1] * xf[q + e + dr*pitch
    + dc], for e < LANES, where a tap counts only if it lies in the plane: left taps where
    col[p + e] > 0, right ones where col[p + e] < last_col, the row above where row[p + e] > 0,
    the row below where row[p + e] < last_row (a select, not a multiply by 0: an Inf beside the
    plane must not make a NaN).

    Every tap's load is made, counted or not: the caller keeps ``q - pitch - 1`` and
    ``q + LANES + pitch`` inside ``xf``. ``xf`` and ``c`` are 1-D contiguous arrays of one float
    dtype, ``col`` and ``row`` int32, ``ws`` a 9-tuple of that dtype.
    """
    if not (isinstance(xf, types.Array) and isinstance(c, types.Array)
            and xf.dtype == c.dtype and isinstance(xf.dtype, types.Float)
            and isinstance(col, types.Array) and col.dtype == types.int32
            and isinstance(row, types.Array) and row.dtype == types.int32
            and isinstance(ws, types.UniTuple) and ws.count == 9):
        return None
    sig = types.void(xf, q, pitch, c, o, col, row, p, last_col, last_row, ws, b)

    def codegen(context, builder, sig, args):
        xf_v, q_v, pitch_v, c_v, o_v, col_v, row_v, p_v, lc_v, lr_v, ws_v, b_v = args
        intp = context.get_value_type(types.intp)
        q_v, pitch_v, o_v, p_v, lc_v, lr_v = (
            context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 4, 7, 8, 9))
        elt = context.get_value_type(xf.dtype)
        esize = context.get_abi_sizeof(elt)
        vty = ir.VectorType(elt, LANES)
        data = lambda ty, v: context.make_array(ty)(context, builder, v).data
        X, C = data(xf, xf_v), data(c, c_v)
        splat = _splatter(builder)
        left, right, above, below = _plane_masks(builder, data(col, col_v), data(row, row_v),
                                                 p_v, lc_v, lr_v)
        zero = ir.Constant(vty, [0.0] * LANES)
        w = [splat(builder.extract_value(ws_v, i), vty) for i in range(9)]
        sums = []
        for r in range(3):
            centre = builder.add(q_v, builder.mul(pitch_v, ir.Constant(intp, r - 1)))
            x = [builder.load(_vptr(builder, X, builder.add(centre, ir.Constant(intp, d)), vty),
                              align=esize) for d in (-1, 0, 1)]
            lft = builder.select(left, builder.fmul(w[3 * r], x[0]), zero)
            rgt = builder.select(right, builder.fmul(w[3 * r + 2], x[2]), zero)
            sums.append(builder.fadd(builder.fadd(lft, builder.fmul(w[3 * r + 1], x[1])), rgt))
        top = builder.select(above, sums[0], zero)
        bot = builder.select(below, sums[2], zero)
        out = builder.fadd(builder.fadd(builder.fadd(top, sums[1]), bot), splat(b_v, vty))
        builder.store(out, _vptr(builder, C, o_v, vty), align=esize)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dw3s2_block(typingctx, xf, q, pitch, c, o, ow0, last_col, top, bot, ws, b):
    """c[o + e] = b + sum over the 3x3 taps (dr, dc) of ws[3(dr+1) + dc+1] * xf[q + 2e + dr*pitch
    + dc], for e < LANES: LANES outputs of one output row at stride 2, lane e at output column
    ow0 + e, whose centre tap is input column 2(ow0 + e). A left tap counts where that column is
    > 0, a right one where it is < last_col, the row above where ``top`` != 0, the row below where
    ``bot`` != 0 (selects, as in ``dw3_block``). Each input row is read as two pairs of vectors
    (32 columns from the centre tap of lane 0, and from one column left of it) split into even and
    odd columns by shuffles: no gather.

    Every load is made: the caller keeps ``q - pitch - 1`` and ``q + pitch + 2*LANES`` inside
    ``xf``, and ``c[o : o + LANES]`` inside the part of ``c`` it owns.
    """
    if not (isinstance(xf, types.Array) and isinstance(c, types.Array)
            and xf.dtype == c.dtype and isinstance(xf.dtype, types.Float)
            and isinstance(ws, types.UniTuple) and ws.count == 9):
        return None
    sig = types.void(xf, q, pitch, c, o, ow0, last_col, top, bot, ws, b)

    def codegen(context, builder, sig, args):
        xf_v, q_v, pitch_v, c_v, o_v, ow0_v, lc_v, top_v, bot_v, ws_v, b_v = args
        intp = context.get_value_type(types.intp)
        cast = lambda i: context.cast(builder, args[i], sig.args[i], types.intp)
        q_v, pitch_v, o_v, ow0_v, lc_v, top_v, bot_v = (cast(i) for i in (1, 2, 4, 5, 6, 7, 8))
        elt = context.get_value_type(xf.dtype)
        esize = context.get_abi_sizeof(elt)
        vty = ir.VectorType(elt, LANES)
        lty = ir.VectorType(intp, LANES)
        X = context.make_array(xf)(context, builder, xf_v).data
        C = context.make_array(c)(context, builder, c_v).data
        splat = _splatter(builder)

        def vload(off):
            return builder.load(_vptr(builder, X, off, vty), align=esize)

        # lane e's centre column 2(ow0 + e): its left tap exists if > 0, its right if < last_col
        centre = builder.add(ir.Constant(lty, [2 * e for e in range(LANES)]),
                             splat(builder.mul(ow0_v, ir.Constant(intp, 2)), lty))
        left = builder.icmp_signed(">", centre, ir.Constant(lty, [0] * LANES))
        right = builder.icmp_signed("<", centre, splat(lc_v, lty))
        zero = ir.Constant(vty, [0.0] * LANES)
        mty = ir.VectorType(ir.IntType(32), LANES)
        even = ir.Constant(mty, [2 * e for e in range(LANES)])
        odd = ir.Constant(mty, [2 * e + 1 for e in range(LANES)])
        w = [splat(builder.extract_value(ws_v, i), vty) for i in range(9)]
        sums = []
        for r in range(3):
            base = builder.add(q_v, builder.mul(pitch_v, ir.Constant(intp, r - 1)))
            lo, hi = vload(base), vload(builder.add(base, ir.Constant(intp, LANES)))
            lo1 = vload(builder.add(base, ir.Constant(intp, -1)))
            hi1 = vload(builder.add(base, ir.Constant(intp, LANES - 1)))
            xc = builder.shuffle_vector(lo, hi, even)
            xr = builder.shuffle_vector(lo, hi, odd)
            xl = builder.shuffle_vector(lo1, hi1, even)
            lft = builder.select(left, builder.fmul(w[3 * r], xl), zero)
            rgt = builder.select(right, builder.fmul(w[3 * r + 2], xr), zero)
            sums.append(builder.fadd(builder.fadd(lft, builder.fmul(w[3 * r + 1], xc)), rgt))
        nz = lambda v: builder.icmp_signed("!=", v, ir.Constant(intp, 0))
        out = builder.fadd(builder.select(nz(top_v), sums[0], zero), sums[1])
        out = builder.fadd(out, builder.select(nz(bot_v), sums[2], zero))
        out = builder.fadd(out, splat(b_v, vty))
        builder.store(out, builder.bitcast(builder.gep(C, [o_v]), vty.as_pointer()), align=esize)
        return context.get_dummy_value()

    return sig, codegen


def _vptr(builder, base, off, ty):
    """``base`` + ``off`` elements, as a pointer to vector type ``ty`` (loads and stores through
    it are unaligned unless told otherwise)."""
    return builder.bitcast(builder.gep(base, [off]), ty.as_pointer())


def _plane_masks(builder, col_ptr, row_ptr, p, last_col, last_row):
    """(left, right, above, below): for the LANES outputs whose plane column and row are
    col[p + e] and row[p + e] (int32 arrays at ``col_ptr``, ``row_ptr``), whether the column
    left of them, the column right, the row above and the row below lie in the plane (the last
    column and row given as intp values)."""
    ity = ir.VectorType(ir.IntType(32), LANES)
    splat = _splatter(builder)
    cols = builder.load(_vptr(builder, col_ptr, p, ity), align=4)
    rows = builder.load(_vptr(builder, row_ptr, p, ity), align=4)
    zero = ir.Constant(ity, [0] * LANES)
    last = lambda v: splat(builder.trunc(v, ir.IntType(32)), ity)
    return (builder.icmp_signed(">", cols, zero), builder.icmp_signed("<", cols, last(last_col)),
            builder.icmp_signed(">", rows, zero), builder.icmp_signed("<", rows, last(last_row)))


def _splatter(builder):
    """splat(s, vector type): s in every lane."""
    def splat(s, ty):
        undef = ir.Constant(ty, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), ty.count), [0] * ty.count)
        one = builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, undef, zeros)
    return splat


# Output pixels per ``dwc_block`` call (NHWC): the nine weight vectors are loaded once for them.
PIX = 4

# ``dwc_block`` flag bits: a bias, the rows above and below the centre row exist; then PIX bits
# "left column exists" and PIX bits "right column exists", one per pixel.
F_BIAS, F_TOP, F_BOT, F_LEFT = 1, 2, 4, 3


@intrinsic
def dwc_block(typingctx, xf, xc, pix, rstep, cstep, c, oc, ostep, wf, wo, wstep, bias, bo,
              flags):
    """Depthwise 3x3 on channels-last data: LANES channels of PIX output pixels.

    c[oc + j*ostep + e] = bias[bo + e] (if flags & F_BIAS) + sum over the valid taps (dr, dc) of
    wf[wo + (3(dr+1) + dc+1)*wstep + e] * xf[xc + j*pix + dr*rstep + dc*cstep + e], for pixel
    j < PIX and lane e < LANES. ``xc`` indexes pixel 0's centre tap. The row above counts if
    flags & F_TOP, the row below if flags & F_BOT, pixel j's left column if bit F_LEFT + j, its
    right column if bit F_LEFT + PIX + j. A tap that does not count is read from the centre tap's
    address (always inside the input) and its product dropped by a select, so no read leaves
    the image and no 0 * Inf appears. ``xf``, ``c``, ``wf`` and ``bias`` are 1-D contiguous
    arrays of one float dtype.
    """
    return _dwc_typing(True, xf, xc, pix, rstep, cstep, c, oc, ostep, wf, wo, wstep, bias, bo,
                       flags)


@intrinsic
def dwc_block_inner(typingctx, xf, xc, pix, rstep, cstep, c, oc, ostep, wf, wo, wstep, bias,
                    bo, flags):
    """``dwc_block`` for pixels whose nine taps all exist (only flags & F_BIAS is read): no
    selects (they took about half of an interior pixel's instructions)."""
    return _dwc_typing(False, xf, xc, pix, rstep, cstep, c, oc, ostep, wf, wo, wstep, bias, bo,
                       flags)


def _dwc_typing(checked, *argtys):
    xf, c, wf, bias = argtys[0], argtys[5], argtys[8], argtys[11]
    arrays = (xf, c, wf, bias)
    if not (all(isinstance(a, types.Array) for a in arrays)
            and all(a.dtype == xf.dtype for a in arrays) and isinstance(xf.dtype, types.Float)):
        return None
    return types.void(*argtys), lambda context, builder, sig, args: _dwc_codegen(
        checked, context, builder, sig, args)


def _dwc_codegen(checked, context, builder, sig, args):
    """The IR of ``dwc_block`` (``checked``) and ``dwc_block_inner``."""
    intp = context.get_value_type(types.intp)
    ints = {i: context.cast(builder, args[i], sig.args[i], types.intp)
            for i in (1, 2, 3, 4, 6, 7, 9, 10, 12, 13)}
    xc_v, pix_v, rstep_v, cstep_v = ints[1], ints[2], ints[3], ints[4]
    oc_v, ostep_v, wo_v, wstep_v, bo_v, flags_v = (ints[i] for i in (6, 7, 9, 10, 12, 13))
    elt = context.get_value_type(sig.args[0].dtype)
    esize = context.get_abi_sizeof(elt)
    vty = ir.VectorType(elt, LANES)
    data = lambda i: context.make_array(sig.args[i])(context, builder, args[i]).data
    X, C, Wt, B = data(0), data(5), data(8), data(11)
    cst = lambda v: ir.Constant(intp, v)
    fma = _fma(builder, vty, LANES, esize)

    def vptr(base, off):
        return _vptr(builder, base, off, vty)

    def bit(b):
        return builder.icmp_signed("!=", builder.and_(flags_v, cst(1 << b)), cst(0))

    w = [builder.load(vptr(Wt, builder.add(wo_v, builder.mul(wstep_v, cst(t)))), align=esize)
         for t in range(9)]
    zero = ir.Constant(vty, [0.0] * LANES)
    b_vec = builder.select(bit(0), builder.load(vptr(B, bo_v), align=esize), zero)
    row_ok = (bit(1), None, bit(2)) if checked else (None, None, None)
    for j in range(PIX):
        centre = builder.add(xc_v, builder.mul(pix_v, cst(j)))
        col_ok = (bit(F_LEFT + j), None, bit(F_LEFT + PIX + j)) if checked else (None,) * 3
        # one accumulator per row of taps: three short chains of FMAs instead of one of nine
        # (an FMA waits about four cycles for the one before it in its chain)
        rsum = []
        for dr in (-1, 0, 1):
            acc = b_vec if dr == 0 else zero
            for dc in (-1, 0, 1):
                off = builder.add(builder.mul(rstep_v, cst(dr)), builder.mul(cstep_v, cst(dc)))
                ok = None
                for cond in (row_ok[dr + 1], col_ok[dc + 1]):
                    if cond is not None:
                        ok = cond if ok is None else builder.and_(ok, cond)
                addr = builder.add(centre, off)
                if ok is not None:
                    addr = builder.select(ok, addr, centre)
                x = builder.load(vptr(X, addr), align=esize)
                new = fma(w[3 * (dr + 1) + dc + 1], x, acc)
                acc = new if ok is None else builder.select(ok, new, acc)
            rsum.append(acc)
        acc = builder.fadd(builder.fadd(rsum[0], rsum[1]), rsum[2])
        builder.store(acc, vptr(C, builder.add(oc_v, builder.mul(ostep_v, cst(j)))),
                      align=esize)
    return context.get_dummy_value()


@intrinsic
def dw3_wgrad_block(typingctx, xf, q, pitch, df, qd, col, row, p, last_col, last_row, e0, acc):
    """acc[t*LANES + e] += df[qd + e] * xf[q + e + dr*pitch + dc] for tap t = 3(dr+1) + dc+1 and
    lane e >= e0, where the tap lies in the plane (the masks of ``dw3_block``, from col[p + e]
    and row[p + e]): one block of the depthwise 3x3 weight gradient, the nine per-lane partial
    sums kept in ``acc`` (9 * LANES elements of the data's dtype). Lanes below ``e0`` were
    counted by the block before (the last block of a plane overlaps it). The loads are as in
    ``dw3_block``: the caller keeps them inside ``xf``.
    """
    arrays = (xf, df, acc)
    if not (all(isinstance(a, types.Array) for a in arrays)
            and all(a.dtype == xf.dtype for a in arrays) and isinstance(xf.dtype, types.Float)
            and isinstance(col, types.Array) and col.dtype == types.int32
            and isinstance(row, types.Array) and row.dtype == types.int32):
        return None
    sig = types.void(xf, q, pitch, df, qd, col, row, p, last_col, last_row, e0, acc)

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)
        q_v, pitch_v, qd_v, p_v, lc_v, lr_v, e0_v = (
            context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 4, 7, 8, 9, 10))
        elt = context.get_value_type(sig.args[0].dtype)
        esize = context.get_abi_sizeof(elt)
        vty = ir.VectorType(elt, LANES)
        ity = ir.VectorType(ir.IntType(32), LANES)
        data = lambda i: context.make_array(sig.args[i])(context, builder, args[i]).data
        X, D, A = data(0), data(3), data(11)
        cst = lambda v: ir.Constant(intp, v)
        splat = _splatter(builder)
        left, right, above, below = _plane_masks(builder, data(5), data(6), p_v, lc_v, lr_v)
        lane_ok = builder.icmp_signed(">=", ir.Constant(ity, list(range(LANES))),
                                      splat(builder.trunc(e0_v, ir.IntType(32)), ity))
        col_ok, row_ok = (left, None, right), (above, None, below)
        dy = builder.load(_vptr(builder, D, qd_v, vty), align=esize)
        zero = ir.Constant(vty, [0.0] * LANES)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                t = 3 * (dr + 1) + dc + 1
                ok = lane_ok
                for cond in (row_ok[dr + 1], col_ok[dc + 1]):
                    if cond is not None:
                        ok = builder.and_(ok, cond)
                off = builder.add(q_v, builder.add(builder.mul(pitch_v, cst(dr)), cst(dc)))
                x = builder.load(_vptr(builder, X, off, vty), align=esize)
                aptr = _vptr(builder, A, cst(t * LANES), vty)
                total = builder.fadd(builder.load(aptr, align=esize),
                                     builder.select(ok, builder.fmul(dy, x), zero))
                builder.store(total, aptr, align=esize)
        return context.get_dummy_value()

    return sig, codegen
