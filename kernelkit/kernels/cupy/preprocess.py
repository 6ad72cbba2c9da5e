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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernelkit.kernels import taps as _taps
from kernelkit.kernels.config import KernelConfig, next_pow2
from kernelkit.kernels.cupy import _common

__all__ = ["PreprocessConfig", "preprocess_forward", "SHIPPED_CONFIGS", "kernel_name"]

SOURCE_PATH = Path(__file__).with_name("preprocess.cu")

_IN_TAGS = {"uint8": "u8", "float32": "f32"}
_OUT_TAGS = {"float32": "f32", "float16": "f16", "uint8": "u8"}
OUT_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


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
        cap_x = max(32, 2 * next_pow2(out_w))
        return [d] + [cfg for cfg in SHIPPED_CONFIGS[1:] if cfg.block_x <= cap_x]


CONFIG = PreprocessConfig


def space(problem) -> list[PreprocessConfig]:
    """The configs worth timing for a preprocess ``Problem``."""
    return PreprocessConfig.space(*_taps.problem_sizes(problem))


def supports(problem) -> str | None:
    return ("the cupy kernel has no bfloat16 output"
            if problem.options.out_dtype == "bfloat16" else None)


SHIPPED_CONFIGS: tuple[PreprocessConfig, ...] = (
    PreprocessConfig(32, 8),  # default
    PreprocessConfig(64, 4),
    PreprocessConfig(16, 16),
    PreprocessConfig(128, 2),
    PreprocessConfig(32, 4),
)


def kernel_name(in_dtype: str, out_dtype: str) -> str:
    """The extern "C" name of the kernel in preprocess.cu for (input, output) dtype names."""
    return f"kk_preprocess_{_IN_TAGS[in_dtype]}_{_OUT_TAGS[out_dtype]}"


KERNEL_NAMES = tuple(kernel_name(i, o) for i in _IN_TAGS for o in _OUT_TAGS)
COMPILE_OPTIONS = ("-std=c++17",)


def source() -> str:
    return _common.source(SOURCE_PATH)


_modules = _common.KernelCache()


def get_kernel(in_dtype: str, out_dtype: str, device_id: int | None = None):
    """The compiled ``cupy.RawKernel`` for (input, output) dtype on a device (default: current)."""
    import cupy

    if device_id is None:
        device_id = cupy.cuda.Device().id

    def build():
        with cupy.cuda.Device(device_id):
            mod = cupy.RawModule(code=source(), options=COMPILE_OPTIONS + _common.header_options(),
                                 name_expressions=None)
            mod.compile()  # compile errors surface here, not at the first launch
        return mod

    return _modules.get(device_id, build).get_function(kernel_name(in_dtype, out_dtype))


def launch_geometry(n: int, out_h: int, out_w: int, config: PreprocessConfig):
    """(blocks, (block_x, block_y, 1), tiles_y, tiles_x); the grid is 1-D (image folded in)."""
    tiles_y = -(-out_h // config.block_y)
    tiles_x = -(-out_w // config.block_x)
    blocks = n * tiles_y * tiles_x
    if blocks > _common.INT32_MAX:
        raise ValueError(f"cupy preprocess: {blocks} thread blocks exceed the grid limit")
    return blocks, (config.block_x, config.block_y, 1), tiles_y, tiles_x


def _image_table(images):
    """(base array, dtype name, C, meta, (N, 2) shapes, device id) of a 4-D array or a list."""
    if getattr(images, "ndim", None) == 4:
        n = images.shape[0]
        st = _common.elem_strides("preprocess", images.strides, images.itemsize)
        meta = np.zeros((n, _taps.NMETA), np.int64)
        meta[:, _taps.M_OFF] = np.arange(n, dtype=np.int64) * st[0]
        meta[:, _taps.M_SH], meta[:, _taps.M_SW], meta[:, _taps.M_SC] = st[1:]
        shapes = np.broadcast_to(np.array(images.shape[1:3], np.int64), (n, 2))
        return images, images.dtype.name, images.shape[3], meta, shapes, images.device.id
    arrs = list(images)
    n = len(arrs)
    meta = np.zeros((n, _taps.NMETA), np.int64)
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
        meta[i, _taps.M_OFF] = d // item
        meta[i, _taps.M_SH], meta[i, _taps.M_SW], meta[i, _taps.M_SC] = _common.elem_strides("preprocess", a.strides, item)
        shapes[i] = a.shape[:2]
    return first, first.dtype.name, first.shape[2], meta, shapes, first.device.id


_TABLES = _taps.TableMemo()


def _device_tables(dev: int, meta, shapes, cch, *geometry):
    """The kernel's tables on the current device (cupy arrays) and ``gpu_tables``' scalars: one
    host-to-device copy of one packed buffer, or none when this geometry was uploaded lately."""
    import cupy

    return _TABLES.tables((dev, cupy.cuda.get_current_stream().ptr), cupy.asarray, _view,
                          meta, shapes, cch, *geometry)


def _view(buf, offset: int, dtype: np.dtype, shape: tuple):
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buf[offset:offset + nbytes].view(dtype).reshape(shape)


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
    shape, (on, oc, oy, ox) = _taps.out_layout(layout, cch, out_h, out_w)
    with cupy.cuda.Device(dev):
        out = cupy.empty((n, *shape), OUT_DTYPES[out_dtype])
        if out.size == 0:
            return out
        d, t = _device_tables(dev, meta, shapes, cch, boxes, flips, rot90, angles, fill, size,
                              mean, scale, channel_perm, interpolation, antialias)
        cfg = config or PreprocessConfig.default()
        blocks, threads, tiles_y, tiles_x = launch_geometry(n, out_h, out_w, cfg)
        kern = get_kernel(dtype, out_dtype, dev)
        i32, i64 = np.int32, np.int64
        kern((blocks, 1, 1), threads,
             (base, d["meta"], d["yst"], d["yw"], d["xst"], d["xw"], d["aff"], d["fill"],
              d["perm"], d["mean"], d["scale"], out, i32(out_h), i32(out_w), i32(tiles_y),
              i32(tiles_x), i32(t["ky_len"]), i32(t["kx_len"]), i32(cch), i64(on), i64(oc),
              i64(oy), i64(ox), i32(t["nearest"])))
    return out
