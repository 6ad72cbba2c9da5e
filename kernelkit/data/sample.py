"""One sample, from the dataset item to a decoded image with its crop box and augmentation, and
one batch of them through the fused preprocess: the steps the Loader and the torch DataLoader
adapter (`Samples` + `Collate`) share."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import devices
from ..augment import as_integer
from ..augment import augment as _augment
from .decode import SCALES, Encoded, dct_scale, decode, read_source, to_rgb

AUGMENT_DEFAULTS = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5}
_AUGMENT_KEYS = {"scale", "ratio", "hflip", "vflip", "degrees", "quarter_turns"}


@dataclass
class Decoded:
    """A decoded sample, ready to batch: the image (H', W', 3) uint8, the crop box in its pixels,
    the flip and rotation drawn for it, its label, and its decode time (core-seconds)."""

    image: np.ndarray
    box: tuple[float, float, float, float]
    flip: tuple[bool, bool]
    rotate: float
    label: Any
    index: int
    scale: int  # the DCT reduction it was decoded at
    seconds: float = 0.0
    start: float = 0.0
    end: float = 0.0


def output_size(owner: str, size: Any) -> tuple[int, int]:
    """`size` (an int, or (height, width)) as a pair of positive ints, or a ValueError naming
    `owner` ("Loader", "Samples", "Collate") and what was given."""
    pair = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) \
        else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in pair)):
        raise ValueError(f"{owner}: 'size' must be a positive int or (height, width), got "
                         f"{size!r}")
    return int(pair[0]), int(pair[1])


def thread_count(owner: str, name: str, v: Any) -> int | None:
    """None or 0 (the default) or a positive int, or a ValueError naming `owner` and `name`."""
    try:
        k = None if v is None else as_integer(v)
    except TypeError:
        k = -1
    if k is None or k >= 0:
        return k or None
    raise ValueError(f"{owner}: '{name}' must be None or an int >= 0, got {v!r}")


def augment_options(augment: Any, owner: str = "Loader") -> dict | None:
    """The `kernelkit.augment` keyword arguments a Loader's `augment` argument means.

    None or False: no augmentation (the whole image resized to the output size). True:
    torchvision's RandomResizedCrop defaults and a horizontal flip with p = 0.5. A dict: those
    defaults updated with its keys (scale, ratio, hflip, vflip, degrees, quarter_turns).
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        return dict(AUGMENT_DEFAULTS)
    if isinstance(augment, dict):
        unknown = set(augment) - _AUGMENT_KEYS
        if unknown:
            raise ValueError(f"{owner}: 'augment' has unknown keys {sorted(unknown)}; expected "
                             f"some of {sorted(_AUGMENT_KEYS)}")
        return {**AUGMENT_DEFAULTS, **augment}
    raise TypeError(f"{owner}: 'augment' must be None, True or a dict of kernelkit.augment "
                    f"options, got {type(augment).__name__}")


def split_item(item: Any) -> tuple[Any, Any]:
    """(source, label) from a dataset item: a (source, label) pair, or a source alone (label
    None)."""
    if isinstance(item, tuple) and len(item) == 2:
        return item
    return item, None


def load_sample(item: Any, index: int, *, size: tuple[int, int], augment: dict | None,
                seed: int, epoch: int) -> Decoded:
    """Read, draw the augmentation for, and decode one sample at the DCT scale its crop allows.

    Args:
        item: the dataset item (see `split_item`).
        index: its dataset index (the key of its augmentation, with seed and epoch).
        size: the output (height, width).
        augment: `augment_options(...)`.
        seed, epoch: the augmentation key.

    Returns:
        A `Decoded` sample with its crop box mapped into the decoded image's pixels.
    """
    start = time.perf_counter()
    t0 = time.thread_time()
    source, label = split_item(item)
    try:
        src = read_source(source)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        # the same type, errno and path (what a caller catches), with the sample's index: the
        # path alone did not say which item of the dataset named it
        raise type(exc)(exc.errno, f"data: sample {index}: {exc.strerror}",
                        exc.filename) from exc
    except TypeError as exc:  # (an item of another type: which sample it is)
        raise TypeError(f"data: sample {index}: {str(exc).removeprefix('data: ')}") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder's error, said with the sample's name
        raise _undecodable(exc, index, source) from exc
    h, w = (src.height, src.width) if isinstance(src, Encoded) else src.shape[:2]
    if h == 0 or w == 0:  # (preprocess would name its place in the batch, augment nothing)
        raise ValueError(f"data: sample {index} is an empty image ({h}x{w})")
    if augment is None:
        box, flip, rot = (0, 0, h, w), (False, False), 0.0
    else:
        aug = _augment([index], [(h, w)], seed=seed, epoch=epoch, **augment)
        box, flip, rot = aug.crop[0], aug.flip[0], aug.rotate[0]
    s = 1
    if isinstance(src, Encoded):
        # an odd quarter turn swaps the output's axes relative to the crop's
        odd_turn = rot % 90 == 0 and int(rot // 90) % 2 == 1
        need = (size[1], size[0]) if odd_turn else size
        s = dct_scale(box, need) if src.jpeg else 1
        try:
            image = decode(src, s)
        except Exception as exc:  # noqa: BLE001 - a truncated or damaged file
            raise _undecodable(exc, index, source) from exc
        s_eff = _decoded_scale((h, w), image.shape[:2], s)
    else:
        image, s_eff = src, 1
    image = to_rgb(image)
    if s_eff > 1:
        box = _snap(box, s_eff, image.shape[:2])
    end = time.perf_counter()
    return Decoded(image, box, flip, rot, label, index, s_eff, time.thread_time() - t0, start, end)


def _decoded_scale(full: tuple[int, int], got: tuple[int, int], asked: int) -> int:
    """The reduction the decoder applied: the factor whose ceil'd size (libjpeg's) is the decoded
    one, `asked` first. Before, round(W / W') was taken, which for a small decoded width is
    another factor (97 px at 1/8 is 13 px: 97 / 13 = 7.5 -> 7), and the crop box was mapped 7-9
    px off (more than the half decoded pixel `_snap` allows)."""
    for c in (asked, *SCALES):
        if tuple(got) == (math.ceil(full[0] / c), math.ceil(full[1] / c)):
            return c
    return max(1, round(full[1] / got[1]))  # (a decoder that rounds otherwise)


def _undecodable(exc: Exception, index: int, source: Any) -> ValueError:
    """A decoder's error (PIL's "cannot identify image file <_io.BytesIO ...>", libjpeg-turbo's
    "Premature end of JPEG file") with the dataset index and the file that caused it."""
    if isinstance(source, np.ndarray):  # an image given decoded: checked, not decoded
        return ValueError(f"data: sample {index}: {str(exc).removeprefix('data: ')}")
    if isinstance(source, (str, os.PathLike)):
        what = os.fspath(source)
    else:  # (a memoryview's len counts its items)
        what = f"{type(source).__name__} of {getattr(source, 'nbytes', None) or len(source)} bytes"
    return ValueError(f"data: cannot decode sample {index} ({what}): {type(exc).__name__}: {exc}")


def _snap(box, s: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """A full-size crop box in the pixels of the image decoded at 1/s, rounded to whole pixels
    (at most half a decoded pixel off per edge; whole-pixel boxes keep every backend on the
    same footing, since the vendor preprocess crops by whole pixels)."""
    top, left, bh, bw = box
    t, l = round(top / s), round(left / s)
    b, r = round((top + bh) / s), round((left + bw) / s)
    t, l = min(t, hw[0] - 1), min(l, hw[1] - 1)
    return t, l, max(1, min(b, hw[0]) - t), max(1, min(r, hw[1]) - l)


def collate_labels(labels: Sequence[Any], torch_out: bool) -> Any:
    """Labels stacked as torch's default_collate stacks them, into one numpy array (or torch
    tensor): numbers, or numeric arrays or tensors of one shape and dtype (a 0-d tensor per
    sample, a one-hot or multi-label vector: they came back as a list); else the list (strings,
    booleans, dicts, mixed kinds, integers past 64 bits)."""
    labels = list(labels)
    if labels and all(isinstance(v, (int, float, np.integer, np.floating))
                      and not isinstance(v, bool) for v in labels):
        arr = np.asarray(labels)
        if arr.dtype == object:  # (an integer past 64 bits)
            return labels
        return _label_array(arr, torch_out)
    first = labels[0] if labels else None
    kind = type(first)
    if not hasattr(first, "shape") or not all(type(v) is kind and v.shape == first.shape
                                              and v.dtype == first.dtype for v in labels):
        return labels
    if isinstance(first, np.ndarray) and first.dtype.kind in "iuf":
        return _label_array(np.stack(labels), torch_out)
    torch = devices.imported("torch")
    if torch is not None and isinstance(first, torch.Tensor) and first.dtype != torch.bool \
            and not first.dtype.is_complex and (torch_out or first.dtype != torch.bfloat16):
        stacked = torch.stack([v.detach() for v in labels])
        return stacked if torch_out else stacked.cpu().numpy()
    return labels


def _label_array(arr: np.ndarray, torch_out: bool) -> Any:
    if torch_out:
        import torch

        return torch.from_numpy(arr)
    return arr


def preprocess_batch(samples: Sequence[Decoded], *, size, mean, std, stats_unit: str,
                     out_dtype: str, layout: str, interpolation: str, antialias: bool) -> Any:
    """One fused `kernelkit.preprocess` call over the ragged batch, with every sample's crop box,
    flip and rotation: a numpy array, or a torch tensor for bfloat16 (which numpy lacks: the
    images are then given as zero-copy tensors)."""
    from .. import arrays
    from ..ops.preprocess import preprocess

    images = [s.image for s in samples]
    if out_dtype == "bfloat16":
        images = [arrays.as_torch(im) for im in images]
    return preprocess(images, size=size, mean=mean, std=std,
                      stats_unit=stats_unit, crop=[s.box for s in samples],
                      flip=[s.flip for s in samples], rotate=[s.rotate for s in samples],
                      out_dtype=out_dtype, layout=layout, interpolation=interpolation,
                      antialias=antialias)
