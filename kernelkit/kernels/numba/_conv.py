"""Jitted building blocks of the Numba conv2d: im2col packing into the GEMM's panels, col2im,
the depthwise direct loops, and three entry points (``fwd``, ``dw``, ``bwd``), each compiled on
first use. The op bodies are inlined into their entry point (numba IR inlining): every level of
jitted calls costs a link and a re-optimisation of everything below it at compile time.

Every function sees the input through a flat view plus element strides in the logical order
(n, c, h, w), so NCHW, NHWC and any strided view share one compilation per dtype. Geometry and
blocking travel in one int64 array ``geo`` (indices below), which keeps the signatures (and the
number of compiled specialisations) small. Each entry point runs thread ``t``'s share of the work
(``nthr`` threads, disjoint outputs, no synchronisation); the launcher runs the shares on a pool
of Python threads (the functions release the GIL). A numba ``prange`` wrapper would link and
re-optimise the whole call tree once more per entry point (about 20 s of compile per dtype).

GEMM orientations (implicit GEMM: the im2col matrix is never materialised, only packed block by
block straight into the micro-kernel's panel layout):

* op FWD_KP (NCHW output): per image and group, ``Y (Kg x HoWo) = Wg (Kg x Cg*R*S) @ col``.
  The weight is the packed A (packed once per call, shared by all threads), the im2col panel the
  packed B; bias is per row. A stride-1 unpadded 1x1 conv whose input rows collapse packs B
  directly from x (a plain GEMM per image: W (K, C) @ X (C, HW)).
* op FWD_PK (NHWC output): ``Y (N*HoWo x Kg) = col (N*HoWo x R*S*Cg) @ Wg^T``, reduction order
  (r, s, c) so that channel runs are contiguous in NHWC; the im2col rows are the packed A, the
  weight the packed B (packed once per call); bias per column. 1x1 is the same code, whose A
  packing degenerates to _gemm.pack_a's row copy.
* op SHIFT (NCHW output): the output is computed on the input's grid (rows of the input's
  pitch, the columns past Wo of each row computed into a scratch and dropped), where kernel tap
  (r, s) is a constant shift of the flattened plane; with a stride, on the grid of one stride
  phase of the padded copy (its rows a, a + sh, ... and columns b, b + sw, ...), where each tap
  is a constant shift of one phase. So ``Y_n = sum_taps W_rs (Kg x
  Cg) @ X_n shifted``: one GEMM per tap whose B rows (the input channels) the micro-kernel reads
  where they lie (``ukernel_strided``), from x itself (unpadded, unit-stride rows) or from one
  zero-padded copy made in the packing phase. Nothing but the weight is packed, where the
  implicit GEMM gathers every im2col element into a panel; on planes of a few slivers (7-14 px)
  the panel, packed once and reused over all Kg rows, still wins. Where a sliver of the
  weight's rows meets only a few column slivers (batch 1 on small planes: geo[G_AINPL]) the
  weight is read where it lies too (``_taps``), an MR-row sliver at a time (rows a multiple of
  4 KiB apart through a copy of the sliver, ``_sliver_rows``: they share L1 sets).
* op BWD_IN: ``dcol (Cg*R*S x HoWo) = Wg^T @ dY`` block by block, scattered (col2im) into dx;
  threads own disjoint (image, channel range) pairs, so the scatter needs no atomics.
* op BWD_W: ``dW (Kg x Cg*R*S) = sum_n dY_n @ col_n^T``, threads own disjoint column ranges.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from kernelkit.kernels.numba._gemm import (
    _JIT,
    _U,
    ACT_NONE,
    DEINTERLEAVE_LANES,
    PAD_ROW_LANES,
    act_row,
    deinterleave2,
    deinterleave2_pairs,
    epilogue,
    flat_view,
    macro_kernel,
    pack_a,
    pack_b,
    pad_row,
    pad_row_pairs,
    span,
    tile,
    ukernel_strided,
    ukernel_taps,
    ukernel_taps_half,
    ukernel_taps_quarter,
    ukernel_taps_strided,
    ukernel_taps_strided_half,
    ukernel_taps_strided_quarter,
)
from kernelkit.kernels.numba._gemm import (
    cdiv as _cdiv,
)
from kernelkit.kernels.numba._half import narrow1
from kernelkit.kernels.numba._pool import barrier
from kernelkit.kernels.numba._stencil import (
    F_BIAS,
    F_BOT,
    F_LEFT,
    F_TOP,
    LANES,
    PIX,
    dw3_block,
    dw3_wgrad_block,
    dw3s2_block,
    dwc_block,
    dwc_block_inner,
)

_I = np.int64  # _I(0): an int64 argument, not Literal[int](0), so callees compile once

# indices into geo
(G_N, G_C, G_H, G_W, G_K, G_R, G_S, G_HO, G_WO, G_SH, G_SW, G_PT, G_PL, G_DH, G_DW, G_G,
 G_MC, G_KC, G_NC, G_PM, G_PN, G_HAS_BIAS, G_ACT, G_PLAIN, G_OSN, G_OSC, G_OSH, G_OSW,
 G_MODE, G_TAPW, G_XPOFF, G_XPITCH, G_GH, G_GW, G_DIRECT, G_BCOLS, G_PHASE, G_PAIRS,
 G_LEAD, G_WPACKED, G_PACKB, G_AINPL, G_NARROW, G_QOFF, G_QPITCH) = range(45)
GEO_LEN = 45
# geo[G_MODE] of the forward: the implicit GEMM with NCHW output, with NHWC output, and the
# shifted GEMM (NCHW output: one GEMM per kernel tap on a shifted view of the input)
MODE_KP, MODE_PK, MODE_SHIFT = 0, 1, 2
# geo[G_AINPL]: the shifted GEMM's weight packed (0), read where it lies (AINPL_ROWS), or read
# where it lies a sliver of rows at a time through a contiguous copy (AINPL_COPY, _sliver_rows)
AINPL_ROWS, AINPL_COPY = 1, 2


@numba.njit(inline="always", **_JIT)
def _split(i, parts, nsl, unit, total):
    """[lo, hi) of part i of ``parts`` over nsl slivers of ``unit`` elements (clamped to total)."""
    lo = min(total, (i * nsl // parts) * unit)
    hi = min(total, ((i + 1) * nsl // parts) * unit)
    return lo, hi


@numba.njit(inline="always", **_JIT)
def _unit(u, pn, pm, groups):
    """(column part, row part, group, image) of work unit u: the column parts run fastest, then
    the row parts, the groups and the images."""
    rest = u // pn
    return u % pn, rest % pm, (rest // pm) % groups, rest // pm // groups


@numba.njit(inline="always", **_JIT)
def _share(t, nthr, units):
    """[u0, u1): thread t's share of ``units`` work units over nthr threads."""
    return t * units // nthr, (t + 1) * units // nthr


@numba.njit(inline="always", **_JIT)
def _window(geo):
    """(stride h, w, padding top, left, dilation h, w) of the convolution."""
    return geo[G_SH], geo[G_SW], geo[G_PT], geo[G_PL], geo[G_DH], geo[G_DW]


@numba.njit(inline="always", **_JIT)
def _valid_range(off, stride, n, size):
    """[lo, hi) of o in [0, n) with 0 <= o*stride + off < size."""
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    hi = 0 if size - off <= 0 else min(n, (size - off + stride - 1) // stride)
    return lo, max(lo, hi)


# ------------------------------------------------------------------------------- im2col / col2im

@numba.njit(**_JIT)
def im2col_row(xf, xo, sxh, sxw, H, W, Wo, sh, sw, ihoff, iwoff, j0, nb, dst, doff):
    """dst[doff + t] = x[ih, iw] of output position j0 + t (t < nb), 0 in the padding.

    ``xo``: offset of the (image, channel) plane in flat ``xf``; position j = oh*Wo + ow reads
    ih = oh*sh + ihoff, iw = ow*sw + iwoff.
    """
    zero = dst.dtype.type(0)
    lo, hi = _valid_range(iwoff, sw, Wo, W)
    oh = j0 // Wo
    ow = j0 - oh * Wo
    t = 0
    step = sw * sxw
    while t < nb:
        seg = min(Wo - ow, nb - t)
        ih = oh * sh + ihoff
        d = doff + t - ow  # dst index of column ow of this row
        if ih < 0 or ih >= H:
            for e in range(ow, ow + seg):
                dst[_U(d + e)] = zero
        else:
            a = min(max(ow, lo), ow + seg)
            b = max(min(ow + seg, hi), a)
            for e in range(ow, a):
                dst[_U(d + e)] = zero
            o = xo + ih * sxh + iwoff * sxw
            if step == 1:
                for e in range(a, b):
                    dst[_U(d + e)] = xf[_U(o + e)]
            else:
                for e in range(a, b):
                    dst[_U(d + e)] = xf[_U(o + e * step)]
            for e in range(b, ow + seg):
                dst[_U(d + e)] = zero
        t += seg
        ow = 0
        oh += 1


@numba.njit(**_JIT)
def col2im_row(src, soff, dxf, xo, sxh, sxw, H, W, Wo, sh, sw, ihoff, iwoff, j0, nb):
    """The adjoint of im2col_row: dx[ih, iw] += src[soff + t] for the valid positions."""
    lo, hi = _valid_range(iwoff, sw, Wo, W)
    oh = j0 // Wo
    ow = j0 - oh * Wo
    t = 0
    step = sw * sxw
    while t < nb:
        seg = min(Wo - ow, nb - t)
        ih = oh * sh + ihoff
        if 0 <= ih < H:
            a = min(max(ow, lo), ow + seg)
            b = max(min(ow + seg, hi), a)
            s = soff + t - ow
            o = xo + ih * sxh + iwoff * sxw
            if step == 1:
                for e in range(a, b):
                    dxf[_U(o + e)] += src[_U(s + e)]
            else:
                for e in range(a, b):
                    dxf[_U(o + e * step)] += src[_U(s + e)]
        t += seg
        ow = 0
        oh += 1


@numba.njit(**_JIT)
def pack_b_im2col(xf, xo, sxn, sxc, sxh, sxw, geo, pc, kb, jc, nb, dst, tmp):
    """Pack the im2col panel rows pc..pc+kb (p = (c, r, s)), columns jc..jc+nb of one group
    into NR-column slivers (the packed-B layout). Columns count over the images one after the
    other: column j is output position j % HoWo of image j // HoWo (images ``sxn`` apart from
    ``xo``), so a panel may span images."""
    _, nr = tile(dst)
    H, W, R, S, Ho, Wo = geo[G_H], geo[G_W], geo[G_R], geo[G_S], geo[G_HO], geo[G_WO]
    hw = Ho * Wo
    sh, sw, pt, pl, dh, dw = _window(geo)
    nsl = _cdiv(nb, nr)
    zero = dst.dtype.type(0)
    for e in range(nb, nsl * nr):
        tmp[_U(e)] = zero
    rs = R * S
    c = pc // rs
    kr = (pc - c * rs) // S
    ks = pc - c * rs - kr * S
    for q in range(kb):
        j = jc
        while j < jc + nb:  # one run per image the columns cross
            n = j // hw
            pos = j - n * hw
            seg = min(hw - pos, jc + nb - j)
            im2col_row(xf, xo + n * sxn + c * sxc, sxh, sxw, H, W, Wo, sh, sw, kr * dh - pt,
                       ks * dw - pl, pos, seg, tmp, j - jc)
            j += seg
        for s in range(nsl):
            d = s * nr * kb + q * nr
            o = s * nr
            for e in range(nr):
                dst[_U(d + e)] = tmp[_U(o + e)]
        ks += 1
        if ks == S:
            ks = 0
            kr += 1
            if kr == R:
                kr = 0
                c += 1


@numba.njit(**_JIT)
def pack_a_im2col(xf, xo, sxn, sxc, sxh, sxw, geo, i0, mb, pc, kb, dst):
    """Pack the im2col rows i0..i0+mb (output positions over all images), columns pc..pc+kb
    (p = (r, s, c), c fastest) into MR-row slivers (the packed-A layout)."""
    mr, _ = tile(dst)
    H, W, S, Ho, Wo = geo[G_H], geo[G_W], geo[G_S], geo[G_HO], geo[G_WO]
    sh, sw, pt, pl, dh, dw = _window(geo)
    cg = geo[G_C] // geo[G_G]
    hw = Ho * Wo
    zero = dst.dtype.type(0)
    scg = S * cg
    kr0 = pc // scg
    ks0 = (pc - kr0 * scg) // cg
    cc0 = pc - kr0 * scg - ks0 * cg
    for sl in range(_cdiv(mb, mr)):
        base = sl * mr * kb
        rows = min(mr, mb - sl * mr)
        for rr in range(rows):
            i = i0 + sl * mr + rr
            n = i // hw
            rem = i - n * hw
            oh = rem // Wo
            ow = rem - oh * Wo
            ihb = oh * sh - pt
            iwb = ow * sw - pl
            xn = xo + n * sxn
            kr, ks, cc = kr0, ks0, cc0
            q = 0
            while q < kb:
                ln = min(cg - cc, kb - q)
                ih = ihb + kr * dh
                iw = iwb + ks * dw
                d = base + q * mr + rr
                if 0 <= ih < H and 0 <= iw < W:
                    o = xn + ih * sxh + iw * sxw + cc * sxc
                    if sxc == 1:
                        for e in range(ln):
                            dst[_U(d + e * mr)] = xf[_U(o + e)]
                    else:
                        for e in range(ln):
                            dst[_U(d + e * mr)] = xf[_U(o + e * sxc)]
                else:
                    for e in range(ln):
                        dst[_U(d + e * mr)] = zero
                q += ln
                cc = 0
                ks += 1
                if ks == S:
                    ks = 0
                    kr += 1
        if rows < mr:
            for q in range(kb):
                for rr in range(rows, mr):
                    dst[_U(base + q * mr + rr)] = zero


# --------------------------------------------------------------------------------- activation

@numba.njit(**_JIT)
def act_span(c, o, cols, act):
    """_gemm.act_row as a function of its own (called from the inlined op bodies)."""
    act_row(c, o, cols, act)


# ------------------------------------------------------------------------------------ the ops

@numba.njit(inline="always", **_JIT)
def _tile_to_images(c, ct, j, cols, rows, hw, K, row, first):
    """A rows x cols tile (``ct``, rows NR apart) of output columns j.. counted over the images
    one after the other (column j: position j % hw of image j // hw) into the NCHW output from
    channel ``row``: stored where ``first``, else added."""
    _, nr = tile(c)
    for e in range(cols):
        n = (j + e) // hw
        o = (n * K + row) * hw + j + e - n * hw
        for i in range(rows):
            if first:
                c[_U(o + i * hw)] = ct[_U(i * nr + e)]
            else:
                c[_U(o + i * hw)] += ct[_U(i * nr + e)]


@numba.njit(inline="always", **_JIT)
def _epilogue_images(c, j, cols, rows, hw, K, row, bias, has_bias, act):
    """``epilogue`` (bias per channel, activation) on such a tile, per image its columns cross."""
    e = 0
    while e < cols:
        n = (j + e) // hw
        pos = j + e - n * hw
        seg = min(hw - pos, cols - e)
        epilogue(c, (n * K + row) * hw + pos, hw, rows, seg, bias, has_bias, row, act, True)
        e += seg


@numba.njit(inline="always", **_JIT)
def _narrow_rows(c, o16, o, rows, hw, lo, hi):
    """Rows of the float32 output ``c`` from ``o`` (``hw`` apart), positions [lo, hi) of each,
    rounded to bfloat16 bits into ``o16`` (``_half.narrow1``): a block whose sums are final,
    while it is still in cache."""
    for i in range(rows):
        r = o + i * hw
        for q in range(lo, hi):
            # (the cast: the float64 forward compiles this too, with an empty o16)
            o16[_U(r + q)] = narrow1(np.float32(c[_U(r + q)]), True)


@numba.njit(inline="always", **_JIT)
def _narrow_images(c, o16, j, cols, rows, hw, K, row):
    """``_narrow_rows`` on a tile of output columns j.. counted over the images (as
    ``_epilogue_images``)."""
    e = 0
    while e < cols:
        n = (j + e) // hw
        pos = j + e - n * hw
        seg = min(hw - pos, cols - e)
        _narrow_rows(c, o16, (n * K + row) * hw, rows, hw, pos, pos + seg)
        e += seg


@numba.njit(**_JIT)
def _macro_a_inplace(mb, nb, kb, wf, aoff, a_rs, bp, c, jc, hw, K, crow, first, last, ct, atail,
                     bias, has_bias, act):
    """_gemm.macro_kernel with A read where it lies (rows ``a_rs`` apart, unit column stride:
    the weight's own (K, C*R*S) rows) into an NCHW output: columns ``jc`` .. ``jc + nb`` count
    over the images one after the other (column j is position j % hw of image j // hw), output
    rows ``crow + i`` of each image's K channels. A sliver inside one image goes straight to the
    output, one across images through ``ct``. Only a last sliver of fewer than MR rows is
    packed (into ``atail``): rows past it would read past the weight."""
    mr, nr = tile(c)
    full_rows = mb // mr * mr
    if full_rows < mb:
        pack_a(wf, aoff + full_rows * a_rs, a_rs, _I(1), mb - full_rows, kb, atail, _I(0))
    acc = 0 if first else 1
    for jr in range(0, nb, nr):
        cols = min(nr, nb - jr)
        j = jc + jr
        n0 = j // hw
        pos0 = j - n0 * hw
        inside = pos0 + cols <= hw
        bo = jr * kb
        for i0 in range(0, mb, mr):
            rows = min(mr, mb - i0)
            co = (n0 * K + crow + i0) * hw + pos0
            if inside and rows == mr and cols == nr:
                ukernel_strided(kb, wf, aoff + i0 * a_rs, a_rs, _I(1), bp, bo, nr, c, co, hw,
                                acc)
            else:
                if rows == mr:
                    ukernel_strided(kb, wf, aoff + i0 * a_rs, a_rs, _I(1), bp, bo, nr, ct,
                                    _I(0), nr, _I(0))
                else:
                    ukernel_strided(kb, atail, _I(0), _I(1), mr, bp, bo, nr, ct, _I(0), nr,
                                    _I(0))
                _tile_to_images(c, ct, j, cols, rows, hw, K, crow + i0, first)
            if last:  # per image the sliver crosses
                _epilogue_images(c, j, cols, rows, hw, K, crow + i0, bias, has_bias, act)


@numba.njit(inline="always", **_JIT)
def _fwd_kp(t, nthr, xf, xlo, sx, wf, bias, c, geo):
    """NCHW output: per group, Y (Kg x columns) = W (read in place) @ im2col panels (packed).

    Columns are each image's output positions (units: image, group, row and column shares),
    or with ``geo[G_BCOLS]`` all images' one after the other (units: group and shares): on
    small planes no sliver is half empty at the end of every plane, and each weight block
    serves every image while it is in cache."""
    N, C, K, R, S, Ho, Wo, G = (geo[G_N], geo[G_C], geo[G_K], geo[G_R], geo[G_S], geo[G_HO],
                                geo[G_WO], geo[G_G])
    mc, kc, nc, pm, pn = geo[G_MC], geo[G_KC], geo[G_NC], geo[G_PM], geo[G_PN]
    has_bias, act, plain = geo[G_HAS_BIAS] != 0, geo[G_ACT], geo[G_PLAIN] != 0
    bcols = geo[G_BCOLS] != 0
    sxn, sxc, sxh, sxw = sx
    mr, nr = tile(c)
    cg, kg = C // G, K // G
    kred = cg * R * S
    hw = Ho * Wo
    nimg = 1 if bcols else N  # images that are units of their own
    ncol = N * hw if bcols else hw  # columns of a unit
    msl, nsl = _cdiv(kg, mr), _cdiv(ncol, nr)
    u0, u1 = _share(t, nthr, nimg * G * pm * pn)
    if u1 <= u0:
        return
    bpack = np.empty(nc * kc, c.dtype)
    tmp = np.empty(nc + nr, c.dtype)
    ct = np.empty(mr * nr, c.dtype)
    atail = np.empty(mr * kc, c.dtype)
    for u in range(u0, u1):
        pi, mi, g, n = _unit(u, pn, pm, G)
        r0, r1 = _split(mi, pm, msl, mr, kg)
        j0, j1 = _split(pi, pn, nsl, nr, ncol)
        xo = -xlo + g * cg * sxc
        for jc in range(n * hw + j0, n * hw + j1, nc):  # columns over the images
            nb = min(nc, n * hw + j1 - jc)
            for pc in range(0, kred, kc):
                kb = min(kc, kred - pc)
                if plain and not bcols:  # 1x1: the panel is x's own (C, HoWo) rows
                    pack_b(xf, xo + n * sxn + pc * sxc + (jc - n * hw) * sxw, sxc, sxw, kb, nb,
                           bpack, 0, 0, _cdiv(nb, nr))
                else:
                    pack_b_im2col(xf, xo, sxn, sxc, sxh, sxw, geo, pc, kb, jc, nb, bpack, tmp)
                for ic in range(r0, r1, mc):
                    mb = min(mc, r1 - ic)
                    _macro_a_inplace(mb, nb, kb, wf, (g * kg + ic) * kred + pc, kred, bpack, c,
                                     jc, hw, K, g * kg + ic, pc == 0, pc + kb >= kred, ct,
                                     atail, bias, has_bias, act)


@numba.njit(inline="always", **_JIT)
def _fwd_pk(t, nthr, xf, xlo, sx, wp, bias, c, geo):
    N, C, K, R, S, Ho, Wo, G = (geo[G_N], geo[G_C], geo[G_K], geo[G_R], geo[G_S], geo[G_HO],
                                geo[G_WO], geo[G_G])
    mc, kc, nc, pm, pn = geo[G_MC], geo[G_KC], geo[G_NC], geo[G_PM], geo[G_PN]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc, sxh, sxw = sx
    mr, nr = tile(c)
    cg, kg = C // G, K // G
    kred = cg * R * S
    m = N * Ho * Wo
    kgpad = _cdiv(kg, nr) * nr
    msl, nsl = _cdiv(m, mr), _cdiv(kg, nr)
    units = G * pm * pn
    u0, u1 = _share(t, nthr, units)
    if u1 <= u0:
        return
    apack = np.empty(mc * kc, c.dtype)
    ct = np.empty(mr * nr, c.dtype)
    for u in range(u0, u1):
        pi = u % pn
        rest = u // pn
        mi = rest % pm
        g = rest // pm
        r0, r1 = _split(mi, pm, msl, mr, m)
        c0, c1 = _split(pi, pn, nsl, nr, kg)
        xo = -xlo + g * cg * sxc
        for ic in range(r0, r1, mc):
            mb = min(mc, r1 - ic)
            for pc in range(0, kred, kc):
                kb = min(kc, kred - pc)
                pack_a_im2col(xf, xo, sxn, sxc, sxh, sxw, geo, ic, mb, pc, kb, apack)
                for jc in range(c0, c1, nc):
                    nb = min(nc, c1 - jc)
                    macro_kernel(mb, nb, kb, apack, _I(0), wp,
                                 g * kgpad * kred + pc * kgpad + jc * kb, c,
                                 ic * K + g * kg + jc, K, pc == 0, pc + kb >= kred, ct, _I(0),
                                 bias, has_bias, g * kg + jc, act)


def _element(xf, o, hi, two):
    """The word the packed weight or the padded copy stores for ``xf[o]``: the element itself,
    or for bfloat16 bits (uint16) the uint32 pair of it and the element ``hi`` further (the next
    channel; a zero upper half where ``two`` is false: the odd last channel of a group)."""


@overload(_element, inline="always")
def _element_ov(xf, o, hi, two):
    if xf.dtype == types.uint16:
        def pair(xf, o, hi, two):
            lo16 = numba.uint32(xf[_U(o)])
            if not two:
                return lo16
            return lo16 | (numba.uint32(xf[_U(o + hi)]) << numba.uint32(16))
        return pair
    return lambda xf, o, hi, two: xf[_U(o)]


PACK_CHUNK = 8  # slivers per weight-packing job
# Channels per tile of the shifted GEMM's weight packing (float, and bfloat16 1x1): a row at a
# time over all of a block's channels wrote the nine taps' words of 12 rows x kc channels, 37-74
# KiB of lines, once per row. 512 channels 3x3 (Zen 4, the packing phase alone, timeit minima
# over three alternating runs): 0.86 -> 0.65 ms (4: 0.64, 16: 0.75) at batch 1, weight and B
# 1.86 -> 1.45 ms at batch 8.
PACK_QT = 8
# Words between the end of one tap's block of the shifted GEMM's packed weight and the start of
# the next (a cache line). Unpadded, a block (Cg x Kgpad words) is a multiple of 4 KiB for most
# layers (any Cg a multiple of 256), so the nine taps' slivers that the packing writes, and
# the micro-kernel reads, side by side fell in the same L1 sets: nine lines for eight ways.
TAP_PAD = 16


@numba.njit(inline="always", **_JIT)
def tap_stride(cg, kgpad):
    """Words from one tap's block of the shifted GEMM's packed weight to the next (a group's
    blocks are R*S such strides long)."""
    return cg * kgpad + TAP_PAD


@numba.njit(inline="always", **_JIT)
def _pack_job(job, nch, nblk):
    """(sliver chunk, depth block, group) of weight-packing job ``job``: the chunks of
    PACK_CHUNK slivers run fastest, then the depth blocks, then the groups."""
    rest = job // nch
    return job % nch, rest % nblk, rest // nblk


@numba.njit(inline="always", **_JIT)
def _pack_w(t, nthr, wf, wp, geo):
    """Pack every (group, depth block) of the weight ``wf`` ((K, R, S, Cg) contiguous: reduction
    order (r, s, c)) as the NHWC implicit GEMM's packed B: Kg columns in NR slivers, blocks
    ``kc`` deep."""
    K, G, kc = geo[G_K], geo[G_G], geo[G_KC]
    kred = geo[G_C] // G * geo[G_R] * geo[G_S]
    _, nr = tile(wp)
    kg = K // G
    kgpad = _cdiv(kg, nr) * nr
    nsl = kgpad // nr
    npc = _cdiv(kred, kc)
    nch = _cdiv(nsl, PACK_CHUNK)
    j0, j1 = _share(t, nthr, G * npc * nch)
    for job in range(j0, j1):
        ch, bi, g = _pack_job(job, nch, npc)
        pc = bi * kc
        kb = min(kc, kred - pc)
        s0 = ch * PACK_CHUNK
        pack_b(wf, g * kg * kred + pc, _I(1), kred, kb, kg, wp, g * kgpad * kred + pc * kgpad,
               s0, min(nsl, s0 + PACK_CHUNK))


@numba.njit(inline="always", **_JIT)
def _scatter_taps(wp, d, stride, wf, o, ntap, two):
    """The words of one (row, channel) run of ``ntap`` taps at ``wf[o:]``, tap t's to
    ``wp[d + t*stride]``."""
    for tp in range(ntap):
        wp[_U(d + tp * stride)] = _element(wf, o + tp, ntap, two)


@numba.njit(inline="always", **_JIT)
def _pack_taps(t, nthr, wf, wp, geo):
    """The shifted GEMM's packed A from the weight as given (``wf``: (K, Cs, R, S) contiguous):
    per group, tap-major blocks (tap t's at t * tap_stride), each ``kc`` channels of one tap in MR-row
    slivers (word (p, i) of a sliver at p*MR + i).

    Each (row, channel) run of R*S taps is read once and scattered into the taps' blocks. With
    geo[G_PAIRS] > 0 (Cs = geo[G_PAIRS] bfloat16 channels), a word is a pair of channels
    (``_element``) and geo[G_C], kc count pairs."""
    K, G, kc = geo[G_K], geo[G_G], geo[G_KC]
    ntap = geo[G_R] * geo[G_S]
    cq = geo[G_C] // G  # channels (pairs) per group in the packed weight
    pairs = geo[G_PAIRS] > 0
    cs = geo[G_PAIRS] if pairs else cq  # channels per group in wf
    mr, _ = tile(wp)
    kg = K // G
    kgpad = _cdiv(kg, mr) * mr
    tstride = tap_stride(cq, kgpad)
    nsl = kgpad // mr
    npt = _cdiv(cq, kc)
    nch = _cdiv(nsl, PACK_CHUNK)
    zero = wp.dtype.type(0)
    w32 = wf[: wf.size // 2 * 2].view(np.uint32)  # (read for bfloat16 pairs of 1x1 weights)
    j0, j1 = _share(t, nthr, G * npt * nch)
    for job in range(j0, j1):
        ch, bi, g = _pack_job(job, nch, npt)
        cb = bi * kc
        kb = min(kc, cq - cb)
        for sl in range(ch * PACK_CHUNK, min(nsl, (ch + 1) * PACK_CHUNK)):
            blk = g * ntap * tstride + cb * kgpad + sl * mr * kb
            rows = min(mr, kg - sl * mr)
            for r in range(rows, mr):  # the last sliver's missing rows
                for q in range(kb):
                    for tp in range(ntap):
                        wp[_U(blk + q * mr + r + tp * tstride)] = zero
            if pairs and ntap == 9:  # 3x3 bfloat16: a pair at a time over the rows measured
                for q in range(kb):  # faster than the order below (0.36 vs 0.55 ns a word)
                    c0 = 2 * (cb + q)
                    two = c0 + 1 < cs
                    for r in range(rows):
                        _scatter_taps(wp, blk + q * mr + r, tstride, wf,
                                      ((g * kg + sl * mr + r) * cs + c0) * 9, 9, two)
                continue
            # a tile of PACK_QT channels at a time over the sliver's rows: the tile's words
            # under every tap (9 x 8 x MR) stay in L1 from one row to the next
            for q0 in range(0, kb, PACK_QT):
                q1 = min(kb, q0 + PACK_QT)
                for r in range(rows):  # a row at a time: its channels are read in order
                    orow = (g * kg + sl * mr + r) * cs
                    if pairs and ntap == 1 and cs % 2 == 0:
                        # 1x1: a row's channel pairs are the row's uint32 words, in order
                        o32 = (orow + 2 * cb) // 2
                        for q in range(q0, q1):
                            wp[_U(blk + q * mr + r)] = w32[_U(o32 + q)]
                        continue
                    for q in range(q0, q1):
                        c0 = 2 * (cb + q) if pairs else cb + q
                        two = c0 + 1 < cs
                        o = (orow + c0) * ntap
                        d = blk + q * mr + r
                        # a constant tap count for 3x3 and 1x1: LLVM unrolls the scatter; with a
                        # runtime count it vectorises it into scatter instructions (5x slower here)
                        if ntap == 9:
                            _scatter_taps(wp, d, tstride, wf, o, 9, two)
                        elif ntap == 1:
                            _scatter_taps(wp, d, tstride, wf, o, 1, two)
                        else:
                            _scatter_taps(wp, d, tstride, wf, o, ntap, two)


# ------------------------------------------------------------------------- the shifted GEMM

@numba.njit(inline="always", **_JIT)
def _phase_used(a, r, d, st):
    """Whether some kernel tap kr < r (dilation d) falls in stride phase a (stride st)."""
    for kr in range(r):  # noqa: SIM110 - a loop, not any() of a generator: jitted code
        if (kr * d) % st == a:
            return True
    return False


def _pad_row(xf, o, sxc, two, xp, d, lo, hi, n):
    """One row of a stride-1 padded copy: ``xp[d + e] = xf[o + e]`` for lo <= e < hi, zero for
    the other e < n."""


@overload(_pad_row, inline="always")
def _pad_row_ov(xf, o, sxc, two, xp, d, lo, hi, n):
    if xf.dtype == xp.dtype:  # float words: 16 at a time through masked vector loads and stores
        def vector(xf, o, sxc, two, xp, d, lo, hi, n):
            for e0 in range(0, n, PAD_ROW_LANES):
                pad_row(xf, o + e0, lo - e0, hi - e0, xp, d + e0, d, n - e0)
        return vector

    def pairs(xf, o, sxc, two, xp, d, lo, hi, n):  # bfloat16 channel pairs (_element)
        for e0 in range(0, n, PAD_ROW_LANES):
            pad_row_pairs(xf, o + e0, sxc, two, lo - e0, hi - e0, xp, d + e0, d, n - e0)
    return pairs


def _pair_row(xf, o, sxc, two, xp, r0, r1, gw, pl, W):
    """Both column phases of one input row (phase b's element e: column 2e + b - pl, at
    ``xf[o + 2e + b]``; zero outside [0, W)) into ``xp[r0:r0 + gw]`` and ``xp[r1:r1 + gw]``."""


@overload(_pair_row, inline="always")
def _pair_row_ov(xf, o, sxc, two, xp, r0, r1, gw, pl, W):
    if xf.dtype == xp.dtype:  # float words: 32 at a time through masked vector loads and stores
        def vector(xf, o, sxc, two, xp, r0, r1, gw, pl, W):
            for e0 in range(0, gw, DEINTERLEAVE_LANES // 2):
                deinterleave2(xf, o + 2 * e0, pl - 2 * e0, W + pl - 2 * e0, xp, r0 + e0,
                              r1 + e0, gw - e0)
        return vector

    def pairs(xf, o, sxc, two, xp, r0, r1, gw, pl, W):  # bfloat16 channel pairs (_element)
        for e0 in range(0, gw, DEINTERLEAVE_LANES // 2):
            deinterleave2_pairs(xf, o + 2 * e0, sxc, two, pl - 2 * e0, W + pl - 2 * e0, xp,
                                r0 + e0, r1 + e0, gw - e0)
    return pairs


@numba.njit(inline="always", **_JIT)
def _pad_rows2(xf, xo, sxh, sxc, two, xp, d0, phase, a, hp, gw, pt, pl, sh, H, W, zero):
    """``_pad_planes`` for both column phases of row phase ``a`` at once, where the stride along
    the rows is 2 and the input's columns are contiguous: phase b's element e is input column
    2e + b - pl, and the two are read as a pair (``_pair_row``). One pass with a stride-2 read
    per phase ran scalar (4-5x slower per element than stride 1); read in pairs it vectorised,
    but on rows of a few words (14 per phase at 28 px) only through the vector loads and
    stores of ``_gemm.deinterleave2``."""
    for prow in range(hp):
        r0 = d0 + prow * gw
        r1 = r0 + phase
        ih = prow * sh + a - pt
        if ih < 0 or ih >= H:
            for e in range(gw):
                xp[_U(r0 + e)] = zero
                xp[_U(r1 + e)] = zero
            continue
        _pair_row(xf, xo + ih * sxh - pl, sxc, two, xp, r0, r1, gw, pl, W)


@numba.njit(inline="always", **_JIT)
def _pad_planes(t, nthr, xf, xlo, sx, xp, geo):
    """Copy every (image, channel) plane of x, zero-padded and split into stride phases, into
    ``xp`` from ``geo[G_XPOFF]``: phase (a, b), a < sh, b < sw, holds the padded plane's rows
    a, a + sh, ... and columns b, b + sw, ... as geo[G_GH] rows of pitch geo[G_GW], the phases
    geo[G_PHASE] apart (stride 1: one phase, the padded plane), the planes geo[G_XPITCH] apart
    (the gaps are left as they are). Phases no kernel tap reads are not written.

    geo[G_PAIRS] > 0: x is bfloat16 bits with that many channels per group, and copy plane c of
    group g holds the uint32 pairs of its channels 2c and 2c + 1 (``_element``), so that the
    shifted GEMM's B rows are K pairs (``_gemm.ukernel_taps`` on uint32)."""
    N, C, H, W = geo[G_N], geo[G_C], geo[G_H], geo[G_W]
    cgs = geo[G_PAIRS]
    cq = C // geo[G_G]
    hp, wp_, pt, pl = geo[G_GH], geo[G_GW], geo[G_PT], geo[G_PL]
    # a shared pad (stride 1): a row's zero tail is the next row's left pad, the plane's data
    # starts after ``lead`` zeros, and each row holds input columns 0 .. W - 1 from its start
    lead = geo[G_LEAD]
    pl -= lead
    sh, sw = geo[G_SH], geo[G_SW]
    sxn, sxc, sxh, sxw = sx
    st = sw * sxw
    zero = xp.dtype.type(0)
    # stride 2 along contiguous columns: both column phases from one pass that reads pairs,
    # even where only one is used (1x1 stride 2): a stride-2 read of one phase runs scalar,
    # writing the unused phase too is cheaper (the copy has room for every phase)
    pairs_of_columns = sw == 2 and sxw == 1
    u0, u1 = _share(t, nthr, N * C)
    for u in range(u0, u1):
        n = u // C
        ch = u - n * C
        two = False
        if cgs > 0:  # bfloat16 pairs: copy channel ch is source channels 2q, 2q + 1 of group g
            g = ch // cq
            q = ch - g * cq
            two = 2 * q + 1 < cgs
            ch = g * cgs + 2 * q
        xo = -xlo + n * sxn + ch * sxc
        p0 = geo[G_XPOFF] + u * geo[G_XPITCH]
        for e in range(lead):
            xp[_U(p0 + e)] = zero
        for a in range(sh):
            if not _phase_used(a, geo[G_R], geo[G_DH], sh):
                continue
            if pairs_of_columns:
                _pad_rows2(xf, xo, sxh, sxc, two, xp,
                           p0 + lead + a * 2 * geo[G_PHASE],
                           geo[G_PHASE], a, hp, wp_, pt, pl, sh, H, W, zero)
                continue
            for b in range(sw):
                if not _phase_used(b, geo[G_S], geo[G_DW], sw):
                    continue
                d0 = p0 + lead + (a * sw + b) * geo[G_PHASE]
                lo, hi = _valid_range(b - pl, sw, wp_, W)  # the columns inside the plane
                for prow in range(hp):
                    d = d0 + prow * wp_
                    ih = prow * sh + a - pt
                    if ih < 0 or ih >= H:
                        for e in range(wp_):
                            xp[_U(d + e)] = zero
                        continue
                    o = xo + ih * sxh + (lo * sw + b - pl) * sxw - lo * st
                    if st == 1:
                        _pad_row(xf, o, sxc, two, xp, d, lo, hi, wp_)
                        continue
                    for e in range(lo):
                        xp[_U(d + e)] = zero
                    for e in range(lo, hi):
                        xp[_U(d + e)] = _element(xf, o + e * st, sxc, two)
                    for e in range(hi, wp_):
                        xp[_U(d + e)] = zero


@numba.njit(inline="always", **_JIT)
def _taps(kb, ntap, toffs, wa, ao, a_tap, ars, bsrc, bo, brs, c, co, ldc, acc, parts):
    """``ukernel_taps`` on the packed weight sliver at ``wa[ao]`` (``ars`` 0), or on the
    weight's rows where they lie (``ars``: the row stride; a channel's taps adjacent); on NR /
    ``parts`` columns (1, 2 or 4: ``_piece``)."""
    if ars == 0:
        if parts == 1:
            ukernel_taps(kb, ntap, toffs, wa, ao, a_tap, bsrc, bo, brs, c, co, ldc, acc)
        elif parts == 2:
            ukernel_taps_half(kb, ntap, toffs, wa, ao, a_tap, bsrc, bo, brs, c, co, ldc, acc)
        else:
            ukernel_taps_quarter(kb, ntap, toffs, wa, ao, a_tap, bsrc, bo, brs, c, co, ldc, acc)
    elif parts == 1:
        ukernel_taps_strided(kb, ntap, toffs, wa, ao, ars, ntap, _I(1), bsrc, bo, brs, c, co,
                             ldc, acc)
    elif parts == 2:
        ukernel_taps_strided_half(kb, ntap, toffs, wa, ao, ars, ntap, _I(1), bsrc, bo, brs, c,
                                  co, ldc, acc)
    else:
        ukernel_taps_strided_quarter(kb, ntap, toffs, wa, ao, ars, ntap, _I(1), bsrc, bo, brs,
                                     c, co, ldc, acc)


@numba.njit(inline="always", **_JIT)
def _piece(rem, nr, narrow):
    """The parts (1, 2 or 4: a tile of NR / parts columns) of the next micro-kernel call where
    ``rem`` columns of a sliver are left: a full tile unless ``narrow`` (geo[G_NARROW]) and a
    half or a quarter tile covers them with less work (17-24 columns: a half, then a quarter)."""
    if narrow == 0 or rem > nr - nr // 4:
        return 1
    return 2 if rem > nr // 4 else 4


@numba.njit(inline="always", **_JIT)
def _cover(cols, nr, narrow):
    """Columns the micro-kernel calls for a sliver's ``cols`` columns compute (``_piece``)."""
    e = 0
    while e < cols:
        e += nr // _piece(cols - e, nr, narrow)
    return e


@numba.njit(inline="always", **_JIT)
def _taps_pieces(kb, ntap, toffs, wa, ao, a_tap, ars, bsrc, bo, brs, dst, do, ldd, acc, cols,
                 nr, narrow):
    """``_taps`` over a sliver's ``cols`` columns into ``dst[do:]`` (rows ``ldd`` apart), piece
    by piece (``_piece``: whole tiles, or a last sliver's half and quarter tiles)."""
    e0 = 0
    while e0 < cols:
        parts = _piece(cols - e0, nr, narrow)
        _taps(kb, ntap, toffs, wa, ao, a_tap, ars, bsrc, bo + e0, brs, dst, do + e0, ldd, acc,
              parts)
        e0 += nr // parts


@numba.njit(inline="always", **_JIT)
def _shift_tiles(mb, kb, ntap, wp, aoff, a_tap, ars, atail, acopy, bsrc, bo, brs, toffs, c, co,
                 ldc, junk, scr, so, ncpad, cols, first, ct, narrow):
    """One B sliver (NR grid columns) against mb rows of the weight, all taps in each call:
    into the scratch (whole padded tiles) or into the output at ``co`` (edge tiles via ct).
    ``ars`` 0: ``wp`` is the packed weight, its rows from ``aoff``; else the weight as given
    (rows ``ars`` apart from ``aoff``), whose ``mb`` rows ``_shift_unit`` has copied into
    ``atail`` (``acopy``), or only a last sliver of fewer than MR rows (``_sliver_rows``).
    A sliver of fewer than NR columns runs on narrow tiles where ``narrow`` (``_piece``)."""
    mr, nr = tile(c)
    acc = 0 if first else 1
    for i0 in range(0, mb, mr):
        rows = min(mr, mb - i0)
        if ars == 0:
            wa, ao, rs = wp, aoff + i0 * kb, ars
        elif acopy:
            wa, ao, rs = atail, i0 * kb * ntap, kb * ntap
        elif rows == mr:
            wa, ao, rs = wp, aoff + i0 * ars, ars
        else:
            wa, ao, rs = atail, _I(0), kb * ntap
        if rows == mr and cols == nr and not junk:
            _taps(kb, ntap, toffs, wa, ao, a_tap, rs, bsrc, bo, brs, c, co + i0 * ldc, ldc, acc,
                  1)
            continue
        if junk:
            _taps_pieces(kb, ntap, toffs, wa, ao, a_tap, rs, bsrc, bo, brs, scr,
                         so + i0 * ncpad, ncpad, acc, cols, nr, narrow)
            continue
        _taps_pieces(kb, ntap, toffs, wa, ao, a_tap, rs, bsrc, bo, brs, ct, _I(0), nr, _I(0),
                     cols, nr, narrow)
        for i in range(rows):
            o = co + (i0 + i) * ldc
            if first:
                for e in range(cols):
                    c[_U(o + e)] = ct[_U(i * nr + e)]
            else:
                for e in range(cols):
                    c[_U(o + e)] += ct[_U(i * nr + e)]


@numba.njit(inline="always", **_JIT)
def _sliver_rows(wf, o, ars, rows, kb, ntap, atail):
    """The weight's ``rows`` rows of ``kb`` channels x ``ntap`` taps from ``wf[o]`` (``ars``
    apart) into ``atail`` as rows of kb * ntap words, zeros up to a whole number of MR rows.

    Why a copy where the weight is "read in place": the micro-kernel reads MR rows side by side,
    and rows a multiple of 4 KiB apart (1x1 layers of 1024 and 2048 channels) all fall into one
    L1 set of eight ways, so they evicted each other at every K step (rows spread over two or
    more sets, as a 3x3 layer's, read faster in place: conv2d.SHIFT_ALIAS_BYTES). The copy (a
    contiguous run per row, once per channel block) is read from L1 by each of the unit's
    column slivers, and a last sliver of fewer than MR rows needs it anyway: read where they
    lie, the missing rows would run past the weight."""
    mr, _ = tile(atail)
    run = kb * ntap
    for i in range(rows):
        s = o + i * ars
        d = i * run
        for q in range(run):
            atail[_U(d + q)] = wf[_U(s + q)]
    zero = atail.dtype.type(0)
    for q in range(rows * run, _cdiv(rows, mr) * mr * run):
        atail[_U(q)] = zero


@numba.njit(inline="always", **_JIT)
def _shift_unit(src, plane0, pstride, n, g, r0, r1, j0, j1, wp, ars, atail, bias, c, geo, ct,
                tmpb, scr, toffs, ttmp, o16):
    """Output channels [r0, r1) and grid columns [j0, j1) of image n, group g.

    The output is computed on the input's grid (rows of pitch Wp = geo[G_GW]): grid column j
    is output (j // Wp, j % Wp) and tap (r, s) reads the source plane at ``j + toffs[r*S + s]``
    (``r*dh*Wp + s*dw``), so each tap is a GEMM whose B rows (one per input channel,
    ``pstride`` apart) are read where they lie: nothing is packed but the weight, and one
    micro-kernel call sums all taps (``ukernel_taps``). Grid columns past Wo in a row (when
    S > 1) are computed into the scratch ``scr`` and dropped when it is copied out; without
    them the tiles go straight to the output.

    ``ars`` 0: ``wp`` is the packed weight (``_pack_taps``); else the weight as given, its rows
    ``ars`` apart (``_taps``). ``o16`` not empty: each block, once final, is also rounded to
    bfloat16 into it (``_narrow_rows``)."""
    K, R, S, Ho, Wo = geo[G_K], geo[G_R], geo[G_S], geo[G_HO], geo[G_WO]
    mc, kc, nc = geo[G_MC], geo[G_KC], geo[G_NC]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    gw = geo[G_GW]
    mr, nr = tile(c)
    cg = geo[G_C] // geo[G_G]
    kg = K // geo[G_G]
    ntap = R * S
    kgpad = _cdiv(kg, mr) * mr
    a_tap = tap_stride(cg, kgpad)  # the packed weight's blocks are tap-major
    hw = Ho * Wo
    junk = gw != Wo
    acopy = geo[G_AINPL] == AINPL_COPY
    narrow = geo[G_NARROW]
    ncpad = _cdiv(nc, nr) * nr
    zero = c.dtype.type(0)
    bzero = src.dtype.type(0)
    maxoff = toffs[0]
    for tp in range(1, ntap):
        maxoff = max(maxoff, toffs[tp])
    for jc in range(j0, j1, nc):
        nb = min(nc, j1 - jc)
        for ic in range(r0, r1, mc):
            mb = min(mc, r1 - ic)
            obase = (n * K + g * kg + ic) * hw
            for cb in range(0, cg, kc):
                kb = min(kc, cg - cb)
                if ars == 0:
                    aoff = g * ntap * a_tap + cb * kgpad + ic * kb
                else:  # (mc is MR here: one sliver of rows over all the unit's columns)
                    aoff = (g * kg + ic) * ars + cb * ntap
                    if acopy:
                        _sliver_rows(wp, aoff, ars, mb, kb, ntap, atail)
                    elif mb % mr != 0:
                        _sliver_rows(wp, aoff + mb // mr * mr * ars, ars, mb % mr, kb, ntap,
                                     atail)
                boff = plane0 + cb * pstride + jc
                for jr in range(0, nb, nr):
                    cols = min(nr, nb - jr)
                    # the grid's last sliver reads past the plane: in place where that stays
                    # inside the source (the padded copy has room after its last plane); the
                    # highest row is the last one, or the first where channels run backwards
                    top = boff + max(0, (kb - 1) * pstride)
                    if cols == nr or top + jr + maxoff + _cover(cols, nr, narrow) <= src.size:
                        _shift_tiles(mb, kb, ntap, wp, aoff, a_tap, ars, atail, acopy, src,
                                     boff + jr, pstride, toffs, c, obase + jc + jr, hw, junk,
                                     scr, jr, ncpad, cols, cb == 0, ct, narrow)
                        continue
                    for tp in range(ntap):  # else copied out, zero-filled past the last column
                        ttmp[tp] = tp * kb * nr
                        for p in range(kb):
                            o = boff + jr + toffs[tp] + p * pstride
                            d = (tp * kb + p) * nr
                            for e in range(cols):
                                tmpb[_U(d + e)] = src[_U(o + e)]
                            for e in range(cols, nr):
                                tmpb[_U(d + e)] = bzero
                    _shift_tiles(mb, kb, ntap, wp, aoff, a_tap, ars, atail, acopy, tmpb, _I(0),
                                 nr, ttmp, c, obase + jc + jr, hw, junk, scr, jr, ncpad, cols,
                                 cb == 0, ct, narrow)
            if not junk:
                epilogue(c, obase + jc, hw, mb, nb, bias, has_bias, g * kg + ic, act, True)
                if o16.size > 0:
                    _narrow_rows(c, o16, obase, mb, hw, jc, jc + nb)
                continue
            # (the block's outputs, for o16: its grid columns map onto them in order)
            lo = jc // gw * Wo + min(jc % gw, Wo)
            hi = (jc + nb) // gw * Wo + min((jc + nb) % gw, Wo)
            for i in range(mb):  # copy the valid columns out, with the bias and activation
                b = bias[g * kg + ic + i] if has_bias else zero
                j = jc
                while j < jc + nb:
                    oh = j // gw
                    ow = j - oh * gw
                    seg = min(gw - ow, jc + nb - j)
                    valid = max(0, min(seg, Wo - ow))
                    if valid > 0:
                        o = obase + i * hw + oh * Wo + ow
                        s_ = i * ncpad + j - jc
                        for e in range(valid):
                            c[_U(o + e)] = scr[_U(s_ + e)] + b
                        if act != ACT_NONE:
                            act_span(c, o, valid, act)
                    j += seg
            if o16.size > 0:
                _narrow_rows(c, o16, obase, mb, hw, lo, hi)


@numba.njit(inline="always", **_JIT)
def _pack_b_exact(t, nthr, xf, xlo, sx, bp, geo):
    """The exact-column shifted GEMM's B, whole, from x as given (``_conv._shift_exact_unit``
    reads it): for group g, channel block cb (kb channels), sliver sl of output columns over
    all images (column j: position j % HoWo of image j // HoWo), tap t and channel p, the NR
    inputs under tap t at ``bp[geo[G_XPOFF] + (g*C_g*nsl + cb*nsl + sl*kb) * taps * NR
    + (t*kb + p) * NR]``; zero where the tap falls in the padding or the column is past the
    last. Jobs are (group, block, sliver) triples, so both threads pack and neither packs twice.
    Per tap, each column's offset in x and whether it lies inside are found once for all the
    block's channels; a channel's NR words are then a gather (copying a sliver's runs of one
    row each instead, with the padding's zeros around them, took twice as long on Zen 4).

    geo[G_PAIRS] > 0: x is bfloat16 bits and a word is the uint32 pair of channels 2p, 2p + 1
    (``_element``), as in ``_pad_planes``."""
    N, H, W, R, S, Ho, Wo, G = (geo[G_N], geo[G_H], geo[G_W], geo[G_R], geo[G_S], geo[G_HO],
                                geo[G_WO], geo[G_G])
    sh, sw, pt, pl, dh, dw = _window(geo)
    sxn, sxc, sxh, sxw = sx
    kc = geo[G_KC]
    cq = geo[G_C] // G  # channel words per group
    cgs = geo[G_PAIRS]
    pairs = cgs > 0
    _, nr = tile(bp)
    ntap = R * S
    hw = Ho * Wo
    ncols = N * hw
    nsl = _cdiv(ncols, nr)
    nblk = _cdiv(cq, kc)
    zero = bp.dtype.type(0)
    offs = np.empty(nr, np.int64)
    valid = np.empty(nr, np.bool_)
    ih0 = np.empty(nr, np.int64)
    iw0 = np.empty(nr, np.int64)
    nof = np.empty(nr, np.int64)
    j0, j1 = _share(t, nthr, G * nblk * nsl)
    for job in range(j0, j1):
        sl = job % nsl
        rest = job // nsl
        bi = rest % nblk
        g = rest // nblk
        cb = bi * kc
        kb = min(kc, cq - cb)
        cols = min(nr, ncols - sl * nr)
        for e in range(nr):
            j = sl * nr + min(e, cols - 1)
            n = j // hw
            pos = j - n * hw
            oh = pos // Wo
            ih0[e] = oh * sh - pt
            iw0[e] = (pos - oh * Wo) * sw - pl
            nof[e] = n * sxn
        d0 = geo[G_XPOFF] + ((g * cq + cb) * nsl + sl * kb) * ntap * nr
        for tp in range(ntap):
            kr = tp // S
            ks = tp - kr * S
            for e in range(nr):
                ih = ih0[e] + kr * dh
                iw = iw0[e] + ks * dw
                ok = e < cols and 0 <= ih < H and 0 <= iw < W
                valid[e] = ok
                offs[e] = nof[e] + ih * sxh + iw * sxw if ok else 0
            for p in range(kb):
                if pairs:
                    c0 = 2 * (cb + p)
                    two = c0 + 1 < cgs
                    base = -xlo + (g * cgs + c0) * sxc
                else:
                    two = False
                    base = -xlo + (g * cq + cb + p) * sxc
                d = d0 + (tp * kb + p) * nr
                for e in range(nr):
                    v = _element(xf, base + offs[e], sxc, two)
                    bp[_U(d + e)] = v if valid[e] else zero


@numba.njit(inline="always", **_JIT)
def _shift_exact_unit(bp, g, r0, r1, j0, j1, wp, bias, c, geo, ct, ttmp, atail, o16):
    """Output channels [r0, r1) and output columns [j0, j1) of group g, the columns counted
    over all images one after the other (column j: position j % HoWo of image j // HoWo).

    The shifted GEMM of ``_shift_unit`` computes every column of the input's grid, so on small
    planes a 7x7 output costs an 8x8 grid (the shared pad column, the pad row folded into the
    last sliver): 64 columns for 49. Here B was packed whole in the packing phase
    (``_pack_b_exact``), sliver by sliver of exact output columns across the images: 392
    columns of a batch of 8 are 13 slivers, not 16, and threads may split the weight's rows
    evenly without packing B twice. ``wp``: the packed weight, or with geo[G_AINPL] the weight
    as given, its rows read where they lie (``ukernel_taps_strided``; a last sliver of fewer
    than MR rows through its copy in ``atail``). ``o16``: as ``_shift_unit``'s, per tile."""
    K, Ho, Wo = geo[G_K], geo[G_HO], geo[G_WO]
    mc, kc, nc = geo[G_MC], geo[G_KC], geo[G_NC]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    mr, nr = tile(c)
    cg = geo[G_C] // geo[G_G]
    kg = K // geo[G_G]
    ntap = geo[G_R] * geo[G_S]
    kgpad = _cdiv(kg, mr) * mr
    a_tap = tap_stride(cg, kgpad)
    hw = Ho * Wo
    nsl = _cdiv(geo[G_N] * hw, nr)
    narrow = geo[G_NARROW]
    # geo[G_AINPL]: wp is the weight as given, its rows ars apart (a last sliver of fewer than
    # MR rows through a copy in atail: read where it lies, it would run past the weight)
    ars = cg * ntap if geo[G_AINPL] != 0 else 0
    for jc in range(j0, j1, nc):
        nb = min(nc, j1 - jc)
        for cb in range(0, cg, kc):
            kb = min(kc, cg - cb)
            sl_words = ntap * kb * nr
            bblk = geo[G_XPOFF] + (g * cg + cb) * nsl * ntap * nr
            for tp in range(ntap):
                ttmp[tp] = tp * kb * nr
            first, last = cb == 0, cb + kb >= cg
            acc = 0 if first else 1
            for ic in range(r0, r1, mc):
                mb = min(mc, r1 - ic)
                aoff = g * ntap * a_tap + cb * kgpad + ic * kb
                if ars != 0 and mb % mr != 0:
                    _sliver_rows(wp, (g * kg + ic + mb // mr * mr) * ars + cb * ntap, ars,
                                 mb % mr, kb, ntap, atail)
                for j in range(jc, jc + nb, nr):
                    cols = min(nr, jc + nb - j)
                    bo = bblk + (j // nr) * sl_words
                    n0 = j // hw
                    pos0 = j - n0 * hw
                    inside = pos0 + cols <= hw
                    for i0 in range(0, mb, mr):
                        rows = min(mr, mb - i0)
                        crow = g * kg + ic + i0
                        if ars == 0:
                            wa, ao, rs = wp, aoff + i0 * kb, ars
                        elif rows == mr:
                            wa, ao, rs = wp, crow * ars + cb * ntap, ars
                        else:
                            wa, ao, rs = atail, _I(0), kb * ntap
                        if inside and rows == mr and cols == nr:
                            co = (n0 * K + crow) * hw + pos0
                            if rs == 0:
                                ukernel_taps(kb, ntap, ttmp, wa, ao, a_tap, bp, bo, nr, c, co,
                                             hw, acc)
                            else:
                                ukernel_taps_strided(kb, ntap, ttmp, wa, ao, rs, ntap, _I(1),
                                                     bp, bo, nr, c, co, hw, acc)
                        else:  # (a last sliver's columns on narrow tiles)
                            _taps_pieces(kb, ntap, ttmp, wa, ao, a_tap, rs, bp, bo, nr, ct,
                                         _I(0), nr, _I(0), cols, nr, narrow)
                            _tile_to_images(c, ct, j, cols, rows, hw, K, crow, first)
                        if last:  # per image the sliver crosses
                            _epilogue_images(c, j, cols, rows, hw, K, crow, bias, has_bias,
                                             act)
                            if o16.size > 0:
                                _narrow_images(c, o16, j, cols, rows, hw, K, crow)


@numba.njit(inline="always", **_JIT)
def _tap_offsets(geo, toffs):
    """Tap (kr, ks)'s shift in the padded copy: its stride phase's plane (ry % sh, rx % sw)
    plus its shift within it, from a plane's first grid column (past geo[G_LEAD])."""
    sh, sw, gw = geo[G_SH], geo[G_SW], geo[G_GW]
    for tp in range(geo[G_R] * geo[G_S]):
        kr = tp // geo[G_S]
        ry, rx = kr * geo[G_DH], (tp - kr * geo[G_S]) * geo[G_DW]
        toffs[tp] = (((ry % sh) * sw + rx % sw) * geo[G_PHASE] + (ry // sh) * gw + rx // sw
                     - geo[G_LEAD])


@numba.njit(inline="always", **_JIT)
def _tap_pairs(t, nthr, xp, geo):
    """The bfloat16 shifted GEMM's B where the weight is read where it lies (geo[G_QPITCH] > 0):
    from each padded copy plane of channel pairs (``_pad_planes``, the same share of units, so
    this thread wrote them), the planes of its tap pairs.

    A weight row (K, Cg, R, S) as given pairs its bfloat16 neighbours along K = (c, r, s): for
    channels 2p, 2p + 1, flat element e = c' * R*S + tap (c' = 0, 1), pair q of the row's
    uint32 words is elements 2q and 2q + 1, so two taps of one channel, or the last tap of
    channel 2p and the first of 2p + 1 (R*S odd). Pseudo-tap q's plane holds, under grid column
    j, the bfloat16 pair the two elements multiply: the input under each of their taps, from
    its half of the channel-pair plane. Then the weight needs no packing (``_taps`` on its
    uint32 rows, ``ars``), where packing it took a quarter of a deep small-plane layer's call
    (512 ch 7 px, batch 1, Zen 4). Columns past the grid's last output are zero."""
    N, C = geo[G_N], geo[G_C]
    ntap = geo[G_R] * geo[G_S]
    gw, Ho, Wo = geo[G_GW], geo[G_HO], geo[G_WO]
    qpitch, pitch = geo[G_QPITCH], geo[G_XPITCH]
    ncols = (Ho - 1) * gw + Wo
    toffs = np.empty(ntap, np.int64)
    _tap_offsets(geo, toffs)
    lo16 = numba.uint32(0xFFFF)
    u0, u1 = _share(t, nthr, N * C)
    for u in range(u0, u1):
        src = geo[G_XPOFF] + geo[G_LEAD] + u * pitch
        for q in range(ntap):
            ea, ta = divmod(2 * q, ntap)
            eb, tb = divmod(2 * q + 1, ntap)
            oa, ob = src + toffs[ta], src + toffs[tb]
            sa, sb = numba.uint32(16 * ea), numba.uint32(16 * eb)
            d = geo[G_QOFF] + (u * ntap + q) * qpitch
            for j in range(ncols):
                a = (xp[_U(oa + j)] >> sa) & lo16
                b = (xp[_U(ob + j)] >> sb) & lo16
                xp[_U(d + j)] = a | (b << numba.uint32(16))
            for j in range(ncols, qpitch):
                xp[_U(d + j)] = numba.uint32(0)


@numba.njit(inline="always", **_JIT)
def _fwd_shift(t, nthr, xf, xlo, sx, wp, xpb, bias, c, geo, o16):
    N, C, K, G, Ho, Wo = geo[G_N], geo[G_C], geo[G_K], geo[G_G], geo[G_HO], geo[G_WO]
    mc, nc, pm, pn = geo[G_MC], geo[G_NC], geo[G_PM], geo[G_PN]
    gw = geo[G_GW]
    sxn, sxc = sx[0], sx[1]
    mr, nr = tile(c)
    cg, kg = C // G, K // G
    ncols = (Ho - 1) * gw + Wo  # grid columns that hold an output
    msl, nsl = _cdiv(kg, mr), _cdiv(ncols, nr)
    units = (1 if geo[G_PACKB] != 0 else N) * G * pm * pn
    u0, u1 = _share(t, nthr, units)
    if u1 <= u0:
        return
    ct = np.empty(mr * nr, c.dtype)
    ntap = geo[G_R] * geo[G_S]
    ttmp = np.empty(ntap, np.int64)
    if geo[G_PACKB] != 0:  # exact columns over all images (units: groups and shares)
        ncols = N * Ho * Wo
        nsl = _cdiv(ncols, nr)
        atail = np.empty(mr * geo[G_KC] * ntap if geo[G_AINPL] != 0 else 0, wp.dtype)
        for u in range(u0, u1):
            pi, mi, g, _ = _unit(u, pn, pm, G)
            r0, r1 = _split(mi, pm, msl, mr, kg)
            j0, j1 = _split(pi, pn, nsl, nr, ncols)
            _shift_exact_unit(xpb, g, r0, r1, j0, j1, wp, bias, c, geo, ct, ttmp, atail, o16)
        return
    tmpb = np.empty(ntap * geo[G_KC] * nr, wp.dtype)
    # geo[G_AINPL]: wp is the weight as given, read in place (rows cg * ntap apart; with
    # AINPL_COPY each sliver of rows through a copy in atail)
    ars = cg * ntap if geo[G_AINPL] != 0 else 0
    atail = np.empty(_cdiv(mc, mr) * mr * geo[G_KC] * ntap if ars != 0 else 0, wp.dtype)
    toffs = np.empty(ntap, np.int64)
    qpitch = geo[G_QPITCH]
    if qpitch > 0:  # B: the tap pairs' planes (_tap_pairs), pseudo-tap q's at q * qpitch
        for tp in range(ntap):
            toffs[tp] = tp * qpitch
    else:
        _tap_offsets(geo, toffs)
    junk = gw != Wo
    scr = np.empty((_cdiv(mc, mr) * mr) * (_cdiv(nc, nr) * nr) if junk else 0, c.dtype)
    for u in range(u0, u1):
        pi, mi, g, n = _unit(u, pn, pm, G)
        r0, r1 = _split(mi, pm, msl, mr, kg)
        j0, j1 = _split(pi, pn, nsl, nr, ncols)
        if geo[G_DIRECT] != 0:
            _shift_unit(xf, -xlo + n * sxn + g * cg * sxc, sxc, n, g, r0, r1, j0, j1, wp, ars,
                        atail, bias, c, geo, ct, tmpb, scr, toffs, ttmp, o16)
        elif qpitch > 0:
            ps = ntap * qpitch
            _shift_unit(xpb, geo[G_QOFF] + (n * C + g * cg) * ps, ps, n, g, r0, r1, j0, j1, wp,
                        ars, atail, bias, c, geo, ct, tmpb, scr, toffs, ttmp, o16)
        else:
            ps = geo[G_XPITCH]
            _shift_unit(xpb, geo[G_XPOFF] + geo[G_LEAD] + (n * C + g * cg) * ps, ps, n, g, r0,
                        r1, j0, j1, wp, ars, atail, bias, c, geo, ct, tmpb, scr, toffs, ttmp,
                        o16)


@numba.njit(inline="always", **_JIT)
def _taps9(wf, wo):
    """The nine weights of a 3x3 depthwise channel, wf[wo .. wo + 8], as a tuple (registers)."""
    return (wf[_U(wo)], wf[_U(wo + 1)], wf[_U(wo + 2)], wf[_U(wo + 3)], wf[_U(wo + 4)],
            wf[_U(wo + 5)], wf[_U(wo + 6)], wf[_U(wo + 7)], wf[_U(wo + 8)])


@numba.njit(inline="always", **_JIT)
def _plane_coords(H, W):
    """(row, col): int32 arrays of the row and column of each flat index of an H x W plane (the
    lane masks of the ``_stencil`` blocks)."""
    row = np.empty(H * W, np.int32)
    col = np.empty(H * W, np.int32)
    for p in range(H * W):
        row[p] = p // W
        col[p] = p - (p // W) * W
    return row, col


@numba.njit(inline="always", **_JIT)
def _dw3_line(c, o, xf, rt, rm, rb, top, bot, ws, b, lo, hi, sh):
    """c[o + ow] = b + the 3x3 stencil ``ws`` for output columns ow in [lo, hi), whose input
    columns sh*ow - 1 .. sh*ow + 1 all exist: ``rt``, ``rm``, ``rb`` index input column -1 of
    the rows above, at and below the centre; the row above (below) counts only when ``top``
    (``bot``): one pass, no tap of the padding multiplied (0 * Inf would be NaN)."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = ws
    if top and bot:
        for ow in range(lo, hi):
            q = sh * ow
            c[_U(o + ow)] = (w0 * xf[_U(rt + q)] + w1 * xf[_U(rt + q + 1)]
                             + w2 * xf[_U(rt + q + 2)] + w3 * xf[_U(rm + q)]
                             + w4 * xf[_U(rm + q + 1)] + w5 * xf[_U(rm + q + 2)]
                             + w6 * xf[_U(rb + q)] + w7 * xf[_U(rb + q + 1)]
                             + w8 * xf[_U(rb + q + 2)] + b)
    elif top:
        for ow in range(lo, hi):
            q = sh * ow
            c[_U(o + ow)] = (w0 * xf[_U(rt + q)] + w1 * xf[_U(rt + q + 1)]
                             + w2 * xf[_U(rt + q + 2)] + w3 * xf[_U(rm + q)]
                             + w4 * xf[_U(rm + q + 1)] + w5 * xf[_U(rm + q + 2)] + b)
    elif bot:
        for ow in range(lo, hi):
            q = sh * ow
            c[_U(o + ow)] = (w3 * xf[_U(rm + q)] + w4 * xf[_U(rm + q + 1)]
                             + w5 * xf[_U(rm + q + 2)] + w6 * xf[_U(rb + q)]
                             + w7 * xf[_U(rb + q + 1)] + w8 * xf[_U(rb + q + 2)] + b)
    else:
        for ow in range(lo, hi):
            q = sh * ow
            c[_U(o + ow)] = (w3 * xf[_U(rm + q)] + w4 * xf[_U(rm + q + 1)]
                             + w5 * xf[_U(rm + q + 2)] + b)


@numba.njit(inline="always", **_JIT)
def _dw3_direct(u0, u1, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise 3x3, pad 1 (top, left), stride 1 or 2, unit column stride: straight from the
    input, one output row per pass over all its valid input rows (no padded copy). Column 0
    (no input column -1) sums its valid taps directly; the interior columns go through
    ``_dw3_line``; the columns past them (whose last input column is past the plane) take the
    general loop. The bias is added as each output is computed."""
    K, H, W, Ho, Wo = geo[G_K], geo[G_H], geo[G_W], geo[G_HO], geo[G_WO]
    sh = geo[G_SH]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc, sxh, sxw = sx
    zero = c.dtype.type(0)
    # interior columns: ow >= 1 and ow*sh + 1 <= W - 1
    hi = max(1, min(Wo, (W - 2) // sh + 1))
    for u in range(u0, u1):
        n = u // K
        k = u - n * K
        xo = -xlo + n * sxn + k * sxc
        wo = k * 9
        ws = _taps9(wf, wo)
        b = bias[k] if has_bias else zero
        for oh in range(Ho):
            o = (u * Ho + oh) * Wo
            ih0 = oh * sh - 1
            top, bot = ih0 >= 0, ih0 + 2 < H
            rm = xo + (ih0 + 1) * sxh - 1  # input column -1 of the centre row
            _dw3_line(c, o, xf, rm - sxh, rm, rm + sxh, top, bot, ws, b, _I(1), hi, sh)
            if W >= 2:  # column 0: input columns 0 and 1
                v = ws[4] * xf[_U(rm + 1)] + ws[5] * xf[_U(rm + 2)]
                if top:
                    v = ws[1] * xf[_U(rm - sxh + 1)] + ws[2] * xf[_U(rm - sxh + 2)] + v
                if bot:
                    v += ws[7] * xf[_U(rm + sxh + 1)] + ws[8] * xf[_U(rm + sxh + 2)]
                c[_U(o)] = v + b
                ow = hi
            else:
                ow = 0
            while ow < Wo:  # the columns left: the general loop over the valid taps
                acc = zero
                for kr in range(3):
                    ih = ih0 + kr
                    if ih < 0 or ih >= H:
                        continue
                    for ks in range(3):
                        iw = ow * sh - 1 + ks
                        if iw < 0 or iw >= W:
                            continue
                        acc += ws[kr * 3 + ks] * xf[_U(xo + ih * sxh + iw)]
                c[_U(o + ow)] = acc + b
                ow += 1
            if act != ACT_NONE:
                act_span(c, o, Wo, act)


# Outputs the depthwise loops compute per step (``_stencil.LANES``): one zmm of float32 (two
# ymm). A fixed trip count compiles to straight vector code; a loop over a 7-14 px plane's
# interior (33 to 170 outputs) ran largely in the scalar remainder of LLVM's 64-wide vectorised
# loop.
_DW_LANES = LANES


@numba.njit(inline="always", **_JIT)
def _dw9(xf, q, W, ws, b):
    """b + the 3x3 stencil ``ws`` at input index q (tap (0, 0)) of a plane with row pitch W."""
    return (ws[0] * xf[_U(q)] + ws[1] * xf[_U(q + 1)] + ws[2] * xf[_U(q + 2)]
            + ws[3] * xf[_U(q + W)] + ws[4] * xf[_U(q + W + 1)] + ws[5] * xf[_U(q + W + 2)]
            + ws[6] * xf[_U(q + 2 * W)] + ws[7] * xf[_U(q + 2 * W + 1)]
            + ws[8] * xf[_U(q + 2 * W + 2)] + b)


@numba.njit(inline="always", **_JIT)
def _dw3_flat(u0, u1, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise 3x3, pad 1, stride 1 over planes with contiguous rows (pitch W), output the
    same size: every tap is a constant shift of the flattened plane, so rows 1 .. H-2 are one
    flat loop straight from the input (no padded copy, no per-row loop of W <= 16 lanes), in
    blocks of _DW_LANES outputs, the last block overlapping the one before (recomputing an
    output is harmless). Columns 0 and W-1 wrap into the neighbouring rows in that loop and are
    recomputed from their six valid taps afterwards (four at the corners); the first and last
    rows sum their six valid taps. The bias is added as each output is computed."""
    K, H, W = geo[G_K], geo[G_H], geo[G_W]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc = sx[0], sx[1]
    hw = H * W
    zero = c.dtype.type(0)
    lo, hi = W + 1, hw - W - 1  # the flat loop's outputs
    for u in range(u0, u1):
        n = u // K
        k = u - n * K
        xo = -xlo + n * sxn + k * sxc
        o = u * hw
        wo = k * 9
        ws = _taps9(wf, wo)
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = ws
        b = bias[k] if has_bias else zero
        a = xo - W - 1  # the input index of output j's tap (0, 0) is a + j
        if hi - lo >= _DW_LANES:
            j = lo
            while j < hi:
                j = min(j, hi - _DW_LANES)
                for e in range(_DW_LANES):
                    c[_U(o + j + e)] = _dw9(xf, a + j + e, W, ws, b)
                j += _DW_LANES
        else:
            for j in range(lo, hi):
                c[_U(o + j)] = _dw9(xf, a + j, W, ws, b)
        for j in range(1, W - 1):  # row 0: input rows 0 and 1
            q = xo + j - 1
            c[_U(o + j)] = (w3 * xf[_U(q)] + w4 * xf[_U(q + 1)] + w5 * xf[_U(q + 2)]
                            + w6 * xf[_U(q + W)] + w7 * xf[_U(q + W + 1)]
                            + w8 * xf[_U(q + W + 2)] + b)
        for j in range(hw - W + 1, hw - 1):  # row H-1: input rows H-2 and H-1
            q = a + j
            c[_U(o + j)] = (w0 * xf[_U(q)] + w1 * xf[_U(q + 1)] + w2 * xf[_U(q + 2)]
                            + w3 * xf[_U(q + W)] + w4 * xf[_U(q + W + 1)]
                            + w5 * xf[_U(q + W + 2)] + b)
        for oh in range(1, H - 1):  # columns 0 and W-1: no taps left / right of the plane
            q = xo + (oh - 1) * W  # input row oh - 1, column 0
            c[_U(o + oh * W)] = (w1 * xf[_U(q)] + w2 * xf[_U(q + 1)] + w4 * xf[_U(q + W)]
                                 + w5 * xf[_U(q + W + 1)] + w7 * xf[_U(q + 2 * W)]
                                 + w8 * xf[_U(q + 2 * W + 1)] + b)
            q += W - 2
            c[_U(o + oh * W + W - 1)] = (w0 * xf[_U(q)] + w1 * xf[_U(q + 1)]
                                         + w3 * xf[_U(q + W)] + w4 * xf[_U(q + W + 1)]
                                         + w6 * xf[_U(q + 2 * W)] + w7 * xf[_U(q + 2 * W + 1)]
                                         + b)
        q = xo  # the corners: input rows 0 and 1 (top), H-2 and H-1 (bottom)
        c[_U(o)] = w4 * xf[_U(q)] + w5 * xf[_U(q + 1)] + w7 * xf[_U(q + W)] + w8 * xf[
            _U(q + W + 1)] + b
        q = xo + W - 2
        c[_U(o + W - 1)] = w3 * xf[_U(q)] + w4 * xf[_U(q + 1)] + w6 * xf[_U(q + W)] + w7 * xf[
            _U(q + W + 1)] + b
        q = xo + (H - 2) * W
        c[_U(o + hw - W)] = w1 * xf[_U(q)] + w2 * xf[_U(q + 1)] + w4 * xf[_U(q + W)] + w5 * xf[
            _U(q + W + 1)] + b
        q += W - 2
        c[_U(o + hw - 1)] = w0 * xf[_U(q)] + w1 * xf[_U(q + 1)] + w3 * xf[_U(q + W)] + w4 * xf[
            _U(q + W + 1)] + b
        if act != ACT_NONE:
            act_span(c, o, hw, act)


@numba.njit(inline="always", **_JIT)
def _dw3_masked(u0, u1, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise 3x3, pad 1, stride 1 over planes with contiguous rows (pitch W), output the
    same size: the whole plane, borders included, in blocks of _DW_LANES flat outputs (the last
    overlapping the one before) through ``dw3_block``, each tap read at its constant shift and
    dropped by a lane mask where it falls outside the plane. (``_dw3_flat`` sums the border
    outputs one by one, which on a 7-14 px plane was most of its time, and its vectorised loop
    checked for overlap between input and output on every entry.) A plane whose first or last
    block would read past the input buffer's ends is left to ``_dw3_flat``."""
    K, H, W = geo[G_K], geo[G_H], geo[G_W]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc = sx[0], sx[1]
    hw = H * W
    zero = c.dtype.type(0)
    row, col = _plane_coords(H, W)
    last_row, last_col = H - 1, W - 1
    for u in range(u0, u1):
        n = u // K
        k = u - n * K
        xo = -xlo + n * sxn + k * sxc
        if xo - W - 1 < 0 or xo + hw + W + 1 > xf.size:
            _dw3_flat(u, u + 1, xf, xlo, sx, wf, bias, c, geo)
            continue
        o = u * hw
        wo = k * 9
        ws = _taps9(wf, wo)
        b = bias[k] if has_bias else zero
        j = 0
        while j < hw:
            j = min(j, hw - _DW_LANES)
            dw3_block(xf, xo + j, W, c, o + j, col, row, j, last_col, last_row, ws, b)
            j += _DW_LANES
        if act != ACT_NONE:
            act_span(c, o, hw, act)


@numba.njit(inline="always", **_JIT)
def _dw3_s2(u0, u1, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise 3x3, pad 1, stride 2, unit column stride: each output row in blocks of
    _DW_LANES outputs through ``dw3s2_block`` (the last block of a row overlapping the one
    before; a row shorter than a block writes on into the rows after it, which are computed
    later, or through ``tmp`` at the plane's end). A plane whose vector reads would leave the
    input buffer takes ``_dw3_direct``."""
    K, H, W, Ho, Wo = geo[G_K], geo[G_H], geo[G_W], geo[G_HO], geo[G_WO]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc, sxh = sx[0], sx[1], sx[2]
    zero = c.dtype.type(0)
    tmp = np.empty(_DW_LANES, c.dtype)
    last_ow0 = max(0, Wo - _DW_LANES)  # the last block's first column
    span = 2 * (Ho - 1) * sxh + 2 * last_ow0  # from the first block's centre tap to the last's
    for u in range(u0, u1):
        n = u // K
        k = u - n * K
        xo = -xlo + n * sxn + k * sxc
        if xo - sxh - 1 < 0 or xo + span + sxh + 2 * _DW_LANES > xf.size:
            _dw3_direct(u, u + 1, xf, xlo, sx, wf, bias, c, geo)
            continue
        wo = k * 9
        ws = _taps9(wf, wo)
        b = bias[k] if has_bias else zero
        plane_end = (u + 1) * Ho * Wo
        for oh in range(Ho):
            top, bot = _I(oh > 0), _I(2 * oh + 1 < H)
            q = xo + 2 * oh * sxh
            o = (u * Ho + oh) * Wo
            ow0 = 0
            while ow0 < Wo:
                ow0 = min(ow0, last_ow0)
                if o + ow0 + _DW_LANES <= plane_end:
                    dw3s2_block(xf, q + 2 * ow0, sxh, c, o + ow0, ow0, W - 1, top, bot, ws, b)
                else:  # the plane's last row, shorter than a block
                    dw3s2_block(xf, q + 2 * ow0, sxh, tmp, _I(0), ow0, W - 1, top, bot, ws, b)
                    for e in range(Wo - ow0):
                        c[_U(o + ow0 + e)] = tmp[e]
                ow0 += _DW_LANES
        if act != ACT_NONE:
            act_span(c, u * Ho * Wo, Ho * Wo, act)


@numba.njit(inline="always", **_JIT)
def _dw_nchw(t, nthr, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise (groups == C), NCHW output, one (image, channel) plane at a time.

    The input plane is copied, zero-padded and split into ``sw`` column phases, into a buffer
    whose rows are ``Wq`` wide; with the output computed on a grid of row pitch ``P = sh * Wq``,
    every tap becomes a constant shift of the flattened plane, so one long vectorised loop over
    the whole plane does all taps (3x3: all nine at once, in registers). The columns past Wo of
    that grid are discarded when the plane is copied out with the bias and activation.
    """
    N, C, H, W, K, R, S, Ho, Wo = (geo[G_N], geo[G_C], geo[G_H], geo[G_W], geo[G_K], geo[G_R],
                                   geo[G_S], geo[G_HO], geo[G_WO])
    sh, sw, pt, pl, dh, dw = _window(geo)
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc, sxh, sxw = sx
    mult = K // C
    zero = c.dtype.type(0)
    units = N * K
    u0, u1 = _share(t, nthr, units)
    if u1 <= u0:
        return
    if (R == 3 and S == 3 and dh == 1 and dw == 1 and pt == 1 and pl == 1 and sh == 1
            and sw == 1 and sxw == 1 and sxh == W and mult == 1 and Ho == H and Wo == W
            and H >= 3 and W >= 3):
        if H * W >= _DW_LANES:
            _dw3_masked(u0, u1, xf, xlo, sx, wf, bias, c, geo)
        else:
            _dw3_flat(u0, u1, xf, xlo, sx, wf, bias, c, geo)
        return
    if (R == 3 and S == 3 and dh == 1 and dw == 1 and pt == 1 and pl == 1 and sh == 2
            and sw == 2 and sxw == 1 and mult == 1):
        _dw3_s2(u0, u1, xf, xlo, sx, wf, bias, c, geo)
        return
    if (R == 3 and S == 3 and dh == 1 and dw == 1 and pt == 1 and pl == 1 and sh == sw
            and sxw == 1 and mult == 1 and sh == 1 and W >= 96):
        # wide stride-1 planes whose rows are not contiguous
        _dw3_direct(u0, u1, xf, xlo, sx, wf, bias, c, geo)
        return
    wq = Wo + ((S - 1) * dw) // sw
    rows = Ho * sh + (R - 1) * dh + 1
    plane = rows * wq
    pitch = sh * wq
    ln = Ho * pitch
    xp = np.empty(sw * plane, c.dtype)
    tb = np.empty(ln, c.dtype)
    offs = np.empty(R * S, np.int64)
    for kr in range(R):
        for ks in range(S):
            offs[kr * S + ks] = ((ks * dw) % sw) * plane + kr * dh * wq + (ks * dw) // sw
    last = -1
    for u in range(u0, u1):
        n = u // K
        k = u - n * K
        src = n * C + k // mult
        if src != last:  # build the padded, phase-split plane
            last = src
            xo = -xlo + n * sxn + (k // mult) * sxc
            for ph in range(sw):
                lo, hi = _valid_range(ph - pl, sw, wq, W)
                for rp in range(rows):
                    ih = rp - pt
                    d = ph * plane + rp * wq
                    if ih < 0 or ih >= H:
                        for e in range(wq):
                            xp[_U(d + e)] = zero
                        continue
                    o = xo + ih * sxh + (ph - pl) * sxw
                    for e in range(lo):
                        xp[_U(d + e)] = zero
                    if sw * sxw == 1:
                        for e in range(lo, hi):
                            xp[_U(d + e)] = xf[_U(o + e)]
                    else:
                        st = sw * sxw
                        for e in range(lo, hi):
                            xp[_U(d + e)] = xf[_U(o + e * st)]
                    for e in range(hi, wq):
                        xp[_U(d + e)] = zero
        wo = k * R * S
        if R * S == 9:
            w0, w1, w2 = wf[_U(wo)], wf[_U(wo + 1)], wf[_U(wo + 2)]
            w3, w4, w5 = wf[_U(wo + 3)], wf[_U(wo + 4)], wf[_U(wo + 5)]
            w6, w7, w8 = wf[_U(wo + 6)], wf[_U(wo + 7)], wf[_U(wo + 8)]
            o0, o1, o2, o3, o4 = offs[0], offs[1], offs[2], offs[3], offs[4]
            o5, o6, o7, o8 = offs[5], offs[6], offs[7], offs[8]
            for j in range(ln):
                tb[_U(j)] = (w0 * xp[_U(j + o0)] + w1 * xp[_U(j + o1)] + w2 * xp[_U(j + o2)]
                             + w3 * xp[_U(j + o3)] + w4 * xp[_U(j + o4)] + w5 * xp[_U(j + o5)]
                             + w6 * xp[_U(j + o6)] + w7 * xp[_U(j + o7)] + w8 * xp[_U(j + o8)])
        else:
            for j in range(ln):
                tb[_U(j)] = zero
            for tap in range(R * S):
                wv = wf[_U(wo + tap)]
                ot = offs[tap]
                for j in range(ln):
                    tb[_U(j)] += wv * xp[_U(j + ot)]
        b = bias[k] if has_bias else zero
        for oh in range(Ho):
            o = (u * Ho + oh) * Wo
            s0 = oh * pitch
            for e in range(Wo):
                c[_U(o + e)] = tb[_U(s0 + e)] + b
            if act != ACT_NONE:
                act_span(c, o, Wo, act)


@numba.njit(inline="always", **_JIT)
def _dw3_nhwc_rows(u0, u1, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise 3x3, pad 1 at the top and left, channels contiguous, at least _DW_LANES
    channels and PIX output columns: output rows ``u0 .. u1`` (as units n*Ho + oh) through
    ``dwc_block``, _DW_LANES channels by PIX pixels at a time with the nine weight vectors
    loaded once per call (the last channel block and the last pixel group overlap the ones
    before). Border pixels drop their missing taps by flags, not by a second pass."""
    K, H, W, Ho, Wo = geo[G_K], geo[G_H], geo[G_W], geo[G_HO], geo[G_WO]
    sh, sw = geo[G_SH], geo[G_SW]
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxh, sxw = sx[0], sx[2], sx[3]
    all_taps = F_BIAS | F_TOP | F_BOT | (((1 << (2 * PIX)) - 1) << F_LEFT)
    groups = (Wo + PIX - 1) // PIX
    gcols = np.empty(groups, np.int64)  # each pixel group's columns' flag bits
    for g in range(groups):
        ow0 = min(g * PIX, Wo - PIX)
        f = 0
        for j in range(PIX):
            iw = (ow0 + j) * sw  # the centre column
            if iw >= 1:
                f |= 1 << (F_LEFT + j)
            if iw + 1 < W:
                f |= 1 << (F_LEFT + PIX + j)
        gcols[g] = f
    for u in range(u0, u1):
        n = u // Ho
        oh = u - n * Ho
        orow = u * Wo * K
        ih = oh * sh  # the centre row
        rows = (F_BIAS if has_bias else 0) | (F_TOP if ih >= 1 else 0) | (
            F_BOT if ih + 1 < H else 0)
        xrow = -xlo + n * sxn + ih * sxh
        for g in range(groups):
            ow0 = min(g * PIX, Wo - PIX)
            flags = rows | gcols[g]
            inner = flags | F_BIAS == all_taps
            k0 = 0
            while k0 < K:
                k0 = min(k0, K - _DW_LANES)
                if inner:
                    dwc_block_inner(xf, xrow + ow0 * sw * sxw + k0, sw * sxw, sxh, sxw, c,
                                    orow + ow0 * K + k0, K, wf, k0, K, bias, k0, flags)
                else:
                    dwc_block(xf, xrow + ow0 * sw * sxw + k0, sw * sxw, sxh, sxw, c,
                              orow + ow0 * K + k0, K, wf, k0, K, bias, k0, flags)
                k0 += _DW_LANES
        if act != ACT_NONE:
            act_span(c, orow, Wo * K, act)


@numba.njit(inline="always", **_JIT)
def _dw3_wgrad_plane(xf, xo, df, yo, H, W, sums):
    """sums[t] += the depthwise 3x3 (pad 1, stride 1) weight gradient of one plane, tap t: the
    plain loops, for planes whose vector blocks would read outside the input buffer."""
    for oh in range(H):
        for ow in range(W):
            g = df[_U(yo + oh * W + ow)]
            for kr in range(3):
                ih = oh + kr - 1
                if ih < 0 or ih >= H:
                    continue
                for ks in range(3):
                    iw = ow + ks - 1
                    if 0 <= iw < W:
                        sums[kr * 3 + ks] += g * xf[_U(xo + ih * W + iw)]


@numba.njit(inline="always", **_JIT)
def _dw3_wgrad(t, nthr, xf, xlo, sx, df, dlo, sd, dwf, geo):
    """dW of a depthwise 3x3, pad 1, stride 1 conv over planes with contiguous rows (x and dy of
    the same H x W): channels split between threads, each channel's nine sums over all images
    kept per lane (``dw3_wgrad_block``, blocks of _DW_LANES flat outputs with their taps masked
    as in ``_dw3_masked``) and added up once at the end."""
    N, K, H, W = geo[G_N], geo[G_K], geo[G_H], geo[G_W]
    sxn, sxc = sx[0], sx[1]
    sdn, sdc = sd[0], sd[1]
    hw = H * W
    u0, u1 = _share(t, nthr, K)
    if u1 <= u0:
        return
    row, col = _plane_coords(H, W)
    acc = np.empty(9 * _DW_LANES, dwf.dtype)
    sums = np.empty(9, dwf.dtype)
    for k in range(u0, u1):
        acc[:] = 0
        sums[:] = 0
        for n in range(N):
            xo = -xlo + n * sxn + k * sxc
            yo = -dlo + n * sdn + k * sdc
            if hw < _DW_LANES or xo - W - 1 < 0 or xo + hw + W + 1 > xf.size:
                _dw3_wgrad_plane(xf, xo, df, yo, H, W, sums)
                continue
            done = 0  # outputs of this plane counted so far
            while done < hw:
                j = min(done, hw - _DW_LANES)
                dw3_wgrad_block(xf, xo + j, W, df, yo + j, col, row, j, W - 1, H - 1,
                                done - j, acc)
                done = j + _DW_LANES
        for tap in range(9):
            v = sums[tap]
            for e in range(_DW_LANES):
                v += acc[tap * _DW_LANES + e]
            dwf[k * 9 + tap] = v


@numba.njit(inline="always", **_JIT)
def _dw_nhwc(t, nthr, xf, xlo, sx, wf, bias, c, geo):
    """Depthwise, NHWC output: one output row (Wo x K) at a time, vectorised along channels.
    ``wf`` is the weight as (R, S, K) contiguous. 3x3 with contiguous channels (one output
    channel per input channel): the interior of each row sums all nine taps in registers; the
    border columns (and rows that touch the padding) add the valid taps one by one."""
    N, C, H, W, K, R, S, Ho, Wo = (geo[G_N], geo[G_C], geo[G_H], geo[G_W], geo[G_K], geo[G_R],
                                   geo[G_S], geo[G_HO], geo[G_WO])
    sh, sw, pt, pl, dh, dw = _window(geo)
    has_bias, act = geo[G_HAS_BIAS] != 0, geo[G_ACT]
    sxn, sxc, sxh, sxw = sx
    mult = K // C
    zero = c.dtype.type(0)
    units = N * Ho
    if (R == 3 and S == 3 and mult == 1 and sxc == 1 and pt == 1 and pl == 1 and dh == 1
            and dw == 1 and K >= _DW_LANES and Wo >= PIX and (Ho - 1) * sh < H
            and (Wo - 1) * sw < W):
        u0, u1 = _share(t, nthr, units)
        _dw3_nhwc_rows(u0, u1, xf, xlo, sx, wf, bias, c, geo)
        return
    fast3 = R == 3 and S == 3 and mult == 1 and sxc == 1
    # output columns whose three taps are all inside the image
    lo0, hi0 = _valid_range(-pl, sw, Wo, W)
    lo2, hi2 = _valid_range(2 * dw - pl, sw, Wo, W)
    ilo, ihi = max(lo0, lo2), min(hi0, hi2)
    if ihi < ilo:
        ihi = ilo
    u0, u1 = _share(t, nthr, units)
    for u in range(u0, u1):
        n = u // Ho
        oh = u - n * Ho
        orow = u * Wo * K
        ih0 = oh * sh - pt
        xn = -xlo + n * sxn
        rows_ok = fast3 and ih0 >= 0 and ih0 + 2 * dh < H
        for ow in range(Wo):
            if rows_ok and ilo <= ow < ihi:
                continue
            o = orow + ow * K
            if has_bias:
                for k in range(K):
                    c[_U(o + k)] = bias[_U(k)]
            else:
                for k in range(K):
                    c[_U(o + k)] = zero
        if rows_ok:
            for ow in range(ilo, ihi):
                o = orow + ow * K
                a0 = xn + ih0 * sxh + (ow * sw - pl) * sxw
                a1 = a0 + dw * sxw
                a2 = a1 + dw * sxw
                b0 = a0 + dh * sxh
                b1 = a1 + dh * sxh
                b2 = a2 + dh * sxh
                d0 = b0 + dh * sxh
                d1 = b1 + dh * sxh
                d2 = b2 + dh * sxh
                for k in range(K):
                    acc = bias[_U(k)] if has_bias else zero
                    c[_U(o + k)] = (acc + wf[_U(k)] * xf[_U(a0 + k)]
                                    + wf[_U(K + k)] * xf[_U(a1 + k)]
                                    + wf[_U(2 * K + k)] * xf[_U(a2 + k)]
                                    + wf[_U(3 * K + k)] * xf[_U(b0 + k)]
                                    + wf[_U(4 * K + k)] * xf[_U(b1 + k)]
                                    + wf[_U(5 * K + k)] * xf[_U(b2 + k)]
                                    + wf[_U(6 * K + k)] * xf[_U(d0 + k)]
                                    + wf[_U(7 * K + k)] * xf[_U(d1 + k)]
                                    + wf[_U(8 * K + k)] * xf[_U(d2 + k)])
        for kr in range(R):
            ih = ih0 + kr * dh
            if ih < 0 or ih >= H:
                continue
            for ks in range(S):
                iwoff = ks * dw - pl
                lo, hi = _valid_range(iwoff, sw, Wo, W)
                wo = (kr * S + ks) * K
                for ow in range(lo, hi):
                    if rows_ok and ilo <= ow < ihi:
                        continue
                    o = orow + ow * K
                    xr = xn + ih * sxh + (ow * sw + iwoff) * sxw
                    if mult == 1 and sxc == 1:
                        for k in range(K):
                            c[_U(o + k)] += wf[_U(wo + k)] * xf[_U(xr + k)]
                    else:
                        for k in range(K):
                            c[_U(o + k)] += wf[_U(wo + k)] * xf[_U(xr + (k // mult) * sxc)]
        if act != ACT_NONE:
            act_span(c, orow, Wo * K, act)


@numba.njit(inline="always", **_JIT)
def _bwd_in(t, nthr, df, dlo, sd, wf, bias, dxf, geo):
    """dx (zeroed, strides geo[G_OS*]) += col2im(W^T @ dy); units: (image, group, channel part)."""
    N, C, H, W, K, R, S, Ho, Wo, G = (geo[G_N], geo[G_C], geo[G_H], geo[G_W], geo[G_K], geo[G_R],
                                      geo[G_S], geo[G_HO], geo[G_WO], geo[G_G])
    sh, sw, pt, pl, dh, dw = _window(geo)
    mc, kc, nc, pm = geo[G_MC], geo[G_KC], geo[G_NC], geo[G_PM]
    no, act0 = geo[G_HAS_BIAS] != 0, geo[G_ACT]  # runtime False, ACT_NONE (one specialisation)
    son, soc, soh, sow = geo[G_OSN], geo[G_OSC], geo[G_OSH], geo[G_OSW]
    sdn, sdc, sdw = sd[0], sd[1], sd[3]
    mr, nr = tile(dxf)
    cg, kg = C // G, K // G
    rs = R * S
    kred = cg * rs
    hw = Ho * Wo
    units = N * G * pm
    u0, u1 = _share(t, nthr, units)
    if u1 <= u0:
        return
    apack = np.empty(mc * kc, dxf.dtype)
    bpack = np.empty(nc * kc, dxf.dtype)
    cbuf = np.empty(mc * nc, dxf.dtype)
    ct = np.empty(mr * nr, dxf.dtype)
    for u in range(u0, u1):
        ci = u % pm
        rest = u // pm
        g = rest % G
        n = rest // G
        ch0, ch1 = ci * cg // pm, (ci + 1) * cg // pm
        p0, p1 = ch0 * rs, ch1 * rs
        for jc in range(0, hw, nc):
            nb = min(nc, hw - jc)
            for ic in range(p0, p1, mc):
                mb = min(mc, p1 - ic)
                for pc in range(0, kg, kc):
                    kb = min(kc, kg - pc)
                    pack_a(wf, (g * kg + pc) * kred + ic, _I(1), kred, mb, kb, apack, _I(0))
                    pack_b(df, -dlo + n * sdn + (g * kg + pc) * sdc + jc * sdw, sdc, sdw, kb, nb,
                           bpack, 0, 0, _cdiv(nb, nr))
                    macro_kernel(mb, nb, kb, apack, _I(0), bpack, _I(0), cbuf, _I(0), nb,
                                 pc == 0, no, ct, _I(0), bias, no, _I(0), act0)
                for q in range(mb):
                    p = ic + q
                    cc = p // rs
                    kr = (p - cc * rs) // S
                    ks = p - cc * rs - kr * S
                    col2im_row(cbuf, q * nb, dxf, n * son + (g * cg + cc) * soc, soh, sow, H, W,
                               Wo, sh, sw, kr * dh - pt, ks * dw - pl, jc, nb)


@numba.njit(inline="always", **_JIT)
def _bwd_w(t, nthr, xf, xlo, sx, df, dlo, sd, bias, dwf, geo):
    """dW (K, kred) = sum over images of dY_n @ col_n^T; units: (group, column part)."""
    N, C, H, W, K, R, S, Ho, Wo, G = (geo[G_N], geo[G_C], geo[G_H], geo[G_W], geo[G_K], geo[G_R],
                                      geo[G_S], geo[G_HO], geo[G_WO], geo[G_G])
    sh, sw, pt, pl, dh, dw = _window(geo)
    mc, kc, nc, pn = geo[G_MC], geo[G_KC], geo[G_NC], geo[G_PN]
    no, act0 = geo[G_HAS_BIAS] != 0, geo[G_ACT]  # runtime False, ACT_NONE (one specialisation)
    sxn, sxc, sxh, sxw = sx
    sdn, sdc, sdw = sd[0], sd[1], sd[3]
    mr, nr = tile(dwf)
    cg, kg = C // G, K // G
    rs = R * S
    kred = cg * rs
    hw = Ho * Wo
    nsl = _cdiv(kred, nr)
    units = G * pn
    u0, u1 = _share(t, nthr, units)
    if u1 <= u0:
        return
    apack = np.empty(mc * kc, dwf.dtype)
    bpack = np.empty(nc * kc, dwf.dtype)
    colb = np.empty(nc * kc, dwf.dtype)
    ct = np.empty(mr * nr, dwf.dtype)
    for u in range(u0, u1):
        pi = u % pn
        g = u // pn
        q0, q1 = _split(pi, pn, nsl, nr, kred)
        for pcol in range(q0, q1, nc):
            nb = min(nc, q1 - pcol)
            first = True
            for n in range(N):
                xo = -xlo + n * sxn + g * cg * sxc
                for jq in range(0, hw, kc):
                    kb = min(kc, hw - jq)
                    for e in range(nb):
                        p = pcol + e
                        cc = p // rs
                        kr = (p - cc * rs) // S
                        ks = p - cc * rs - kr * S
                        im2col_row(xf, xo + cc * sxc, sxh, sxw, H, W, Wo, sh, sw, kr * dh - pt,
                                   ks * dw - pl, jq, kb, colb, e * kb)
                    pack_b(colb, _I(0), _I(1), kb, kb, nb, bpack, _I(0), _I(0), _cdiv(nb, nr))
                    for ic in range(0, kg, mc):
                        mb = min(mc, kg - ic)
                        pack_a(df, -dlo + n * sdn + (g * kg + ic) * sdc + jq * sdw, sdc, sdw, mb,
                               kb, apack, 0)
                        macro_kernel(mb, nb, kb, apack, _I(0), bpack, _I(0), dwf,
                                     (g * kg + ic) * kred + pcol, kred, first, no, ct, _I(0),
                                     bias, no, _I(0), act0)
                    first = False


# ------------------------------------------------------------------------------ entry points

@numba.njit(inline="always", **_JIT)
def _flat4(a4):
    isz = a4.itemsize
    lo, ln = span(a4.shape, a4.strides, isz)
    st = (a4.strides[0] // isz, a4.strides[1] // isz, a4.strides[2] // isz, a4.strides[3] // isz)
    return flat_view(a4, lo, ln), lo, st


@numba.njit(**_JIT)
def fwd(t, nthr, phase, x4, wsrc, wp, xpb, bias, out1, geo, sync):
    """Forward. phase 0: pack the weight ``wsrc`` into ``wp`` (unless geo[G_WPACKED]: ``wp``
    holds it packed already) and, for the shifted GEMM, the zero-padded input into ``xpb`` (from
    geo[G_XPOFF]; ``xpb`` may be ``wp`` itself); phase 1: the convolution; phase 2: both, the
    shares meeting at ``_pool.barrier(sync)`` in between (one launch: ``_pool.run_synced``).
    geo[G_MODE]: MODE_KP (NCHW output, the weight read in place as A, nothing to pack), MODE_PK
    (NHWC output, the weight as packed B), MODE_SHIFT (NCHW output, the weight as packed A in
    tap-major order)."""
    mode = geo[G_MODE]
    xf, xlo, sx = _flat4(x4)
    if phase != 1:
        if mode == MODE_PK:  # (MODE_KP reads the weight where it lies)
            _pack_w(t, nthr, wsrc, wp, geo)
        elif mode == MODE_SHIFT and geo[G_WPACKED] == 0 and geo[G_AINPL] == 0:
            _pack_taps(t, nthr, wsrc, wp, geo)
        if mode == MODE_SHIFT and geo[G_PACKB] != 0:
            _pack_b_exact(t, nthr, xf, xlo, sx, xpb, geo)
        elif mode == MODE_SHIFT and geo[G_DIRECT] == 0:
            _pad_planes(t, nthr, xf, xlo, sx, xpb, geo)
        if phase == 0 or not barrier(sync, nthr):
            return
    if mode == MODE_PK:
        _fwd_pk(t, nthr, xf, xlo, sx, wp, bias, out1, geo)
    elif mode == MODE_SHIFT:  # (geo[G_AINPL]: the weight read where it lies)
        _fwd_shift(t, nthr, xf, xlo, sx, wsrc if geo[G_AINPL] != 0 else wp, xpb, bias, out1,
                   geo, np.empty(0, np.uint16))
    else:
        _fwd_kp(t, nthr, xf, xlo, sx, wsrc, bias, out1, geo)


@numba.njit(**_JIT)
def fwd_pairs(t, nthr, phase, x4, wsrc, wp, xpb, bias, out1, out16, geo, sync):
    """The shifted GEMM's forward (MODE_SHIFT) on bfloat16 bits (uint16 x4) through VDPBF16PS:
    phase 0 packs the weight (``wsrc``: bfloat16 bits, as pairs of channels) into ``wp`` (unless
    geo[G_WPACKED], or geo[G_AINPL]: read where it lies, against the planes of the input's tap
    pairs, ``_tap_pairs``) and the padded copy of x as channel pairs (``_pad_planes``) into
    ``xpb``; phase 1 convolves into the float32 ``out1`` and rounds each block, once final, to
    bfloat16 bits into ``out16`` (while it is in cache: no pass over the output after the
    launch); phase 2 both, as in ``fwd``.
    geo[G_C] counts channel pairs, geo[G_PAIRS] the channels per group."""
    xf, xlo, sx = _flat4(x4)
    if phase != 1:
        if geo[G_WPACKED] == 0 and geo[G_AINPL] == 0:
            _pack_taps(t, nthr, wsrc, wp, geo)
        if geo[G_PACKB] != 0:
            _pack_b_exact(t, nthr, xf, xlo, sx, xpb, geo)
        else:
            _pad_planes(t, nthr, xf, xlo, sx, xpb, geo)
            if geo[G_QPITCH] > 0:
                _tap_pairs(t, nthr, xpb, geo)
        if phase == 0 or not barrier(sync, nthr):
            return
    # B is always the padded copy in xpb (never x in place: x holds single channels, not pairs),
    # so xpb stands in for x: the in-place branch then compiles for uint32 too. geo[G_AINPL]:
    # the weight's rows read where they lie, as uint32 pairs along K (its flat element count
    # even: Cg even, checked by the geometry)
    wa = wsrc[: wsrc.size // 2 * 2].view(np.uint32) if geo[G_AINPL] != 0 else wp
    _fwd_shift(t, nthr, xpb, 0, sx, wa, xpb, bias, out1, geo, out16)


@numba.njit(**_JIT)
def all_finite(a):
    """No NaN or Inf in ``a`` (numpy's isfinite().all() as one compact loop: inside a torch model
    numpy's ufunc machinery took 45 us per call when cold, this a few)."""
    f = a.reshape(a.size)  # (C-contiguous: a view)
    ok = True
    for i in range(f.size):
        v = f[i]
        ok &= v - v == 0  # NaN - NaN and Inf - Inf are NaN (an AND, not an exit: it vectorises)
    return ok


@numba.njit(**_JIT)
def dw(t, nthr, x4, w1, bias, out1, geo):
    """Depthwise forward; geo[G_MODE]: 0 NCHW, 1 NHWC (w1 then (R, S, K))."""
    xf, xlo, sx = _flat4(x4)
    if geo[G_MODE] != 0:
        _dw_nhwc(t, nthr, xf, xlo, sx, w1, bias, out1, geo)
    else:
        _dw_nchw(t, nthr, xf, xlo, sx, w1, bias, out1, geo)


@numba.njit(**_JIT)
def dw_wgrad(t, nthr, x4, dy4, out1, geo):
    """Depthwise 3x3 weight gradient (``_dw3_wgrad``), (K, 9) into out1."""
    xf, xlo, sx = _flat4(x4)
    df, dlo, sd = _flat4(dy4)
    _dw3_wgrad(t, nthr, xf, xlo, sx, df, dlo, sd, out1, geo)


@numba.njit(**_JIT)
def bwd(t, nthr, x4, dy4, w1, bias, out1, geo):
    """geo[G_MODE] 0: dx (into out1, zeroed, strides geo[G_OS*]) from dy4 and the weight w1;
    1: dW (into out1, (K, Cg*R*S)) from x4 and dy4."""
    df, dlo, sd = _flat4(dy4)
    if geo[G_MODE] == 0:
        _bwd_in(t, nthr, df, dlo, sd, w1, bias, out1, geo)
    else:
        xf, xlo, sx = _flat4(x4)
        _bwd_w(t, nthr, xf, xlo, sx, df, dlo, sd, bias, out1, geo)
