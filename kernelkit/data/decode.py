"""Decoding sized to the crop: read an image's size from its header, then decode a JPEG at the
smallest DCT scale (1, 1/2, 1/4, 1/8) that still covers the crop at the output size.

Decoders, chosen by measurement on this machine (480x640 JPEGs, one core, docs/performance.md):
simplejpeg (libjpeg-turbo, bundled in its wheel) decodes 1.4x faster than PIL at full size, and
its DCT scaling halves the work at 1/2. libjpeg-turbo's other scale factors (7/8, 3/4, ...) are
slower than full size here, so only powers of two are used. PIL is the fallback (PNG and other
formats, and JPEG when simplejpeg is missing, with ``Image.draft`` for the same DCT scaling).
Both release the GIL while they decode, so a thread pool runs them in parallel.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # a dependency; the PIL path below covers its absence
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _simplejpeg = None

JPEG_MAGIC = b"\xff\xd8"
SCALES = (8, 4, 2, 1)  # DCT reductions, largest first


@dataclass
class Encoded:
    """An encoded image and its size from the header (no pixels decoded yet)."""

    data: bytes | memoryview
    height: int
    width: int
    jpeg: bool


def read_source(source: Any) -> Encoded | np.ndarray:
    """The encoded bytes and header size of `source`, or the decoded array itself.

    Args:
        source: JPEG/PNG/... bytes (bytes, bytearray, memoryview), a path (str or os.PathLike),
            or a decoded uint8 array (H, W), (H, W, 1) or (H, W, 3).

    Returns:
        An `Encoded` record, or the (H, W, C) uint8 array.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or \
                (source.ndim == 3 and source.shape[2] not in (1, 3)):
            raise ValueError("data: a decoded image must be a uint8 (H, W), (H, W, 1) or (H, W, 3) "
                             f"array, got {source.dtype} {source.shape}")
        return source if source.ndim == 3 else source[:, :, None]
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data: Any = f.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source
    else:
        raise TypeError("data: an image must be encoded bytes, a path or a uint8 array, got "
                        f"{type(source).__name__}")
    if bytes(data[:2]) == JPEG_MAGIC and _simplejpeg is not None:
        try:
            h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
            return Encoded(data, int(h), int(w), True)
        except ValueError:
            # libjpeg's warnings are errors there ("Corrupt JPEG data: 3 extraneous bytes
            # before marker 0xc4"): PIL reads the header, and `decode` falls back to it too
            pass
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return Encoded(data, im.height, im.width, im.format == "JPEG")


def dct_scale(box: tuple[float, float, float, float], size: tuple[int, int]) -> int:
    """The largest reduction s in (8, 4, 2, 1) with the crop still at least the output size at
    1/s: every output pixel keeps at least one source pixel (no upscaling that full size avoids).

    Args:
        box: (top, left, height, width) in full-size pixels.
        size: output (height, width).
    """
    _, _, bh, bw = box
    for s in SCALES:
        if bh / s >= size[0] and bw / s >= size[1]:
            return s
    return 1


def decode(enc: Encoded, scale: int = 1) -> np.ndarray:
    """Decode at 1/`scale` (JPEG; other formats at full size) to uint8 (H', W', 3 or 1).

    The decoded size is ceil(H / scale) x ceil(W / scale) (libjpeg's rounding), which the caller
    reads from the array to map its crop box.
    """
    if enc.jpeg and _simplejpeg is not None:
        # min sizes of exactly 1/scale: libjpeg-turbo picks the smallest factor that meets them,
        # which is 1/scale itself (never a slower non-power-of-two factor)
        mh = math.ceil(enc.height / scale) if scale > 1 else 0
        mw = math.ceil(enc.width / scale) if scale > 1 else 0
        try:
            return _simplejpeg.decode_jpeg(enc.data, colorspace="RGB", min_height=mh,
                                           min_width=mw)
        except ValueError:
            # libjpeg's warnings too ("Corrupt JPEG data: 3 extraneous bytes before marker",
            # which real datasets have): PIL decodes what can be read, and raises where the data
            # is missing (a truncated file), as a user's own PIL decode would
            pass
    from PIL import Image

    im = Image.open(io.BytesIO(enc.data))
    if enc.jpeg and scale > 1:
        # PIL picks the reduction as min(W // w, H // h): ask for the floor to get exactly 1/scale
        im.draft("RGB", (enc.width // scale, enc.height // scale))
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale (PNG, PGM, TIFF; older Pillow opens it as 32-bit "I"): the top 8 bits.
        # convert("RGB") clips it instead, leaving only 0 and 255.
        a = (np.clip(np.asarray(im), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return a[:, :, None]
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    a = np.asarray(im)
    return a if a.ndim == 3 else a[:, :, None]


def to_rgb(img: np.ndarray) -> np.ndarray:
    """A 1-channel image as 3 channels (a view-free broadcast copy), 3 channels as they are."""
    return img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
