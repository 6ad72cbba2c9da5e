"""preprocess: decoded uint8 images -> model-ready tensors in one fused pass per image.

check arguments -> Problem -> dispatch -> launch. Geometry (crop box, flips, quarter turns, an
arbitrary rotation) is resolved here into per-image arrays that every kernel folds into one
sampling map; resize, channel order, normalisation, dtype and layout follow in the same pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import arrays, core
from ..core import Call, Candidate, Config, OpSpec, Plan, Problem
from ..kernels import check_flag
from ..kernels.taps import PreprocessSpec
from .dispatch import (
    PlanMemo,
    fx_proxy,
    jit_tracing,
    key_part,
    plan_for,
    signature,
    torch_only,
)
from .preprocess_args import (
    FLIP_BY_PAIR,
    FLIP_NAMES,
    FLIPS,
    IN_DTYPES,
    check_box,
    check_flip_name,
    check_settings,
    dtype_name,
    is_box,
)
from .verify import in_range

OP = "preprocess"


@dataclass(frozen=True)
class PreprocessOptions:
    """What of a preprocess call, besides its sizes, changes the kernel."""

    ragged: bool
    interpolation: str
    antialias: bool
    out_dtype: str
    rotate: bool  # some image has an arbitrary (not quarter-turn) rotation


def preprocess(images: Any, *, size, mean, std, crop=None, flip=None, rotate=None, fill=0.0,
               interpolation: str = "bilinear", antialias: bool = True, channel_order=None,
               out_dtype: Any = "float32", layout: str = "NCHW",
               stats_unit: str = "input") -> Any:
    """Crop, flip, rotate, resize, reorder channels, normalise and convert, in one pass per image.

    Args:
        images: a uint8 (or float32) NHWC batch, or a list of HWC images of different sizes (a
            ragged batch, as decoders produce); numpy arrays, torch tensors (CPU or CUDA) or cupy
            arrays (a nested tensor of HWC images is such a list). 1 or 3 channels.
        size: output (height, width), or one int for both.
        mean, std: per-channel statistics, or scalars, in the unit `stats_unit` names, in
            the output's channel order (after `channel_order`: ImageNet's RGB statistics with
            "bgr2rgb"). The output is ``(x - mean) * (1 / std)`` in float32 (x in input units)
            before the final conversion.
        crop: (top, left, height, width) in whole source pixels, for every image or one per
            image.
        flip: "horizontal", "vertical", "both", a (horizontal, vertical) pair, or one per image.
        rotate: degrees counter-clockwise, for every image or one per image. Multiples of 90 are
            exact quarter turns; other angles rotate about the crop's centre (the crop's size,
            `fill` outside), composed with the resize into one sampling of the source: nearest
            where `interpolation` is "nearest", else bilinear (bicubic too), and no antialias
            for that image, whatever `antialias` says.
        fill: value (input units) for pixels an arbitrary rotation brings in; scalar or per image.
        interpolation: "bilinear", "bicubic" or "nearest" (half-pixel centres; nearest is
            torch's "nearest-exact").
        antialias: True is the PIL/torchvision antialiased filter when downscaling; False the
            2-tap (bilinear) / 4-tap (bicubic) form of OpenCV and torch interpolate.
        channel_order: None, "rgb2bgr"/"bgr2rgb" (reverse), or a permutation: output channel c
            reads input channel channel_order[c].
        out_dtype: "float32", "float16", "bfloat16" (torch outputs only) or "uint8"
            (rounded, saturated); a numpy or torch dtype works too.
        layout: "NCHW" or "NHWC" for the output.
        stats_unit: the unit of `mean` and `std`. "input" (default): the images' own units,
            0..255 for uint8 (``mean=(123.7, 116.3, 103.5)``). "unit": the [0, 1] units of
            torchvision's ``Normalize`` after ``ToTensor`` (``mean=(0.485, 0.456, 0.406)``);
            they are scaled by 255 for uint8 images and taken as they are for float32 images
            (float images are then taken to be in [0, 1]). Statistics that look like the other
            unit for the images' dtype (all of mean and std within [0, 1] for uint8 images in
            "input" units; any above 1 in "unit" units) give one `UserWarning` per process.

    Shape:
        (N, H, W, C) or [(H_i, W_i, C)] -> (N, C, h, w) or (N, h, w, C)

    Returns:
        One batch array in the input's library and on its device. It never requires grad:
        preprocess has no gradient (images that require grad are read as plain data).

    Example:
        >>> batch = kernelkit.preprocess(imgs, size=224, mean=(123.7, 116.3, 103.5),
        ...                              std=(58.4, 57.1, 57.4))  # doctest: +SKIP
    """
    ragged = isinstance(images, (list, tuple))
    if not ragged and (proxy := fx_proxy(images)) is not None:  # a torch.fx trace: one node
        return proxy.tracer.create_proxy("call_function", preprocess, (images,), dict(
            size=size, mean=mean, std=std, crop=crop, flip=flip, rotate=rotate, fill=fill,
            interpolation=interpolation, antialias=antialias, channel_order=channel_order,
            out_dtype=out_dtype, layout=layout, stats_unit=stats_unit))
    if not ragged and type(images) is not np.ndarray and getattr(images, "is_nested", False):
        # torch's container of a ragged batch: its images (the registered op raised "Could not
        # run 'kernelkit::preprocess' with arguments from the 'NestedTensorCPU' backend")
        images, ragged = list(images.unbind()), True
    if jit_tracing() and arrays.array_lib(images[0] if ragged and images else images) == "torch":
        if ragged:  # (kernelkit.nn.Preprocess hands its list here too: its advice would loop)
            raise RuntimeError(
                "preprocess: torch.jit.trace cannot record a list of images (their sizes would "
                "be baked into the trace); trace one (N, H, W, C) batch tensor instead")
        raise RuntimeError(
            "preprocess: torch.jit.trace cannot record kernelkit.preprocess (its result would be "
            "baked into the trace as a constant); trace kernelkit.nn.Preprocess instead, which "
            "records torch.ops.kernelkit.preprocess")
    if not ragged and torch_only(images):  # meta, FakeTensor, vmap...: the registered op
        return _through_registered_op(images, size, mean, std, crop, flip, rotate,
                                      interpolation, antialias, channel_order, out_dtype, layout,
                                      stats_unit)
    if ragged and any(_without_data(x) for x in images):
        # (the registered op takes one batch tensor; such a list failed in a copy to the host,
        # "Cannot copy out of meta tensor")
        raise TypeError("preprocess: a list of images must hold their data; meta or fake "
                        "tensors go in one (N, H, W, C) batch tensor")
    # (a record array's field: its byte strides are no multiple of its item size; copied)
    images = [arrays.item_strided(x) for x in images] if ragged else arrays.item_strided(images)
    extras = _frozen((size, mean, std, crop, flip, rotate, fill, interpolation, antialias,
                      channel_order, out_dtype, layout, stats_unit))
    sig = signature(tuple(images) if ragged else (images,), (ragged, extras)) \
        if extras is not None else None
    plan = _PLANS.find(sig)
    if plan is None:
        plan = _PLANS.store(sig, plan_for(prepare(
            images, size=size, mean=mean, std=std, crop=crop, flip=flip, rotate=rotate,
            fill=fill, interpolation=interpolation, antialias=antialias,
            channel_order=channel_order, out_dtype=out_dtype, layout=layout,
            stats_unit=stats_unit)))
    return plan(images)


_PLANS = PlanMemo()


def _without_data(x) -> bool:
    """`x` is a meta or fake tensor: shapes without values. (A plain tensor is told apart by
    its type first: `is_fake` costs 1.4 us, on each image of a ragged batch.)"""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return False
    if type(x) is torch.Tensor or type(x) is torch.nn.Parameter:
        return x.is_meta
    return x.is_meta or torch._subclasses.fake_tensor.is_fake(x)


def _float_list(v) -> list[float]:
    """`v` (a number, or numbers in a sequence or an array) as a flat list of floats; Python
    numbers without numpy, which dynamo turns into tensor ops in code it traces (and then
    cannot take `tolist()` of)."""
    if isinstance(v, (int, float)):
        return [float(v)]
    if isinstance(v, (tuple, list)) and all(isinstance(e, (int, float)) for e in v):
        return [float(e) for e in v]
    return np.asarray(v, np.float64).reshape(-1).tolist()


def _through_registered_op(images, size, mean, std, crop, flip, rotate, interpolation, antialias,
                           channel_order, out_dtype, layout, stats_unit, op=None):
    """`preprocess` on torch tensors that kernelkit's kernels leave to torch's dispatcher
    (`dispatch.torch_only`: meta, FakeTensor, a torch.func transform, a dispatch mode):
    `torch.ops.kernelkit.preprocess`, whose fake gives the shape and whose body runs the kernel on
    the plain tensors underneath. It takes one crop box and one flip for the batch."""
    import torch

    from .torch_ops import preprocess_op

    given = (f"{type(images).__name__} images on {images.device} (or a torch.func transform or "
             "dispatch mode)")
    if rotate is not None and any(r != 0 for r in _float_list(rotate)):
        raise TypeError(f"preprocess: 'rotate' needs plain tensors, got {given}")
    if crop is not None and not is_box(crop):
        raise TypeError("preprocess: 'crop' must be one (top, left, height, width) box for "
                        f"the batch here (one per image needs plain tensors), got {crop!r} with "
                        f"{given}")
    if flip is False:
        flip = None
    if isinstance(flip, (tuple, list)):  # a (horizontal, vertical) pair of flags
        pair = tuple(bool(v) if isinstance(v, (bool, np.bool_)) else None for v in flip)
        if len(pair) != 2 or None in pair:
            raise TypeError(f"preprocess: one 'flip' per image needs plain tensors, got {given}")
        flip = FLIP_BY_PAIR[pair]
    if isinstance(channel_order, str) and channel_order.lower() in ("rgb2bgr", "bgr2rgb"):
        channel_order = list(range(images.shape[-1] if images.ndim else 0))[::-1]
    elif isinstance(channel_order, str):
        raise ValueError("preprocess: 'channel_order' must be None, 'rgb2bgr', 'bgr2rgb' or a "
                         f"permutation, got {channel_order!r}")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    dtype = getattr(torch, dtype_name(OP, "out_dtype", out_dtype))
    if op is None:  # (given: the overload itself, in code dynamo traces)
        op = preprocess_op()
    return op(
        images, [int(h), int(w)], _float_list(mean),
        _float_list(std),  # (checked by the op, or its fake)
        None if crop is None else [float(v) for v in crop], flip, interpolation, bool(antialias),
        None if channel_order is None else _channel_indices(channel_order), dtype, layout,
        stats_unit)


def _frozen(v):
    """`v` as a hashable value (lists, tuples and numpy arrays as tuples), or None if it has an
    unhashable part: then the call is prepared afresh."""
    if isinstance(v, (list, tuple)):
        items = tuple(_frozen(x) for x in v)
        return None if any(x is None and y is not None for x, y in zip(items, v)) else items
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if arrays.array_lib(v) == "torch":  # a tensor hashes by identity: a mean changed in place
        # kept the old plan's statistics; keyed by value instead (a GPU one: prepared afresh,
        # its values not read back on every call)
        return ("tensor", str(v.dtype), tuple(v.shape),
                arrays.tensor_values(v).tobytes()) if v.device.type == "cpu" else None
    try:
        hash(v)
    except TypeError:
        return None
    return key_part(v)  # by type too: size=8.0 must not find size=8's plan (nor 0 False's)


# -- checking ------------------------------------------------------------------------------------
def _images(images) -> tuple[list | Any, arrays.Location, str, list[tuple[int, int]], int, bool]:
    ragged = isinstance(images, (list, tuple))
    if ragged:
        if not images:
            raise ValueError("preprocess: 'images' is an empty batch (a list of no images)")
        items = [arrays.item_strided(x) for x in images]
    else:
        if arrays.array_lib(images) is None:
            raise TypeError(f"preprocess: 'images' must be an NHWC array ({arrays.ACCEPTED}) or "
                            f"a list of HWC arrays, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError("preprocess: 'images' must be an (N, H, W, C) batch or a list of "
                             f"(H, W, C) images, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("preprocess: 'images' is an empty batch (N = 0)")
        images = arrays.item_strided(images)
        items = None
    seq = items if ragged else [images]
    loc = dtype = None
    for i, img in enumerate(seq):
        name = f"images[{i}]" if ragged else "images"
        if arrays.array_lib(img) is None:
            raise TypeError(f"preprocess: '{name}' must be {arrays.ACCEPTED}, got "
                            f"{type(img).__name__}")
        if ragged and img.ndim != 3:
            raise ValueError(f"preprocess: '{name}' must be an (H, W, C) image, got shape "
                             f"{tuple(img.shape)}")
        here, dt = arrays.location(img), arrays.dtype_name(img)
        if loc is None:
            loc, dtype = here, dt
        elif here != loc:
            raise ValueError(f"preprocess: '{name}' is a {here.lib} array on {here.device} but "
                             f"images[0] is a {loc.lib} array on {loc.device}; one batch lives "
                             "in one place")
        elif dt != dtype:
            raise TypeError(f"preprocess: the ragged batch mixes dtypes: '{name}' is {dt}, "
                            f"images[0] is {dtype}")
    if dtype not in IN_DTYPES:
        raise TypeError(f"preprocess: images must be one of {IN_DTYPES}, got {dtype}"
                        f"{arrays.byte_order_note(dtype, IN_DTYPES)}")
    shapes = [tuple(x.shape) for x in seq] if ragged else \
        [tuple(images.shape[1:])] * images.shape[0]
    channels = {s[2] for s in shapes}
    if len(channels) != 1 or channels.pop() not in (1, 3):
        got = sorted({s[2] for s in shapes})
        raise ValueError(f"preprocess: images must have 1 or 3 channels (all the same), got {got}")
    for i, (h, w, _) in enumerate(shapes):
        if h == 0 or w == 0:
            raise ValueError(f"preprocess: image {i} is empty ({h}x{w})")
    return items if ragged else images, loc, dtype, [s[:2] for s in shapes], shapes[0][2], ragged


def _is_number(v) -> bool:
    """A number of degrees or levels: an int or a float, numpy's too (a 0-d array included), not
    a bool (``rotate=True`` is no angle)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    return isinstance(v, (int, float, np.integer, np.floating)) \
        and not isinstance(v, (bool, np.bool_))


def _channel_indices(channel_order) -> list[int]:
    """A permutation's entries as ints: a sequence, numpy array or tensor of integers (2.9 is no
    channel index)."""
    items = channel_order.tolist() if hasattr(channel_order, "tolist") else channel_order
    items = list(items) if isinstance(items, Sequence) and not isinstance(items, str) else None
    if items is None or not all(isinstance(v, (int, np.integer)) and not isinstance(
            v, (bool, np.bool_)) for v in items):
        raise TypeError("preprocess: 'channel_order' must be None, 'rgb2bgr', 'bgr2rgb' or a "
                        f"permutation of channel indices (ints), got {channel_order!r}")
    return [int(v) for v in items]


def _per_image(name: str, value, n: int, is_one, one: str = "one value") -> list:
    """A scalar-like value for every image, or a sequence of exactly one per image. `one`: what
    a value for all images is, for the errors (a crop of three numbers read as "3 values for
    1 image", naming no box)."""
    if is_one(value):
        return [value] * n
    if (isinstance(value, np.ndarray) and value.ndim >= 1 or isinstance(value, Sequence)) \
            and not isinstance(value, str):  # (a string is no sequence of per-image values)
        if len(value) != n:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(f"preprocess: '{name}' must be {one} for all images or one per "
                             f"image ({n}), got {len(value)} values: {shown}")
        return list(value)
    raise TypeError(f"preprocess: '{name}' must be {one} for all images or one per image, "
                    f"got {type(value).__name__} {value!r}")


def prepare(images, *, size, mean, std, crop=None, flip=None, rotate=None, fill=0.0,
            interpolation="bilinear", antialias=True, channel_order=None, out_dtype="float32",
            layout="NCHW", stats_unit="input") -> Call:
    imgs, loc, in_dtype, hw, c, ragged = _images(images)
    n = len(hw)
    size, mean_a, std_a, out_dt = check_settings(c, in_dtype, size=size, mean=mean, std=std,
                                                 interpolation=interpolation, layout=layout,
                                                 out_dtype=out_dtype, stats_unit=stats_unit)
    if (why := arrays.missing_dtype(loc.lib, out_dt)) is not None:
        raise TypeError(f"preprocess: out_dtype {out_dt} needs torch images ({why})")

    # geometry, resolved per image
    boxes = np.empty((n, 4), np.float64)
    for i, box in enumerate(_per_image("crop", crop, n, lambda v: v is None or is_box(v),
                                      "None or a (top, left, height, width) box")):
        h, w = hw[i]
        if box is None:
            box = (0, 0, h, w)
        boxes[i] = check_box(i, box, h, w)
    flips = np.zeros((n, 2), np.bool_)
    if isinstance(flip, str):
        check_flip_name(flip)
    elif flip is True or isinstance(flip, np.bool_) and flip:  # (False is "none": no axis)
        raise ValueError(f"preprocess: flip=True does not say which axis to flip: give one of "
                         f"{FLIP_NAMES}, a (horizontal, vertical) pair, or one per image")
    is_flip = lambda v: v in FLIPS if isinstance(v, (str, bool)) or v is None else \
        (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(b, (bool, np.bool_)) for b in v))
    for i, f in enumerate(_per_image("flip", flip, n, is_flip)):
        if isinstance(f, (tuple, list)) and len(f) == 2:
            flips[i] = (bool(f[0]), bool(f[1]))
        elif (isinstance(f, (str, bool)) or f is None) and f in FLIPS:
            flips[i] = FLIPS[f]
        else:
            raise ValueError(f"preprocess: flip of image {i} must be one of "
                             f"{sorted(k for k in FLIPS if isinstance(k, str))}, a "
                             f"(horizontal, vertical) pair or None, got {f!r}")
    rot90 = np.zeros(n, np.int64)
    angles = np.zeros(n, np.float64)
    is_num = lambda v: v is None or _is_number(v)
    for i, r in enumerate(_per_image("rotate", rotate, n, is_num)):
        if not is_num(r) or (r is not None and not math.isfinite(r)):
            raise TypeError(f"preprocess: rotate of image {i} must be a finite number of degrees, "
                            f"got {r!r}")
        r = 0.0 if r is None else float(r) % 360.0
        if r % 90.0 == 0.0:
            rot90[i] = int(r // 90.0)
        else:
            angles[i] = r
    fills = _per_image("fill", fill, n, lambda v: is_num(v) and v is not None)
    if not all(_is_number(v) for v in fills):
        raise TypeError(f"preprocess: 'fill' must be a number, or one per image, got {fill!r}")
    fills = np.asarray(fills, dtype=np.float32)
    if not np.all(np.isfinite(fills)):
        raise ValueError(f"preprocess: 'fill' must be finite, got {fill!r}")
    check_flag("preprocess", "antialias", antialias)  # ("no" would be truthy: antialiased)
    if channel_order is None:
        perm = np.arange(c)
    elif isinstance(channel_order, str):
        if channel_order.lower() not in ("rgb2bgr", "bgr2rgb"):
            raise ValueError(f"preprocess: 'channel_order' must be None, 'rgb2bgr', 'bgr2rgb' or "
                             f"a permutation, got {channel_order!r}")
        perm = np.arange(c)[::-1].copy()
    else:
        perm = np.asarray(_channel_indices(channel_order), dtype=np.int64)
        if sorted(perm.tolist()) != list(range(c)):
            raise ValueError(f"preprocess: 'channel_order' must be a permutation of "
                             f"{list(range(c))}, got {perm.tolist()}")
    # per output channel, after the reordering (as cv2.dnn.blobFromImage with swapRB, or
    # torchvision's Normalize after a channel flip): ImageNet's RGB statistics with "bgr2rgb"
    mean_out = mean_a.astype(np.float32)
    scale_out = (1.0 / std_a).astype(np.float32)
    spec = PreprocessSpec(boxes=boxes, flips=flips, rot90=rot90, angles=angles, fill=fills,
                          size=size, mean=mean_out, scale=scale_out, channel_perm=perm,
                          interpolation=interpolation, antialias=bool(antialias),
                          out_dtype=out_dt, layout=layout)

    med_h, med_w = (int(np.median([s[0] for s in hw])), int(np.median([s[1] for s in hw])))
    in_bytes = sum(h * w for h, w in hw) * c * (1 if in_dtype == "uint8" else 4)
    out_bytes = n * c * size[0] * size[1] * {"uint8": 1, "float32": 4}.get(out_dt, 2)
    problem = Problem(
        op=OP, shapes=((n, med_h, med_w, c), size), dtype=in_dtype, layout=layout,
        lib=loc.lib, device=loc.device,
        options=PreprocessOptions(ragged, interpolation, bool(antialias), out_dt,
                                  bool(angles.any())),
        flops=float(n * c * size[0] * size[1] * 8), nbytes=in_bytes + out_bytes)

    groups = scale_groups(spec) if ragged else None

    def bind(cand: Candidate, config: Config) -> Plan:
        fn = cand.launcher(problem, config)
        to = arrays.converter(loc, cand.native, cand.device)

        def plan(images):
            if to is not None:
                images = [to(x) for x in images] if ragged else to(images)
            if groups is not None:
                idx, order = groups
                parts = [arrays.to_location(fn([images[i] for i in g], _subset(spec, g)), loc)
                         for g in idx]
                return arrays.with_dtype(arrays.concat_rows(parts, order), out_dt)
            # a kernel whose array library lacks the dtype (numpy: bfloat16) returns its bits
            return arrays.with_dtype(arrays.to_location(fn(images, spec), loc), out_dt)

        return plan

    ref = functools.partial(_reference, imgs, ragged, spec)
    return Call(problem, bind, (imgs,), _verifier(ref, in_dtype, scale_out, out_dt))


# A ragged batch is run in groups of like scale where padding every image's tap tables to the
# longest (`taps.axis_plan`: one table row length for the batch) would cost this many times the
# groups' tables, and at least SPLIT_MIN_TAPS table entries. Why: one 16 x 200000 strip among 256
# photos of 32 px, antialiased to 224 px, made every photo's tables as long as the strip's: 4.18 s
# and 6.2 GB a call, 0.14 s and 0.8 GB in groups (Numba, 2-vCPU Zen 4, docs/performance.md).
SPLIT_WASTE = 4.0
SPLIT_MIN_TAPS = 1 << 22


def scale_groups(spec: PreprocessSpec) -> tuple[list[np.ndarray], np.ndarray] | None:
    """(image indices of each group, the order that puts the groups' rows back) where a ragged
    batch's tap tables are better built per group of images whose downscale factors are within
    2x of each other (antialiased filters widen with the factor), else None."""
    if not spec.antialias or spec.interpolation == "nearest" or len(spec.boxes) < 2:
        return None
    out_h, out_w = spec.size
    odd = spec.rot90 % 2 == 1  # (a quarter turn sends the box's width to the output's rows)
    along_y = np.where(odd, spec.boxes[:, 3], spec.boxes[:, 2]) / max(out_h, 1)
    along_x = np.where(odd, spec.boxes[:, 2], spec.boxes[:, 3]) / max(out_w, 1)
    key = np.floor(np.log2(np.maximum(np.maximum(along_y, along_x), 1.0))).astype(np.int64)
    padded = len(key) * (np.maximum(along_y, 1.0).max() * out_h
                          + np.maximum(along_x, 1.0).max() * out_w)
    keys = np.unique(key)
    if len(keys) < 2 or padded < SPLIT_MIN_TAPS:
        return None
    idx = [np.flatnonzero(key == k) for k in keys]
    grouped = sum(len(g) * (np.maximum(along_y[g], 1.0).max() * out_h
                            + np.maximum(along_x[g], 1.0).max() * out_w) for g in idx)
    if padded < SPLIT_WASTE * grouped:
        return None
    return idx, np.argsort(np.concatenate(idx), kind="stable")


def _subset(spec: PreprocessSpec, idx: np.ndarray) -> PreprocessSpec:
    """`spec` for the images `idx` of its batch."""
    return dataclasses.replace(spec, boxes=spec.boxes[idx], flips=spec.flips[idx],
                               rot90=spec.rot90[idx], angles=spec.angles[idx],
                               fill=spec.fill[idx])


def _reference(imgs, ragged, spec: PreprocessSpec):
    """The vendor chain, in float32 on the CPU: what every candidate must match within 1 level."""
    from ..kernels.torch.preprocess import preprocess_forward

    seq = imgs if ragged else [imgs[i] for i in range(imgs.shape[0])]
    cpu = [arrays.as_torch(arrays.to_host(x), "cpu") for x in seq]
    out = preprocess_forward(cpu, *dataclasses.replace(spec, out_dtype="float32").args())
    if seq[0].dtype in (np.uint8,) or str(seq[0].dtype).endswith("uint8"):
        span = 255.0
    else:  # (per image, in place: a float32 copy of the whole batch, concatenated, peaked at
        # 8.5x a uint8 batch's size: 3.2 GB to verify a 3 x 6000 x 6000 batch cropped to 64 px)
        lo = min(_finite_extreme(x, min) for x in cpu)
        hi = max(_finite_extreme(x, max) for x in cpu)
        span = max(hi - lo, 0.0)
    return out.numpy(), span


def _finite_extreme(x, which) -> float:
    """`which` (min or max) of the finite values of float image `x` (0 where there are none):
    NaN or Inf pixels made the span NaN or Inf, hence the tolerance, and every candidate failed
    its check. (The masked copy only for an image that has such pixels.)"""
    import torch

    v = float(x.min() if which is min else x.max())
    if math.isfinite(v):
        return v
    fin = x[torch.isfinite(x)]
    return float(fin.min() if which is min else fin.max()) if fin.numel() else 0.0


def _verifier(reference, in_dtype: str, scale: np.ndarray, out_dt: str):
    ref_once = functools.cache(reference)

    def verify(out) -> str | None:
        ref, span = ref_once()
        got = np.asarray(_to_f32(out), dtype=np.float64)
        if got.shape != ref.shape:
            return f"shape {got.shape} != {ref.shape}"
        if out_dt == "uint8":
            ref = np.clip(np.round(ref), 0, 255)
            tol = 2.0  # 1 level from resampling + 1 from rounding at the boundary
        else:
            level = 1.0 if in_dtype == "uint8" else span / 255.0
            rel = {"float32": 2.0**-20, "float16": 2.0**-10, "bfloat16": 2.0**-7}[out_dt]
            finite = np.abs(ref[np.isfinite(ref)])
            tol = 1.5 * level * float(np.max(np.abs(scale))) + rel * float(np.max(finite,
                                                                                  initial=0))
        if out_dt != "uint8":  # (a float16 output past 65504 is inf, as torch's cast gives)
            ref = in_range(ref, got, np.full(ref.shape, tol), out_dt)
        if not np.array_equal(np.isnan(got), np.isnan(ref)):
            return "NaN pattern differs from the reference"
        fin = np.isfinite(ref)
        if not np.array_equal(got[~fin], ref[~fin], equal_nan=True):
            return "Inf differs from the reference"
        err = float(np.max(np.abs(got[fin] - ref[fin]), initial=0.0))
        return None if err <= tol else f"max error {err:.3g} > {tol:.3g} (more than a level)"

    return verify


def _to_f32(out) -> np.ndarray:
    if arrays.array_lib(out) == "torch":
        return out.detach().float().cpu().numpy()
    return np.asarray(arrays.as_numpy(out), dtype=np.float32)


# -- the spec ------------------------------------------------------------------------------------
def _launch(entry, p: Problem, config) -> Plan:
    """Every backend's preprocess entry: (images, *PreprocessSpec.args(), *, config). The spec
    holds per-image arrays, so it is not part of the (hashable) Problem: the plan passes it."""
    return lambda images, spec: entry(images, *spec.args(), config=config)


def make_inputs(dims: tuple[int, ...], dtype: str, where: str, seed: int = 0):
    """(args, kwargs) for a batch of N (H, W, 3) images resized to S x S: dims (N, H, W, S);
    uint8 or float32 images (pixel values 0..255 either way: the input's units). Before, every
    dtype gave uint8 images: a float32 row of a shapes file tuned the uint8 size."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"preprocess: images are uint8 or float32, got dtype {dtype!r}")
    n, h, w, size = dims
    (images,) = arrays.random_arrays(((n, h, w, 3),), dtype, where, seed, low_high=(0, 256))
    return [images], {"size": size, "mean": (123.7, 116.3, 103.5), "std": (58.4, 57.1, 57.4)}


def _dims_of(shapes) -> tuple[int, ...] | None:
    """make_inputs' dims for a problem's shapes ((N, H, W, C), (S, S)), or None."""
    (n, h, w, c), size = shapes[0], tuple(shapes[1])
    return (n, h, w, size[0]) if c == 3 and len(size) == 2 and size[0] == size[1] else None


def _cli_inputs(dims: tuple[int, ...]) -> tuple[int, ...]:
    if len(dims) != 4:
        raise ValueError("preprocess takes N H W SIZE (a batch of N HxW RGB images -> SIZE x SIZE)")
    return tuple(dims)


SPEC = core.register_op(OpSpec(
    name=OP, kernel="preprocess", entry="preprocess_forward", launch=_launch, function=preprocess,
    prepare=prepare, make_inputs=make_inputs,
    presets={"imagenet": tuple(((n, h, w, 224), "uint8") for n in (1, 32)
                               for h, w in ((375, 500), (480, 640)))},
    cli_dims="N H W SIZE", cli_inputs=_cli_inputs, dims_of=_dims_of,
))
