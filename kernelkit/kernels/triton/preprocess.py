"""Triton fused image preprocessing: crop, flip, rot90, rotate, resize, channel order, normalise,
cast and layout in one kernel pass.

Same contract and numerics as ``kernelkit.kernels.numba.preprocess`` (read its docstring): the tap
tables and affine maps come from the backend-neutral ``kernelkit.kernels.taps``, built on the host
for the whole batch and uploaded, so all backends share the maths.

Kernel: each program computes a ``BLOCK_Y x BLOCK_X`` tile of output pixels of one image, all
channels at once (a ``[BLOCK_Y, BLOCK_X, CP]`` tile, CP = next power of two >= C, masked). For an
axis-aligned image it runs the separable filter as one fused double loop over the window
(``for kx: v = sum_ky wy * src; acc += wx * v``: the same summation order as the Numba kernel's
vertical-then-horizontal passes), reading the source through gathered loads. For a rotated image
(``angles[n] != 0``) it samples the composed affine map (float64 positions) bilinearly or nearest,
with ``fill`` outside the crop. Then ``(v - mean[c]) * scale[c]`` in float32 (output channel c reads
input channel ``channel_perm[c]``), the cast, and the store with the output's layout.

Images are read through one base pointer (the first image) plus a per-image int64 element offset
and element strides, so 4-D batches of any strides and ragged lists run without a copy (the images
of a list must share dtype and device). Plain pointer arithmetic and masks only (Triton 3.6+).

The launcher does no dispatch, conversion or validation beyond asserts: the ops layer checks the
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from kernelkit.devices import triton_interpret
from kernelkit.kernels import taps as _taps
from kernelkit.kernels.config import KernelConfig
from kernelkit.kernels.triton._common import INT32_MAX, in_memory, on_its_device

__all__ = ["PreprocessConfig", "preprocess_forward", "OUT_TORCH_DTYPES", "SHIPPED_CONFIGS"]

OUT_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                    "bfloat16": torch.bfloat16, "uint8": torch.uint8}



@dataclass(frozen=True)
class PreprocessConfig(KernelConfig):
    """Tile of one program: ``block_y x block_x`` output pixels (powers of two), ``num_warps``."""

    block_y: int = 4
    block_x: int = 64
    num_warps: int = 4

    def __post_init__(self):
        for name in ("block_y", "block_x", "num_warps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1 or v & (v - 1):
                raise ValueError(f"PreprocessConfig.{name} must be a power of two >= 1, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.block_y * self.block_x > 2**16:
            raise ValueError(f"PreprocessConfig: tile {self.block_y}x{self.block_x} is too large")

    @classmethod
    def default(cls) -> PreprocessConfig:
        return SHIPPED_CONFIGS[0]

    @classmethod
    def space(cls, n: int, out_h: int, out_w: int, c: int) -> list[PreprocessConfig]:
        """Default first, then the shipped variants whose tile is not far larger than the output."""
        d = cls.default()
        out = [d]
        cap_y = max(1, 2 * triton.next_power_of_2(max(1, out_h)))
        cap_x = max(16, 2 * triton.next_power_of_2(max(1, out_w)))
        for cfg in SHIPPED_CONFIGS[1:]:
            if cfg.block_y <= cap_y and cfg.block_x <= cap_x:
                out.append(cfg)
        return out

    @classmethod
    def interpreter(cls, out_h: int, out_w: int) -> PreprocessConfig:
        """Big tiles for the interpreter (one program costs 15-45 ms there, whatever its size)."""
        by = min(64, triton.next_power_of_2(max(1, out_h)))
        bx = min(256, triton.next_power_of_2(max(1, out_w)))
        return cls(by, bx, 4)


CONFIG = PreprocessConfig


def space(problem) -> list[PreprocessConfig]:
    """The configs worth timing for a preprocess ``Problem``."""
    return PreprocessConfig.space(*_taps.problem_sizes(problem))


SHIPPED_CONFIGS: tuple[PreprocessConfig, ...] = (
    PreprocessConfig(4, 64, 4),   # default
    PreprocessConfig(16, 32, 8),
    PreprocessConfig(2, 128, 4),
)


# ------------------------------------------------------------------------------------------ kernel

@triton.jit
def preprocess_kernel(
    src_ptr, meta_ptr, yst_ptr, yw_ptr, xst_ptr, xw_ptr, aff_ptr, fill_ptr,
    perm_ptr, mean_ptr, scale_ptr, out_ptr,
    out_h, out_w, tiles_y, tiles_x, KY, KX,      # KY, KX: row length of the weight tables
    on, oc, oy, ox,                              # output element strides (image, channel, y, x)
    C: tl.constexpr, CP: tl.constexpr, NMETA: tl.constexpr,
    BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
    HAS_AFFINE: tl.constexpr, NEAREST: tl.constexpr, OUT_U8: tl.constexpr,
    INDEX_I64: tl.constexpr,  # an image (in or out) spans 2**30 elements or more
):
    pid = tl.program_id(0)
    per_img = tiles_y * tiles_x
    n = pid // per_img
    t = pid - n * per_img
    ty = t // tiles_x
    tx = t - ty * tiles_x
    oys = ty * BLOCK_Y + tl.arange(0, BLOCK_Y)          # output rows of the tile
    oxs = tx * BLOCK_X + tl.arange(0, BLOCK_X)          # output columns
    cs = tl.arange(0, CP)
    my = oys < out_h
    mx = oxs < out_w
    mc = cs < C
    mask = my[:, None, None] & mx[None, :, None] & mc[None, None, :]

    mrow = meta_ptr + n.to(tl.int64) * NMETA
    base = src_ptr + tl.load(mrow + 0)                  # this image's first pixel (int64 offset)
    ya = tl.load(mrow + 1)                              # element stride along the y-tap axis
    xb = tl.load(mrow + 2)                              # along the x-tap axis
    sc = tl.load(mrow + 3)                              # between channels
    if not INDEX_I64:  # (int32 offsets where every one fits: the common case, cheaper)
        ya = ya.to(tl.int32)
        xb = xb.to(tl.int32)
        sc = sc.to(tl.int32)
    perm = tl.load(perm_ptr + cs, mask=mc, other=0)
    coff = (perm * sc)[None, None, :]

    acc = tl.zeros((BLOCK_Y, BLOCK_X, CP), dtype=tl.float32)
    is_aff = tl.load(mrow + 4) != 0 if HAS_AFFINE else False
    if is_aff:
        sh = tl.load(mrow + 5)
        sw = tl.load(mrow + 6)
        if not INDEX_I64:
            sh = sh.to(tl.int32)
            sw = sw.to(tl.int32)
        r0 = tl.load(mrow + 7).to(tl.int32)
        r1 = tl.load(mrow + 8).to(tl.int32)
        c0 = tl.load(mrow + 9).to(tl.int32)
        c1 = tl.load(mrow + 10).to(tl.int32)
        fillv = tl.load(fill_ptr + n)
        ap = aff_ptr + n.to(tl.int64) * 6
        m00 = tl.load(ap + 0)
        m01 = tl.load(ap + 1)
        m02 = tl.load(ap + 2)
        m10 = tl.load(ap + 3)
        m11 = tl.load(ap + 4)
        m12 = tl.load(ap + 5)
        yf = oys.to(tl.float64)[:, None]
        xf = oxs.to(tl.float64)[None, :]
        fx = m00 * xf + (m01 * yf + m02)                # (BLOCK_Y, BLOCK_X) source column
        fy = m10 * xf + (m11 * yf + m12)                # source row
        m2 = my[:, None] & mx[None, :]
        if NEAREST:
            ix = tl.floor(fx + 0.5000000009313226).to(tl.int32)  # (taps.NEAREST_ROUND)
            iy = tl.floor(fy + 0.5000000009313226).to(tl.int32)
            inside = m2 & (ix >= c0) & (ix < c1) & (iy >= r0) & (iy < r1)
            off = (iy * sh + ix * sw)[:, :, None] + coff
            v = tl.load(base + off, mask=mask & inside[:, :, None], other=0).to(tl.float32)
            acc = tl.where(inside[:, :, None], v, fillv)
        else:
            x0f = tl.floor(fx)
            y0f = tl.floor(fy)
            ax = (fx - x0f).to(tl.float32)
            ay = (fy - y0f).to(tl.float32)
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            ix0 = (x0 >= c0) & (x0 < c1)
            ix1 = (x0 + 1 >= c0) & (x0 + 1 < c1)
            iy0 = m2 & (y0 >= r0) & (y0 < r1)
            iy1 = m2 & (y0 + 1 >= r0) & (y0 + 1 < r1)
            off = (y0 * sh + x0 * sw)[:, :, None] + coff
            i00 = (ix0 & iy0)[:, :, None]
            i01 = (ix1 & iy0)[:, :, None]
            i10 = (ix0 & iy1)[:, :, None]
            i11 = (ix1 & iy1)[:, :, None]
            p00 = tl.where(i00, tl.load(base + off, mask=mask & i00, other=0).to(tl.float32), fillv)
            p01 = tl.where(i01, tl.load(base + off + sw, mask=mask & i01, other=0).to(tl.float32),
                           fillv)
            p10 = tl.where(i10, tl.load(base + off + sh, mask=mask & i10, other=0).to(tl.float32),
                           fillv)
            p11 = tl.where(i11, tl.load(base + off + sh + sw, mask=mask & i11,
                                        other=0).to(tl.float32), fillv)
            bx = 1.0 - ax
            by = 1.0 - ay
            w00 = (bx * by)[:, :, None]
            w01 = (ax * by)[:, :, None]
            w10 = (bx * ay)[:, :, None]
            w11 = (ax * ay)[:, :, None]
            acc = w00 * p00 + w01 * p01 + w10 * p10 + w11 * p11
    else:
        nky = tl.load(mrow + 11).to(tl.int32)
        nkx = tl.load(mrow + 12).to(tl.int32)
        nt = n.to(tl.int64) if INDEX_I64 else n         # (before the product, not after)
        rowi = nt * out_h + oys                         # rows of the y tables
        coli = nt * out_w + oxs
        ys = tl.load(yst_ptr + rowi, mask=my, other=0)
        xs = tl.load(xst_ptr + coli, mask=mx, other=0)
        yoff = (ys * ya)[:, None, None]
        # sums start from -0.0, the exact additive identity (so -0.0 * w keeps its sign and the
        # result equals the Numba kernel's w0 * p0 + w1 * p1 + ...)
        acc = tl.full((BLOCK_Y, BLOCK_X, CP), -0.0, tl.float32)
        # a tap of weight 0 (the padding of the tables' windows) is not read: 0 * NaN is NaN
        for kx in range(0, nkx):
            wx = tl.load(xw_ptr + coli * KX + kx, mask=mx, other=0.0)
            xnz = (wx != 0.0)[None, :, None]
            p = base + yoff + ((xs + kx) * xb)[None, :, None] + coff
            v = tl.full((BLOCK_Y, BLOCK_X, CP), -0.0, tl.float32)
            for ky in range(0, nky):
                wy = tl.load(yw_ptr + rowi * KY + ky, mask=my, other=0.0)
                ynz = (wy != 0.0)[:, None, None]
                px = tl.load(p + ky * ya, mask=mask & ynz & xnz, other=0).to(tl.float32)
                v += tl.where(ynz, wy[:, None, None] * px, -0.0)
            acc += tl.where(xnz, wx[None, :, None] * v, -0.0)

    mean = tl.load(mean_ptr + cs, mask=mc, other=0.0)
    scale = tl.load(scale_ptr + cs, mask=mc, other=1.0)
    res = (acc - mean[None, None, :]) * scale[None, None, :]
    oyo, oxo, oco = oys * oy, oxs * ox, cs * oc
    if INDEX_I64:
        oyo = oys.to(tl.int64) * oy
        oxo = oxs.to(tl.int64) * ox
        oco = cs.to(tl.int64) * oc
    optr = (out_ptr + n.to(tl.int64) * on + oyo[:, None, None] + oxo[None, :, None]
            + oco[None, None, :])
    if OUT_U8:
        # saturate (NaN -> 0), then round half to even: x + 2**23 - 2**23 is exact RNE on [0, 255]
        res = tl.where(res > 255.0, 255.0, res)
        res = tl.where(res >= 0.0, res, 0.0)
        res = (res + 8388608.0) - 8388608.0
    tl.store(optr, res.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------- launch

def _image_table(images):
    """(base tensor, dtype, device, C, meta, (N, 2) shapes, max in-image extent in elements)."""
    if isinstance(images, torch.Tensor):
        assert images.dim() == 4
        n = images.shape[0]
        st = images.stride()
        meta = np.zeros((n, _taps.NMETA), np.int64)
        meta[:, _taps.M_OFF] = np.arange(n, dtype=np.int64) * st[0]
        meta[:, _taps.M_SH], meta[:, _taps.M_SW], meta[:, _taps.M_SC] = st[1], st[2], st[3]
        shapes = np.broadcast_to(np.array(images.shape[1:3], np.int64), (n, 2))
        return images, images.dtype, images.device, images.shape[3], meta, shapes
    arrs = list(images)
    n = len(arrs)
    meta = np.zeros((n, _taps.NMETA), np.int64)
    shapes = np.zeros((n, 2), np.int64)
    if n == 0:
        empty = torch.empty(0, dtype=torch.uint8, device="cpu")  # (not the default device)
        return empty, torch.uint8, torch.device("cpu"), 1, meta, shapes
    first = arrs[0]
    isz = first.element_size()
    for i, a in enumerate(arrs):
        assert a.dim() == 3 and a.dtype == first.dtype and a.shape[2] == first.shape[2]
        assert a.device == first.device
        d = a.data_ptr() - first.data_ptr()
        assert d % isz == 0, "images of a list must be aligned to their item size"
        meta[i, _taps.M_OFF] = d // isz
        meta[i, _taps.M_SH], meta[i, _taps.M_SW], meta[i, _taps.M_SC] = a.stride()
        shapes[i] = a.shape[:2]
    return first, first.dtype, first.device, first.shape[2], meta, shapes


_TABLES = _taps.TableMemo()


def _device_tables(device, meta, shapes, cch, *geometry):
    """The kernel's tables on ``device`` (tensors) and ``gpu_tables``' scalars: one
    host-to-device copy of one packed buffer, or none when this geometry was uploaded lately."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    return _TABLES.tables((str(device), stream), lambda data: _upload(data, device), _view,
                          meta, shapes, cch, *geometry)


def _upload(data: np.ndarray, device: torch.device) -> torch.Tensor:
    host = torch.from_numpy(data)
    if device.type == "cuda":
        host = host.pin_memory()  # torch's caching host allocator: the copy below is async
    return host.to(device, non_blocking=True)


def _view(buf: torch.Tensor, offset: int, dtype: np.dtype, shape: tuple) -> torch.Tensor:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buf[offset:offset + nbytes].view(_TORCH_OF_NUMPY[dtype.str]).view(shape)


_TORCH_OF_NUMPY = {np.dtype(np.int64).str: torch.int64, np.dtype(np.int32).str: torch.int32,
                   np.dtype(np.float32).str: torch.float32, np.dtype(np.float64).str: torch.float64}


@on_its_device
def preprocess_forward(images, boxes, flips, rot90, angles, fill, size, mean, scale, channel_perm,
                       interpolation, antialias, out_dtype, layout, config=None) -> torch.Tensor:
    """The fused preprocess of a batch (contract of the Numba kernel); a new torch tensor.

    ``images``: (N, H, W, C) tensor or a list of (H_i, W_i, C) tensors on one device (CUDA, or
    CPU under the interpreter), uint8 or float32, any strides. Geometry arrays are numpy as for
    the Numba kernel. ``out_dtype`` "float32" | "float16" | "bfloat16" | "uint8" (real torch
    dtypes); ``layout`` "NCHW" | "NHWC"; ``config`` a :class:`PreprocessConfig` (default: the
    default, or big interpreter tiles when ``TRITON_INTERPRET`` is set).
    """
    images = in_memory(images) if isinstance(images, torch.Tensor) else [in_memory(a) for a in images]
    keep = images
    base, dtype, device, cch, meta, shapes = _image_table(images)
    assert dtype in (torch.uint8, torch.float32), dtype
    assert interpolation in _taps.INTERPOLATIONS
    n = meta.shape[0]
    out_h, out_w = int(size[0]), int(size[1])
    shape, (on, oc, oy, ox) = _taps.out_layout(layout, cch, out_h, out_w)
    out = torch.empty((n, *shape), dtype=OUT_TORCH_DTYPES[out_dtype], device=device)
    if out.numel() == 0:
        return out
    # In-image offsets (input and output) and table rows are int32 unless one could reach 2**30
    # (half of int32's range: a tap's offset adds one stride past the edge); the image's own
    # offset is always int64. Before, an image of 2**31 elements failed an assert (and ran
    # past it, wrapping, under python -O), and an output of 2**31 elements per image wrapped.
    ext = (np.abs(meta[:, [_taps.M_SH, _taps.M_SW, _taps.M_SC]]) * np.maximum(
        np.concatenate([shapes, np.full((n, 1), cch)], axis=1), 1)).sum(axis=1)
    d, t = _device_tables(device, meta, shapes, cch, boxes, flips, rot90, angles, fill, size,
                          mean, scale, channel_perm, interpolation, antialias)
    index_i64 = max(int(ext.max()), on, n * max(out_h * t["ky_len"], out_w * t["kx_len"])) \
        > INT32_MAX // 2
    cfg = config or (PreprocessConfig.interpreter(out_h, out_w) if triton_interpret()
                     else PreprocessConfig.default())
    tiles_y = triton.cdiv(out_h, cfg.block_y)
    tiles_x = triton.cdiv(out_w, cfg.block_x)
    grid = (n * tiles_y * tiles_x,)
    preprocess_kernel[grid](
        base, d["meta"], d["yst"], d["yw"], d["xst"], d["xw"], d["aff"], d["fill"], d["perm"],
        d["mean"], d["scale"], out,
        out_h, out_w, tiles_y, tiles_x, t["ky_len"], t["kx_len"],
        on, oc, oy, ox,
        C=cch, CP=triton.next_power_of_2(cch), NMETA=_taps.NMETA,
        BLOCK_Y=cfg.block_y, BLOCK_X=cfg.block_x,
        HAS_AFFINE=t["has_affine"], NEAREST=bool(t["nearest"]), OUT_U8=out_dtype == "uint8",
        INDEX_I64=index_i64, num_warps=cfg.num_warps,
    )
    del keep  # the sources stay alive until the launch is queued (the stream orders later frees)
    return out
