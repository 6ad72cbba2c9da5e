"""Array interop: which library and device an array lives on, and moving it between them.

torch, numpy and cupy arrays are exchanged zero-copy through DLPack where the layout allows.
Kernels receive their native array type; the ops layer converts with these helpers and gives the
result back in the caller's library and device.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

# The float dtypes the ops accept (each backend declares which of them it runs).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# How errors name the arrays the ops accept.
ACCEPTED = ("a numpy array (not a masked array, np.matrix or a subclass with array rules of its "
            "own), torch tensor or cupy array")
_NUMPY_REJECTED = (np.ma.MaskedArray, np.matrix)
# numpy subclasses, by type: accepted (True) or not
_NUMPY_SUBCLASSES: dict[type, bool] = {}


def _accepted_subclass(t: type) -> bool:
    """A numpy subclass a kernel may compute on as plain memory: not a masked array (whose mask
    a kernel would ignore) nor np.matrix (which one backend's `@` kept and another's result did
    not), nor a subclass with ufunc or array-function rules of its own (an astropy Quantity's
    units): numpy's `@` followed them and the Numba and torch candidates did not, so the
    result's values (units doubled, dropped) depended on which backend won (a user hunt).
    np.memmap and other subclasses without rules of their own are accepted; their results are
    plain arrays whichever backend ran."""
    ok = _NUMPY_SUBCLASSES.get(t)
    if ok is None:
        ok = _NUMPY_SUBCLASSES[t] = not issubclass(t, _NUMPY_REJECTED) and (
            t.__array_ufunc__ is np.ndarray.__array_ufunc__
            and t.__array_function__ is np.ndarray.__array_function__)
    return ok


def plain_numpy(x: Any) -> Any:
    """`x` as a plain numpy array (a view) where it is an accepted numpy subclass (np.memmap),
    else `x` itself (a rejected subclass then meets the op's TypeError)."""
    if type(x) is not np.ndarray and isinstance(x, np.ndarray) and _accepted_subclass(type(x)):
        return x.view(np.ndarray)
    return x
# Array libraries without a bfloat16 dtype.
_NO_BFLOAT16 = {"numpy": "numpy has no bfloat16", "cupy": "cupy arrays have no bfloat16"}


def missing_dtype(lib: str, dtype: str) -> str | None:
    """Why arrays of library `lib` cannot hold `dtype`, or None."""
    return _NO_BFLOAT16.get(lib) if dtype == "bfloat16" else None


def to_host(x: Any) -> Any:
    """A CPU array torch can wrap: GPU arrays of libraries other than torch copied to numpy."""
    return as_numpy(x) if array_lib(x) == "cupy" else x


_SIG_OF_TYPE: dict[type, Any] = {}
# torch's tensor types seen by `signature_fn` (filled there, so that nothing imports torch early):
# the ops' per-call signatures take a fast path for them (ops/dispatch.signature3)
TENSOR_TYPES: set[type] = set()


def signature_fn(t: type):
    """A cheap function of an array of type `t` giving what a plan depends on (dtype, shape,
    strides, device, grad); None for a type that is not an accepted array."""
    fn = _SIG_OF_TYPE.get(t)
    if fn is None:
        lib = t.__module__.split(".")[0]
        if t.__name__ == "ndarray" and lib == "numpy":
            fn = lambda x: (x.dtype, x.shape, x.strides)
        elif lib == "torch" and t.__name__ in ("Tensor", "Parameter"):
            fn = lambda x: (x.dtype, x.shape, x.stride(), x.device, x.requires_grad)
            TENSOR_TYPES.add(t)
        elif lib == "cupy" and t.__name__ == "ndarray":
            fn = lambda x: (x.dtype, x.shape, x.strides, x.device.id)
        else:
            return None
        _SIG_OF_TYPE[t] = fn
    return fn


class Location(NamedTuple):
    lib: str  # "numpy" | "torch" | "cupy"
    device: str  # "cpu" | "cuda"
    index: int  # device ordinal (0 on the CPU)


def array_lib(x: Any) -> str | None:
    """The array library of `x`, or None when `x` is not an array this package accepts."""
    if isinstance(x, np.ndarray):
        return "numpy" if type(x) is np.ndarray or _accepted_subclass(type(x)) else None
    mod = type(x).__module__
    if mod.startswith("torch") and type(x).__name__ in ("Tensor", "Parameter"):
        return "torch"
    if mod.startswith("cupy") and type(x).__name__ == "ndarray":
        return "cupy"
    return None


def channels_last_memory(t: Any) -> bool:
    """Whether torch reads the 4-D tensor `t` as channels_last, which makes its conv run, and
    return its result, in channels_last memory: torch's reading of the strides
    (`suggest_memory_format`: c10's `is_channels_last_strides_2d`, where the stride of a size-1
    dim counts too), for dense and sliced tensors alike (a batch slice `x_cl[::2]` is
    channels_last to torch; it was NCHW here while this asked for dense memory).

    Why not ``is_contiguous(memory_format=channels_last) and not is_contiguous()`` alone, as
    before: a one-channel input or a 1x1 weight in channels_last memory is both, and torch still
    returns a channels_last result for it (torch 2.13, CPU); kernelkit returned an NCHW one."""
    torch = sys.modules["torch"]  # (a torch tensor: torch is imported)
    if t.ndim != 4:
        return False
    if not t.is_contiguous(memory_format=torch.channels_last):
        if t.is_contiguous():
            return False  # (0.3 us: an NCHW tensor stops here)
        if t.stride(3) < t.stride(1) * t.shape[1]:
            # (torch's reading asks this first: a slice of an NCHW tensor stops here, 0.4 us,
            # where the reading below costs 3-6)
            return False
    # torch's own reading (2.8 us), which does not guard on data-dependent sizes under
    # torch.compile: a loop over the strides here raised GuardOnDataDependentSymNode for a batch
    # x[:n.item()]. (A tensor contiguous in both formats is read here too: torch reads some
    # strides of a size-1 dim as NCHW, e.g. a batch of one whose N stride equals its C stride.)
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(t) == torch.channels_last


def same_layout_copy(x: Any) -> Any | None:
    """A copy of `x` with its shape, dtype, device and strides, or None where a copy would not
    keep the strides (a view that is not dense: a slice with steps, a broadcast)."""
    lib = array_lib(x)
    if lib in ("numpy", "cupy"):
        return x.copy(order="K") if x.flags.c_contiguous or x.flags.f_contiguous else None
    if lib == "torch":
        y = x.detach().clone()  # preserve_format: a dense tensor keeps its strides
        return y if y.stride() == x.stride() else None
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


def byte_order_note(dtype: str, allowed: tuple) -> str:
    """For a dtype refused by name: where the name is a numpy dtype of the other byte order
    ('>f4', which numpy computes with and is float32 to a reader) of one `allowed`, how to make
    it native."""
    if dtype[:1] not in "<>" or np.dtype(dtype).isnative:
        return ""
    native = np.dtype(dtype).newbyteorder("=").name
    if native not in allowed:
        return ""
    return f" ({native} in non-native byte order: convert it first, .astype({native!r}))"


def item_strided(x: Any) -> Any:
    """`x`, or a contiguous copy (in x's library) where a byte stride is no multiple of its item
    size: a field of a numpy record array (float32 pixels 13 bytes apart beside a mask byte).
    Kernels index by elements; such a view failed an assert in the Numba preprocess, and ran
    on garbage under ``python -O``. torch strides count elements: never copied."""
    strides = getattr(x, "strides", None)  # (None for torch tensors and non-arrays)
    if strides is None:
        return x
    item = x.itemsize
    for s in strides:
        if s % item:
            break
    else:
        return x
    if array_lib(x) == "cupy":
        import cupy

        return cupy.ascontiguousarray(x)
    return np.ascontiguousarray(x)


def concat_rows(parts: list, order: np.ndarray) -> Any:
    """The arrays `parts` (one library and device) joined along their first dim, its rows then
    taken in `order` (a permutation): one new array."""
    lib = array_lib(parts[0])
    if lib == "torch":
        import torch

        joined = torch.cat(parts)
        return joined[torch.as_tensor(order, device=joined.device)]
    if lib == "cupy":
        import cupy

        return cupy.concatenate(parts)[cupy.asarray(order)]
    return np.concatenate(parts)[order]


def element_strides(x: Any) -> tuple[int, ...]:
    if array_lib(x) == "torch":
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


def broadcast_to(x: Any, shape: tuple[int, ...]) -> Any:
    """A broadcast view of `x` (stride 0 along the new or size-1 dims), in x's library."""
    lib = array_lib(x)
    if lib == "torch":
        return x.expand(shape)
    if lib == "cupy":
        import cupy

        return cupy.broadcast_to(x, shape)
    return np.broadcast_to(x, shape)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a CPU array (no copy), or a host copy of a GPU array."""
    lib = array_lib(x)
    if lib == "numpy":
        return x
    if lib == "torch":
        return torch_to_numpy(x.detach().cpu())
    return x.get()


def torch_to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a CPU tensor (no copy); bfloat16, which numpy lacks, as its uint16 bit
    patterns (``with_dtype`` turns a kernel's result back)."""
    torch = sys.modules["torch"]  # x is a tensor: torch is imported
    if x.requires_grad:  # (detach costs about 1 us; most calls get plain tensors)
        x = x.detach()
    # tested up front, not by catching .numpy()'s TypeError: raising it cost about 7 us a call
    try:
        if x.dtype is torch.bfloat16:
            return x.view(torch.int16).numpy().view(np.uint16)
        return x.numpy()
    except RuntimeError:
        # a view torch negates lazily (``x.conj().imag``): no numpy view of it shows its values;
        # a copy that does (rare, so caught rather than tested on every call)
        if not x.is_neg():
            raise
        return torch_to_numpy(x.resolve_neg())


def tensor_values(t: Any) -> np.ndarray:
    """A tensor's values as a new host numpy array, for arguments read by value (a mean, a std):
    a floating one in float64 (bfloat16 included), a lazily negated or conjugated view
    resolved (``.numpy()`` raised on either)."""
    t = t.detach().cpu().resolve_conj().resolve_neg()
    return (t.double() if t.is_floating_point() else t).numpy()


def as_torch(x: Any, device: str = "cpu") -> Any:
    """A torch tensor on `device`: zero-copy where the data already lives there."""
    import torch

    lib = array_lib(x)
    if lib == "numpy":
        _consume_torch_readonly_warning()
        t = numpy_to_torch(x)
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
        # (DLPack exports a lazily negated view's memory without its negation)
        x = x.detach().resolve_neg()
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
        return numpy_to_torch
    if src.lib == "torch" and src.device == "cpu" and lib == "numpy":
        return torch_to_numpy
    return lambda x: native(x, lib, device)


def converter_back(lib: str, device: str, dst: Location, dtype: str | None = None):
    """A function giving a kernel's (`lib`, `device`) result back at `dst`, or None. A result of
    `dtype` "bfloat16" from a library without it (numpy: the uint16 bit patterns) is viewed back
    as bfloat16 (``with_dtype``)."""
    back = _converter_back(lib, device, dst)
    if dtype == "bfloat16" and back is not None and missing_dtype(lib, dtype) is not None:
        return lambda x: with_dtype(back(x), dtype)
    return back


def _converter_back(lib: str, device: str, dst: Location):
    if lib == dst.lib and device == dst.device:
        return None
    if lib == "torch" and device == "cpu" and dst.lib == "numpy":
        return lambda x: x.numpy()
    if lib == "numpy" and dst.lib == "torch" and dst.device == "cpu":
        import torch

        return torch.from_numpy
    return lambda x: to_location(x, dst)


def with_dtype(x: Any, dtype: str) -> Any:
    """`x` seen as `dtype`: numpy has no bfloat16, so a CPU kernel returns bfloat16 (and may
    return float16) as the uint16 bit patterns; reinterpret them (no copy)."""
    if dtype_name(x) != "uint16" or dtype not in ("float16", "bfloat16"):
        return x
    lib = array_lib(x)
    if lib == "torch":
        import torch

        return x.view(getattr(torch, dtype))
    if dtype == "float16":
        return x.view(np.float16)
    import torch  # bfloat16 exists only in torch

    return torch.from_numpy(x).view(torch.bfloat16)


def numpy_to_torch(x: np.ndarray):
    """torch.from_numpy, zero-copy where torch can take the strides. torch has no negative
    strides: on a size-1 dim such a stride means nothing and is zeroed (still no copy; numpy calls
    that array contiguous, so np.ascontiguousarray would not help); a reversed dim is copied."""
    import torch

    if any(st < 0 for st in x.strides):
        if all(st >= 0 or n <= 1 for st, n in zip(x.strides, x.shape)):
            _consume_torch_readonly_warning()
            x = np.lib.stride_tricks.as_strided(
                x, strides=[0 if st < 0 else st for st in x.strides], writeable=False)
        else:
            x = x.copy()
    try:
        return torch.from_numpy(x)
    except ValueError:
        # byte strides no multiple of the item size (a field of a record array), which torch
        # refuses ("strides not a multiple of the element byte size"): a copy. Before, conv2d
        # and matmul raised torch's message wherever torch's candidate ran such an array
        if x.strides == item_strided(x).strides:
            raise
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


def random_arrays(shapes, dtype: str, where: str, seed: int = 0, *, low_high=None) -> list:
    """Fresh random arrays for tuning and explaining a size: standard normal (or uniform integers
    in [low, high) for uint8) of `dtype`, as numpy ("numpy"), CPU torch ("torch") or CUDA torch
    ("cuda") arrays."""
    rng = np.random.default_rng(seed)
    # numpy has no bfloat16: drawn as float32 and rounded by torch
    tensor_only = dtype == "bfloat16"
    if tensor_only and where == "numpy":
        raise ValueError("bfloat16 arrays need torch (numpy has no bfloat16): use torch tensors "
                         "(--where torch or cuda)")
    drawn = "float32" if tensor_only else dtype
    if low_high is not None:
        arrs = [rng.integers(*low_high, size=s).astype(drawn) for s in shapes]
    else:
        arrs = [rng.standard_normal(s, dtype=np.float32).astype(drawn) for s in shapes]
    if where != "numpy":
        import torch

        dev = "cuda" if where == "cuda" else "cpu"
        arrs = [torch.from_numpy(x).to(dev, getattr(torch, dtype) if tensor_only else None)
                for x in arrs]
    return arrs


def strided_like_torch(out: np.ndarray) -> np.ndarray:
    """``out`` (an empty array) with C-contiguous strides: numpy gives an array with a zero-size
    dim zero strides throughout, which ``torch.from_numpy`` keeps, where torch's own empty
    results have contiguous ones (a patched Linear on a (0, 32) batch gave strides (0, 0)
    against torch's (16, 1); a user hunt). Nothing is read or written through them."""
    strides, step = [], out.itemsize
    for d in reversed(out.shape):
        strides.append(step)
        step *= max(d, 1)
    return np.lib.stride_tricks.as_strided(out, out.shape, tuple(reversed(strides)))
