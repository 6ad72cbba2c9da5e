"""An independent float64 crop + resize, written from the definitions (docs/architecture.md's
numerics and the PIL / OpenCV filters), not from kernelkit.kernels.taps: one dense (n_out, n_in)
weight matrix per axis, built pixel by pixel in plain Python, applied separably.

Definitions: pixel i covers [i, i + 1), centre i + 0.5. A crop edge ``lo`` with extent ``length``
(floats) is sampled at ``c(o) = lo + (o + 0.5) * length / n_out`` and reads the pixels the box
touches, ``[floor(lo), ceil(lo + length))`` clipped to the image.

* bilinear, antialias (PIL / torchvision): triangle of radius ``f = max(length / n_out, 1)``,
  weight of pixel i = max(0, 1 - |i + 0.5 - c| / f) over the touched pixels, normalised.
* bilinear, no antialias (OpenCV INTER_LINEAR, torch antialias=False): the source position
  ``c - 0.5`` clamped to [first, last] of the touched pixels, 2 taps with linear weights.
* nearest (torch nearest-exact): pixel ``floor(c)`` clamped to the touched pixels.
"""

from __future__ import annotations

import math

import numpy as np


def axis_matrix(lo: float, length: float, n_in: int, n_out: int, interpolation: str,
                antialias: bool) -> np.ndarray:
    first = min(max(math.floor(lo), 0), n_in - 1)
    end = min(max(math.ceil(lo + length), first + 1), n_in)
    scale = length / n_out
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        c = lo + (o + 0.5) * scale
        if interpolation == "nearest":
            m[o, min(max(math.floor(c), first), end - 1)] = 1.0
        elif antialias:
            f = max(scale, 1.0)
            w = [max(0.0, 1.0 - abs(i + 0.5 - c) / f) for i in range(first, end)]
            total = sum(w)
            for i, wi in zip(range(first, end), w):
                m[o, i] = wi / total
        else:
            src = min(max(c - 0.5, first), end - 1)
            i0 = math.floor(src)
            frac = src - i0
            m[o, i0] += 1.0 - frac
            if frac > 0:
                m[o, i0 + 1] += frac
    return m


def crop_resize(img: np.ndarray, box, size, interpolation: str = "bilinear",
                antialias: bool = True) -> np.ndarray:
    """float64 (out_h, out_w, C) of an (H, W, C) image, box (top, left, height, width)."""
    top, left, height, width = (float(v) for v in box)
    h, w = img.shape[:2]
    wy = axis_matrix(top, height, h, size[0], interpolation, antialias)
    wx = axis_matrix(left, width, w, size[1], interpolation, antialias)
    return np.einsum("oh,hwc,pw->opc", wy, img.astype(np.float64), wx)
