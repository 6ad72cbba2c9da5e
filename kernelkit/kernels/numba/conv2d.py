"""Numba CPU conv2d: forward with fused bias + activation, and both backward ops.

Paths (the jitted code is in ``_conv.py``; the GEMM machinery is ``_gemm.py``'s):

* **implicit GEMM** for general convolutions: the im2col matrix is packed block by block straight
  into the micro-kernel's panel layout (never materialised). NCHW output: ``Y_n (K x HoWo) = W
  (K x C*R*S) @ col_n`` per image (bias per row; the weight's rows are read in place; on small
  planes the columns run over all images). NHWC output: ``Y (N*HoWo x K) = col (N*HoWo x R*S*C)
  @ W^T`` (bias per column; the weight packed once per call and shared by the threads).
* **shifted GEMM** for NCHW forwards on large planes (``Conv2dConfig.kernel``): one GEMM per
  kernel tap on the input read in place (or from one zero-padded copy, split into stride phases
  where there is a stride), so no im2col panel is packed at all; see ``_conv``'s docstring.
* **1x1**: an unpadded stride-1 1x1 conv is a plain GEMM. NCHW packs each image's (C, HW) matrix
  directly (W (K, C) @ X (C, HW)); NHWC's im2col rows are already the (NHW, C) matrix's rows.
* **depthwise** (groups == C, one input channel per group): direct loops, vectorised along the
  contiguous dimension (the output row in NCHW, the channels in NHWC), parallel over
  (image, channel) planes or (image, output row). Weights with NaN/Inf take the grouped GEMM path
  instead, so that 0 * Inf in the padding gives NaN as in torch.
* **backward input**: ``dcol = W^T @ dY`` one block at a time, scattered into dx (col2im).
  **backward weight**: ``dW = sum_n dY_n @ col_n^T`` with im2col blocks as the packed B.

Threads (``threads.kernel_threads()`` of them: the caller plus a pool of Python threads, the jitted
code releases the GIL) take disjoint units of work and need no barrier.
The launcher does no dispatch, conversion or tuning: the ops layer has validated the arguments.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import types

from kernelkit.kernels.config import cdiv
from kernelkit.kernels.convgeom import nchw_shape, out_size, problem_sizes
from kernelkit.kernels.numba import _amx, _conv, _gemm, _half, _packs, _rows, _workspace
from kernelkit.kernels.numba._gemm import ACT_CODES, entry_point, tile_shape
from kernelkit.kernels.numba._pool import run as _run
from kernelkit.kernels.numba._pool import run_synced as _run_synced
from kernelkit.kernels.numba._workspace import aligned_empty, empty_bits16
from kernelkit.kernels.numba._workspace import scratch as _scratch
from kernelkit.kernels.numba.matmul import GemmBlocking, MatmulConfig, _cache_sizes, _round_down
from kernelkit.kernels.numba.matmul import amx_cols_compiled as _amx_cols_compiled
from kernelkit.kernels.numba.matmul import amx_cols_operand as _amx_cols_operand
from kernelkit.kernels.numba.matmul import matmul_forward as _matmul_forward
from kernelkit.kernels.numba.matmul import warm as _matmul_warm
from kernelkit.threads import kernel_threads

CONV_KERNELS = ("auto", "gemm", "shift", "amx", "amx_cols", "rows")

__all__ = ["Conv2dConfig", "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]

# Below this many multiply-adds in total, one thread does everything.
SERIAL_WORK = 1 << 20
# Depthwise convs run on one thread below this many multiply-adds and input elements: measured
# on 2 Zen 5 vCPUs (MobileNetV2's layers at batch 1, 2 and 8, bench/probes/dw_threads_probe.py),
# one thread did 1.35M multiply-adds (192 ch, 28 px) in 47 us where two took 57, and two won from
# 2.7M multiply-adds, or from 0.9M input elements at stride 2.
DW_PARALLEL_MACS = 2_500_000
DW_PARALLEL_INPUT = 800_000
# Weights with fewer elements than this are packed on the calling thread.
SERIAL_PACK = 1 << 16
# Elements of the shifted GEMM's per-thread output scratch (a quarter of a 512 KiB L2 in float32).
SHIFT_SCRATCH = 1 << 15
# The NCHW implicit GEMM runs its columns over all images when one image's columns, rounded up
# to whole NR slivers, would be this much more work (7x7 planes: 64 columns for 49, 1.31).
BCOLS_WASTE = 1.1
# Config kernel "auto" runs the shifted GEMM where a batch has at least SHIFT_MIN_PIXELS output
# pixels per channel, on planes of at least SHIFT_MIN_PLANE (16-column tile: AVX2). With
# AVX-512's 32-column tile (SHIFT_WIDE) it runs it everywhere (see _shift_by_default).
SHIFT_MIN_PIXELS = 28 * 28
SHIFT_MIN_PLANE = 14 * 14
SHIFT_WIDE = tile_shape(np.float32)[1] >= 32
# The shifted GEMM's threads split the weight's rows before the columns where the weight has
# more rows than the grid has columns (deep layers on small planes; see _shift_geo).
SHIFT_ROWS_FIRST = True
# Deepest reduction block of the shifted GEMM (its B slivers are read in place, not packed).
SHIFT_KC = 256
# The shifted GEMM packs B over exact output columns across a batch's images
# (``_conv._shift_exact_unit``) where computing every image's grid would take this many times
# the slivers or more: a batch of 7x7 outputs (8x8 grids: 1.23), not of 14x14 (14x15 grids:
# 1.14, where packing B, nine words per input, cost more than the slivers saved: Zen 4, batch
# 8, 256 channels, 11.5 -> 13.1 ms). 1x1 layers too: a batch of 8 at 7 px (2048 -> 512,
# 512 -> 2048, 1024 -> 2048 stride 2) 0.77-0.81 -> 0.84-0.96 of torch (ad hoc, one run, minima).
SHIFT_EXACT_WASTE = 1.2
# ... and where that packed B (nine words per input word of a 3x3 conv) takes at most this many
# bytes: it lives in the calling thread's kept scratch (``_workspace``); a batch of 8 at 7 px
# with 512 channels takes 7.7 MB, of 32 29 MB. Larger batches compute the grids.
SHIFT_EXACT_MAX_BYTES = 32 << 20
# The shifted GEMM reads the weight where it lies (``_conv._taps``: no packing phase for it)
# where a sliver of its rows meets at most this many column slivers over the batch's images:
# batch 1 on planes of up to 14 px, where packing the weight took as long as the convolution
# it fed. Zen 4, batch 1, torch / ours from minima (ad hoc, one process): 512 ch 7 px 3x3
# 0.47 -> 0.79, 512 ch 14 px stride 2 0.54 -> 0.88, 256 ch 14 px 0.67 -> 0.76, 1x1 at 7 px
# 0.62 -> 0.74; 16 slivers (28 px) lost on 1x1 layers (128 -> 512: 0.94 -> 0.73), and at
# batch 8 (packed once, read by each image) the 14 px layers were no faster.
SHIFT_INPLACE_SLIVERS = 8
# ... and where its rows lie a multiple of SHIFT_ALIAS_BYTES apart (1x1 layers of 1024 and 2048
# channels: all MR rows of a sliver in one set of L1's eight ways, evicting each other at every K
# step), it reads them through a copy of each sliver of rows (``_conv._sliver_rows``), once per
# channel block, which every column sliver then reads from L1; those layers then read in place
# over SHIFT_INPLACE_SLIVERS slivers too. Zen 4, batch 1, old / new in one process, rounds
# interleaved with torch, medians (ad hoc, docs/performance.md): 2048 -> 512 at 7 px 1.28x,
# 1024 -> 2048 stride 2 1.11x, 1024 -> 256 and 1024 -> 512 at 14 px (packed before) 1.22x and
# 1.15x (within the noise in two later runs); not where rows lie apart otherwise (copying
# every in-place layer's rows, conv_alias_probe.py --copy-all: 512 ch 3x3 layers 0.87-0.93x,
# 256 ch 0.98-1.00x, 512 -> 2048 at 7 px, 2 KiB apart, 0.96x).
SHIFT_INPLACE_COPY = True
# bfloat16 reads the weight in place on the same layers (an even channel count per group), its
# uint32 words being pairs of K neighbours (two taps of a channel) against planes of the
# input's tap pairs (``_conv._tap_pairs``), instead of packing it as channel pairs per tap.
# Zen 4, batch 1, off / on in one process, 11 rounds rotated with torch, medians
# (conv_knob_probe.py --dtype bfloat16, docs/performance.md): 512 ch 7 px 3x3 1.028 -> 0.832
# ms (torch 0.679), 512 ch 14 px stride 2 1.521 -> 1.064 (0.858), 2048 -> 512 1x1 at 7 px
# 1.088 -> 0.712 (0.682); the 28-56 px layers (packed either way) and 256 ch 14 px even.
TAP_PAIRS = True
# ... where the tap pairs' planes (R*S words per channel pair and grid column, in the calling
# thread's scratch) take at most this many bytes (512 channels at 7 px, batch 1: 0.7 MB); with
# many threads a split of the columns keeps larger planes within SHIFT_INPLACE_SLIVERS
TAP_PAIRS_MAX_BYTES = 8 << 20
# The exact-column shifted GEMM (a batch of small planes) reads the weight in place as well
# (float32; bfloat16 1x1), where its packed B is shared by every row sliver. Zen 4, batch 8,
# off / on in one process (conv_knob_probe.py, 7-9 rounds rotated with torch, medians): float32
# 512 ch 3x3 at 7 px 10.52 -> 10.08 ms, 14 px stride 2 10.46 -> 10.13, 512 -> 2048 1x1 at 7 px
# 4.77 -> 4.37; bfloat16 512 -> 2048 1x1 2.74 -> 2.48, 1024 -> 2048 stride 2 5.00 -> 4.64.
EXACT_INPLACE = True
SHIFT_ALIAS_BYTES = 4096
# The shifted GEMM computes a sliver of fewer than NR grid columns on a tile of NR / 2 or NR / 4
# columns (``_gemm.ukernel_taps_half`` / ``_quarter``; 17-24 columns: a half and a quarter)
# instead of a whole one: a 14 px plane's 196 columns (1x1) are six slivers and 4 columns, a
# 7 px plane's 49 one and 17, which whole tiles computed as 224 and 64.
SHIFT_NARROW_TAIL = True
# Config kernel "auto" runs the pixel-rows conv (``_rows``: output pixels as the micro-kernel's
# rows against the weight packed as output-channel slivers) where that packed weight is kept
# across calls (a torch weight under `kernelkit.frozen_weights()`), on a float32 one-group
# stride-1 convolution of more than one tap with at most ROWS_MAX_PLANE output pixels a plane.
# Zen 4, frozen weights, batch 8, shifted GEMM / pixel rows in one process (docs/performance.md,
# "Zen 4, thirtieth session"): 512 ch 7 px 3x3 1.10-1.22 in six runs; 512 ch 14 px stride 2
# (7 px out, its padded copy 4 MB) 0.93-1.19; 256 ch 14 px 3x3 0.94-1.10; 1x1 and 28 px layers
# slower (1024 -> 256 at 14 px 0.65, 128 ch 28 px 0.82-1.00): the consistent winner only. Batch
# 1 about even (512 ch 7 px 0.97). Without a kept weight each share packs its slivers every
# call (scalar transposes, about 2 ns a weight), which lost on every layer, so the tuner is not
# offered it: a cached choice would run outside frozen_weights() too.
ROWS_MAX_PLANE = 8 * 8
# Channels per block of the pixel-rows conv: its B sliver (taps x channels x NR words) within
# about half of L2, so that every pixel tile of a block reads it from there.
ROWS_L2_SHARE = 2
# Pixel tiles whose C tiles a thread holds at once (its scratch: ROWS_TILES x MR x NR words)
ROWS_TILES = 64
# The AMX column conv passes each chunk of image columns over all the weight's rows where the
# columns outnumber the rows (else each strip of weight rows over all the columns).
AMX_COLS_BY_CHUNK = True


@dataclass(frozen=True)
class Conv2dConfig(GemmBlocking):
    """Cache blocking of the implicit GEMM (the register tile is fixed per dtype, as in matmul).

    mc: rows of the packed A per block (a multiple of MR; L2-resident).
    kc: depth of a block (C*R*S for the forward; evened out over the reduction).
    nc: columns of the packed B per panel (a multiple of NR).
    kernel: the forward's algorithm for NCHW convolutions: "gemm" (the implicit GEMM, im2col
        panels packed block by block), "shift" (the shifted GEMM: one GEMM per kernel tap on
        the input read in place, or on one zero-padded copy of it), or "auto" (where it
        measured faster: with AVX-512, shift everywhere; else shift where a batch has at least
        ``SHIFT_MIN_PIXELS`` output pixels per channel, on planes of at least
        ``SHIFT_MIN_PLANE``), or "amx" (bfloat16, one group, a square stride, on a CPU with
        AMX: the shifted GEMM on AMX tiles, ``_amx``; "auto" elsewhere), or "amx_cols"
        (bfloat16, one group, any stride, on a CPU with AMX: the image's columns by the weight
        read in place on AMX tiles, offered first where a layer has more weight than image;
        "auto" elsewhere), or "rows" (float32, one group: output pixels as the micro-kernel's
        rows against the weight packed as output-channel slivers, ``_rows``; "auto" picks it
        on small planes where that packed weight is kept, see ``ROWS_MAX_PLANE``). Other
        convolutions, and the backward ops, ignore it.
    """

    kernel: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if self.kernel not in CONV_KERNELS:
            raise ValueError(f"{type(self).__name__}.kernel must be one of {CONV_KERNELS}, got "
                             f"{self.kernel!r}")

    @classmethod
    def default(cls, dtype) -> Conv2dConfig:
        d = MatmulConfig.default(dtype)
        return cls(d.mc, d.kc, d.nc)

    @classmethod
    def space(cls, dtype, n, c, h, w, k, r, s, stride, groups) -> list[Conv2dConfig]:
        """Default first, then up to 5 variants that change the blocking for this problem."""
        d = cls.default(dtype)
        mr, nr = tile_shape(dtype)
        cands = [
            d,
            cls(d.mc, max(64, d.kc // 2), d.nc),
            cls(d.mc, max(64, d.kc // 4), d.nc),
            cls(_round_down(d.mc // 2, mr), d.kc, d.nc),
            cls(d.mc, d.kc, _round_down(d.nc // 4, nr)),
            cls(_round_down(d.mc * 2, mr), max(64, d.kc // 2), _round_down(d.nc // 2, nr)),
        ]
        sh = stride[0] if isinstance(stride, (tuple, list)) else stride
        g = max(int(groups), 1)
        kred = max(c // g * r * s, 1)
        hw = max((h // max(sh, 1)) * (w // max(sh, 1)), 1)
        kg = max(k // g, 1)
        out, seen = [], set()
        for cf in cands:
            # Two configs are the same for this problem if they clamp to the same blocks (in
            # either GEMM orientation).
            eff = (min(cf.kc, kred), min(cf.mc, kg), min(cf.nc, hw), min(cf.mc, n * hw),
                   min(cf.nc, kg))
            if eff in seen:
                continue
            seen.add(eff)
            out.append(cf)
        return out[:6]


CONFIG = Conv2dConfig


def space(problem) -> list[Conv2dConfig]:
    """The configs worth timing for any conv2d op's ``Problem``: the blocking variants, and for an
    NCHW forward (not depthwise) the default blocking with the algorithm "auto" does not pick."""
    n, c, h, w, k, r, s = problem_sizes(problem)
    opts = problem.options
    out = Conv2dConfig.space(_half.compute_dtype(problem.dtype), n, c, h, w, k, r, s,
                             opts.stride, opts.groups)
    if _config_free(problem, n, c, h, w, k, r, s):
        return out[:1]  # every config runs the same kernel: time it once
    if (problem.op == "conv2d" and problem.layout == "NCHW"
            and not (opts.groups == c and opts.groups > 1)):
        _, _, ho, wo = problem.shapes[2]
        d = out[0]
        other = "gemm" if _shift_by_default(n, ho, wo, r * s) else "shift"
        out.insert(1, Conv2dConfig(d.mc, d.kc, d.nc, other))
        stride = tuple(opts.stride) if isinstance(opts.stride, (tuple, list)) else (opts.stride,) * 2
        if problem.dtype == "bfloat16" and opts.groups == 1 and _amx.available():
            amx = [Conv2dConfig(d.mc, d.kc, d.nc, "amx_cols")]
            if stride[0] == stride[1]:
                amx.insert(0, Conv2dConfig(d.mc, d.kc, d.nc, "amx"))
                if n * ho * wo < k:  # more weight than image columns: read it in place first
                    amx.reverse()
            out[:0] = amx
    return out


def _config_free(problem, n, c, h, w, k, r, s) -> bool:
    """Whether this problem runs a depthwise kernel that takes no config: every depthwise
    forward, and the 3x3 pad-1 stride-1/2 backward ops (dW in NCHW) of ``_dw3_stride``."""
    opts = problem.options
    if not (opts.groups == c == k and c > 1):
        return False
    if problem.op == "conv2d":
        return True
    _, _, ho, wo = problem.shapes[2]
    dw3 = _dw3_stride(n, c, h, w, k, r, s, ho, wo, opts.stride, opts.padding, opts.dilation,
                      opts.groups)
    if problem.op == "conv2d_backward_input":
        return bool(dw3)
    return bool(dw3) and problem.layout == "NCHW"


def _shift_by_default(n: int, ho: int, wo: int, taps: int) -> bool:
    """Config kernel "auto": the shifted GEMM on large planes and large batches. Measured on
    ResNet-50's layers (docs/performance.md). Zen 3 (AVX2, stride-1 layers): faster than the
    implicit GEMM at 56 and 28 px at batch 1 and 8, and at 14 px at batch 8 but not at batch 1;
    slower at 7 px, where a plane is a few slivers and the im2col panel, packed once for
    512-2048 weight rows, pays for itself. Zen 5 (AVX-512, every layer, strided ones through
    the stride phases): faster on every layer at batch 1 and 8 since the weight is packed a
    row at a time and threads split the weight's rows on small planes (the 3x3 layers with 7x7
    outputs at batch 1 were slower before that)."""
    if SHIFT_WIDE:
        return True
    return ho * wo >= SHIFT_MIN_PLANE and n * ho * wo >= SHIFT_MIN_PIXELS


def _rows_shape(taps: int, ho: int, wo: int, stride) -> bool:
    """The shapes config kernel "auto" runs the pixel-rows conv on (a float32 one-group
    forward, the caller's checks): more than one tap, stride 1, planes of at most
    ROWS_MAX_PLANE output pixels. See ROWS_MAX_PLANE."""
    return taps > 1 and ho * wo <= ROWS_MAX_PLANE and int(stride[0]) == int(stride[1]) == 1


def _rows_by_default(taps: int, ho: int, wo: int, stride, kept: bool) -> bool:
    """Config kernel "auto": the pixel-rows conv on ``_rows_shape``'s shapes where the packed
    weight is ``kept`` across calls."""
    return kept and _rows_shape(taps, ho, wo, stride)


# ----------------------------------------------------------------------------------- compilation

def _sig(name: str, dtype):
    """Signature of entry point ``name``: 'A'-layout read-only inputs, one compile per dtype."""
    nb = numba.from_dtype(np.dtype(dtype))
    ro4 = types.Array(nb, 4, "A", readonly=True)
    c1 = types.Array(nb, 1, "C")
    bias = types.Array(nb, 1, "A", readonly=True)
    geo = types.Array(types.int64, 1, "C", readonly=True)
    i = types.int64
    if name == "all_finite":
        return types.boolean(types.Array(nb, 4, "C", readonly=True))
    args = {
        "fwd": (i, ro4, c1, c1, c1, bias, c1, geo, types.Array(types.int64, 1, "C")),
        "dw": (ro4, c1, bias, c1, geo),
        "bwd": (ro4, ro4, c1, bias, c1, geo),
        "dw_wgrad": (ro4, ro4, c1, geo),
    }[name]
    return types.void(i, i, *args)


class _Compiled:
    """Entry points of one dtype, each compiled (or loaded from numba's cache) on first use."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.empty = np.zeros(0, dtype)

    def __getattr__(self, name):  # first use of an entry point
        fn = entry_point(getattr(_conv, name), _sig(name, self.dtype))
        setattr(self, name, fn)
        return fn


_COMPILED: dict = {}
_DEFAULTS: dict = {}
_PAIRS: list = []  # the bfloat16 shifted GEMM's entry point (``_conv.fwd_pairs``), once compiled


def _pairs_compiled():
    if not _PAIRS:
        i = types.int64
        sig = types.void(i, i, i, types.Array(types.uint16, 4, "A", readonly=True),
                         types.Array(types.uint16, 1, "C"), types.Array(types.uint32, 1, "C"),
                         types.Array(types.uint32, 1, "C"),
                         types.Array(types.float32, 1, "A", readonly=True),
                         types.Array(types.float32, 1, "C"), types.Array(types.uint16, 1, "C"),
                         types.Array(types.int64, 1, "C", readonly=True),
                         types.Array(types.int64, 1, "C"))
        _PAIRS.append(entry_point(_conv.fwd_pairs, sig))
    return _PAIRS[0]


_AMX_CONV: list = []  # the AMX conv's entry points: (weight packing, pair planes, products)


def _amx_conv_compiled() -> tuple:
    """The AMX conv's three share entry points, compiled (or loaded) for 'A'-layout inputs."""
    if not _AMX_CONV:
        i = types.int64
        arr = lambda t, nd, layout="C", ro=False: types.Array(t, nd, layout, readonly=ro)
        u16, u32, f32 = types.uint16, types.uint32, types.float32
        _AMX_CONV.extend([
            entry_point(_amx.pack_conv_weight, types.void(
                i, i, arr(u16, 1, "A", True), i, i, i, arr(u16, 1), i)),
            entry_point(_amx.conv_pack_part, types.void(
                i, i, arr(u16, 4, "A", True), arr(u32, 1), i, i, i, i, i, i)),
            entry_point(_amx.conv_part, types.void(
                i, i, arr(u16, 1), i, i, arr(types.int64, 1, "C", True), arr(u32, 1), i, i,
                arr(f32, 1), i, arr(u16, 4), arr(f32, 1, "A", True), types.boolean, i, i)),
        ])
    return tuple(_AMX_CONV)


_ROWS: list = []  # the pixel-rows conv's entry points (weight packing, padded copy, product)


def _rows_compiled() -> tuple:
    """The pixel-rows conv's three share entry points, compiled (or loaded), float32."""
    if not _ROWS:
        i, f32 = types.int64, types.float32
        arr = lambda t, nd, layout="C", ro=False: types.Array(t, nd, layout, readonly=ro)
        _ROWS.extend([
            entry_point(_rows.pack_weight, types.void(i, i, arr(f32, 4, "A", True), arr(f32, 1))),
            entry_point(_rows.pad_input, types.void(i, i, arr(f32, 4, "A", True), arr(f32, 1),
                                                    i, i, i, i)),
            entry_point(_rows.conv_part, types.void(
                i, i, arr(f32, 1), arr(f32, 4, "A", True), arr(f32, 1), i,
                arr(types.int64, 1, "C", True), arr(types.int64, 1, "C", True), i, i, i, i,
                arr(f32, 1), arr(f32, 1, "A", True), i, i, arr(f32, 1))),
        ])
    return tuple(_ROWS)


def _compiled(dtype) -> _Compiled:
    fns = _COMPILED.get(dtype)
    if fns is None:
        fns = _COMPILED[np.dtype(dtype)] = _Compiled(dtype)
    return fns


def warm(dtype: str) -> str:
    """Compile (or load from the on-disk cache) every kernel the conv2d entry points run for
    `dtype`: the conv kernels (float32: the pixel-rows conv too) and the GEMM the 1x1 path calls;
    "compiled" or "loaded"."""
    before = _gemm.COMPILED[0]
    fns = _compiled(_half.compute_dtype(dtype))
    fns.fwd, fns.dw, fns.bwd, fns.dw_wgrad, fns.all_finite  # noqa: B018 - compile on access
    if fns.dtype == np.float32:  # (the pixel-rows conv, under frozen_weights() on small planes)
        _rows_compiled()
    if dtype == "bfloat16" and _gemm.HAS_BF16_DOT:
        _pairs_compiled()
    if dtype == "bfloat16" and _amx.available():
        _amx_conv_compiled()
        _amx_cols_compiled()
    _matmul_warm(dtype)
    return _gemm.warm_result(before)


def _default(dtype) -> Conv2dConfig:
    cfg = _DEFAULTS.get(dtype)
    if cfg is None:
        cfg = _DEFAULTS[dtype] = Conv2dConfig.default(dtype)
    return cfg


# ----------------------------------------------------------------------------------------- helpers

def _even(total: int, blk: int, unit: int) -> int:
    """Block size <= blk (a multiple of unit) that splits total into equal blocks."""
    total = max(total, 1)
    blk = max(unit, blk // unit * unit)
    return cdiv(cdiv(total, cdiv(total, blk)), unit) * unit


def _parts(base: int, nthr: int, cap: int) -> int:
    """Extra split of each of ``base`` work units so that nthr threads get even shares."""
    if nthr <= 1 or base % nthr == 0 or base >= 4 * nthr:
        return 1
    need = nthr // math.gcd(base, nthr)
    return max(1, min(cap, need))


def _shares(base: int, nthr: int, msl: int, nsl: int, rows_first: bool) -> tuple[int, int]:
    """(pm, pn): the extra splits of each of ``base`` units over its ``msl`` row slivers and
    ``nsl`` column slivers for even shares of ``nthr`` threads, the rows split first where
    ``rows_first`` (deep layers on small planes: each thread then streams its part of the
    weight, not all of it), else the columns."""
    if rows_first:
        pm = _parts(base, nthr, msl)
        return pm, _parts(base * pm, nthr, nsl)
    pn = _parts(base, nthr, nsl)
    return _parts(base * pn, nthr, msl), pn


def _geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, groups) -> np.ndarray:
    g = np.zeros(_conv.GEO_LEN, np.int64)
    g[: _conv.G_G + 1] = (n, c, h, w, k, r, s, ho, wo, stride[0], stride[1], padding[0],
                          padding[2], dilation[0], dilation[1], groups)
    return g


def _dw_geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, groups, has_bias: int,
            act: int, mode: int) -> np.ndarray:
    """The depthwise forward's geometry, memoised (the kernels only read it): building it took
    about 12 us per call inside a torch model (numpy calls run cold there), a lookup 1."""
    key = (n, c, h, w, k, r, s, ho, wo, tuple(stride), tuple(padding), tuple(dilation), groups,
           has_bias, act, mode)
    geo = _DW_GEOS.get(key)
    if geo is None:
        if len(_DW_GEOS) >= 1024:
            _DW_GEOS.clear()
        geo = _geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, groups)
        geo[_conv.G_HAS_BIAS], geo[_conv.G_ACT], geo[_conv.G_MODE] = has_bias, act, mode
        _DW_GEOS[key] = geo
    return geo


_DW_GEOS: dict = {}


def _finite(fns, weight: np.ndarray) -> bool:
    """No NaN or Inf in the (4-D) weight."""
    if not weight.flags.c_contiguous:
        return bool(np.isfinite(weight).all())
    return bool(fns.all_finite(weight))


def _writable(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _aligned(*arrays):
    return [a if a.flags.aligned else np.ascontiguousarray(a) for a in arrays]


def _threads(work: int, nthr: int | None = None) -> int:
    """Threads for ``work`` multiply-adds: ``nthr`` (kernel_threads() if None), or one
    below SERIAL_WORK."""
    if nthr is None:
        nthr = kernel_threads()
    return nthr if work >= SERIAL_WORK else 1


def _dw_threads(macs: int, inputs: int) -> int:
    """Threads for a depthwise kernel of ``macs`` multiply-adds over ``inputs`` input elements."""
    big = macs >= DW_PARALLEL_MACS or inputs >= DW_PARALLEL_INPUT
    return kernel_threads() if big else 1


# The shifted GEMM's stride-1 grid shares one zero pad between a row's right edge and the next
# row's left edge (`_shift_geo`); a switch so that probes can compare it with the full pads.
SHARED_PAD = True

_NO_SYNC = np.zeros(2, np.int64)  # the barrier's counters where the phases launch apart (unused)


def _launch(fn, tn: int, pack_tn: int, *args) -> None:
    """A forward's packing phase, then its convolution: in one launch of ``tn`` shares that meet
    at a barrier in between (``_pool.run_synced``: one thread-pool handoff, about 25-50 us here,
    instead of two), or as two launches: where the packing is small enough for the calling
    thread alone (``pack_tn`` == 1: that call is no launch, and a barrier would only make the
    caller wait for the pool's thread to start), with one thread, or where another synced run
    holds the pool; ``pack_tn`` == 0: nothing to pack (a kept packed weight, x read in place)."""
    if pack_tn > 1 and tn > 1 and _run_synced(fn, tn, 2, *args):
        return
    if pack_tn > 0:
        _run(fn, pack_tn, 0, *args, _NO_SYNC)
    _run(fn, tn, 1, *args, _NO_SYNC)


# Packed weights of torch tensors kept across calls (`_packs`); a switch for probes and tests.
KEEP_PACKS = True


def _shift_buffers(weight: np.ndarray, wsize: int, xp_size: int, dtype, geo: np.ndarray):
    """(wp, xpb, kept, keep): the shifted GEMM's packed-weight buffer and padded-copy buffer.

    A weight that views a torch tensor keeps its packed copy across calls (``_packs``): kept
    (True) means ``wp`` holds it already (geo[G_WPACKED] set), else the launch packs into a new
    ``wp`` and ``keep()`` stores it afterwards; the padded copy then has a scratch of its own
    (geo[G_XPOFF] 0). Any other weight: one per-thread scratch holds both, the copy from
    geo[G_XPOFF], and ``keep`` is None."""
    kept = _kept_pack(weight, wsize, dtype, (weight.dtype.str, np.dtype(dtype).str,
                      int(geo[_conv.G_C]), int(geo[_conv.G_G]), int(geo[_conv.G_KC])))
    if kept is None:
        buf = _scratch(wsize + xp_size, dtype)
        return buf, buf, False, None
    wp, packed, keep = kept
    geo[_conv.G_XPOFF] = 0
    geo[_conv.G_WPACKED] = int(packed)
    return wp, _scratch(xp_size, dtype), packed, keep


def _kept_pack(weight: np.ndarray, size: int, dtype, tail: tuple):
    """For a weight that views a torch tensor whose packed copy may be kept (``_packs``):
    (buffer, packed, keep) - the kept copy and True, or a new 64-byte aligned buffer of ``size``
    ``dtype`` to pack into, False, and ``keep()`` to store it once packed. None for any other
    weight. ``tail``: what else the packed layout depends on (part of the key)."""
    tensor = _packs.owner(weight) if KEEP_PACKS else None
    if tensor is None:
        return None
    key = (weight.__array_interface__["data"][0], weight.shape, weight.strides, *tail)
    version = tensor._version
    buf = _packs.lookup(key, tensor)
    if buf is not None:
        return buf, True, None
    buf = aligned_empty(size, dtype)
    return buf, False, lambda: _packs.keep(key, tensor, version, buf)


def _pack_threads(tn: int, kept: bool, wsize: int, xp_size: int) -> int:
    """Threads for the packing phase: none where nothing is packed, one where it is small."""
    work = (0 if kept else wsize) + xp_size
    if work == 0:
        return 0
    return tn if work >= SERIAL_PACK else 1


def _shifted(cfg: Conv2dConfig, n: int, ho: int, wo: int, taps: int) -> bool:
    """Whether an NCHW forward runs as the shifted GEMM (``_conv._fwd_shift``)."""
    if cfg.kernel == "gemm":
        return False
    return cfg.kernel == "shift" or _shift_by_default(n, ho, wo, taps)


def _in_place(xshape: tuple, xstrides: tuple, itemsize: int, stride, padding) -> bool:
    """Whether the shifted GEMM reads x (NCHW shape, strides in bytes) where it lies (no
    padding, stride 1, unit-stride rows that follow each other) rather than from a zero-padded
    copy."""
    h, w = xshape[2:]
    sx = [st // itemsize for st in xstrides]
    return (stride[0] == 1 and stride[1] == 1 and not any(padding) and sx[3] == 1
            and (h == 1 or sx[2] == w))


def _shift_kc(cg: int, kc: int, r: int, s: int, dw: int, itemsize: int, nr: int) -> int:
    """Channels per block of the shifted GEMM. B is read in place, not packed, so the block's B
    sliver under every tap (per channel, R row segments of NR + (S - 1) * dw elements) should
    fit L1: SHIFT_KC channels for a 1x1 kernel, about a third of that for a 3x3 one, whose
    256-channel blocks spilled to L2. Xeon of docs/performance.md, torch / ours from minima,
    bench/probes/conv_kc_probe.py, two runs: 256-512 channels at 7-14 px, batch 1, 0.36-0.55
    -> 0.53-0.74; at batch 8 within the noise. 1x1 layers lost below 171 channels."""
    lines = r * cdiv((nr + (s - 1) * dw) * itemsize, 64)
    fit = max(8, _l1_bytes() // (64 * lines))
    return _even(cg, max(1, min(kc, SHIFT_KC, fit, cg)), 1)


def _exact_columns(n: int, hw: int, ncols: int, nr: int) -> bool:
    """Whether the shifted GEMM packs B over exact output columns (``_conv._shift_exact_unit``):
    a batch whose images' grids (``ncols`` columns each) take SHIFT_EXACT_WASTE times the
    slivers of its ``n * hw`` outputs or more."""
    return n > 1 and n * cdiv(ncols, nr) > SHIFT_EXACT_WASTE * cdiv(n * hw, nr)


def _exact_b_words(n: int, c: int, r: int, s: int, hw: int, nr: int) -> int:
    """Words of the exact-column shifted GEMM's packed B: every tap's input under each of the
    ``n * hw`` output columns, rounded up to whole slivers, for all ``c`` channels."""
    return c * r * s * cdiv(n * hw, nr) * nr


def _exact_kc(cg: int, kc: int, taps: int, itemsize: int, nr: int) -> int:
    """Channels per block of the exact-column shifted GEMM: a packed B sliver (per channel,
    ``taps`` rows of NR elements) of up to a quarter of L2. Deep blocks beat slivers that fit
    L1 here: the micro-kernel's 24 FMA vectors per step leave L2 time to feed B, and each block
    costs a pass over the C tile. Zen 4, batch 8, 512 channels 3x3 at 7 px, torch / ours from
    minima, two ad hoc runs: 27 channels (L1) 0.61, 64 0.65; 64 0.65, 128 0.67, 192 0.68, 256
    0.69 (this rule: 171 with a 1 MiB L2)."""
    fit = max(8, _cache_sizes()[2] // 4 // (taps * nr * itemsize))
    return _even(cg, max(1, min(kc, fit, cg)), 1)


@functools.cache
def _l1_bytes() -> int:
    return _cache_sizes()[1]


def _shift_wsize(g: int, kg: int, cg: int, taps: int, mr: int) -> int:
    """Words of the shifted GEMM's packed weight: per group, ``taps`` tap blocks of Cg x Kg
    (rows rounded up to MR), ``_conv.tap_stride`` apart."""
    return g * taps * (cg * cdiv(kg, mr) * mr + _conv.TAP_PAD)


def _shift_geo(geo, direct: bool, itemsize: int, cfg: Conv2dConfig, tn: int, padding, mr: int,
               nr: int) -> int:
    """Fill the shifted GEMM's blocking into ``geo`` (sizes already there: geo[G_C] counts the
    channel pairs of a bfloat16 conv); the size of the padded input copy (0 when the input is
    read where it lies, ``direct``)."""
    # as Python ints: arithmetic on numpy scalars costs several times more per operation
    n, c, h, w, k, r, s, ho, wo, sh, sw = geo[_conv.G_N:_conv.G_SW + 1].tolist()
    g = int(geo[_conv.G_G])
    cg, kg = c // g, k // g
    # the grid: the plane (direct), the padded plane, or (strided) one stride phase of it
    gh, gw = (h, w) if direct else (cdiv(h + padding[0] + padding[1], sh),
                                    cdiv(w + padding[2] + padding[3], sw))
    # Stride 1: one zero pad shared by a row's right edge and the next row's left edge (the
    # plane starts after ``lead`` zeros), so a row of the grid is W + max(left, right) wide, not
    # W + left + right: the columns computed and dropped fall from 2 to 1 per row of a 3x3
    # conv (at 7 px, 22% of the grid to 12.5%)
    lead = 0
    if SHARED_PAD and not direct and sh == 1 and sw == 1 and padding[2] > 0 and padding[3] > 0:
        lead = padding[2]
        gw = max(w + max(padding[2], padding[3]), wo)  # a row holds the output's row
    ncols = (ho - 1) * gw + wo
    msl, nsl = cdiv(kg, mr), cdiv(ncols, nr)
    if (_exact_columns(n, ho * wo, ncols, nr)
            and _exact_b_words(n, c, r, s, ho * wo, nr) * itemsize <= SHIFT_EXACT_MAX_BYTES):
        return _exact_geo(geo, itemsize, cfg, tn, mr, nr)
    # More weight rows than grid columns (deep layers on small planes): threads split the
    # weight's rows, so each streams half of it and reuses it over every column sliver,
    # instead of each streaming all of it for its half of a few slivers
    pm, pn = _shares(n * g, tn, msl, nsl, SHIFT_ROWS_FIRST and kg > ncols)
    mc = _even(cdiv(msl, pm) * mr, cfg.mc, mr)
    slivers = n * cdiv(nsl, pn)
    aliased = cg * r * s * itemsize % SHIFT_ALIAS_BYTES == 0
    # bfloat16 (channel pairs): in place only where a weight row is whole uint32 words from
    # each group's start (Cg even; its pairs then run along K: ``_conv._tap_pairs``) and the
    # tap pairs' planes fit TAP_PAIRS_MAX_BYTES
    pairs = int(geo[_conv.G_PAIRS])
    line = max(1, 64 // itemsize)
    qpitch = _qpitch(ncols, nr, line) if pairs and r * s > 1 else 0
    inplace = (pairs == 0 or (TAP_PAIRS and pairs % 2 == 0
                              and n * c * r * s * qpitch * itemsize <= TAP_PAIRS_MAX_BYTES)) \
        and slivers <= SHIFT_INPLACE_SLIVERS and (SHIFT_INPLACE_COPY or slivers <= 2
                                                  or not aliased)
    if inplace:  # a sliver of weight rows at a time, over all the unit's columns
        mc = mr
    nc = cfg.nc
    if gw != wo:  # the tiles go to a scratch of mc x nc per thread: keep it in L2
        nc = min(nc, max(nr, SHIFT_SCRATCH // (cdiv(mc, mr) * mr) // nr * nr))
    # Planes of the padded copy start a cache line apart and an odd number of lines apart, so
    # that a B sliver (the same columns of kc planes) spreads over every set of L1 instead of
    # aliasing into a few (a 16x16 plane is 1 KiB: 4 of L1's 64 sets); NR of slack after the
    # last plane lets the grid's last sliver be read in place.
    pitch = _odd_lines(lead + sh * sw * gh * gw, line)
    geo[_conv.G_XPITCH] = pitch
    geo[_conv.G_MODE] = _conv.MODE_SHIFT
    # bfloat16 read in place with more than one tap: B is the tap pairs' planes after the
    # padded copy
    qpitch = qpitch if inplace else 0
    geo[_conv.G_QPITCH] = qpitch
    geo[_conv.G_QOFF] = cdiv(n * c * pitch + nr, line) * line if qpitch else 0
    # a block's B sliver: R rows of NR + (S - 1) * dw words a channel, or with tap pairs one
    # row of NR words per pseudo-tap
    geo[_conv.G_KC] = (_shift_kc(cg, cfg.kc, r * s, 1, 1, itemsize, nr) if qpitch else
                       _shift_kc(cg, cfg.kc, r, s, int(geo[_conv.G_DW]), itemsize, nr))
    geo[_conv.G_AINPL] = 0 if not inplace else (
        _conv.AINPL_COPY if SHIFT_INPLACE_COPY and aliased else _conv.AINPL_ROWS)
    geo[_conv.G_TAPW] = cg
    geo[_conv.G_NARROW] = int(SHIFT_NARROW_TAIL)
    geo[_conv.G_MC] = mc
    geo[_conv.G_NC] = _even(cdiv(nsl, pn) * nr, nc, nr)
    geo[_conv.G_PM] = pm
    geo[_conv.G_PN] = pn
    geo[_conv.G_GH] = gh
    geo[_conv.G_GW] = gw
    geo[_conv.G_PHASE] = gh * gw
    geo[_conv.G_DIRECT] = int(direct)
    geo[_conv.G_LEAD] = lead
    geo[_conv.G_XPOFF] = 0 if inplace else _shift_wsize(g, kg, cg, r * s, mr)
    if qpitch:
        return int(geo[_conv.G_QOFF]) + n * c * r * s * qpitch
    return 0 if direct else n * c * pitch + nr


def _odd_lines(words: int, line: int) -> int:
    """``words`` rounded up to an odd number of cache lines (``line`` words each): the pitch of
    planes that a sliver reads side by side, so that they spread over L1's sets."""
    q = cdiv(words, line) * line
    return q + line if (q // line) % 2 == 0 else q


def _qpitch(ncols: int, nr: int, line: int) -> int:
    """Words from one tap pairs' plane (``_conv._tap_pairs``) to the next: a grid's ``ncols``
    columns in whole slivers, in an odd number of cache lines (as the padded copy's planes)."""
    return _odd_lines(cdiv(ncols, nr) * nr, line)


def _exact_geo(geo, itemsize: int, cfg: Conv2dConfig, tn: int, mr: int, nr: int) -> int:
    """``_shift_geo`` for the exact-column shifted GEMM (``_conv._shift_exact_unit``): B packed
    whole in the packing phase (``_conv._pack_b_exact``) instead of the padded copy; its size."""
    n, c, k, r, s, ho, wo = (int(v) for v in geo[[_conv.G_N, _conv.G_C, _conv.G_K, _conv.G_R,
                                                  _conv.G_S, _conv.G_HO, _conv.G_WO]])
    g = int(geo[_conv.G_G])
    cg, kg = c // g, k // g
    ncols = n * ho * wo
    msl, nsl = cdiv(kg, mr), cdiv(ncols, nr)
    # rows first: B is shared, so neither thread packs it twice, and the rows split evenly
    # where 13 slivers of columns would split 7 / 6
    pm, pn = _shares(g, tn, msl, nsl, SHIFT_ROWS_FIRST and kg > ncols)
    # the weight read where it lies too (EXACT_INPLACE), unless its rows fall into a few L1
    # sets (a multiple of SHIFT_ALIAS_BYTES apart); bfloat16 only for 1x1 layers with Cg even
    # (rows of whole channel-pair words, B as before): the tap pairs' B here read slower than
    # the weight's packing cost (512 ch 3x3 at 7 px, batch 8: 0.90-1.00x at every kc tried)
    pairs = int(geo[_conv.G_PAIRS])
    inplace = (EXACT_INPLACE and (pairs == 0 or (r * s == 1 and pairs % 2 == 0))
               and cg * r * s * itemsize % SHIFT_ALIAS_BYTES != 0)
    geo[_conv.G_AINPL] = _conv.AINPL_ROWS if inplace else 0
    geo[_conv.G_MODE] = _conv.MODE_SHIFT
    geo[_conv.G_PACKB] = 1
    geo[_conv.G_DIRECT] = 0
    geo[_conv.G_KC] = _exact_kc(cg, cfg.kc, r * s, itemsize, nr)
    geo[_conv.G_TAPW] = cg
    geo[_conv.G_NARROW] = int(SHIFT_NARROW_TAIL)
    geo[_conv.G_MC] = _even(cdiv(msl, pm) * mr, cfg.mc, mr)
    geo[_conv.G_NC] = _even(cdiv(nsl, pn) * nr, cfg.nc, nr)
    geo[_conv.G_PM] = pm
    geo[_conv.G_PN] = pn
    geo[_conv.G_XPOFF] = 0 if inplace else _shift_wsize(g, kg, cg, r * s, mr)
    return _exact_b_words(n, c, r, s, ho * wo, nr)


@dataclass(frozen=True)
class _FloatGeometry:
    """What a float32/float64 forward (not depthwise) derives from the shapes, the input's
    strides, the options and the config alone; ``_float_geometry`` keeps it per signature.
    Built per call it took 3.7 us (implicit GEMM) and 7.3 us (shifted GEMM) of a 1 x 8 x 8 x 8
    3x3 conv's 20-26 us launch (Zen 4, docs/performance.md)."""

    mode: int  # _conv.MODE_PK (NHWC), MODE_SHIFT or MODE_KP (NCHW)
    geo: np.ndarray  # the kernel's geometry; shared by the signature's calls: copy to write
    tn: int  # threads
    wsize: int  # MODE_PK: the packed weight (B); MODE_SHIFT: the packed weight (A)
    xp_size: int  # MODE_SHIFT: the padded input copy (0: read in place)


def _knobs() -> tuple:
    """The module's knobs that ``_float_geometry`` reads: part of its key, so that a test or a
    probe that sets one never meets a geometry made under another value."""
    return (SERIAL_WORK, SHIFT_WIDE, SHIFT_MIN_PIXELS, SHIFT_MIN_PLANE, SHIFT_ROWS_FIRST,
            SHIFT_KC, SHIFT_SCRATCH, BCOLS_WASTE, SHARED_PAD, SHIFT_EXACT_WASTE,
            SHIFT_EXACT_MAX_BYTES, SHIFT_INPLACE_SLIVERS, SHIFT_INPLACE_COPY, SHIFT_ALIAS_BYTES,
            SHIFT_NARROW_TAIL, TAP_PAIRS, EXACT_INPLACE, TAP_PAIRS_MAX_BYTES,
            _l1_bytes)


@functools.lru_cache(maxsize=1024)
def _float_geometry(xshape: tuple, xstrides: tuple, dtype, wshape: tuple, stride: tuple,
                    padding: tuple, dilation: tuple, g: int, has_bias: int, act: int,
                    nhwc: bool, cfg: Conv2dConfig, nthr: int, knobs: tuple) -> _FloatGeometry:
    """``xshape``/``xstrides``: the input seen as NCHW (bytes); ``nthr``: the threads a call may
    use (kernel_threads(), which a caller may change between calls); ``knobs``:
    ``_knobs()``, read here through the module as before."""
    n, c, h, w = xshape
    k, cg, r, s = wshape
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    geo = _geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    geo[_conv.G_HAS_BIAS] = has_bias
    geo[_conv.G_ACT] = act
    mr, nr = tile_shape(dtype)
    kg = k // g
    kred = cg * r * s
    hw = ho * wo
    tn = _threads(n * hw * k * kred, nthr)
    geo[_conv.G_KC] = _even(kred, min(cfg.kc, kred), 1)
    if nhwc:  # MODE_PK: Y (N*HoWo x Kg) = im2col rows (packed A) @ W^T (packed B)
        m = n * hw
        msl, nsl = cdiv(m, mr), cdiv(kg, nr)
        pm = 1 if (g % tn == 0) else min(msl, tn)
        pn = 1 if g * pm >= tn else min(nsl, cdiv(tn, g * pm))
        geo[_conv.G_MC] = _even(cdiv(msl, pm) * mr, cfg.mc, mr)
        geo[_conv.G_NC] = _even(cdiv(nsl, pn) * nr, cfg.nc, nr)
        geo[_conv.G_PM] = pm
        geo[_conv.G_PN] = pn
        geo[_conv.G_MODE] = _conv.MODE_PK
        return _FloatGeometry(_conv.MODE_PK, geo, tn, g * nsl * nr * kred, 0)
    if _shifted(cfg, n, ho, wo, r * s):  # MODE_SHIFT
        xp_size = _shift_geo(geo, _in_place(xshape, xstrides, dtype.itemsize, stride, padding),
                             dtype.itemsize, cfg, tn, padding, mr, nr)
        wsize = 0 if geo[_conv.G_AINPL] else _shift_wsize(g, kg, cg, r * s, mr)
        return _FloatGeometry(_conv.MODE_SHIFT, geo, tn, wsize, xp_size)
    # MODE_KP: Y_n (Kg x HoWo) = W (read in place) @ im2col panels (packed B)
    # Small planes whose last sliver per image is mostly empty: the columns run over all
    # images instead (units are then groups, not (image, group) pairs)
    bcols = n > 1 and cdiv(hw, nr) * nr > BCOLS_WASTE * hw
    base = g if bcols else n * g
    msl, nsl = cdiv(kg, mr), cdiv(n * hw if bcols else hw, nr)
    # more weight rows than output pixels: threads split the weight's rows
    pm, pn = _shares(base, tn, msl, nsl, kg > hw)
    geo[_conv.G_BCOLS] = int(bcols)
    geo[_conv.G_MC] = _even(cdiv(msl, pm) * mr, cfg.mc, mr)
    geo[_conv.G_NC] = _even(cdiv(nsl, pn) * nr, cfg.nc, nr)
    geo[_conv.G_PM] = pm
    geo[_conv.G_PN] = pn
    sx = [st // dtype.itemsize for st in xstrides]
    # (no padding on any side: a 1x1 conv padded only below or right reads its plain plane of
    # Ho x Wo pixels past the H x W it has, garbage or a segfault)
    geo[_conv.G_PLAIN] = int(r == 1 and s == 1 and stride[0] == 1 and stride[1] == 1
                             and not any(padding)
                             and (ho == 1 or sx[2] == wo * sx[3]))
    return _FloatGeometry(_conv.MODE_KP, geo, tn, 0, 0)


# ----------------------------------------------------------------------------------------- forward

def useful_stride(stride, hw, rs, padding, dilation) -> tuple[int, int]:
    """`stride`, each side at most the padded input's span of window starts: beyond it the
    output has one row (column) whatever the stride, which then only sized the stride-phase
    scratch, by stride squared (2**16 on a 7 x 7 image: a 48 GiB MemoryError; torch computes
    it). The result is the same; so are both gradients (one window either way)."""
    (sh, sw), (h, w), (r, s) = stride, hw, rs
    top, bottom, left, right = padding
    span_h = h + top + bottom - dilation[0] * (r - 1)
    span_w = w + left + right - dilation[1] * (s - 1)
    return min(int(sh), max(span_h, 1)), min(int(sw), max(span_w, 1))


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                   config: Conv2dConfig | None = None, allow_tf32: bool = False) -> np.ndarray:
    """act(conv2d(x, weight) + bias) with torch's semantics; a new array in x's layout.

    x: (N, C, H, W) ("NCHW") or (N, H, W, C) ("NHWC"), float32/float64, any strides; float16
    and bfloat16 computed in float32 (``_half``), except NCHW bfloat16 on a CPU with AVX-512
    BF16, which runs the shifted GEMM on bfloat16 pairs (``bf16_shift``). weight:
    (K, C // groups, R, S); bias: (K,) or None. stride, dilation: pairs; padding: (top, bottom,
    left, right).
    """
    stride = useful_stride(stride, nchw_shape(x.shape, layout)[2:], weight.shape[2:], padding,
                           dilation)
    if x.dtype.char == "H" and amx_cols(weight, groups, layout, config):
        return _conv_amx_cols(x, weight, bias, stride, padding, dilation, activation)
    if x.dtype.char == "H" and amx_conv(x, weight, stride, groups, layout, config):
        return _conv_amx(x, weight, bias, stride, padding, dilation, activation)
    if x.dtype.char == "H" and bf16_shift(x, weight, groups, layout, config):
        return _conv_pairs(x, weight, bias, stride, padding, dilation, groups, activation, config)
    return _conv_float(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                       config)


def bf16_shift(x, weight, groups, layout: str, config: Conv2dConfig | None) -> bool:
    """Whether a bfloat16 forward runs as the shifted GEMM on channel pairs through VDPBF16PS
    (the CPU has AVX-512 BF16, NCHW, not depthwise, the implicit GEMM not asked for)."""
    k, cg, r, s = weight.shape
    return (_gemm.HAS_BF16_DOT and layout == "NCHW" and cg * r * s > 0
            and not (int(groups) == x.shape[1] and cg == 1 and groups > 1)
            and (config is None or config.kernel != "gemm"))


def amx_conv(x, weight, stride, groups, layout: str, config: Conv2dConfig | None) -> bool:
    """Whether a bfloat16 forward runs as the shifted GEMM on AMX tiles (an amx config, the CPU
    has AMX-BF16, NCHW, one group, the same stride both ways); an amx config elsewhere runs as
    "auto"."""
    st = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    return (config is not None and config.kernel == "amx" and layout == "NCHW"
            and st[0] == st[1] >= 1 and int(groups) == 1 and weight.size > 0
            and _amx.available())


def _conv_amx(x, weight, bias, stride, padding, dilation, activation) -> np.ndarray:
    """act(conv2d(x, weight) + bias), one group, a square stride, for NCHW bfloat16 bits
    (uint16): bfloat16 bits (N, K, Ho, Wo), rounded once from float32 sums, through
    ``_amx.conv_product`` (the shifted GEMM on AMX tiles, on the stride phases of the padded
    input).

    Two launches: the images' channel pairs packed as zero-padded planes, then the products
    and the epilogue, split by (image, 32-pixel block) of the output grid."""
    st = int(stride[0]) if isinstance(stride, (tuple, list)) else int(stride)
    geo = _amx_conv_geometry(x.shape, weight.shape, st, tuple(padding), tuple(dilation))
    n, k = x.shape[0], weight.shape[0]
    out = empty_bits16((n, k, geo.ho, geo.wo))
    if out.size == 0:
        return out
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else _NO_BIAS
    tn = _threads(geo.work)
    ws = _scratch(4 * geo.xsize + 4 * geo.osize + 2 * 64, np.uint8)
    xq = ws[:4 * geo.xsize].view(np.uint32)
    o = -(-4 * geo.xsize // 64) * 64
    outp = ws[o:o + 4 * geo.osize].view(np.float32)
    pack_weight, pack_planes, product = _amx_conv_compiled()
    # the packed weight: kept across calls for a torch weight under frozen_weights() (_packs)
    ap, packed, keep = _kept_pack(weight, geo.asize, np.uint16, ("amx",)) or (
        aligned_empty(geo.asize, np.uint16), False, None)
    if not packed:
        _run(pack_weight, tn if geo.asize >= SERIAL_PACK else 1,
             np.ascontiguousarray(weight).reshape(-1), k, x.shape[1], geo.taps, ap, geo.rows)
        if keep is not None:
            keep()
    top, _, left, _ = padding
    _run(pack_planes, tn, x, xq, geo.cqp, st, geo.plane, geo.wp, top, left)
    _run(product, tn, ap, geo.rows, geo.cqp, geo.shifts, xq, geo.image, geo.plane, outp,
         geo.ncols, out, bias, has_bias, ACT_CODES[activation], geo.wp)
    return out


_NO_BIAS = np.zeros(0, np.float32)
_NO_BIAS.flags.writeable = False


@dataclass(frozen=True)
class _AmxConvGeometry:
    """What ``_conv_amx`` derives from the shapes and the geometry alone (``_amx_conv_geometry``
    keeps it per signature: building it took 9.7 us a call on the Xeon of docs/performance.md,
    the lookup 0.13 us)."""

    ho: int
    wo: int
    wp: int  # a stride phase's grid width
    cqp: int  # channel pairs, a multiple of a tile's 16 rows
    rows: int  # output channels rounded up to two tiles
    ncols: int  # a plane's output columns, whole 32-column blocks
    plane: int  # a padded plane's pitch, in channel pairs
    taps: int
    shifts: np.ndarray  # per tap: its phase's plane offset plus its shift inside the plane
    image: int  # one image's packed planes, in uint32 pairs
    asize: int  # the packed weight, in uint16
    xsize: int  # all images' packed planes, in uint32
    osize: int  # the float32 sums
    work: int  # multiply-adds / 8, for the thread count


@functools.lru_cache(maxsize=512)
def _amx_conv_geometry(xshape: tuple, wshape: tuple, st: int, padding: tuple,
                       dilation: tuple) -> _AmxConvGeometry:
    n, c, h, w = xshape
    k, _, r, s = wshape
    top, bottom, left, right = padding
    dh, dw = dilation
    ho, wo = out_size(h, w, r, s, (st, st), padding, dilation)
    hp, wp = cdiv(h + top + bottom, st), cdiv(w + left + right, st)
    cqp = cdiv(c, 32) * 16
    rows = cdiv(k, 32) * 32
    ncols = cdiv(ho * wp, 32) * 32
    inner = [(i * dh // st) * wp + j * dw // st for i in range(r) for j in range(s)]
    plane = cdiv(max(hp * wp, ncols + max(inner)), 16) * 16
    shifts = np.array([((i * dh % st) * st + j * dw % st) * cqp * plane + inner[i * s + j]
                       for i in range(r) for j in range(s)], np.int64)
    shifts.flags.writeable = False  # shared by every call of this signature
    image = st * st * cqp * plane
    return _AmxConvGeometry(ho, wo, wp, cqp, rows, ncols, plane, r * s, shifts, image,
                            r * s * rows * 2 * cqp, n * image, n * rows * ncols,
                            n * ho * wo * k * c * r * s // 8)


def amx_cols(weight, groups, layout: str, config: Conv2dConfig | None) -> bool:
    """Whether a bfloat16 forward runs as the image's columns by the weight read in place on AMX
    tiles (an amx_cols config, the CPU has AMX-BF16, NCHW, one group); an amx_cols config
    elsewhere runs as "auto"."""
    return (config is not None and config.kernel == "amx_cols" and layout == "NCHW"
            and int(groups) == 1 and weight.size > 0 and _amx.available())


def _conv_amx_cols(x, weight, bias, stride, padding, dilation, activation) -> np.ndarray:
    """act(conv2d(x, weight) + bias), one group, for NCHW bfloat16 bits (uint16): bfloat16 bits
    (N, K, Ho, Wo), as the GEMM of the (K, C*R*S) weight by the images' columns on AMX tiles
    (``_amx.cols_conv_part``; float32 sums, rounded once in its epilogue).

    The weight is read in place where its rows are whole tiles (C*R*S and K multiples of 32),
    else packed (``pack_a``). Two launches: the columns packed as K-pair slivers, then the
    products and the epilogue, split by (32 output channels, column chunk)."""
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    sh, sw = (int(v) for v in stride)
    top, bottom, left, right = padding
    dh, dw = dilation
    ho, wo = out_size(h, w, r, s, (sh, sw), padding, dilation)
    out = empty_bits16((n, k, ho, wo))
    if out.size == 0:
        return out
    kall = c * r * s
    kp = cdiv(kall, 32) * 16  # K pairs, whole tiles
    ncols = cdiv(n * ho * wo, 32) * 32
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else np.zeros(0, np.float32)
    _, pack_cols, product = _amx_cols_compiled()
    ap, lda, a_strip, a_kstep, chunk, share, bsize = _amx_cols_operand(
        np.ascontiguousarray(weight).reshape(-1), k, kall, kp, ncols, aligned_empty)
    tn = _threads(n * ho * wo * k * kall // 8)
    ws = _scratch(bsize + tn * share, np.uint8)
    bq = ws[:4 * kp * ncols].view(np.uint32)
    claims = np.zeros(2, np.int64)  # the next unit of each launch (claimed, not fixed shares)
    _run(pack_cols, tn, x, bq, kp, ncols, r, s, sh, sw, top, bottom, left, right, dh, dw, ho, wo,
         claims[:1])
    _run(product, tn, ap, lda, a_strip, a_kstep, kp // 16, bq, ncols, chunk,
         AMX_COLS_BY_CHUNK and ncols > k, ws[bsize:], share, out, bias, has_bias,
         ACT_CODES[activation], claims[1:])
    return out


@functools.lru_cache(maxsize=1024)
def _pairs_geometry(xshape: tuple, wshape: tuple, stride: tuple, padding: tuple,
                    dilation: tuple, g: int, has_bias: int, act: int, cfg: Conv2dConfig,
                    nthr: int, knobs: tuple) -> _FloatGeometry:
    """``_conv_pairs``'s geometry (MODE_SHIFT on channel pairs), memoised as ``_float_geometry``
    is (its geo read only; ``knobs``: ``_knobs()``): built per call it took 10.5 of the 18 us
    ``_conv_pairs`` spent around its launch (512 channels at 7 px, Zen 4)."""
    n, c, h, w = xshape
    k, cg, r, s = wshape
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    cq = (cg + 1) // 2  # channel pairs per group
    geo = _geo(n, g * cq, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    geo[_conv.G_HAS_BIAS] = has_bias
    geo[_conv.G_ACT] = act
    geo[_conv.G_PAIRS] = cg
    mr, nr = tile_shape(np.float32)
    tn = _threads(n * ho * wo * k * cg * r * s // 2, nthr)
    xp_size = _shift_geo(geo, False, 4, cfg, tn, padding, mr, nr)
    geo.flags.writeable = False
    wsize = 0 if geo[_conv.G_AINPL] else _shift_wsize(g, k // g, cq, r * s, mr)
    return _FloatGeometry(_conv.MODE_SHIFT, geo, tn, wsize, xp_size)


# The operand slot (``_workspace.operand``) of ``_conv_pairs``' float32 sums: apart from the
# slots ``_half.in_float32`` widens a call's arguments into (0, 1, 2, ...)
_PAIRS_SUMS_SLOT = 64
# The bfloat16 conv rounds its sums to bfloat16 inside the launch, block by block, into the
# output (the sums in a kept buffer); a switch for probes: False makes a new float32 output and
# rounds it with ``_half.narrow`` after the launch, as before
PAIRS_ROUND_IN_LAUNCH = True
_NO_BITS = np.empty(0, np.uint16)


def _conv_pairs(x, weight, bias, stride, padding, dilation, groups, activation,
                config: Conv2dConfig | None) -> np.ndarray:
    """act(conv2d(x, weight) + bias) for NCHW bfloat16 bits (uint16): bfloat16 bits (N, K, Ho,
    Wo), each rounded once from its float32 sum inside the launch (the float32 sums in a kept
    per-thread buffer, ``_workspace.operand``: before, a new float32 output and a pass of
    ``_half.narrow`` over it after the launch).

    The shifted GEMM with K pairs: the padded copy holds each pair of input channels as one
    uint32 plane, the weight is packed as pairs of channels per tap (an odd channel count gets
    a zero partner), and ``_gemm.ukernel_taps`` multiplies them with VDPBF16PS (float32 sums).
    Where the geometry reads the weight in place (TAP_PAIRS: batch 1 on small planes, Cg even)
    its rows are uint32 words as given, pairs of K neighbours, and B is the planes of the
    input's tap pairs (``_conv._tap_pairs``): nothing is packed but the input.
    """
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    if not PAIRS_ROUND_IN_LAUNCH:  # (the switch's other side: a probe's A/B)
        out = np.empty((n, k, ho, wo), np.float32)
        if out.size:
            _conv_pairs_into(x, weight, bias, stride, padding, dilation, groups, activation,
                             config, out.reshape(-1), _NO_BITS)
        return _half.narrow(out, "H")
    out16 = empty_bits16((n, k, ho, wo))
    if out16.size:
        _conv_pairs_into(x, weight, bias, stride, padding, dilation, groups, activation, config,
                         _workspace.operand(out16.size, np.float32, _PAIRS_SUMS_SLOT),
                         out16.reshape(-1))
    return out16


def _conv_pairs_into(x, weight, bias, stride, padding, dilation, groups, activation, config,
                     out: np.ndarray, out16: np.ndarray) -> None:
    """``_conv_pairs``' launch: the float32 sums into ``out``, rounded into ``out16`` where it
    is not empty (both flat, (N, K, Ho, Wo) in order)."""
    g = int(groups)
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else np.zeros(0, np.float32)
    (x,) = _aligned(x)
    pg = _pairs_geometry(x.shape, weight.shape, tuple(stride), tuple(padding), tuple(dilation),
                         g, int(has_bias), ACT_CODES[activation], config or _default(np.float32),
                         kernel_threads(), _knobs())
    tn, xp_size, wsize = pg.tn, pg.xp_size, pg.wsize
    if wsize == 0:  # the weight's rows read where they lie, as uint32 words (4-byte aligned)
        geo, wsrc, keep = pg.geo, _writable(weight).reshape(-1), None
        if wsrc.ctypes.data % 4:
            wsrc = aligned_empty(wsrc.size, np.uint16)
            wsrc[:] = weight.reshape(-1)
        wpack = xpb = _scratch(xp_size, np.uint32)
        pack_tn = _pack_threads(tn, True, 0, xp_size)
    else:
        geo = pg.geo.copy()  # _shift_buffers notes the kept pack in it
        wpack, xpb, kept, keep = _shift_buffers(weight, wsize, xp_size, np.uint32, geo)
        wsrc = np.zeros(0, np.uint16) if kept else _writable(weight).reshape(-1)
        pack_tn = _pack_threads(tn, kept, wsize, xp_size)
    _launch(_pairs_compiled(), tn, pack_tn, x, wsrc, wpack, xpb, bias, out, out16, geo)
    if keep is not None:
        keep()


@_half.in_float32
def _conv_float(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                config: Conv2dConfig | None = None) -> np.ndarray:
    """conv2d_forward in float32 or float64 (half precision widened by the decorator)."""
    dtype = x.dtype
    # (checks, not asserts: `python -O` drops asserts, and the kernel would read out of bounds)
    if not (dtype.char in "fd" and weight.dtype == dtype and x.ndim == 4 and weight.ndim == 4):
        raise ValueError(f"conv2d (numba): x and weight must be 4-D float32/float64 arrays of "
                         f"one dtype, got {x.shape} {x.dtype} and {weight.shape} {weight.dtype}")
    nhwc = layout == "NHWC"
    xv = x.transpose(0, 3, 1, 2) if nhwc else x
    n, c, h, w = xv.shape
    k, cg, r, s = weight.shape
    g = int(groups)
    if c != cg * g or k % g:
        raise ValueError(f"conv2d (numba): weight {weight.shape} with groups={g} does not fit "
                         f"{c} input channels")
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    shape = (n, ho, wo, k) if nhwc else (n, k, ho, wo)
    # 64-byte aligned, as torch's own allocations: torch's batch norm after a Numba conv in
    # MobileNetV2 took 13% longer on numpy's 16-byte aligned outputs (one profile, batch 1)
    out = aligned_empty(math.prod(shape), dtype).reshape(shape)
    if out.size == 0:
        return out
    act = ACT_CODES[activation]
    if cg * r * s == 0:  # empty reduction: act(bias), through the GEMM's own epilogue (K = 0)
        y = _matmul_forward(np.empty((1, n * ho * wo, 0), dtype), np.empty((1, 0, k), dtype),
                            bias, activation).reshape(n, ho, wo, k)
        out[...] = y if nhwc else y.transpose(0, 3, 1, 2)
        return out
    fns = _COMPILED.get(dtype) or _compiled(dtype)
    if bias is None:
        has_bias, bias = 0, fns.empty
    else:
        if bias.shape != (k,) or bias.dtype != dtype:
            raise ValueError(f"conv2d (numba): bias must be ({k},) {dtype}, got {bias.shape} "
                             f"{bias.dtype}")
        has_bias = 1
    xv, bias = _aligned(xv, bias)
    out1 = out.reshape(-1)

    if g == c and g > 1 and cg == 1 and _finite(fns, weight):
        # depthwise: direct loops
        work = n * k * ho * wo * r * s
        if nhwc:
            w1 = np.ascontiguousarray(weight.reshape(k, r * s).T).reshape(-1)
        else:
            w1 = _writable(weight).reshape(-1)
        geo = _dw_geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g, has_bias, act,
                      int(nhwc))
        _run(fns.dw, _dw_threads(work, n * c * h * w), xv, w1, bias, out1, geo)
        return out

    if not nhwc and g == 1 and dtype == np.float32 and _rows_chosen(config, weight, r, s, ho,
                                                                    wo, stride):
        _conv_rows(xv, weight, bias, has_bias, act, stride, padding, dilation, out1)
        return out
    fg = _float_geometry(xv.shape, xv.strides, dtype, weight.shape, tuple(stride),
                         tuple(padding), tuple(dilation), g, has_bias, act, nhwc,
                         config or _default(dtype), kernel_threads(), _knobs())
    tn = fg.tn
    if fg.mode == _conv.MODE_PK:
        # weight as (K, R, S, Cg): reduction order (r, s, c)
        wsrc = _writable(weight.transpose(0, 2, 3, 1)).reshape(-1)
        wpack = xpb = _scratch(fg.wsize, dtype)
        geo, pack_tn, keep = fg.geo, _pack_threads(tn, False, fg.wsize, 0), None
    elif fg.mode == _conv.MODE_SHIFT and fg.wsize == 0:  # the weight read where it lies
        geo, wsrc = fg.geo, _writable(weight).reshape(-1)
        wpack = xpb = _scratch(fg.xp_size, dtype)
        pack_tn, keep = _pack_threads(tn, True, 0, fg.xp_size), None
    elif fg.mode == _conv.MODE_SHIFT:
        geo = fg.geo.copy()  # _shift_buffers notes the kept pack in it
        wpack, xpb, kept, keep = _shift_buffers(weight, fg.wsize, fg.xp_size, dtype, geo)
        # packed tap-major from (K, Cg, R, S), unless kept packed
        wsrc = fns.empty if kept else _writable(weight).reshape(-1)
        pack_tn = _pack_threads(tn, kept, fg.wsize, fg.xp_size)
    else:
        # MODE_KP: the weight's rows are the GEMM's A rows, read where they lie: nothing to pack
        _run(fns.fwd, tn, 1, xv, _writable(weight).reshape(-1), fns.empty, fns.empty, bias,
             out1, fg.geo, _NO_SYNC)
        return out
    _launch(fns.fwd, tn, pack_tn, xv, wsrc, wpack, xpb, bias, out1, geo)
    if keep is not None:
        keep()
    return out


def _rows_chosen(config: Conv2dConfig | None, weight: np.ndarray, r: int, s: int, ho: int,
                 wo: int, stride) -> bool:
    """Whether a float32 NCHW one-group forward runs as the pixel-rows conv: asked for
    ("rows"), or config kernel "auto" and ``_rows_by_default``."""
    kernel = "auto" if config is None else config.kernel
    if kernel == "rows":
        return True
    if kernel != "auto":
        return False
    # (the shape first: the weight's owner is looked up only where it would matter)
    return (_rows_shape(r * s, ho, wo, stride) and KEEP_PACKS
            and _packs.owner(weight) is not None)


@functools.lru_cache(maxsize=256)
def _rows_offsets(n: int, c: int, plane: int, ho: int, wo: int, wp: int, sh: int, sw: int,
                  r: int, s: int, dh: int, dw: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel-rows conv's row offsets (each output pixel's first tap in the padded copy,
    planes ``plane`` apart; offset 0 past the last pixel, to whole tiles of MR) and tap
    offsets, read-only: kept per geometry, since a layer calls with the same one every time
    (building them took numpy calls on each)."""
    npix = n * ho * wo
    q = np.arange(cdiv(npix, _rows.MR) * _rows.MR, dtype=np.int64)
    img, pix = np.divmod(q, ho * wo)
    oh, ow = np.divmod(pix, wo)
    roffs = np.where(q < npix, img * (c * plane) + oh * (sh * wp) + ow * sw, 0)
    toffs = np.array([i * dh * wp + j * dw for i in range(r) for j in range(s)], np.int64)
    roffs.flags.writeable = toffs.flags.writeable = False
    return roffs, toffs


def _conv_rows(x, weight, bias, has_bias: int, act: int, stride, padding, dilation,
               out1: np.ndarray) -> None:
    """act(conv2d(x, weight) + bias) into ``out1`` (N, K, Ho, Wo flat), one group, float32
    NCHW, by the pixel-rows conv (``_rows``): a zero-padded copy of x, then the product, whose
    shares pack each output-channel sliver of the weight as they come to it (a torch weight
    under ``frozen_weights()``: all of it packed once and kept)."""
    pack_weight, pad_input, conv_part = _rows_compiled()
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    top, bottom, left, right = (int(v) for v in padding)
    sh, sw = int(stride[0]), int(stride[1])
    dh, dw = int(dilation[0]), int(dilation[1])
    hp, wp = h + top + bottom, w + left + right
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    mr, nr = _rows.MR, _rows.NR
    nkb = cdiv(k, nr)
    tn = _threads(n * k * ho * wo * c * r * s)
    # the weight packed as slivers: all of it, kept across calls for a torch weight under
    # frozen_weights(); else each share packs a sliver at a time (in its part of the scratch)
    sliver = r * s * c * nr
    kept = _kept_pack(weight, nkb * sliver, np.float32, ("rows", nr))
    if kept is not None and not kept[1]:
        _run(pack_weight, tn if nkb * sliver >= SERIAL_PACK else 1, weight, kept[0])
        kept[2]()
    plane = hp * wp
    roffs, toffs = _rows_offsets(n, c, plane, ho, wo, wp, sh, sw, r, s, dh, dw)
    kc = max(1, min(c, _cache_sizes()[2] // ROWS_L2_SHARE // (r * s * nr * 4)))
    kc = cdiv(c, cdiv(c, kc))  # even blocks
    tb = ROWS_TILES
    xp_size, cs_size = n * c * plane, tn * tb * mr * nr
    ws = _scratch(xp_size + cs_size + (0 if kept else tn * sliver), np.float32)
    xp, cs = ws[:xp_size], ws[xp_size:xp_size + cs_size]
    wp_buf = kept[0] if kept else ws[xp_size + cs_size:]
    _run(pad_input, tn if xp_size >= SERIAL_PACK else 1, x, xp, hp, wp, top, left)
    if bias is None or not has_bias:
        bias = _NO_BIAS
    _run(conv_part, tn, xp, weight, wp_buf, int(kept is not None), roffs, toffs, plane,
         ho * wo, kc, tb, cs, bias, has_bias, act, out1)


# ---------------------------------------------------------------------------------------- backward

def _dw3_stride(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, groups) -> int:
    """1 or 2 for a depthwise 3x3 conv, pad 1 on every side, dilation 1, stride 1 or 2 (the
    backward ops' vector-block paths), else 0."""
    st = tuple(stride)
    if not (groups == c == k and c > 1 and r == s == 3 and st in ((1, 1), (2, 2))
            and tuple(padding) == (1, 1, 1, 1) and tuple(dilation) == (1, 1)
            and n > 0 and h * w > 0):
        return 0
    return st[0] if (ho, wo) == ((h - 1) // st[0] + 1, (w - 1) // st[0] + 1) else 0


def _spread(dy: np.ndarray, h: int, w: int, nhwc: bool) -> np.ndarray:
    """A stride-2 conv's output gradient placed at the even rows and columns of an h x w plane,
    zeros between (valid until this thread's next scratch call): a stride-2 depthwise 3x3's dx
    and dW are the stride-1 ones of this (dx[i] = sum over r of w[r] * dy_spread[i + 1 - r];
    dW[r] = sum over i of dy_spread[i] * x[i + r - 1])."""
    n, c = dy.shape[0], dy.shape[3 if nhwc else 1]
    shape = (n, h, w, c) if nhwc else (n, c, h, w)
    # in this thread's scratch (its caller's kernels take none): a new array of the input's
    # size per call page-faulted (dx of 144 ch 56 px at batch 1: 1.2 ms against 0.16 in a loop)
    out = _scratch(math.prod(shape), dy.dtype).reshape(shape)
    out[...] = 0
    if nhwc:
        out[:, ::2, ::2, :] = dy
    else:
        out[:, :, ::2, ::2] = dy
    return out


@_half.in_float32
def conv2d_backward_input(grad_out, weight, input_hw, stride, padding, dilation, groups, layout,
                          config: Conv2dConfig | None = None, allow_tf32: bool = False) -> np.ndarray:
    """dL/dx of the plain conv (no bias/activation): a new array in grad_out's layout with spatial
    size ``input_hw``."""
    stride = useful_stride(stride, input_hw, weight.shape[2:], padding, dilation)
    dtype = grad_out.dtype
    assert dtype.char in "fd" and weight.dtype == dtype
    nhwc = layout == "NHWC"
    dy = np.ascontiguousarray(grad_out)
    dyv = dy.transpose(0, 3, 1, 2) if nhwc else dy
    n, k, ho, wo = dyv.shape
    _, cg, r, s = weight.shape
    g = int(groups)
    c = cg * g
    h, w = int(input_hw[0]), int(input_hw[1])
    dw_stride = _dw3_stride(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    if dw_stride and _finite(_compiled(dtype), weight):
        # depthwise 3x3, pad 1: dx is the stride-1 conv of dy (stride 2: spread out) with the
        # kernel turned by 180 degrees (the forward's vector blocks)
        src = dy if dw_stride == 1 else _spread(dy, h, w, nhwc)
        return _conv_float(src, np.ascontiguousarray(weight[:, :, ::-1, ::-1]), None,
                           (1, 1), (1, 1, 1, 1), (1, 1), g, None, layout, None)
    dx = np.zeros((n, h, w, c) if nhwc else (n, c, h, w), dtype)
    if dx.size == 0 or k == 0 or ho * wo == 0:
        return dx
    fns = _COMPILED.get(dtype) or _compiled(dtype)
    cfg = config or _default(dtype)
    mr, nr = tile_shape(dtype)
    kg = k // g
    kred = cg * r * s
    tn = _threads(n * ho * wo * k * kred)
    geo = _geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    geo[_conv.G_PM] = _parts(n * g, tn, cg)
    geo[_conv.G_MC] = _even(kred, cfg.mc, mr)
    geo[_conv.G_KC] = _even(kg, cfg.kc, 1)
    geo[_conv.G_NC] = _even(ho * wo, min(cfg.nc, 1024), nr)
    dxv = dx.transpose(0, 3, 1, 2) if nhwc else dx
    geo[_conv.G_OSN:_conv.G_OSW + 1] = [st // dx.itemsize for st in dxv.strides]
    wsrc = _writable(weight).reshape(-1)
    (dyv,) = _aligned(dyv)
    _run(fns.bwd, tn, dyv, dyv, wsrc, fns.empty, dx.reshape(-1), geo)
    return dx


@_half.in_float32
def conv2d_backward_weight(x, grad_out, kernel_hw, stride, padding, dilation, groups, layout,
                           config: Conv2dConfig | None = None, allow_tf32: bool = False) -> np.ndarray:
    """dL/dweight of the plain conv: a new (K, C // groups, R, S) array."""
    stride = useful_stride(stride, nchw_shape(x.shape, layout)[2:], kernel_hw, padding, dilation)
    dtype = x.dtype
    assert dtype.char in "fd" and grad_out.dtype == dtype
    nhwc = layout == "NHWC"
    xv = x.transpose(0, 3, 1, 2) if nhwc else x
    dy = np.ascontiguousarray(grad_out)
    dyv = dy.transpose(0, 3, 1, 2) if nhwc else dy
    n, c, h, w = xv.shape
    _, k, ho, wo = dyv.shape
    r, s = int(kernel_hw[0]), int(kernel_hw[1])
    g = int(groups)
    cg = c // g
    dw = np.zeros((k, cg, r, s), dtype)
    if dw.size == 0 or n == 0 or ho * wo == 0:
        return dw
    fns = _COMPILED.get(dtype) or _compiled(dtype)
    dw_stride = _dw3_stride(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    if not nhwc and dw_stride and xv.strides[3] == x.itemsize and xv.strides[2] == w * x.itemsize:
        # (stride 2: the stride-1 dW of the spread-out dy)
        src = dyv if dw_stride == 1 else _spread(dyv, h, w, False)
        geo = _geo(n, c, h, w, k, r, s, h, w, (1, 1), padding, dilation, g)
        (xv,) = _aligned(xv)
        _run(fns.dw_wgrad, _dw_threads(n * k * h * w * 9, n * c * h * w), xv, src,
             dw.reshape(-1), geo)
        if dw_stride == 2:
            _redo_non_finite_channels(fns, dw, xv, dyv, stride, padding, dilation, config)
        return dw
    _wgrad_gemm(fns, xv, dyv, dw, stride, padding, dilation, g, config)
    return dw


def _redo_non_finite_channels(fns, dw, xv, dyv, stride, padding, dilation, config) -> None:
    """A stride-2 depthwise dW through the spread-out dy multiplies its zeros with every input
    element, so a NaN or Inf in x reached all nine taps of its channel, where torch's reaches
    the taps that read it. Those channels (non-finite in `dw`, K x 9 values to check, not the
    whole input) are computed again by the general kernel; the others keep their values."""
    bad = np.flatnonzero(~np.isfinite(dw.reshape(dw.shape[0], -1)).all(axis=1))
    if bad.size:
        part = np.zeros((bad.size, *dw.shape[1:]), dw.dtype)
        _wgrad_gemm(fns, np.ascontiguousarray(xv[:, bad]), np.ascontiguousarray(dyv[:, bad]),
                    part, stride, padding, dilation, int(bad.size), config)
        dw[bad] = part


def _wgrad_gemm(fns, xv, dyv, dw, stride, padding, dilation, g, config) -> None:
    """The general weight gradient into the zeroed `dw`: x and dy as NCHW views."""
    n, c, h, w = xv.shape
    _, k, ho, wo = dyv.shape
    _, cg, r, s = dw.shape
    cfg = config or _default(dw.dtype)
    mr, nr = tile_shape(dw.dtype)
    kg = k // g
    kred = cg * r * s
    tn = _threads(n * ho * wo * k * kred)
    geo = _geo(n, c, h, w, k, r, s, ho, wo, stride, padding, dilation, g)
    nsl = cdiv(kred, nr)
    pn = _parts(g, tn, nsl)
    geo[_conv.G_PN] = pn
    geo[_conv.G_MC] = _even(kg, cfg.mc, mr)
    geo[_conv.G_KC] = _even(ho * wo, cfg.kc, 1)
    geo[_conv.G_NC] = _even(cdiv(nsl, pn) * nr, min(cfg.nc, 512), nr)
    xv, dyv = _aligned(xv, dyv)
    geo[_conv.G_MODE] = 1
    _run(fns.bwd, tn, xv, dyv, fns.empty, fns.empty, dw.reshape(-1), geo)
