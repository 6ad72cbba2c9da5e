"""The checks of `kernelkit.preprocess`'s arguments that need no pixels: what `prepare` checks
before it looks at the images, and what the registered op's fake checks on meta and fake
tensors (`ops/torch_ops.py`), so both raise the same errors."""

from __future__ import annotations

import math

import numpy as np

from .. import arrays, callsite
from ..kernels.taps import INTERPOLATIONS

IN_DTYPES = ("uint8", "float32")
OUT_DTYPES = ("float32", "float16", "bfloat16", "uint8")

FLIPS = {None: (False, False), False: (False, False), "none": (False, False),
          "horizontal": (True, False), "h": (True, False), "vertical": (False, True),
          "v": (False, True), "both": (True, True), "hv": (True, True)}
FLIP_NAMES = tuple(k for k in FLIPS if isinstance(k, str))
FLIP_BY_PAIR = {v: k for k, v in FLIPS.items() if isinstance(k, str) and len(k) > 2}  # "none" ...


def check_flip_name(flip) -> None:
    """A flip given by name (or None) must be one of FLIP_NAMES."""
    if flip is not None and flip not in FLIP_NAMES:
        raise ValueError(f"preprocess: 'flip' must be one of {FLIP_NAMES}, a (horizontal, "
                         f"vertical) pair, None, or one of these per image, got {flip!r}")


def is_box(v) -> bool:
    return (isinstance(v, (tuple, list)) or isinstance(v, np.ndarray) and v.ndim == 1) and \
        len(v) == 4 and all(isinstance(x, (int, float, np.integer, np.floating)) for x in v)


def check_box(i: int, box, h: int, w: int) -> tuple[float, float, float, float]:
    """Image `i`'s crop box (top, left, height, width) as floats, or the error naming it: whole
    pixels, inside its `h` x `w` image."""
    if not is_box(box):
        raise TypeError(f"preprocess: crop of image {i} must be (top, left, height, width), "
                        f"got {box!r}")
    top, left, bh, bw = (float(v) for v in box)
    if not all(math.isfinite(v) and v == int(v) for v in (top, left, bh, bw)):
        # the vendor chain (and so the reference every kernel is checked against) crops
        # whole pixels: a sub-pixel box ran exactly on the Numba kernel, truncated on torch's,
        # so the result depended on the candidate (and a forced Numba failed verification)
        raise ValueError(f"preprocess: crop box of image {i} must be whole pixels, got "
                         f"(top={top:g}, left={left:g}, height={bh:g}, width={bw:g})")
    if bh <= 0 or bw <= 0 or top < 0 or left < 0 or top + bh > h or left + bw > w:
        raise ValueError(f"preprocess: crop box (top={top:g}, left={left:g}, height={bh:g}, "
                         f"width={bw:g}) of image {i} lies outside its {h}x{w} image")
    return top, left, bh, bw


def channel_stats(name: str, v, c: int) -> np.ndarray:
    if arrays.array_lib(v) == "torch":  # (a bfloat16 one has no numpy view)
        v = arrays.tensor_values(v)
    try:
        if np.iscomplexobj(v):  # (float64 would drop the imaginary parts, with a warning)
            raise TypeError
        a = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"preprocess: '{name}' must be a number or one per channel, got "
                        f"{v!r}") from None
    if a.size == 1:
        a = np.repeat(a, c)
    if a.size != c:
        raise ValueError(f"preprocess: '{name}' must have one value per channel ({c}), got "
                         f"{a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"preprocess: '{name}' must be finite, got {a.tolist()}")
    return a


def dtype_name(op: str, name: str, v) -> str:
    """'float32', 'bfloat16', ... from a string, a numpy dtype/type or a torch dtype."""
    if isinstance(v, str):
        s = v
    elif type(v).__module__.startswith("torch"):
        s = str(v).removeprefix("torch.")
    else:
        try:
            s = np.dtype(v).name
        except TypeError:
            s = repr(v)
    if s not in OUT_DTYPES:
        raise TypeError(f"{op}: '{name}' must be one of {OUT_DTYPES}, got {v!r}")
    return s


STATS_UNITS = ("input", "unit")
_WARNED_UNITS: set[tuple[str, str]] = set()  # (input dtype, stats unit): warned once per process


def stats_in_input_units(mean: np.ndarray, std: np.ndarray, in_dtype: str,
                         stats_unit: str) -> tuple[np.ndarray, np.ndarray]:
    """`mean` and `std` converted to the images' units, with one warning per process and
    (dtype, unit) when they look like the other unit.

    Args:
        mean, std: per-channel float64 statistics as given.
        in_dtype: "uint8" or "float32".
        stats_unit: "input" or "unit" (see `preprocess`).

    Returns:
        (mean, std) in input units.
    """
    if stats_unit not in STATS_UNITS:
        raise ValueError(f"preprocess: 'stats_unit' must be one of {STATS_UNITS}, got "
                         f"{stats_unit!r}")
    top = max(float(np.max(np.abs(mean))), float(np.max(np.abs(std))))
    if stats_unit == "input":
        # mean 0 / std 1 (no normalisation) is legitimate in either unit: no warning for it
        suspicious = in_dtype == "uint8" and top <= 1.0 and bool(np.any(std != 1) or np.any(mean != 0))
        hint = ("look like [0, 1] units (torchvision's) but are read in input units (0..255 for "
                "uint8): pass stats_unit='unit', or give them times 255")
    else:
        suspicious = top > 1.0
        hint = ("look like input units (0..255) but are read in [0, 1] units: pass "
                "stats_unit='input', or give them divided by 255")
    if suspicious and (in_dtype, stats_unit) not in _WARNED_UNITS:
        _WARNED_UNITS.add((in_dtype, stats_unit))
        callsite.warn(f"preprocess: mean={mean.tolist()} std={std.tolist()} for {in_dtype} "
                      f"images {hint}")
    factor = 255.0 if stats_unit == "unit" and in_dtype == "uint8" else 1.0
    return mean * factor, std * factor


# An output image's pixels at most: a limit of ours (46341 x 46341), far beyond any image a
# model takes, that turns a size given by mistake into an error naming it
MAX_PIXELS = 2**31 - 1


def check_size(size) -> tuple[int, int]:
    """`preprocess`'s output size (an int, or a (height, width) pair of ints), as two ints."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                       for v in size)):
        raise TypeError(f"preprocess: 'size' must be an int or an (height, width) pair, got {size!r}")
    if min(size) <= 0:
        raise ValueError(f"preprocess: 'size' must be positive, got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    if h * w > MAX_PIXELS:  # (before: torch's "Storage size calculation overflowed"
        # RuntimeError, or numpy's MemoryError, naming neither op nor argument)
        raise ValueError(f"preprocess: 'size' {(h, w)} gives {h * w} pixels an image, more than "
                         f"{MAX_PIXELS} (2**31 - 1)")
    return h, w


def check_settings(c: int, in_dtype: str, *, size, mean, std, interpolation, layout, out_dtype,
                   stats_unit) -> tuple[tuple[int, int], np.ndarray, np.ndarray, str]:
    """The checks of `preprocess`'s settings for `c`-channel images of `in_dtype` (also the
    registered op's fake, so meta and FakeTensor calls raise what real ones do):
    ((height, width), mean and std in input units, the output dtype's name)."""
    size = check_size(size)
    mean_a = channel_stats("mean", mean, c)
    std_a = channel_stats("std", std, c)
    if np.any(std_a == 0):
        raise ValueError(f"preprocess: 'std' must be non-zero, got {std_a.tolist()}")
    mean_a, std_a = stats_in_input_units(mean_a, std_a, in_dtype, stats_unit)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"preprocess: 'interpolation' must be one of {INTERPOLATIONS}, got "
                         f"{interpolation!r}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"preprocess: 'layout' must be 'NCHW' or 'NHWC', got {layout!r}")
    out_dt = dtype_name("preprocess", "out_dtype", out_dtype)
    return size, mean_a, std_a, out_dt
