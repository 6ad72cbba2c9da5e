"""`kernelkit.nn.Preprocess`: kernelkit.preprocess as a module, for models that take raw images."""

# no `from __future__ import annotations`: TorchScript reads the class annotations below as types

import math
from collections.abc import Sequence
from typing import Any, List, Optional  # noqa: UP035 - TorchScript reads the attributes' annotations

import numpy as np
import torch
from torch import nn

from ..arrays import tensor_values
from ..ops import dispatch
from ..ops import preprocess as _preprocess
from ..ops import preprocess_args as _check
from ..ops.torch_ops import preprocess_op

_REVERSE = ("rgb2bgr", "bgr2rgb")


class Preprocess(nn.Module):
    r"""Crop, flip, resize, reorder channels, normalise and convert a batch of images in one
    fused pass: `kernelkit.preprocess` with its arguments fixed at construction.

    In eager mode the module calls `kernelkit.preprocess` (tuned per input size, on the device the
    tuner picks); under `torch.compile` and `torch.export` it traces the registered op
    `torch.ops.kernelkit.preprocess`, so a model that starts from raw images compiles with
    `fullgraph=True` and exports. `torch.jit.script` compiles that op too; a `torch.fx`
    symbolic trace records the module's call as one node; meta tensors, FakeTensorMode, `vmap` and
    dispatch modes run the op through torch's dispatcher (its fake gives the shape). Not
    differentiable: its inputs are images.

    Args:
        size: output (height, width), or one int for both.
        mean: per-channel mean (or a scalar), in the unit `stats_unit` names, in the
            output's channel order (after `channel_order`).
        std: per-channel standard deviation (or a scalar), same unit.
        crop: one (top, left, height, width) box in source pixels for every image, or None.
        flip: None, "horizontal", "vertical" or "both", for every image.
        interpolation: "bilinear", "bicubic" or "nearest" (half-pixel centres).
        antialias: True: the PIL/torchvision antialiased filter when downscaling; False: the
            2-tap form of OpenCV INTER_LINEAR and torch interpolate.
        channel_order: None, "rgb2bgr"/"bgr2rgb" (reverse), or a permutation (output channel c
            reads input channel channel_order[c]).
        out_dtype: the output dtype (torch.float32, torch.float16, torch.bfloat16, torch.uint8).
        layout: "NCHW" or "NHWC" for the output.
        stats_unit: "input" (mean/std in the images' units: 0..255 for uint8) or "unit" ([0, 1]
            units, as torchvision's Normalize after ToTensor).

    Shape:
        - Input: :math:`(N, H, W, C)` or :math:`(H, W, C)`, uint8 or float32, C = 1 or 3.
        - Output: :math:`(N, C, h, w)` for "NCHW" (:math:`(N, h, w, C)` for "NHWC"); an
          :math:`(H, W, C)` input gives one image without the batch dim.

    Returns:
        A tensor on the input's device, of `out_dtype`, normalised as ``(x - mean) / std``.

    Example:
        >>> pre = kernelkit.nn.Preprocess(224, mean=(0.485, 0.456, 0.406),
        ...                               std=(0.229, 0.224, 0.225), stats_unit="unit")
        >>> imgs = torch.randint(0, 256, (8, 480, 640, 3), dtype=torch.uint8)
        >>> pre(imgs).shape
        torch.Size([8, 3, 224, 224])
    """

    # TorchScript infers attribute types from their values; these may hold None
    crop: Optional[List[float]]  # noqa: UP006, UP045
    flip: Optional[str]  # noqa: UP045
    _order: Optional[List[int]]  # noqa: UP006, UP045 - channel_order as a list, or None

    def __init__(self, size: int | Sequence[int], mean: float | Sequence[float],
                 std: float | Sequence[float], *, crop: Sequence[float] | None = None,
                 flip: str | None = None, interpolation: str = "bilinear",
                 antialias: bool = True, channel_order: str | Sequence[int] | None = None,
                 out_dtype: torch.dtype = torch.float32, layout: str = "NCHW",
                 stats_unit: str = "input"):
        super().__init__()
        # (each checked and put in the op's form by __setattr__, as when set later)
        self.size, self.mean, self.std, self.crop, self.flip = size, mean, std, crop, flip
        self.interpolation, self.antialias = interpolation, antialias
        self.channel_order, self.out_dtype = channel_order, out_dtype
        self.layout, self.stats_unit = layout, stats_unit

    def __setattr__(self, name: str, value: Any) -> None:
        """An argument set after construction is checked and put in the op's form as the
        constructor does: `channel_order` set later was ignored (the order derived from it was
        not), and `size = 10` failed at the next call ("'int' object is not iterable")."""
        norm = _NORMALISE.get(name)
        value = value if norm is None else norm(value)  # (checked before anything is set)
        if name == "channel_order":
            super().__setattr__("_reverse", isinstance(value, str))
            super().__setattr__("_order", None if value is None or isinstance(value, str)
                                else value)
        super().__setattr__(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript: the registered op (kernelkit's dispatch is Python)
            batched = images.dim() != 3
            x = images if batched else images.unsqueeze(0)
            order = self._order
            if self._reverse:
                order = [x.size(-1) - 1 - c for c in range(x.size(-1))]
            out = torch.ops.kernelkit.preprocess(
                x, self.size, self.mean, self.std, self.crop, self.flip, self.interpolation,
                self.antialias, order, self.out_dtype, self.layout, self.stats_unit)
            return out if batched else out.squeeze(0)
        # (TorchScript compiles the branch above only)
        if isinstance(images, (list, tuple)):  # (H, W, C) images of different sizes: eager only
            return self._ragged(images)
        if not hasattr(images, "ndim"):  # (not isinstance: a torch.fx Proxy passes here)
            raise TypeError("Preprocess: 'images' must be a torch tensor (or numpy array), (N, H, "
                            f"W, C) or (H, W, C), or a list of (H, W, C) ones, got "
                            f"{type(images).__name__}")
        return _preprocess_batch(images, self._reverse, *self._fields())

    @torch.jit.unused
    def _ragged(self, images: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        """A list of (H, W, C) images (tensors or numpy arrays) of any sizes, through
        `kernelkit.preprocess` (one batch out); not traceable: the images' sizes are the op's
        own shapes."""
        if not images or not all(isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 3
                                 for x in images):
            got = [f"{type(x).__name__}{tuple(getattr(x, 'shape', ()))}" for x in images]
            raise TypeError(f"Preprocess: a list of images must hold (H, W, C) torch tensors (or "
                            f"numpy arrays), at least one, got [{', '.join(got)}]")
        order = (list(range(images[0].shape[-1]))[::-1] if self._reverse else self._order)
        return _preprocess.preprocess(
            list(images), size=tuple(self.size), mean=self.mean, std=self.std, crop=self.crop,
            flip=self.flip, interpolation=self.interpolation, antialias=self.antialias,
            channel_order=order, out_dtype=self.out_dtype, layout=self.layout,
            stats_unit=self.stats_unit)

    def op_args(self, images: torch.Tensor) -> tuple:
        """The arguments of `torch.ops.kernelkit.preprocess` after `images`, for this batch."""
        return _op_args(images, self._reverse, *self._fields())

    def _fields(self) -> tuple:
        """The op's arguments after `images`, with the channel order as given (`_op_args`)."""
        return (self.size, self.mean, self.std, self.crop, self.flip, self.interpolation,
                self.antialias, self._order, self.out_dtype, self.layout, self.stats_unit)

    def extra_repr(self) -> str:
        return (f"size={tuple(self.size)}, mean={self.mean}, std={self.std}, crop={self.crop}, "
                f"flip={self.flip}, interpolation={self.interpolation!r}, "
                f"antialias={self.antialias}, out_dtype={self.out_dtype}, layout={self.layout!r}")


def _stats(name: str, v: Any) -> list[float]:
    """A per-channel statistic as the list of floats TorchScript and the op take: a number, a
    sequence of numbers, or a 0-/1-d numpy array or tensor (as `kernelkit.preprocess` takes)."""
    if isinstance(v, torch.Tensor):
        v = tensor_values(v)
    if isinstance(v, np.ndarray) and v.ndim <= 1:
        v = v.tolist()
    items = v if isinstance(v, Sequence) and not isinstance(v, str) else [v]
    try:
        return [float(x) for x in items]
    except (TypeError, ValueError):
        raise TypeError(f"Preprocess: '{name}' must be a number, a sequence of numbers or a 1-d "
                        f"array or tensor of them, got {_describe(v)}") from None


def _crop(crop: Any) -> list[float] | None:
    """None, or one (top, left, height, width) box of whole pixels inside some image: checked
    here, as the op checks it, rather than at the first call (the image's own bounds are the
    call's to check)."""
    if crop is None:
        return None
    if not _check.is_box(crop):
        raise TypeError(f"Preprocess: 'crop' must be None or one (top, left, height, width) box, "
                        f"got {_describe(crop)}")
    box = [float(c) for c in crop]
    if not all(math.isfinite(c) and c == int(c) for c in box) or min(box[:2]) < 0 \
            or min(box[2:]) <= 0:
        raise ValueError("Preprocess: 'crop' must be whole pixels, top and left >= 0, height "
                         f"and width > 0, got {crop!r}")
    return box


def _flip(flip: Any) -> str | None:
    if flip not in (None, "horizontal", "vertical", "both"):
        raise ValueError("Preprocess: 'flip' must be None, 'horizontal', 'vertical' or "
                         f"'both', got {flip!r}")
    return flip


def _channel_order(order: Any) -> str | list[int] | None:
    """None, a name, or the permutation as a list of ints."""
    if order is None or isinstance(order, str) and order in _REVERSE:
        return order
    try:
        if isinstance(order, str):
            raise TypeError
        return [int(v) for v in order]
    except (TypeError, ValueError):
        raise ValueError(f"Preprocess: 'channel_order' must be None, one of {_REVERSE} or a "
                         f"permutation, got {order!r}") from None


def _out_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"Preprocess: 'out_dtype' must be a torch.dtype, got {dtype!r}")
    return dtype


# Preprocess's arguments as its attributes hold them (`Preprocess.__setattr__`); the size through
# the op's own check (a size of 0 or True was taken, and failed or ran 1x1 later)
_NORMALISE = {
    "size": lambda v: list(_check.check_size(v)),
    "mean": lambda v: _stats("mean", v),
    "std": lambda v: _stats("std", v),
    "crop": _crop,
    "flip": _flip,
    "antialias": bool,
    "channel_order": _channel_order,
    "out_dtype": _out_dtype,
}


def _describe(v: Any) -> str:
    shape = getattr(v, "shape", None)
    return f"{type(v).__name__} of shape {tuple(shape)}" if shape is not None else repr(v)


_ORDER = 7  # channel_order's place in Preprocess._fields() (and in the op's arguments)


def _op_args(images: torch.Tensor, reverse: bool, *fields) -> tuple:
    """`Preprocess._fields()` as the op's arguments after `images`: a reversed channel order for
    the images' channel count."""
    if not reverse:
        return fields
    order = list(range(images.shape[-1]))[::-1]
    return (*fields[:_ORDER], order, *fields[_ORDER + 1:])


def _preprocess_batch(images: torch.Tensor, reverse: bool, *fields) -> torch.Tensor:
    """`Preprocess.forward` outside TorchScript. A leaf of torch.fx symbolic traces (`fx.wrap`
    below), with the module's fields as constants: the images' rank and channel count, which it
    reads, are not known there."""
    if images.ndim == 3:  # one (H, W, C) image (indexing, not unsqueeze: numpy's too)
        return _preprocess_batch(images[None], reverse, *fields)[0]
    args = _op_args(images, reverse, *fields)
    # traced (torch.compile, export, torch.jit.trace), or tensors a kernel cannot read (meta,
    # FakeTensor, a torch.func transform, a dispatch mode): the registered op; torch.ops.*
    # rather than preprocess_op(): dynamo traces it
    if (torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or dispatch.torch_only(images)):
        return torch.ops.kernelkit.preprocess(images, *args)
    size, mean, std, crop, flip, interp, aa, order, dtype, layout, unit = args
    return _preprocess.preprocess(
        images, size=tuple(size), mean=mean, std=std, crop=crop, flip=flip,
        interpolation=interp, antialias=aa, channel_order=order, out_dtype=dtype,
        layout=layout, stats_unit=unit)


torch.fx.wrap("_preprocess_batch")
preprocess_op()  # register torch.ops.kernelkit.preprocess before any forward is traced
