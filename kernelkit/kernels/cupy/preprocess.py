"""CuPy fused image preprocessing: crop, flip, rot90, rotate, resize, channel order, normalise,
cast and layout in one kernel pass.

Same contract and numerics as ``kernelkit.kernels.numba.preprocess`` (read its docstring); the
tap tables and affine maps come from ``kernelkit.kernels.taps`` (built on the host for the whole
batch, uploaded). The CUDA C source, ``preprocess.cu`` beside this file, has one thread per output
pixel (see the comment at its top). Output dtypes: float32, float16 (cupy native), uint8; no
bfloat16 (cupy has no such dtype).

The module (all six input x output kernels) is compiled once per device with ``cupy.RawModule``
(NVRTC; cupy also caches the binary on disk) on first use. Nothing here imports cupy at module
import time, so the package imports on machines without it.

The launcher does no dispatch, conversion or validation beyond asserts: the ops layer checks the
arguments.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernelkit.kernels import taps as _taps
from kernelkit.kernels.config import KernelConfig

__all__ = ["PreprocessConfig", "preprocess_forward", "SHIPPED_CONFIGS", "kernel_name"]

SOURCE_PATH = Path(__file__).with_name("preprocess.cu")

# meta columns (int64 per image); keep in sync with kk_pp::Meta in preprocess.cu
_OFF, _YA, _XB, _SC, _AFF, _SH, _SW, _R0, _R1, _C0, _C1, _NKY, _NKX = range(13)
_NMETA = 13
_IN_TAGS = {"uint8": "u8", "float32": "f32"}
_OUT_TAGS = {"float32": "f32", "float16": "f16", "uint8": "u8"}
OUT_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PreprocessConfig(KernelConfig):
    """Thread block: ``block_x x block_y`` output pixels (one thread each)."""

    block_x: int = 32
    block_y: int = 8

    def __post_init__(self):
        for name in ("block_x", "block_y"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"cupy PreprocessConfig.{name} must be an int >= 1, got {v!r}")
            object.__setattr__(self, name, int(v))
        nt = self.block_x * self.block_y
        if nt % 32 or nt > 256:
            raise ValueError(f"cupy PreprocessConfig: {nt} threads per block must be a multiple "
                             "of 32 and at most 256 (__launch_bounds__ in preprocess.cu)")

    @property
    def threads(self) -> int:
        return self.block_x * self.block_y

    @classmethod
    def default(cls) -> PreprocessConfig:
        return SHIPPED_CONFIGS[0]

    @classmethod
    def space(cls, n: int, out_h: int, out_w: int, c: int) -> list[PreprocessConfig]:
        """Default first, then the shipped variants whose block is not far wider than the output."""
        d = cls.default()
        cap_x = max(32, 2 * _next_pow2(out_w))
        return [d] + [cfg for cfg in SHIPPED_CONFIGS[1:] if cfg.block_x <= cap_x]


SHIPPED_CONFIGS: tuple[PreprocessConfig, ...] = (
    PreprocessConfig(32, 8),  # default
    PreprocessConfig(64, 4),
    PreprocessConfig(16, 16),
    PreprocessConfig(128, 2),
    PreprocessConfig(32, 4),
)


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def kernel_name(in_dtype: str, out_dtype: str) -> str:
    """The extern "C" name of the kernel in preprocess.cu for (input, output) dtype names."""
    return f"kk_preprocess_{_IN_TAGS[in_dtype]}_{_OUT_TAGS[out_dtype]}"


KERNEL_NAMES = tuple(kernel_name(i, o) for i in _IN_TAGS for o in _OUT_TAGS)
COMPILE_OPTIONS = ("-std=c++17",)


@functools.lru_cache(maxsize=1)
def source() -> str:
    return SOURCE_PATH.read_text(encoding="utf-8")


_modules: dict[int, object] = {}
_lock = threading.Lock()


def get_kernel(in_dtype: str, out_dtype: str, device_id: int | None = None):
    """The compiled ``cupy.RawKernel`` for (input, output) dtype on a device (default: current)."""
    import cupy

    if device_id is None:
        device_id = cupy.cuda.Device().id
    mod = _modules.get(device_id)
    if mod is None:
        with _lock:
            mod = _modules.get(device_id)
            if mod is None:
                with cupy.cuda.Device(device_id):
                    mod = cupy.RawModule(code=source(), options=COMPILE_OPTIONS,
                                         name_expressions=None)
                    mod.compile()  # compile errors surface here, not at the first launch
                _modules[device_id] = mod
    return mod.get_function(kernel_name(in_dtype, out_dtype))


def launch_geometry(n: int, out_h: int, out_w: int, config: PreprocessConfig):
    """(blocks, (block_x, block_y, 1), tiles_y, tiles_x); the grid is 1-D (image folded in)."""
    tiles_y = -(-out_h // config.block_y)
    tiles_x = -(-out_w // config.block_x)
    blocks = n * tiles_y * tiles_x
    if blocks > _INT32_MAX:
        raise ValueError(f"cupy preprocess: {blocks} thread blocks exceed the grid limit")
    return blocks, (config.block_x, config.block_y, 1), tiles_y, tiles_x


def _elem(strides, item):
    assert all(s % item == 0 for s in strides), "strides must be multiples of the item size"
    return [s // item for s in strides]


def _image_table(images):
    """(base array, dtype name, C, meta, (N, 2) shapes, device id) of a 4-D array or a list."""
    if getattr(images, "ndim", None) == 4:
        n = images.shape[0]
        st = _elem(images.strides, images.itemsize)
        meta = np.zeros((n, _NMETA), np.int64)
        meta[:, _OFF] = np.arange(n, dtype=np.int64) * st[0]
        meta[:, _SH], meta[:, _SW], meta[:, _SC] = st[1:]
        shapes = np.broadcast_to(np.array(images.shape[1:3], np.int64), (n, 2))
        return images, images.dtype.name, images.shape[3], meta, shapes, images.device.id
    arrs = list(images)
    n = len(arrs)
    meta = np.zeros((n, _NMETA), np.int64)
    shapes = np.zeros((n, 2), np.int64)
    if n == 0:
        return None, "uint8", 1, meta, shapes, None
    first = arrs[0]
    item = first.itemsize
    for i, a in enumerate(arrs):
        assert a.ndim == 3 and a.dtype == first.dtype and a.shape[2] == first.shape[2]
        assert a.device.id == first.device.id
        d = a.data.ptr - first.data.ptr
        assert d % item == 0, "images of a list must be aligned to their item size"
        meta[i, _OFF] = d // item
        meta[i, _SH], meta[i, _SW], meta[i, _SC] = _elem(a.strides, item)
        shapes[i] = a.shape[:2]
    return first, first.dtype.name, first.shape[2], meta, shapes, first.device.id


def plan(images_meta, shapes, cch, boxes, flips, rot90, angles, fill, size, mean, scale,
         channel_perm, interpolation, antialias):
    """Host-side tables of one call (numpy; shared by the launcher and the CPU emulation tests).

    ``images_meta``: the (N, 13) int64 meta table with OFF and SH/SW/SC filled in; the rest of it
    is filled here. Returns a dict of the arrays the kernel reads and its scalar arguments.
    """
    meta = images_meta
    n = meta.shape[0]
    out_h, out_w = int(size[0]), int(size[1])
    boxes = np.asarray(boxes, np.float64).reshape(n, 4)
    angles = np.asarray(angles, np.float64).reshape(n)
    yt, xt, tr = _taps.axis_plan(boxes, flips, rot90, shapes, (out_h, out_w), interpolation,
                                 bool(antialias))
    meta[:, _YA] = np.where(tr, meta[:, _SW], meta[:, _SH])
    meta[:, _XB] = np.where(tr, meta[:, _SH], meta[:, _SW])
    meta[:, _NKY], meta[:, _NKX] = yt.ntaps, xt.ntaps
    rotated = angles != 0
    if rotated.any():
        meta[:, _AFF] = rotated
        aff = _taps.affine_maps(boxes, flips, rot90, angles, (out_h, out_w))
        r0, r1 = _taps.pixel_range(boxes[:, 0], boxes[:, 2], shapes[:, 0])
        c0, c1 = _taps.pixel_range(boxes[:, 1], boxes[:, 3], shapes[:, 1])
        meta[:, _R0], meta[:, _R1], meta[:, _C0], meta[:, _C1] = r0, r1, c0, c1
    else:
        aff = np.zeros((n, 2, 3), np.float64)
    c = lambda a, dt: np.array(a, dt, order="C")
    return dict(
        meta=c(meta, np.int64), yst=c(yt.start, np.int32), yw=c(yt.weight, np.float32),
        xst=c(xt.start, np.int32), xw=c(xt.weight, np.float32),
        aff=c(aff.reshape(n, 6), np.float64),
        fill=c(np.broadcast_to(np.asarray(fill, np.float32), (n,)), np.float32),
        perm=c(np.asarray(channel_perm, np.int64).reshape(cch), np.int32),
        mean=c(np.asarray(mean, np.float32).reshape(cch), np.float32),
        scale=c(np.asarray(scale, np.float32).reshape(cch), np.float32),
        ky_len=int(yt.weight.shape[2]), kx_len=int(xt.weight.shape[2]),
        nearest=int(interpolation == "nearest"))


def out_strides(layout: str, cch: int, out_h: int, out_w: int):
    """(shape, (on, oc, oy, ox)) of a C-contiguous output of that layout, element strides."""
    if layout == "NCHW":
        return (cch, out_h, out_w), (cch * out_h * out_w, out_h * out_w, out_w, 1)
    assert layout == "NHWC"
    return (out_h, out_w, cch), (cch * out_h * out_w, 1, out_w * cch, cch)


def preprocess_forward(images, boxes, flips, rot90, angles, fill, size, mean, scale, channel_perm,
                       interpolation, antialias, out_dtype, layout, config=None):
    """The fused preprocess of a batch (contract of the Numba kernel); a new cupy array.

    ``images``: (N, H, W, C) cupy array or a list of (H_i, W_i, C) cupy arrays on one device,
    uint8 or float32, any strides (no copy is made). Geometry arrays are numpy. ``out_dtype``
    "float32" | "float16" | "uint8"; ``layout`` "NCHW" | "NHWC".
    """
    import cupy

    base, dtype, cch, meta, shapes, dev = _image_table(images)
    assert dtype in _IN_TAGS, dtype
    assert out_dtype in _OUT_TAGS, out_dtype
    assert interpolation in _taps.INTERPOLATIONS
    n = meta.shape[0]
    out_h, out_w = int(size[0]), int(size[1])
    shape, (on, oc, oy, ox) = out_strides(layout, cch, out_h, out_w)
    with cupy.cuda.Device(dev):
        out = cupy.empty((n, *shape), OUT_DTYPES[out_dtype])
        if out.size == 0:
            return out
        t = plan(meta, shapes, cch, boxes, flips, rot90, angles, fill, size, mean, scale,
                 channel_perm, interpolation, antialias)
        cfg = config or PreprocessConfig.default()
        blocks, threads, tiles_y, tiles_x = launch_geometry(n, out_h, out_w, cfg)
        d = {k: cupy.asarray(v) for k, v in t.items() if isinstance(v, np.ndarray)}
        kern = get_kernel(dtype, out_dtype, dev)
        i32, i64 = np.int32, np.int64
        kern((blocks, 1, 1), threads,
             (base, d["meta"], d["yst"], d["yw"], d["xst"], d["xw"], d["aff"], d["fill"],
              d["perm"], d["mean"], d["scale"], out, i32(out_h), i32(out_w), i32(tiles_y),
              i32(tiles_x), i32(t["ky_len"]), i32(t["kx_len"]), i32(cch), i64(on), i64(oc),
              i64(oy), i64(ox), i32(t["nearest"])))
    return out
