"""Reproducible augmentation parameters: random-resized-crop, flips and rotation per sample.

Each sample's parameters come from a counter-based generator (Philox 4x64) whose key is the seed
and whose counter starts at ``[0, 0, index, epoch]``. Philox counts up from the lowest word, so a
sample owns a lane of 2**128 blocks (2**130 draws) that no other (epoch, index) reaches: samples
never share draws, however many retries RandomResizedCrop takes. The parameters of a sample depend
on (seed, epoch, index) alone, so they are the same for any number of DataLoader workers, batch
size or split, order of calls, resume point, or the device that applies them.

(The lane layout matters: a counter of ``[index, epoch, 0, 0]`` puts sample i + 1's first block
right after sample i's first block, so sample i's later draws *are* sample i + 1's first ones.)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_U64 = 2**64


@dataclass(frozen=True)
class Augmentation:
    """Per-sample parameters, ready for `kernelkit.preprocess(crop=..., flip=..., rotate=...)`.

    Fields are lists with one entry per sample, in the order the samples were asked for.
    """

    crop: list[tuple[int, int, int, int]]  # (top, left, height, width)
    flip: list[tuple[bool, bool]]  # (horizontal, vertical)
    rotate: list[float]  # degrees counter-clockwise
    indices: list[int] = field(default_factory=list)  # the dataset index of each sample
    seed: int = 0
    epoch: int = 0

    def kwargs(self) -> dict:
        """The keyword arguments of `kernelkit.preprocess` these parameters fill in."""
        return {"crop": self.crop, "flip": self.flip, "rotate": self.rotate}

    def params(self, i: int) -> dict:
        """What sample ``i`` (its dataset index, not its position) drew, for debugging.

        Args:
            i: a dataset index passed to `augment`.

        Returns:
            ``{"index", "seed", "epoch", "crop", "flip", "rotate"}``.

        Example:
            >>> kernelkit.augment([7], [(480, 640)], seed=0).params(7)["crop"]  # doctest: +SKIP
            (120, 33, 301, 420)
        """
        try:
            pos = self.indices.index(i)
        except ValueError:
            raise KeyError(f"augment: sample index {i!r} was not drawn here (indices "
                           f"{self.indices[:8]}{'...' if len(self.indices) > 8 else ''})") from None
        return {"index": i, "seed": self.seed, "epoch": self.epoch, "crop": self.crop[pos],
                "flip": self.flip[pos], "rotate": self.rotate[pos]}


def as_integer(v) -> int:
    """Any integer (Python's, numpy's, a torch integer scalar such as a Sampler's or a tensor
    shape's) as an int; a TypeError for the rest, booleans included."""
    if isinstance(v, (bool, np.bool_)) or str(getattr(v, "dtype", "")) in ("bool", "torch.bool"):
        raise TypeError(f"a boolean is not an integer: {v!r}")
    return operator.index(v)


def check_key(owner: str, name: str, v, limit: int) -> int:
    """A seed, epoch or index as an int in [0, limit), or a ValueError naming `owner` and
    `name` (augment's key, and the data loaders' seeds and epochs that become it)."""
    try:
        k = as_integer(v)
    except TypeError:
        k = -1
    if not 0 <= k < limit:
        raise ValueError(f"{owner}: '{name}' must be an int in [0, 2**{limit.bit_length() - 1}), "
                         f"got {v!r}")
    return k


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: Philox keyed by the seed, counter lane
    ``[0, 0, index, epoch]`` (see the module docstring: lanes never overlap).

    Args:
        seed: any int in [0, 2**128).
        epoch, index: ints in [0, 2**64).
    """
    seed = check_key("augment", "seed", seed, 2**128)
    epoch = check_key("augment", "epoch", epoch, _U64)
    index = check_key("augment", "index", index, _U64)
    # (as uint64: a list with a lane of 2**63 or more became float64, so indices past 2**63
    # rounded onto each other's counters)
    counter = np.array([0, 0, index, epoch], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=seed, counter=counter))


def _random_resized_crop(rng, h: int, w: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from `rng`: up to 10 tries of an area
    fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`; a box that fits gets a
    uniform position; else the central crop at the nearest allowed ratio."""
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


def _pair(name: str, v) -> tuple[float, float]:
    """A (low, high) range argument as two floats, or a ValueError naming it."""
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"augment: '{name}' must be a (low, high) pair of numbers, got "
                         f"{v!r}") from None
    return lo, hi


def _image_size(i: int, hw) -> tuple[int, int]:
    """One ``image_sizes`` entry as (height, width) ints >= 1, or a ValueError naming it (an
    image's whole ``.shape`` (h, w, c) gave numpy's "too many values to unpack"; a float height
    was truncated)."""
    try:
        h, w = (as_integer(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"augment: image_sizes[{i}] must be a (height, width) pair of ints "
                         f"(an image's shape[:2]), got {hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"augment: every image size must be at least 1x1, got {h}x{w}")
    return int(h), int(w)


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
        indices: dataset indices of the samples (with seed and epoch, the key of their randomness).
        image_sizes: (height, width) of each sample's decoded image.
        seed, epoch: with the index, the whole key: same key, same parameters.
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges (torchvision's
            semantics, including its 10 tries and central-crop fallback).
        hflip, vflip: probability of each flip.
        degrees: a rotation angle range (a number d means (-d, d); (d, d) is always d); 0 for
            none.
        quarter_turns: draw the rotation as k * 90 degrees, k uniform in 0..3 (exact).

    Returns:
        An `Augmentation`; pass ``**aug.kwargs()`` to `kernelkit.preprocess`, and read one
        sample's draw with ``aug.params(index)``.

    Example:
        >>> aug = kernelkit.augment([0, 1], [(480, 640), (500, 375)], seed=0, epoch=3)
        >>> len(aug.crop)
        2
    """
    if len(indices) != len(image_sizes):
        raise ValueError(f"augment: {len(indices)} indices but {len(image_sizes)} image sizes")
    scale, ratio = _pair("scale", scale), _pair("ratio", ratio)
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"augment: 'scale' must satisfy 0 < low <= high <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1] < math.inf):  # (inf overflowed numpy's uniform)
        raise ValueError(f"augment: 'ratio' must satisfy 0 < low <= high < inf, got {ratio}")
    for name, p in (("hflip", hflip), ("vflip", vflip)):
        if not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p <= 1:
            raise ValueError(f"augment: '{name}' is a probability in [0, 1], got {p!r}")
    if isinstance(degrees, (int, float, np.integer, np.floating)):
        if not 0 <= degrees < math.inf:  # (torchvision's RandomRotation refuses it too)
            raise ValueError(f"augment: 'degrees' as one number d means (-d, d) and must be "
                             f">= 0 and finite, got {degrees!r}")
        lo, hi = -float(degrees), float(degrees)
    else:
        lo, hi = _pair("degrees", degrees)
        if not -math.inf < lo <= hi < math.inf:  # (a reversed range drew no rotation at all)
            raise ValueError(f"augment: 'degrees' must be a finite (low, high) range with "
                             f"low <= high, got {degrees!r}")
    if quarter_turns and (lo, hi) != (0.0, 0.0):
        raise ValueError(f"augment: 'degrees' ({degrees!r}) and quarter_turns=True both draw the "
                         "rotation; give one of them")
    image_sizes = [_image_size(i, hw) for i, hw in enumerate(image_sizes)]
    crops, flips, rots = [], [], []
    for index, (h, w) in zip(indices, image_sizes):
        rng = sample_generator(seed, epoch, index)
        # A fixed number of draws per field, in a fixed order, first: each field's values do not
        # depend on which other augmentations are switched on or on how many crop tries it took.
        u = rng.random(4)
        crops.append(_random_resized_crop(rng, int(h), int(w), scale, ratio))
        flips.append((bool(u[0] < hflip), bool(u[1] < vflip)))
        if quarter_turns:
            rots.append(90.0 * int(u[2] * 4))
        else:
            rots.append(float(lo + (hi - lo) * u[3]))  # ((d, d): d, as torchvision's)
    return Augmentation(crops, flips, rots, [int(i) for i in indices], int(seed), int(epoch))
