"""Reproducible augmentation parameters: random-resized-crop, flips and rotation per sample.

Each sample's parameters come from a counter-based generator (Philox) keyed by
(seed, epoch, sample index) alone, so a sample gets the same augmentation whatever the number of
DataLoader workers, the batch size or split, the order of calls, or the device that applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Per-sample parameters, ready for `kernelkit.preprocess(crop=..., flip=..., rotate=...)`."""

    crop: list[tuple[int, int, int, int]]  # (top, left, height, width)
    flip: list[tuple[bool, bool]]  # (horizontal, vertical)
    rotate: list[float]  # degrees counter-clockwise

    def kwargs(self) -> dict:
        return {"crop": self.crop, "flip": self.flip, "rotate": self.rotate}


def _generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    for name, v in (("seed", seed), ("epoch", epoch), ("index", index)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"augment: '{name}' must be a non-negative int, got {v!r}")
    return np.random.Generator(np.random.Philox(key=int(seed) % 2**64,
                                                counter=[int(index), int(epoch), 0, 0]))


def _random_resized_crop(rng, h: int, w: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: the central crop at the nearest allowed ratio
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def augment(
    indices: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    *,
    seed: int,
    epoch: int = 0,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    vflip: float = 0.0,
    degrees: float | tuple[float, float] = 0.0,
    quarter_turns: bool = False,
) -> Augmentation:
    """Draw random-resized-crop, flip and rotation parameters for the given samples.

    Args:
        indices: dataset indices of the samples (the key of their randomness).
        image_sizes: (height, width) of each sample's decoded image.
        seed, epoch: with the index, the whole key: same key, same parameters.
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges.
        hflip, vflip: probability of each flip.
        degrees: a rotation angle range (a number d means (-d, d)); 0 for none.
        quarter_turns: draw the rotation as k * 90 degrees, k uniform in 0..3 (exact).

    Returns:
        An `Augmentation`; pass ``**aug.kwargs()`` to `kernelkit.preprocess`.

    Example:
        >>> aug = kernelkit.augment([0, 1], [(480, 640), (500, 375)], seed=0, epoch=3)
        >>> len(aug.crop)
        2
    """
    if len(indices) != len(image_sizes):
        raise ValueError(f"augment: {len(indices)} indices but {len(image_sizes)} image sizes")
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"augment: 'scale' must satisfy 0 < low <= high <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"augment: 'ratio' must satisfy 0 < low <= high, got {ratio}")
    lo, hi = (-degrees, degrees) if isinstance(degrees, (int, float)) else degrees
    crops, flips, rots = [], [], []
    for index, (h, w) in zip(indices, image_sizes):
        rng = _generator(seed, epoch, index)
        # A fixed number of draws per field, in a fixed order: each field's values do not depend
        # on which other augmentations are switched on.
        u = rng.random(4)
        crops.append(_random_resized_crop(rng, int(h), int(w), scale, ratio))
        flips.append((bool(u[0] < hflip), bool(u[1] < vflip)))
        if quarter_turns:
            rots.append(90.0 * int(u[2] * 4))
        else:
            rots.append(float(lo + (hi - lo) * u[3]) if hi > lo else 0.0)
    return Augmentation(crops, flips, rots)
