"""Array interop: which library and device an array lives on, and moving it between them.

torch, numpy and cupy arrays are exchanged zero-copy through DLPack where the layout allows.
Kernels receive their native array type; the ops layer converts with these helpers and gives the
result back in the caller's library and device.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import numpy as np


class Location(NamedTuple):
    lib: str  # "numpy" | "torch" | "cupy"
    device: str  # "cpu" | "cuda"
    index: int  # device ordinal (0 on the CPU)


def array_lib(x: Any) -> str | None:
    """The array library of `x`, or None when `x` is not an array this package accepts."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch") and type(x).__name__ in ("Tensor", "Parameter"):
        return "torch"
    if mod.startswith("cupy") and type(x).__name__ == "ndarray":
        return "cupy"
    return None


def location(x: Any) -> Location:
    lib = array_lib(x)
    if lib == "numpy":
        return Location("numpy", "cpu", 0)
    if lib == "torch":
        dev = x.device
        return Location("torch", dev.type, dev.index or 0)
    if lib == "cupy":
        return Location("cupy", "cuda", x.device.id)
    raise TypeError(f"expected a numpy array, torch tensor or cupy array, got {type(x).__name__}")


def dtype_name(x: Any) -> str:
    """'float32', 'bfloat16', ... for any supported array."""
    return str(x.dtype).removeprefix("torch.")


def element_strides(x: Any) -> tuple[int, ...]:
    if array_lib(x) == "torch":
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a CPU array (no copy), or a host copy of a GPU array."""
    lib = array_lib(x)
    if lib == "numpy":
        return x
    if lib == "torch":
        return x.detach().cpu().numpy()
    return x.get()


def as_torch(x: Any, device: str = "cpu") -> Any:
    """A torch tensor on `device`: zero-copy where the data already lives there."""
    import torch

    lib = array_lib(x)
    if lib == "numpy":
        _consume_torch_readonly_warning()
        t = _numpy_to_torch(x)
    elif lib == "cupy":
        t = torch.from_dlpack(x)
    else:
        t = x.detach() if x.requires_grad else x
    target = torch.device(device)
    if t.device.type == target.type and target.index in (None, t.device.index):
        return t
    return t.to(target, non_blocking=target.type == "cuda")


def as_cupy(x: Any) -> Any:
    import cupy

    lib = array_lib(x)
    if lib == "cupy":
        return x
    if lib == "torch":
        x = x.detach()
        if x.device.type == "cuda":
            return cupy.from_dlpack(x)
        x = x.numpy()
    return cupy.asarray(x)


def native(x: Any, lib: str, device: str) -> Any:
    """`x` as the array type a kernel takes: ("numpy", "cpu"), ("torch", dev) or ("cupy", "cuda")."""
    if lib == "numpy":
        return as_numpy(x)
    if lib == "torch":
        return as_torch(x, device)
    return as_cupy(x)


def to_location(x: Any, loc: Location) -> Any:
    """Give a kernel's result back in the caller's array library and device."""
    lib = array_lib(x)
    if lib == loc.lib and location(x).device == loc.device:
        return x
    if loc.lib == "numpy":
        return as_numpy(x)
    if loc.lib == "cupy":
        return as_cupy(x)
    return as_torch(x, loc.device if loc.device == "cpu" else f"cuda:{loc.index}")


# -- converters bound once per call signature (the hot path of a cached plan) ---------------------
def converter(src: Location, lib: str, device: str):
    """A function moving arrays living at `src` to (`lib`, `device`), or None when they already
    are. Bound once per plan, so the common pairs skip every check `native` makes per call."""
    if src.lib == lib and src.device == device:
        return None
    if src.lib == "numpy" and lib == "torch" and device == "cpu":
        _consume_torch_readonly_warning()
        return _numpy_to_torch
    if src.lib == "torch" and src.device == "cpu" and lib == "numpy":
        return lambda x: x.detach().numpy()
    return lambda x: native(x, lib, device)


def converter_back(lib: str, device: str, dst: Location):
    """A function giving a kernel's (`lib`, `device`) result back at `dst`, or None."""
    if lib == dst.lib and device == dst.device:
        return None
    if lib == "torch" and device == "cpu" and dst.lib == "numpy":
        return lambda x: x.numpy()
    if lib == "numpy" and dst.lib == "torch" and dst.device == "cpu":
        import torch

        return torch.from_numpy
    return lambda x: to_location(x, dst)


def _numpy_to_torch(x):
    """torch.from_numpy, zero-copy; arrays with negative strides (torch has none) are copied."""
    import torch

    try:
        return torch.from_numpy(x)
    except ValueError:
        return torch.from_numpy(np.ascontiguousarray(x))


@functools.cache
def _consume_torch_readonly_warning() -> None:
    """torch warns once per process when it wraps a read-only numpy array (broadcast views are);
    kernels never write to their inputs, so spend that one warning here, silently."""
    import torch

    ro = np.zeros(1)
    ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(ro)
