"""The pixel-rows convolution: output pixels as the micro-kernel's rows, output channels as its
columns (the forward's config kernel "rows", NCHW, one group).

The shifted GEMM (``_conv``) puts the weight's rows (output channels) in A and the output's
pixels in the vector columns of B. On small planes (7 and 14 px) a batch's pixels are few
columns and the columns a grid computes are partly dropped, or, where B is packed over exact
columns, every tap's input is copied into B (nine words per input word of a 3x3 conv: 7.2 MB for
512 channels at 7 px, batch 8), and the threads split the weight's rows unevenly (43 slivers of
12). Here the roles turn round:

* A's MR rows are MR output pixels of any images (``roffs``: where each one's first tap lies in
  a zero-padded copy of the input), its columns the input channels, a plane apart, read where
  they lie in that copy: a tap is an offset (``toffs``), so nothing is packed per tap.
* B is the weight packed as NR-wide slivers of output channels: sliver ``kb`` holds, tap by
  tap and channel by channel, the NR weights ``w[kb*NR + j, c, r, s]`` (zeros past K); all of it
  packed once and kept across calls for a torch weight under ``kernelkit.frozen_weights()``
  (``conv2d._kept_pack``), else a sliver at a time by the share that reads it.
* C tiles (MR pixels x NR channels) go to a per-thread scratch, accumulated over taps and channel
  blocks, then out to NCHW with the bias and the activation.

Threads split the output-channel slivers (512 channels: 16 slivers, 8 each), then the pixels.
Measured on ResNet-50's small-plane layers (docs/performance.md, "Zen 4, thirtieth session"):
with the weight kept, 1.10-1.22x the shifted GEMM on 512 channels at 7 px (batch 8), where
``conv2d``'s "auto" runs it (``ROWS_MAX_PLANE``); packed per call (scalar transposes), slower.
"""

from __future__ import annotations

import numba

from kernelkit.kernels.numba._gemm import _JIT, _U, TILE, activate, cdiv, ukernel_rows

MR, NR = TILE["float32"]


@numba.njit(inline="always", **_JIT)
def _span(n, parts, i):
    """[lo, hi) of part ``i`` of ``n`` items split into ``parts`` near-equal runs."""
    return i * n // parts, (i + 1) * n // parts


# Channels per block of a sliver's packing: its part of the sliver (channels x taps x NR words,
# 18 KiB for a 3x3 float32 conv) stays in L1 while the NR weight rows are read into it.
PACK_CHANNELS = 16


@numba.njit(**_JIT)
def _pack_sliver(w, kb, dst, d0):
    """Output-channel sliver ``kb`` of ``w`` (K, C, R, S) into ``dst`` from ``d0``: tap (r, s),
    channel c at ``((r * S + s) * C + c) * NR``, NR channels there (zeros past K)."""
    k_all, c_all, r_all, s_all = w.shape
    kn = min(NR, k_all - kb * NR)
    for c0 in range(0, c_all, PACK_CHANNELS):
        c1 = min(c0 + PACK_CHANNELS, c_all)
        for j in range(NR):
            k = kb * NR + j
            for c in range(c0, c1):
                for r in range(r_all):
                    for s in range(s_all):
                        o = d0 + ((r * s_all + s) * c_all + c) * NR + j
                        dst[_U(o)] = w[k, c, r, s] if j < kn else 0.0


@numba.njit(**_JIT)
def pack_weight(t, nthr, w, wp):
    """Share ``t`` of packing all of ``w`` (K, C, R, S) into ``wp``, sliver after sliver (the
    copy kept across calls for a torch weight)."""
    k_all, c_all, r_all, s_all = w.shape
    lo, hi = _span(cdiv(k_all, NR), nthr, t)
    for kb in range(lo, hi):
        _pack_sliver(w, kb, wp, kb * r_all * s_all * c_all * NR)


@numba.njit(**_JIT)
def pad_input(t, nthr, x, xp, hp, wp_, top, left):
    """Share ``t`` of the zero-padded copy of ``x`` (N, C, H, W): plane (n, c) at
    ``(n * C + c) * hp * wp_`` in ``xp``, the image at row ``top``, column ``left``."""
    n_all, c_all, h, w = x.shape
    plane = hp * wp_
    lo, hi = _span(n_all * c_all, nthr, t)
    for q in range(lo, hi):
        n, c = q // c_all, q % c_all
        o = q * plane
        for i in range(plane):
            xp[_U(o + i)] = 0.0
        for i in range(h):
            row = o + (i + top) * wp_ + left
            for j in range(w):
                xp[_U(row + j)] = x[n, c, i, j]


@numba.njit(**_JIT)
def conv_part(t, nthr, xp, w, wp, packed, roffs, toffs, plane, hw, kc, tb, cs, bias, has_bias,
              act, out):
    """Share ``t`` of the convolution: for its output-channel slivers and pixel tiles, the C
    tiles over every tap and channel block (``kc`` channels a block, ``tb`` tiles at a time in
    its part of ``cs``), then the tiles out to ``out`` (N, K, Ho, Wo flat; ``hw`` = Ho * Wo)
    with the bias and the activation. ``packed``: ``wp`` holds all of the weight packed (kept);
    else the share packs each sliver of ``w`` as it comes to it into its own part of ``wp``
    (taps x C x NR words, in L2 for the pixel tiles that read it)."""
    k_all, c_all = w.shape[0], w.shape[1]
    taps = toffs.shape[0]
    sliver = taps * c_all * NR
    ntile = roffs.shape[0] // MR  # rounded up to whole tiles (offset 0 past the last pixel)
    pixels = out.shape[0] // k_all
    nkb = cdiv(k_all, NR)
    pm = min(nthr, nkb)
    pn = nthr // pm
    if t >= pm * pn:
        return
    kb_lo, kb_hi = _span(nkb, pm, t % pm)
    t_lo, t_hi = _span(ntile, pn, t // pm)
    tile = MR * NR
    c0 = t * tb * tile
    for kb in range(kb_lo, kb_hi):
        if packed:
            w0 = kb * sliver
        else:
            w0 = t * sliver
            _pack_sliver(w, kb, wp, w0)
        for b0 in range(t_lo, t_hi, tb):
            b1 = min(b0 + tb, t_hi)
            for cb in range(0, c_all, kc):
                kn = min(kc, c_all - cb)
                for ti in range(b0, b1):
                    rows = roffs[ti * MR:(ti + 1) * MR]
                    coff = c0 + (ti - b0) * tile
                    for tp in range(taps):
                        ukernel_rows(kn, xp, toffs[tp] + cb * plane, rows, plane, wp,
                                     w0 + (tp * c_all + cb) * NR, cs, coff, NR,
                                     1 if (tp > 0 or cb > 0) else 0)
            # out: pixel q of tile ti, channel kb * NR + j
            kn = min(NR, k_all - kb * NR)
            for ti in range(b0, b1):
                coff = c0 + (ti - b0) * tile
                for i in range(MR):
                    q = ti * MR + i
                    if q >= pixels:
                        break
                    n = q // hw
                    o = n * k_all * hw + kb * NR * hw + (q - n * hw)
                    for j in range(kn):
                        v = cs[_U(coff + i * NR + j)]
                        if has_bias:
                            v += bias[kb * NR + j]
                        out[_U(o + j * hw)] = activate(v, act)
