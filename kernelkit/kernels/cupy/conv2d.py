"""CuPy conv2d: forward (fused bias + activation), backward input and backward weight.

The CUDA C source, ``conv2d.cu`` beside this file, holds a shared-memory tiled SIMT implicit GEMM
for the forward pass (one BM x BN tile of output pixels x output channels of one group per block,
TM x TN accumulators per thread, the im2col gather done while loading) and simple, exact kernels
for the rest: a one-thread-per-output direct convolution for depthwise and other few-channels-per-
group problems, a one-thread-per-element backward input, and a block-per-element reduction for
backward weight (see the comment at the top of the .cu). Every kernel takes element strides in
(n, c, h, w) order, so NCHW, NHWC and strided views need no copy.

Each (dtype, config, device) is compiled on first use with ``cupy.RawModule`` (NVRTC; cupy also
caches the binary on disk) and kept in memory. Nothing here imports cupy at module import time.
The project's tuner picks a :class:`Conv2dConfig` (through :meth:`Conv2dConfig.space`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernelkit.kernels import ACTIVATIONS, convgeom
from kernelkit.kernels.config import next_pow2
from kernelkit.kernels.convgeom import act_shape, check_layout, kernel_kind, nchw_shape
from kernelkit.kernels.cupy import _common
from kernelkit.kernels.cupy._common import (
    ACT_CODES,
    DTYPES,
    INT32_MAX,
    SMEM_PAD,
    RegisterTileConfig,
)

SOURCE_PATH = Path(__file__).with_name("conv2d.cu")

SIMPLE_THREADS = 256  # threads per block of the one-per-element kernels
BWD_WEIGHT_THREADS = 256  # BWD_W_THREADS in conv2d.cu


@dataclass(frozen=True)
class Conv2dConfig(RegisterTileConfig):
    """Tile of the forward implicit GEMM: BM pixels x BN channels, reduction step BK, and a
    TM x TN register tile per thread; threads per block = (BM / TM) * (BN / TN). The direct and
    backward kernels have a fixed shape and ignore it."""

    _label = "cupy conv2d config"

    def _kernel_problems(self, nt: int) -> list[str]:
        if (self.BM * self.BK) % nt or (self.BK * self.BN) % nt or nt % self.BK:
            return [f"BM*BK and BK*BN must be multiples of the thread count {nt}, "
                    f"and the thread count a multiple of BK"]
        return []

    @property
    def smem_bytes(self) -> int:
        """Static shared memory of the forward GEMM: one float stage of A and B tiles."""
        return self.BK * (self.BM + self.BN + 2 * SMEM_PAD) * 4

    @classmethod
    def default(cls, dtype=None) -> Conv2dConfig:
        return SHIPPED_CONFIGS[0]

    @classmethod
    def space(cls, dtype, n: int, c: int, h: int, w: int, k: int, r: int, s: int, stride=1,
              groups: int = 1) -> list[Conv2dConfig]:
        """The shipped configs worth trying (at most 6), default first: a config is dropped when
        its BM is more than twice the output pixels or its BN more than twice K / groups (both
        rounded up to powers of two). Direct-kernel problems get the default only."""
        _check_dtype(dtype)
        default = cls.default(dtype)
        if kernel_kind(c, k, r, s, groups) == "direct":
            return [default]
        sh, sw = convgeom.pair("cupy conv2d", "stride", stride)
        m = n * max(1, (h - 1) // sh + 1) * max(1, (w - 1) // sw + 1)
        cap_m, cap_n = max(32, 2 * next_pow2(m)), max(32, 2 * next_pow2(k // max(groups, 1)))
        out = [default]
        for cfg in SHIPPED_CONFIGS:
            if cfg != default and cap_m >= cfg.BM and cap_n >= cfg.BN:
                out.append(cfg)
        return out[:6]


CONFIG = Conv2dConfig


def space(problem) -> list[Conv2dConfig]:
    """The configs worth timing for any conv2d op's ``Problem`` (the backward kernels take none:
    their default only)."""
    if problem.op != "conv2d":
        return [Conv2dConfig.default(problem.dtype)]
    n, c, h, w, k, r, s = convgeom.problem_sizes(problem)
    return Conv2dConfig.space(problem.dtype, n, c, h, w, k, r, s, problem.options.stride,
                              problem.options.groups)


SHIPPED_CONFIGS: tuple[Conv2dConfig, ...] = (
    Conv2dConfig(64, 64, 8, 4, 4),  # default
    Conv2dConfig(128, 128, 8, 8, 8),
    Conv2dConfig(128, 64, 8, 8, 4),
    Conv2dConfig(64, 128, 8, 4, 8),
    Conv2dConfig(32, 64, 8, 2, 4),
)


def _check_dtype(dtype) -> str:
    return _common.check_dtype("conv2d", dtype)


def kernel_name(dtype, config: Conv2dConfig | None = None, which: str = "fwd") -> str:
    """The extern "C" name in conv2d.cu: which = "fwd" (the GEMM of ``config``), "fwd_direct",
    "bwd_input" or "bwd_weight"."""
    tag, _ = DTYPES[_check_dtype(dtype)]
    if which == "fwd":
        c = config or Conv2dConfig.default(dtype)
        return f"kk_conv2d_fwd_{tag}_{c.BM}x{c.BN}x{c.BK}_{c.TM}x{c.TN}"
    if which not in ("fwd_direct", "bwd_input", "bwd_weight"):
        raise ValueError(f"cupy conv2d: unknown kernel {which!r}")
    return f"kk_conv2d_{which}_{tag}"


def compile_options(dtype, config: Conv2dConfig | None = None) -> tuple[str, ...]:
    """NVRTC options: with a config, only that forward GEMM; without, the simple kernels."""
    tag, ctype = DTYPES[_check_dtype(dtype)]
    opts = ("-std=c++17", f"-DKK_DT={tag}", f"-DKK_T={ctype}")
    if config is None:
        return (*opts, "-DKK_SIMPLE=1")
    c = config
    return (*opts, "-DKK_SINGLE=1", f"-DKK_BM={c.BM}", f"-DKK_BN={c.BN}", f"-DKK_BK={c.BK}",
            f"-DKK_TM={c.TM}", f"-DKK_TN={c.TN}")


def source() -> str:
    return _common.source(SOURCE_PATH)


_kernels = _common.KernelCache()


def get_kernel(dtype, which: str = "fwd", config: Conv2dConfig | None = None,
               device_id: int | None = None):
    """The compiled ``cupy.RawKernel`` (compiled once per dtype, config and device)."""
    import cupy

    name = _check_dtype(dtype)
    if device_id is None:
        device_id = cupy.cuda.Device().id
    cfg = config if which == "fwd" else None

    def build():
        with cupy.cuda.Device(device_id):
            fwd_cfg = (cfg or Conv2dConfig.default(name)) if which == "fwd" else None
            module = cupy.RawModule(code=source(), options=compile_options(name, fwd_cfg)
                                    + _common.header_options())
            kern = module.get_function(kernel_name(name, cfg, which))
            kern.compile()
        return kern

    return _kernels.get((name, which, cfg, int(device_id)), build)


# ---------------------------------------------------------------------------------------------
# Argument handling (shared with the host-emulation tests)


def elem_strides(arr, layout: str | None = None) -> tuple[int, ...]:
    """Element strides of a numpy/cupy array; for an activation, reordered to (n, c, h, w)."""
    st = _common.elem_strides("conv2d", arr.strides, arr.itemsize)
    return st if layout is None else nchw_shape(st, layout)


def geometry(op: str, layout, n, c, h, w, k, r, s, stride, padding, dilation,
             groups) -> convgeom.ConvGeometry:
    """convgeom.geometry, plus the 32-bit sizes the kernels index with."""
    check_layout(f"cupy {op}", layout)
    geo = convgeom.geometry(f"cupy {op}", n, c, h, w, k, r, s, stride, padding, dilation, groups)
    if max(n * c * h * w, n * k * geo.ho * geo.wo, k * geo.cg * r * s) > INT32_MAX:
        raise ValueError(f"cupy {op}: tensors over 2**31 elements are not supported")
    return geo


def forward_launch(geo: convgeom.ConvGeometry, config: Conv2dConfig, layout: str):
    """(which, grid, block, extra int args) of the forward launch for this problem."""
    if kernel_kind(geo.c, geo.k, geo.r, geo.s, geo.groups) == "direct":
        total = geo.n * geo.k * geo.ho * geo.wo
        return "fwd_direct", (-(-total // SIMPLE_THREADS), 1, 1), (SIMPLE_THREADS, 1, 1), \
            (int(layout == "NHWC"),)
    m = geo.n * geo.ho * geo.wo
    tiles_n = -(-geo.kg // config.BN)
    blocks = -(-m // config.BM) * tiles_n
    if blocks > INT32_MAX:
        raise ValueError(f"cupy conv2d: {blocks} thread blocks exceed the grid limit")
    return "fwd", (blocks, geo.groups, 1), (config.threads, 1, 1), (tiles_n,)


def simple_grid(total: int) -> tuple[int, int, int]:
    return -(-total // SIMPLE_THREADS), 1, 1


# ---------------------------------------------------------------------------------------------
# Launchers


def _check_arrays(op: str, *arrays):
    import cupy

    for name, a in arrays:
        if not isinstance(a, cupy.ndarray):
            raise TypeError(f"cupy {op}: {name} must be a cupy array, got {type(a).__name__}")
        if a.ndim != 4:
            raise ValueError(f"cupy {op}: {name} must be 4-D, got shape {a.shape}")
    first = arrays[0][1]
    dtype = _check_dtype(first.dtype)
    for name, a in arrays[1:]:
        if a.dtype != first.dtype:
            raise TypeError(f"cupy {op}: {name} must be {first.dtype}, got {a.dtype}")
        if a.device.id != first.device.id:
            raise ValueError(f"cupy {op}: all arrays must be on the same device")
    return dtype


def _check_config(op: str, config, dtype) -> Conv2dConfig:
    """The forward GEMM's config (the default for None); the other kernels take none."""
    if config is None:
        return Conv2dConfig.default(dtype)
    if not isinstance(config, Conv2dConfig):
        raise TypeError(f"cupy {op}: config must be a Conv2dConfig, got {type(config).__name__}")
    return config


def conv2d_forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                   groups: int = 1, activation: str | None = None, layout: str = "NCHW",
                   config: Conv2dConfig | None = None, allow_tf32: bool = False):
    """act(conv2d(x, weight) + bias) for cupy arrays of float32 or float16.

    x is (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC"; weight (K, C/groups, R, S); bias
    None or (K,); any strides. Returns a new C-contiguous array in x's layout.
    """
    import cupy
    import numpy as np

    op = "conv2d"
    dtype = _check_arrays(op, ("x", x), ("weight", weight))
    n, c, h, w = nchw_shape(x.shape, layout)
    k, cg, r, s = weight.shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or cg * groups != c:
        raise ValueError(f"cupy {op}: weight must be (K, C/groups, R, S) with C={c}, "
                         f"groups={groups}; got {weight.shape}")
    geo = geometry(op, layout, n, c, h, w, k, r, s, stride, padding, dilation, groups)
    if activation not in ACT_CODES:
        raise ValueError(f"cupy {op}: activation must be one of None, {', '.join(ACTIVATIONS)}; "
                         f"got {activation!r}")
    if bias is not None:
        if not isinstance(bias, cupy.ndarray) or bias.shape != (k,):
            raise ValueError(f"cupy {op}: bias must be a cupy array of shape ({k},), got "
                             f"{getattr(bias, 'shape', type(bias).__name__)}")
        if bias.device.id != x.device.id:
            raise ValueError(f"cupy {op}: bias must be on x's device {x.device.id}, got "
                             f"{bias.device.id}")
        if bias.dtype != x.dtype:
            with bias.device:  # (astype allocates on the current device)
                bias = bias.astype(x.dtype)
    config = _check_config(op, config, dtype)

    with x.device:
        y = cupy.empty(act_shape(n, k, geo.ho, geo.wo, layout), dtype=x.dtype)
        if y.size == 0:
            return y
        which, grid, block, extra = forward_launch(geo, config, layout)
        i32, i64 = np.int32, np.int64
        sb = elem_strides(bias)[0] if bias is not None else 0
        kern = get_kernel(dtype, which, config, x.device.id)
        args = (x, weight, bias if bias is not None else y, y, *map(i32, geo.ints),
                *map(i64, elem_strides(x, layout)), *map(i64, elem_strides(weight)), i64(sb),
                *map(i64, elem_strides(y, layout)), *map(i32, extra),
                i32(bias is not None), i32(ACT_CODES[activation]))
        kern(grid, block, args)
    return y


def conv2d_backward_input(grad_out, weight, input_hw, stride=(1, 1), padding=(0, 0, 0, 0),
                          dilation=(1, 1), groups: int = 1, layout: str = "NCHW",
                          config: Conv2dConfig | None = None, allow_tf32: bool = False):
    """Gradient of conv2d with respect to its (H, W) = ``input_hw`` input, in ``layout``."""
    import cupy
    import numpy as np

    op = "conv2d_backward_input"
    dtype = _check_arrays(op, ("grad_out", grad_out), ("weight", weight))
    h, w = convgeom.pair(f"cupy {op}", "input_hw", input_hw)
    n, k, ho, wo = nchw_shape(grad_out.shape, layout)
    kw, cg, r, s = weight.shape
    if kw != k or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"cupy {op}: weight must have K={k} rows, got {weight.shape}")
    geo = geometry(op, layout, n, cg * groups, h, w, k, r, s, stride, padding, dilation, groups)
    geo.check_grad_out(ho, wo)
    _check_config(op, config, dtype)
    with grad_out.device:
        dx = cupy.empty(act_shape(n, geo.c, h, w, layout), dtype=grad_out.dtype)
        if dx.size == 0:
            return dx
        i32, i64 = np.int32, np.int64
        kern = get_kernel(dtype, "bwd_input", None, grad_out.device.id)
        kern(simple_grid(dx.size), (SIMPLE_THREADS, 1, 1),
             (grad_out, weight, dx, *map(i32, geo.ints), *map(i64, elem_strides(grad_out, layout)),
              *map(i64, elem_strides(weight)), *map(i64, elem_strides(dx, layout)),
              i32(layout == "NHWC")))
    return dx


def conv2d_backward_weight(x, grad_out, kernel_hw, stride=(1, 1), padding=(0, 0, 0, 0),
                           dilation=(1, 1), groups: int = 1, layout: str = "NCHW",
                           config: Conv2dConfig | None = None, allow_tf32: bool = False):
    """Gradient of conv2d with respect to its weight: a new C-contiguous (K, C/groups, R, S)."""
    import cupy
    import numpy as np

    op = "conv2d_backward_weight"
    dtype = _check_arrays(op, ("x", x), ("grad_out", grad_out))
    r, s = convgeom.pair(f"cupy {op}", "kernel_hw", kernel_hw)
    n, c, h, w = nchw_shape(x.shape, layout)
    n2, k, ho, wo = nchw_shape(grad_out.shape, layout)
    if n2 != n:
        raise ValueError(f"cupy {op}: x has batch {n} but grad_out has {n2}")
    geo = geometry(op, layout, n, c, h, w, k, r, s, stride, padding, dilation, groups)
    geo.check_grad_out(ho, wo)
    _check_config(op, config, dtype)
    with x.device:
        dw = cupy.empty((k, geo.cg, r, s), dtype=x.dtype)
        if dw.size == 0:
            return dw
        if n == 0:
            dw.fill(0)  # a sum over nothing
            return dw
        i32, i64 = np.int32, np.int64
        kern = get_kernel(dtype, "bwd_weight", None, x.device.id)
        kern((dw.size, 1, 1), (BWD_WEIGHT_THREADS, 1, 1),
             (x, grad_out, dw, *map(i32, geo.ints), *map(i64, elem_strides(x, layout)),
              *map(i64, elem_strides(grad_out, layout))))
    return dw
