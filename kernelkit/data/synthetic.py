"""Generated JPEGs for tests and benchmarks (nothing downloaded): smooth colour fields with
shapes and a little noise, about 80 KB at 480 x 640 and quality 90, like camera photos in size."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGENET_LIKE = ((375, 500), (480, 640), (500, 375), (333, 500), (500, 500), (427, 640))


def make_jpeg(rng: np.random.Generator, height: int, width: int, quality: int = 90) -> bytes:
    """One JPEG of `height` x `width`: a bicubic-upsampled coarse colour field, 12 ellipses or
    rectangles, Gaussian noise (sigma 4)."""
    from PIL import Image, ImageDraw

    base = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(10, max(11, width // 3)))
        y1 = y0 + int(rng.integers(10, max(11, height // 3)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    noisy = np.asarray(img).astype(np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_jpegs(n: int, sizes: Sequence[tuple[int, int]] = IMAGENET_LIKE, *, seed: int = 0,
               directory: str | Path | None = None) -> list[bytes] | list[Path]:
    """`n` JPEGs cycling through `sizes` (height, width).

    Args:
        n: how many.
        sizes: their sizes, cycled (default: ImageNet-like sizes).
        seed: the generator seed (same seed, same bytes).
        directory: write them there as ``img_00000.jpg``... and return the paths; else return
            the bytes.
    """
    rng = np.random.default_rng(seed)
    data = [make_jpeg(rng, *sizes[i % len(sizes)]) for i in range(n)]
    if directory is None:
        return data
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, b in enumerate(data):
        p = d / f"img_{i:05d}.jpg"
        p.write_bytes(b)
        paths.append(p)
    return paths
