"""Filter taps and geometry of the fused preprocess, in plain numpy (backend-neutral).

Every backend's preprocess kernel (Numba, Triton, CuPy) samples the same tables, so this module only
uses numpy and builds them for a whole batch at once (no Python loop over images).

Geometry of one image (see ``kernelkit.kernels.numba.preprocess``): crop box ``(top, left, height,
width)`` -> flip (horizontal reverses W, vertical reverses H) -> ``np.rot90(., k)`` on (H, W) ->
rotation by ``angle`` degrees counter-clockwise about the centre, same size (torchvision
``rotate(expand=False)``'s geometry; at the crop's border the sampling is OpenCV ``warpAffine``'s
with ``BORDER_CONSTANT``: ``fill`` stands in for each neighbour outside, where torchvision and PIL
decide per output pixel) -> resize to ``(out_h, out_w)``.

Coordinates are pixel *indices*: pixel ``i`` covers ``[i, i + 1)`` and its centre is ``i + 0.5``
in continuous terms. Resizing uses half-pixel centres: output index ``o`` of an axis of ``n_in``
input pixels resized to ``n_out`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5`` (OpenCV,
PIL, torch ``align_corners=False``). A crop box with fractional edges keeps float semantics: the
sampling positions follow the box exactly and the pixels read are those the box touches,
``[floor(top), ceil(top + height))`` (clipped to the image).

Axis-aligned case (angle == 0): the output y axis reads source rows (rot90 even) or source columns
(rot90 odd), possibly reversed, and so does x. Each output axis gets a tap table:

* ``start`` int64 ``(N, n_out)``: absolute index (row or column of the source image) of the first
  tap of the window of output index o;
* ``weight`` float32 ``(N, n_out, K)``: normalised weights of taps ``start .. start + K - 1``;
* ``ntaps`` int64 ``(N,)``: the number of taps the kernel reads for image n (``<= K``; the
  remaining columns of ``weight`` are zero). Every window ``[start, start + ntaps)`` lies inside
  the pixels of the crop, so a kernel never needs bounds checks.

A reversed axis (flip / rot90) is the un-reversed table read backwards: the filters here are
symmetric, so resizing a mirrored image equals mirroring the resized one, but for nearest's ties,
which the reversed axis's table breaks the other way (``_nearest``).

Filters:

* ``bilinear`` + antialias: PIL's ``ImagingResample`` (= torchvision / torch ``antialias=True``):
  triangle filter whose support grows with the downscale factor, window
  ``[floor(c - s + 0.5), floor(c + s + 0.5))`` about the centre ``c``, clipped to the crop, weights
  normalised. Upscaling reduces to plain bilinear with edge clamping.
* ``bilinear`` without antialias: 2 taps at the half-pixel source position clamped to
  ``[0, n_in - 1]`` (OpenCV ``INTER_LINEAR``, torch ``interpolate(antialias=False)``).
* ``nearest``: torch's ``nearest-exact``: ``floor((o + 0.5) * n_in / n_out)``, clamped,
  computed as torch computes it (a float32 scale: at an exact tie it may round either way;
  ``_nearest``), on the flipped / turned crop. PIL ``NEAREST`` and OpenCV
  ``INTER_NEAREST_EXACT`` mean the same but compute it in their own floating point. (OpenCV
  ``INTER_NEAREST`` and torch ``nearest`` use ``floor(o * n_in / n_out)`` instead and are not
  matched.)
* ``bicubic`` + antialias: PIL's bicubic (a = -0.5, support 2 scaled by the downscale factor;
  as PIL's on float ("F") images: on uint8 ones PIL and torchvision round and clamp between
  the two passes, up to 16 levels off where the filter overshoots);
  without antialias: the 4-tap cubic convolution with a = -0.75 and replicated edges (OpenCV
  ``INTER_CUBIC``, torch ``bicubic``).

Non-finite input: a tap of weight 0 never reads its pixel, in every backend's kernel (0 * NaN is
NaN), so an inf or NaN reaches exactly the outputs that weigh it. Three kinds of zero weight occur:
the padding of an image's windows to one length, a window edge that falls on a pixel centre (its
weight is 0 in exact arithmetic; the rounding noise is cut to 0), and a bicubic window's zeros at
1 support unit. torch's antialiased resize reads the last two kinds, so its NaNs can reach one
output row or column further.

Arbitrary angle: one affine map, output pixel -> source pixel, is composed (``affine_maps``), and
the kernel samples it once (bilinear, or nearest), reading ``fill`` for pixels outside the crop.
No antialias filter is applied there. Nearest takes ``floor(position + NEAREST_ROUND)``: a tie
goes right and down, and so does a position within 1e-9 px below one, in the flipped,
quarter-turned crop that is rotated (the map's offset is lowered along reversed axes). Ties are
common (an odd output's centre pixel on an even crop's centre), and each backend's rounding of
the map (an FMA here, two roundings there) put such a pixel on either side.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import threading

import numpy as np

__all__ = ["INTERPOLATIONS", "NMETA", "PreprocessSpec", "problem_sizes", "AxisTaps", "axis_taps", "axis_plan", "affine_maps",
           "gpu_tables", "out_layout", "pixel_range", "rotation_plan", "PackedTables", "pack_tables",
           "table_key", "TableMemo"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
NEAREST_ROUND = 0.5 + 2.0 ** -30  # (a literal in the Triton and CuPy kernels: 0.5000000009313226)


@dataclasses.dataclass(frozen=True, eq=False)
class PreprocessSpec:
    """One preprocess call, resolved per image: what every backend's ``preprocess_forward`` takes
    after the images, in this order (``spec.args()``). Built (and checked) by the ops layer.

    boxes: float64 (N, 4), the crop (top, left, height, width) in source pixels, fractional allowed.
    flips: bool (N, 2), (horizontal, vertical), applied to the crop.
    rot90: int64 (N,), counter-clockwise quarter turns after the flips.
    angles: float64 (N,), degrees counter-clockwise about the centre (0 or not a multiple of 90).
    fill: float32 (N,), input-unit value of the pixels an arbitrary rotation brings in.
    size: (out_h, out_w).
    mean, scale: float32 (C,), per *output* channel: out = (x - mean) * scale.
    channel_perm: int64 (C,), output channel c reads input channel channel_perm[c].
    interpolation: one of INTERPOLATIONS. antialias: PIL-style filter when downscaling.
    out_dtype: "float32" | "float16" | "bfloat16" | "uint8". layout: "NCHW" | "NHWC".
    """

    boxes: np.ndarray
    flips: np.ndarray
    rot90: np.ndarray
    angles: np.ndarray
    fill: np.ndarray
    size: tuple[int, int]
    mean: np.ndarray
    scale: np.ndarray
    channel_perm: np.ndarray
    interpolation: str
    antialias: bool
    out_dtype: str
    layout: str

    def args(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def problem_sizes(problem) -> tuple[int, int, int, int]:
    """(n, out_h, out_w, c) of a preprocess ``Problem``: what the config spaces are sized by."""
    (n, _, _, c), (out_h, out_w) = problem.shapes
    return n, out_h, out_w, c

# Columns of the GPU kernels' image table (int64 per image; kk_pp::Meta in cupy/preprocess.cu):
# element offset from the first image, strides along the y-tap and x-tap axes and between
# channels, rotated flag, row and column strides, the crop's pixel rows [R0, R1) and columns
# [C0, C1) (rotated images), tap counts of y and x.
M_OFF, M_YA, M_XB, M_SC, M_AFF, M_SH, M_SW, M_R0, M_R1, M_C0, M_C1, M_NKY, M_NKX = range(13)
NMETA = 13


class AxisTaps:
    """The tap table of one output axis for a batch (see the module docstring)."""

    __slots__ = ("start", "weight", "ntaps")

    def __init__(self, start: np.ndarray, weight: np.ndarray, ntaps: np.ndarray):
        self.start, self.weight, self.ntaps = start, weight, ntaps


def pixel_range(lo: np.ndarray, length: np.ndarray, limit: np.ndarray | int | None = None):
    """Indices ``[first, end)`` of the pixels a box edge ``lo`` and extent ``length`` touches."""
    first = np.floor(np.asarray(lo, np.float64)).astype(np.int64)
    end = np.ceil(np.asarray(lo, np.float64) + np.asarray(length, np.float64)).astype(np.int64)
    end = np.maximum(end, first + 1)
    if limit is not None:
        first = np.clip(first, 0, np.asarray(limit) - 1)
        end = np.clip(end, first + 1, np.asarray(limit))
    return first, end


def _triangle(x):
    return np.maximum(0.0, 1.0 - np.abs(x))


def _cubic(a):
    def f(x):
        x = np.abs(x)
        x2, x3 = x * x, x * x * x
        near = (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
        far = a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    return f


# Filter values (before normalisation, at most 1) below this are rounding noise of a zero.
_ZERO_WEIGHT = 1e-12


def _filter_taps(lo, length, first, end, n_out, fn, support0, antialias):
    """PIL-style windows: (N, n_out) xmin/xmax and a function computing weights at pixels."""
    scale = length / n_out                                     # (N, 1)
    fscale = np.maximum(scale, 1.0) if antialias else np.ones_like(scale)
    support = support0 * fscale
    centre = lo + (np.arange(n_out, dtype=np.float64) + 0.5) * scale  # continuous coordinate
    xmin = np.maximum(np.floor(centre - support + 0.5).astype(np.int64), first)
    xmax = np.minimum(np.floor(centre + support + 0.5).astype(np.int64), end)
    xmax = np.maximum(xmax, xmin + 1)                           # never an empty window
    xmin = np.minimum(xmin, xmax - 1)
    inv = 1.0 / fscale

    def weights(pix):
        # pix: (N, n_out, K) absolute pixel indices; the pixel centre is pix + 0.5
        inside = (pix >= xmin[..., None]) & (pix < xmax[..., None])
        w = np.where(inside, fn((pix + 0.5 - centre[..., None]) * inv[..., None]), 0.0)
        # A window edge that falls on a pixel centre gives that pixel a weight of exactly 0 in
        # exact arithmetic and +-1e-16 in floats: make it 0, so the pixel is not read (_trim)
        # and an inf or NaN there stays out of the output.
        return np.where(np.abs(w) < _ZERO_WEIGHT, 0.0, w)

    return xmin, xmax, weights


def axis_taps(lo, length, limit, n_out: int, interpolation: str, antialias: bool,
              reverse=None) -> AxisTaps:
    """Tap tables of one output axis for a batch.

    ``lo``, ``length``: float64 (N,) box edge and extent along the source axis; ``limit``: int (N,)
    the image's extent along that axis (the box is clipped to it); ``n_out``: output length;
    ``reverse``: bool (N,), the images whose axis a flip or quarter turn reverses (the table is
    still built unreversed: `_reverse` reads it backwards). Only nearest depends on it: a tie
    between two pixels goes to the one after it in the *reversed* axis, the one before in the
    source's. (The other filters are symmetric.)
    """
    lo = np.asarray(lo, np.float64).reshape(-1, 1)
    length = np.asarray(length, np.float64).reshape(-1, 1)
    first, end = pixel_range(lo, length, np.asarray(limit, np.int64).reshape(-1, 1))
    nb = lo.shape[0]
    if n_out == 0 or nb == 0:
        return AxisTaps(np.zeros((nb, n_out), np.int64), np.zeros((nb, n_out, 1), np.float32),
                        np.ones(nb, np.int64))
    o = np.arange(n_out, dtype=np.float64)
    scale = length / n_out
    if interpolation == "nearest":
        idx = _nearest(lo, length, n_out, np.zeros(nb, bool) if reverse is None
                       else np.asarray(reverse, bool).reshape(-1))
        idx = np.clip(idx, first, end - 1)
        return AxisTaps(idx, np.ones((nb, n_out, 1), np.float32), np.ones(nb, np.int64))
    if interpolation == "bilinear" and not antialias:
        src = lo + (o + 0.5) * scale - 0.5
        src = np.clip(src, first, end - 1)
        i0 = np.minimum(np.floor(src).astype(np.int64), np.maximum(end - 2, first))
        f = src - i0
        w = np.stack([1.0 - f, f], axis=-1)
        return _trim(i0, w, end)
    if interpolation == "bicubic" and not antialias:
        src = lo + (o + 0.5) * scale - 0.5
        i0 = np.floor(src).astype(np.int64)
        t = src - i0
        kern = _cubic(-0.75)
        w4 = np.stack([kern(t + 1.0), kern(t), kern(1.0 - t), kern(2.0 - t)], axis=-1)
        idx4 = np.clip(i0[..., None] + np.arange(-1, 3), first[..., None], end[..., None] - 1)
        # Replicated edges: fold the clamped taps into a contiguous window of up to 4 pixels.
        ntap = np.minimum(end - first, 4)                      # (N, 1)
        start = np.clip(i0 - 1, first, end - ntap)
        w = np.zeros(w4.shape, np.float64)
        slot = idx4 - start[..., None]
        np.add.at(w, (np.arange(nb)[:, None, None], np.arange(n_out)[None, :, None], slot), w4)
        return _trim(start, w, end)
    if interpolation == "bilinear":
        fn, support0 = _triangle, 1.0
    elif interpolation == "bicubic":
        fn, support0 = _cubic(-0.5), 2.0
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    xmin, xmax, weights = _filter_taps(lo, length, first, end, n_out, fn, support0, antialias)
    ntap = (xmax - xmin).max(axis=1, keepdims=True)            # (N, 1)
    kmax = int(ntap.max())
    start = np.minimum(xmin, end - ntap)                       # window fits inside the crop
    pix = start[..., None] + np.arange(kmax)
    w = weights(pix)
    w /= w.sum(axis=-1, keepdims=True)
    return _trim(start, w, end)


def _nearest(lo, length, n_out: int, reverse) -> np.ndarray:
    """The source pixel of each output index of a nearest resize of the box [lo, lo + length) to
    ``n_out``, where the axis is ``reverse``d (a flip or quarter turn) counted as the flipped
    box, as torch's chain flips first and then resizes.

    Whole-pixel boxes (every box the op passes): torch's nearest-exact as torch computes it
    (ATen's `nearest_neighbor_exact_compute_source_index`): ``floor(float32((o + 0.5) * s))``
    with ``s = float32(length) / n_out``, which at an exact tie may round either way (30 -> 23
    puts 11.5 * s at 14.99999: pixel 14). Checked against `F.interpolate` for every length and
    output size 1..89. Before: float64 arithmetic (off from torch at some ties, e.g. 26 ->
    23), and a reversed axis as the resized table mirrored, which took the other pixel at every
    tie (7,164 of 21,600 values after a horizontal flip, 60 x 80 -> 30 x 30).
    Fractional boxes: the pixel holding the sample, a tie going to the pixel after it in the
    flipped order."""
    rev = reverse.reshape(-1, 1)
    o = np.arange(n_out, dtype=np.float64)
    if np.all(lo == np.round(lo)) and np.all(length == np.round(length)):
        li, ni = lo.astype(np.int64), length.astype(np.int64)
        scale = (ni.astype(np.float32) / np.float32(n_out)).astype(np.float64)
        t = np.floor(((o + 0.5) * scale).astype(np.float32)).astype(np.int64)
        t = np.minimum(t, ni - 1)  # (the index into the flipped box, where reversed)
        # the table is read backwards for a reversed axis (`_reverse`): entry p is output n_out-1-p
        return np.where(rev, (li + ni - 1 - t)[:, ::-1], li + t)
    pos = lo + (o + 0.5) * (length / n_out)
    return np.where(rev, np.ceil(pos) - 1, np.floor(pos)).astype(np.int64)


def _trim(start, w, end) -> AxisTaps:
    """Drop zero-weight taps at the ends of the windows (identity and integer-ratio resizes read
    one pixel per output, so an inf / NaN neighbour does not leak in through a 0 weight), then
    give every window of an image the same length: that image's longest, shifted to fit."""
    k = w.shape[-1]
    nz = w != 0
    some = nz.any(-1)
    lead = np.where(some, np.argmax(nz, -1), 0)
    last = np.where(some, k - 1 - np.argmax(nz[..., ::-1], -1), 0)
    ntap = np.maximum(last - lead + 1, 1).max(axis=1)               # (N,)
    new = np.minimum(start + lead, end - ntap[:, None])
    kmax = int(ntap.max())
    idx = (new - start)[..., None] + np.arange(kmax)
    wpad = np.concatenate([w, np.zeros(w.shape[:-1] + (kmax,), w.dtype)], axis=-1)
    wn = np.take_along_axis(wpad, idx, axis=-1)
    wn = np.where(np.arange(kmax) >= ntap[:, None, None], 0.0, wn)
    return AxisTaps(new, wn.astype(np.float32), ntap.astype(np.int64))


def _reverse(t: AxisTaps, rev: np.ndarray) -> AxisTaps:
    if rev.any():
        start, weight = t.start.copy(), t.weight.copy()
        start[rev] = start[rev, ::-1]
        weight[rev] = weight[rev, ::-1]
        return AxisTaps(start, weight, t.ntaps)
    return t


def axis_plan(boxes, flips, rot90, shapes, size, interpolation: str, antialias: bool):
    """Tap tables of both output axes for the axis-aligned geometry of a batch.

    ``shapes``: int (N, 2) image (H, W). Returns ``(ytaps, xtaps, transposed)``: ``transposed[n]``
    (rot90 odd) means the y taps index source columns and the x taps source rows; otherwise y taps
    index rows and x taps columns.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    flips = np.asarray(flips, bool).reshape(-1, 2)
    k = np.asarray(rot90, np.int64).reshape(-1) % 4
    shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
    out_h, out_w = int(size[0]), int(size[1])
    tr = (k % 2) == 1
    fh, fv = flips[:, 0], flips[:, 1]
    # source axis read by output y: rows (k even) or columns (k odd); and by output x: the other
    ylo = np.where(tr, boxes[:, 1], boxes[:, 0])
    ylen = np.where(tr, boxes[:, 3], boxes[:, 2])
    ylim = np.where(tr, shapes[:, 1], shapes[:, 0])
    xlo = np.where(tr, boxes[:, 0], boxes[:, 1])
    xlen = np.where(tr, boxes[:, 2], boxes[:, 3])
    xlim = np.where(tr, shapes[:, 0], shapes[:, 1])
    # reversal of each output axis (np.rot90 index maps composed with the flips):
    # k=0: y rows rev=fv, x cols rev=fh; k=1: y cols rev=!fh, x rows rev=fv;
    # k=2: y rows rev=!fv, x cols rev=!fh; k=3: y cols rev=fh, x rows rev=!fv
    yrev = np.select([k == 0, k == 1, k == 2], [fv, ~fh, ~fv], fh)
    xrev = np.select([k == 0, k == 1, k == 2], [fh, fv, ~fh], ~fv)
    if interpolation != "nearest" and (
            _same_params(ylo, ylen, ylim) and _same_params(xlo, xlen, xlim)):
        # Common case (one crop for all): compute a single row of each table and broadcast.
        yt = _axis_taps_one(float(ylo[0]), float(ylen[0]), int(ylim[0]), out_h, interpolation,
                            bool(antialias))
        xt = _axis_taps_one(float(xlo[0]), float(xlen[0]), int(xlim[0]), out_w, interpolation,
                            bool(antialias))
        n = boxes.shape[0]
        yt = AxisTaps(*(np.repeat(a, n, axis=0) for a in (yt.start, yt.weight, yt.ntaps)))
        xt = AxisTaps(*(np.repeat(a, n, axis=0) for a in (xt.start, xt.weight, xt.ntaps)))
    else:
        yt = axis_taps(ylo, ylen, ylim, out_h, interpolation, antialias, yrev)
        xt = axis_taps(xlo, xlen, xlim, out_w, interpolation, antialias, xrev)
    return _reverse(yt, yrev), _reverse(xt, xrev), tr


@functools.lru_cache(maxsize=256)
def _axis_taps_one(lo: float, length: float, limit: int, n_out: int, interpolation: str,
                   antialias: bool) -> AxisTaps:
    """axis_taps of one image, memoised (callers copy before changing: np.repeat, _reverse)."""
    return axis_taps([lo], [length], [limit], n_out, interpolation, antialias)


def _same_params(lo, length, lim) -> bool:
    return bool(lo.size) and bool((lo == lo[0]).all() and (length == length[0]).all()
                                  and (lim == lim[0]).all())


def affine_maps(boxes, flips, rot90, angles, size, nearest: bool = False) -> np.ndarray:
    """float64 (N, 2, 3): output pixel (x, y, 1) -> source pixel (column, row), index coordinates.

    Composes, inverted: resize (half-pixel centres) <- rotation by ``angle`` counter-clockwise about
    the centre ``((w' - 1) / 2, (h' - 1) / 2)`` of the rot90'd crop (w', h') (the same matrix as
    ``cv2.getRotationMatrix2D``) <- ``np.rot90(., k)`` <- flips (mirror about the box centre) <-
    crop offset.

    `nearest`: a tie goes right and down in the image that is rotated (the flipped, rot90'd crop,
    as rotating a pre-flipped image does), not in the source. The kernels round a source position
    up at a tie (``floor(p + NEAREST_ROUND)``); along a source axis that the flips and quarter
    turn reverse, the map's offset is lowered by ``2 * (NEAREST_ROUND - 0.5)`` (2**-29 px), so
    they compute ``floor(p + 0.5 - 2**-30)`` there: a tie down in the source, up in that image.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    flips = np.asarray(flips, bool).reshape(-1, 2)
    ks = np.asarray(rot90, np.int64).reshape(-1) % 4
    angles = np.asarray(angles, np.float64).reshape(-1)
    out_h, out_w = int(size[0]), int(size[1])
    maps = np.empty((boxes.shape[0], 2, 3), np.float64)
    for n in range(boxes.shape[0]):
        top, left, h, w = boxes[n]
        k = int(ks[n])
        hp, wp = (h, w) if k % 2 == 0 else (w, h)
        # output -> rotated image Q (h' x w'), half-pixel centres
        sx, sy = wp / out_w, hp / out_h
        m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
        # Q -> R (= rot90'd crop): inverse of the counter-clockwise rotation about the centre
        a = math.radians(float(angles[n]))
        c, s = math.cos(a), math.sin(a)
        cx, cy = (wp - 1) * 0.5, (hp - 1) * 0.5
        rinv = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1.0]])
        # R -> flipped crop f (x_f, y_f) for np.rot90(f, k); f is h x w
        if k == 0:
            q = np.eye(3)
        elif k == 1:   # R[r, c] = f[c, w-1-r]
            q = np.array([[0, -1.0, w - 1], [1.0, 0, 0], [0, 0, 1.0]])
        elif k == 2:   # R[r, c] = f[h-1-r, w-1-c]
            q = np.array([[-1.0, 0, w - 1], [0, -1.0, h - 1], [0, 0, 1.0]])
        else:          # R[r, c] = f[h-1-c, r]
            q = np.array([[0, 1.0, 0], [-1.0, 0, h - 1], [0, 0, 1.0]])
        # f -> source: flips mirror about the box centre, then the box offset
        fx = np.array([[-1.0, 0, w - 1], [0, 1.0, 0], [0, 0, 1.0]]) if flips[n, 0] else np.eye(3)
        fy = np.array([[1.0, 0, 0], [0, -1.0, h - 1], [0, 0, 1.0]]) if flips[n, 1] else np.eye(3)
        off = np.array([[1.0, 0, left], [0, 1.0, top], [0, 0, 1.0]])
        to_source = off @ fy @ fx @ q  # a signed permutation and an integer offset
        maps[n] = (to_source @ rinv @ m)[:2]
        if nearest:
            maps[n, :, 2] -= np.where(to_source[:2, :2].sum(1) < 0, 2 * (NEAREST_ROUND - 0.5), 0)
    return maps


def rotation_plan(boxes, flips, rot90, angles, shapes, size, interpolation):
    """The arbitrary-angle part of a batch: None when no image is rotated, else ``(rotated,
    maps, ranges)``: bool (N,) angle != 0, C-contiguous float64 (N, 2, 3) affine maps
    (:func:`affine_maps`), int64 (4, N) crop pixel rows r0, r1 and columns c0, c1."""
    angles = np.asarray(angles, np.float64).reshape(-1)
    rotated = angles != 0
    if not rotated.any():
        return None
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
    maps = np.ascontiguousarray(affine_maps(boxes, flips, rot90, angles, size,
                                             interpolation == "nearest"))
    r0, r1 = pixel_range(boxes[:, 0], boxes[:, 2], shapes[:, 0])
    c0, c1 = pixel_range(boxes[:, 1], boxes[:, 3], shapes[:, 1])
    return rotated, maps, np.stack([r0, r1, c0, c1]).astype(np.int64)


def out_layout(layout: str, cch: int, out_h: int, out_w: int):
    """(per-image shape, (on, oc, oy, ox) element strides) of a C-contiguous output batch."""
    if layout == "NCHW":
        return (cch, out_h, out_w), (cch * out_h * out_w, out_h * out_w, out_w, 1)
    assert layout == "NHWC"
    return (out_h, out_w, cch), (cch * out_h * out_w, 1, out_w * cch, cch)


def gpu_tables(meta, shapes, cch, boxes, flips, rot90, angles, fill, size, mean, scale,
               channel_perm, interpolation, antialias) -> dict:
    """Host-side tables of one GPU kernel call (numpy; the Triton and CuPy launchers and the CPU
    emulation tests).

    ``meta``: the (N, NMETA) int64 image table with M_OFF and M_SH / M_SW / M_SC filled in; the
    rest of it is filled here. Returns the arrays the kernel reads (C-contiguous, in the kernel's
    dtypes), the weight tables' row lengths ``ky_len`` / ``kx_len``, ``nearest`` (int) and
    ``has_affine`` (bool: some image is rotated).
    """
    n = meta.shape[0]
    out_h, out_w = int(size[0]), int(size[1])
    yt, xt, tr = axis_plan(boxes, flips, rot90, shapes, (out_h, out_w), interpolation,
                           bool(antialias))
    # strides along the axes the y / x taps index (rows or columns: rot90 odd swaps them)
    meta[:, M_YA] = np.where(tr, meta[:, M_SW], meta[:, M_SH])
    meta[:, M_XB] = np.where(tr, meta[:, M_SH], meta[:, M_SW])
    meta[:, M_NKY], meta[:, M_NKX] = yt.ntaps, xt.ntaps
    rot = rotation_plan(boxes, flips, rot90, angles, shapes, (out_h, out_w), interpolation)
    if rot is None:
        aff = np.zeros((n, 2, 3), np.float64)
    else:
        rotated, aff, ranges = rot
        meta[:, M_AFF] = rotated
        meta[:, M_R0], meta[:, M_R1], meta[:, M_C0], meta[:, M_C1] = ranges
    c = lambda a, dt: np.array(a, dt, order="C")
    return dict(
        meta=c(meta, np.int64), yst=c(yt.start, np.int32), yw=c(yt.weight, np.float32),
        xst=c(xt.start, np.int32), xw=c(xt.weight, np.float32),
        aff=c(aff.reshape(n, 6), np.float64),
        fill=c(np.broadcast_to(np.asarray(fill, np.float32), (n,)), np.float32),
        perm=c(np.asarray(channel_perm, np.int64).reshape(cch), np.int32),
        mean=c(np.asarray(mean, np.float32).reshape(cch), np.float32),
        scale=c(np.asarray(scale, np.float32).reshape(cch), np.float32),
        ky_len=int(yt.weight.shape[2]), kx_len=int(xt.weight.shape[2]),
        nearest=int(interpolation == "nearest"), has_affine=rot is not None)


# --------------------------------------------------------------------------- one upload per call

@dataclasses.dataclass(frozen=True)
class PackedTables:
    """``gpu_tables``' arrays in one byte buffer (``data``), each at ``offsets[name]`` (8-byte
    aligned) with its dtype and shape; ``scalars`` holds the rest (``ky_len``, ``has_affine``...).

    Why: the launchers copied the ten tables to the device one by one, ten pageable host-to-device
    copies of 15-25 us each; on an H200 the preprocess call of 32 images cost 0.40 ms around a
    0.03 ms kernel (docs/performance.md, "GPU, first run"). One buffer is one copy."""

    data: np.ndarray  # uint8, 1-D
    offsets: dict
    scalars: dict

    def views(self, device_buffer, view) -> dict:
        """``{name: view(device_buffer, offset, dtype, shape)}`` for every packed table."""
        return {k: view(device_buffer, off, dt, shape) for k, (off, dt, shape) in self.offsets.items()}


def pack_tables(tables: dict) -> PackedTables:
    """One aligned byte buffer of ``gpu_tables(...)``'s arrays (see :class:`PackedTables`)."""
    arrays = {k: v for k, v in tables.items() if isinstance(v, np.ndarray)}
    offsets, end = {}, 0
    for k, v in arrays.items():
        offsets[k] = (end, v.dtype, v.shape)
        end += -(-max(v.nbytes, 1) // 8) * 8
    data = np.zeros(end, np.uint8)
    for k, v in arrays.items():
        off = offsets[k][0]
        data[off:off + v.nbytes] = np.ascontiguousarray(v).reshape(-1).view(np.uint8)
    return PackedTables(data, offsets, {k: v for k, v in tables.items() if k not in arrays})


def table_key(meta, shapes, cch, boxes, flips, rot90, angles, fill, size, mean, scale,
              channel_perm, interpolation, antialias, where) -> tuple:
    """A hashable key of everything ``gpu_tables`` reads, plus ``where`` (device and stream):
    equal keys give equal tables. Arrays enter by dtype, shape and bytes (a few us for a batch of
    32), so a caller's later in-place change of an argument array cannot return stale tables."""
    def a(x):
        x = np.asarray(x)
        return (x.dtype.str, x.shape, x.tobytes())
    return (a(meta), a(shapes), int(cch), a(boxes), a(flips), a(rot90), a(angles), a(fill),
            (int(size[0]), int(size[1])), a(mean), a(scale), a(channel_perm), str(interpolation),
            bool(antialias), where)


class TableMemo:
    """The device tables of the last few distinct calls (least recently used first out).

    Serving and evaluation call preprocess with the same geometry batch after batch; their tables
    are then built and uploaded once. Entries are read-only device buffers, so sharing one
    between calls is safe; the key names the stream (the upload is ordered on it). Tables over
    ``max_bytes`` are not kept (a large ragged batch with random crops would only evict)."""

    def __init__(self, size: int = 16, max_bytes: int = 4 << 20) -> None:
        self.size, self.max_bytes = size, max_bytes
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        # a forked child (a DataLoader worker) starts empty, with a lock no parent thread holds
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._items = collections.OrderedDict()
        self._lock = threading.Lock()

    def tables(self, where, upload, view, meta, shapes, cch, *geometry) -> tuple[dict, dict]:
        """The device tables of one call (``{name: view(buffer, offset, dtype, shape)}``) and
        ``gpu_tables``' scalars: kept from a recent call with the same key, or built, packed and
        sent by one ``upload(host_bytes) -> device buffer``. ``where`` names the device and the
        stream; ``meta`` is read before ``gpu_tables`` fills it in."""
        key = table_key(meta, shapes, cch, *geometry, where=where)
        hit = self.get(key)
        if hit is None:
            packed = pack_tables(gpu_tables(meta, shapes, cch, *geometry))
            hit = (packed.views(upload(packed.data), view), packed.scalars)
            self.put(key, hit, packed.data.nbytes)
        return hit

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
