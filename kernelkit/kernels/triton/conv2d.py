"""Triton conv2d: forward (fused bias + activation), backward input and backward weight.

All kernels take x / grad_out / weight with any element strides, passed as (n, c, h, w) and
(k, c, r, s) strides, so NHWC ("channels last", the layout the kernels are laid out for: the
channel axis is the GEMM reduction axis and is contiguous) and NCHW are both handled without a copy.
Padding is (top, bottom, left, right); groups divide C and K.

Three kernel families, picked by the launcher from the problem's shape (:func:`kernel_kind`):

* **implicit GEMM** (``gemm``), the main path. Forward: M = N*Ho*Wo output pixels, N = K/groups
  output channels, reduction over (r, s, c) with c fastest. One program computes a
  BLOCK_M x BLOCK_N output tile of one group (the group is grid axis 1); tiles are visited in
  GROUP_M super-rows for L2 reuse. The reduction is a single loop over (tap, channel block) steps:
  R and S are constexprs, so the tap (r, s) of a step is a scalar division by constants, the masks
  for padding and the ragged edges are per row, and Triton software-pipelines the loads across
  taps (a loop nest with a static_range over R x S outside and a channel loop inside would restart
  the pipeline at every tap, and a 3x3 layer with C/groups == BLOCK_K has one step per tap).
  When C/groups is smaller than BLOCK_K (the RGB stem), ``FLAT_K`` decomposes every reduction
  index into (r, s, c) instead, so the 3-channel 7x7 stem runs 147-long dots, not 49 mostly-empty
  ones. Backward input is the same GEMM over grad_out with the flipped kernel: for input pixel
  (ih, iw) and tap (r, s), the output pixel is ((ih + top - r*dh) / sh, ...) when that division is
  exact and in range, and the row is masked off otherwise (so stride > 1 is correct; a stride-2
  layer spends 3/4 of its dot work on masked rows). Backward weight reduces over N*Ho*Wo:
  M = K/groups, N = (r, s, c), split over ``split_k`` programs that write float32 partial sums
  which are added up afterwards (deterministic, no atomics).
* **direct** (``direct``): depthwise and other few-channels-per-group convolutions, where a
  GEMM's dot would be mostly padding. Each program owns BLOCK_M pixels x BLOCK_N channels (across
  all groups) and accumulates in float32 registers with the R x S taps unrolled
  (``tl.static_range``). Backward weight of this family reduces BLOCK_M pixels at a time and
  sums the tile at the end, also split over programs.

Accumulation is float32 everywhere (``tl.dot`` in fp32 for fp16/bf16 inputs; TF32 only with
``allow_tf32``); the epilogue adds the bias and applies the activation in float32 before one cast.

There is no ``@triton.autotune``: the project's tuner picks a :class:`Conv2dConfig` from
:data:`SHIPPED_CONFIGS` (through :meth:`Conv2dConfig.space`) and passes it in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernelkit.devices import triton_interpret
from kernelkit.kernels import check_activation, check_flag
from kernelkit.kernels.config import next_pow2
from kernelkit.kernels.convgeom import (
    LAYOUTS,  # noqa: F401  (part of this module's interface)
    MAX_GRID_YZ,
    act_shape,
    check_layout,
    geometry,
    kernel_kind,
    nchw_shape,
    pair,
    problem_sizes,
)
from kernelkit.kernels.triton._common import (
    INT32_MAX,
    TileConfig,
    apply_activation,
    check_dtype,
    dot_acc,
    dot_args,
    grouped_tile,
    in_memory,
    max_offset,
    on_its_device,
)

# ---------------------------------------------------------------------------------------------
# Implicit-GEMM kernels


@triton.jit
def _pixel_nhw(offs, HH, WW, INDEX_I64: tl.constexpr):
    """(n, h, w) of flat pixel indices over an HH x WW plane (int64 when INDEX_I64)."""
    w = offs % WW
    h = (offs // WW) % HH
    n = offs // (WW * HH)
    if INDEX_I64:
        n = n.to(tl.int64)
        h = h.to(tl.int64)
        w = w.to(tl.int64)
    return n, h, w


@triton.jit
def conv2d_fwd_kernel(
    # Pointers (bias_ptr is unused unless HAS_BIAS).
    x_ptr, w_ptr, bias_ptr, y_ptr,
    # Sizes: M = N * Ho * Wo; Cg, Kg = channels per group in and out.
    M, H, W, Ho, Wo, Cg, Kg,
    # Strides in elements: x (n, c, h, w), weight (k, c, r, s), bias (k), y (n, k, h, w).
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_bk,
    stride_yn, stride_yk, stride_yh, stride_yw,
    # Convolution geometry.
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    # Meta-parameters.
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLAT_K: tl.constexpr,  # reduction index -> (r, s, c) per element (C/groups < BLOCK_K)
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # "", "relu", "gelu", "gelu_tanh" or "silu"
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32"
    DOT_IN_FP32: tl.constexpr,  # interpreter only: its tl.dot is wrong on bfloat16 operands
    INDEX_I64: tl.constexpr,  # some tensor spans more than 2**31 elements
):
    # -----------------------------------------------------------
    # Program -> (group, output tile) in grouped order.
    pid = tl.program_id(axis=0)
    g = tl.program_id(axis=1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(Kg, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    if INDEX_I64:  # (M may come within a tile of 2**31: pid_m * BLOCK_M must not wrap)
        pid_m = pid_m.to(tl.int64)

    # -----------------------------------------------------------
    # Output pixels of the tile's rows, and the input corner each one reads from.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < Kg
    nb, oh, ow = _pixel_nhw(offs_m, Ho, Wo, INDEX_I64)
    k_out = g * Kg + offs_n
    c_base = g * Cg
    if INDEX_I64:
        k_out = k_out.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        c_base = c_base.to(tl.int64)
    ih0 = oh * STRIDE_H - PAD_T
    iw0 = ow * STRIDE_W - PAD_L
    x_row = x_ptr + nb * stride_xn + c_base * stride_xc  # [BLOCK_M] pointers
    w_col = w_ptr + k_out * stride_wk  # [BLOCK_N] pointers

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        # Reduction index kk = (r * S + s) * Cg + c, decomposed per element.
        k_total = Cg * R * S
        for k0 in range(0, k_total, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < k_total
            c = kk % Cg
            rs = kk // Cg
            r = rs // S
            s = rs % S
            ih = ih0[:, None] + (r * DIL_H)[None, :]
            iw = iw0[:, None] + (s * DIL_W)[None, :]
            a_mask = (m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H)
                      & (iw >= 0) & (iw < W))
            a = tl.load(x_row[:, None] + c[None, :] * stride_xc + ih * stride_xh + iw * stride_xw,
                        mask=a_mask, other=0.0)
            b = tl.load(w_col[None, :] + (c * stride_wc + r * stride_wr + s * stride_ws)[:, None],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = dot_acc(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)
    else:
        # One step per (tap, channel block); the tap is a scalar for the whole step.
        num_cb = tl.cdiv(Cg, BLOCK_K)
        for t in range(0, R * S * num_cb):
            cb = t % num_cb
            rs = t // num_cb
            r = rs // S
            s = rs % S
            c = cb * BLOCK_K + offs_k
            c_ok = c < Cg
            ih = ih0 + r * DIL_H
            iw = iw0 + s * DIL_W
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load((x_row + ih * stride_xh + iw * stride_xw)[:, None] + c[None, :] * stride_xc,
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_col[None, :] + (c * stride_wc)[:, None] + (r * stride_wr + s * stride_ws),
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = dot_acc(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)

    # -----------------------------------------------------------
    # Fused epilogue in float32, one cast, masked store in y's layout.
    if HAS_BIAS:
        bias = tl.load(bias_ptr + k_out * stride_bk, mask=n_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    y_ptrs = (y_ptr + (nb * stride_yn + oh * stride_yh + ow * stride_yw)[:, None]
              + (k_out * stride_yk)[None, :])
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_bwd_input_kernel(
    # Pointers.
    dy_ptr, w_ptr, dx_ptr,
    # Sizes: M = N * H * W input pixels; Cg, Kg = channels per group in and out.
    M, H, W, Ho, Wo, Cg, Kg,
    # Strides in elements: grad_out (n, k, h, w), weight (k, c, r, s), grad_in (n, c, h, w).
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # Convolution geometry (of the forward convolution).
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    # Meta-parameters.
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INDEX_I64: tl.constexpr,
):
    # grad_in[n, c, ih, iw] = sum_{k, r, s} grad_out[n, k, oh, ow] * w[k, c, r, s]
    # with oh = (ih + top - r*dh) / sh exact and in [0, Ho) (same for ow).
    pid = tl.program_id(axis=0)
    g = tl.program_id(axis=1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(Cg, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    if INDEX_I64:  # (M may come within a tile of 2**31: pid_m * BLOCK_M must not wrap)
        pid_m = pid_m.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < Cg
    nb, ih, iw = _pixel_nhw(offs_m, H, W, INDEX_I64)
    c_in = g * Cg + offs_n
    k_base = g * Kg
    if INDEX_I64:
        c_in = c_in.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        k_base = k_base.to(tl.int64)
    th0 = ih + PAD_T
    tw0 = iw + PAD_L
    dy_row = dy_ptr + nb * stride_dyn + k_base * stride_dyk
    w_col = w_ptr + k_base * stride_wk + offs_n * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    num_kb = tl.cdiv(Kg, BLOCK_K)
    for t in range(0, R * S * num_kb):
        kb = t % num_kb
        rs = t // num_kb
        r = rs // S
        s = rs % S
        th = th0 - r * DIL_H
        tw = tw0 - s * DIL_W
        thc = tl.maximum(th, 0)  # // and % on non-negative values only (C and Python differ)
        twc = tl.maximum(tw, 0)
        oh = thc // STRIDE_H
        ow = twc // STRIDE_W
        row_ok = (m_ok & (th >= 0) & (tw >= 0) & (thc - oh * STRIDE_H == 0)
                  & (twc - ow * STRIDE_W == 0) & (oh < Ho) & (ow < Wo))
        kk = kb * BLOCK_K + offs_k
        k_ok = kk < Kg
        a = tl.load((dy_row + oh * stride_dyh + ow * stride_dyw)[:, None] + (kk * stride_dyk)[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_col[None, :] + (kk * stride_wk)[:, None] + (r * stride_wr + s * stride_ws),
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot_acc(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)

    dx_ptrs = (dx_ptr + (nb * stride_dxn + ih * stride_dxh + iw * stride_dxw)[:, None]
               + (c_in * stride_dxc)[None, :])
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_bwd_weight_kernel(
    # Pointers: dw is the float32 partial-sum buffer (split, k, c, r, s) or the final weight grad.
    x_ptr, dy_ptr, dw_ptr,
    # Sizes: P = N * Ho * Wo (the reduction); Cg, Kg = channels per group in and out.
    P, H, W, Ho, Wo, Cg, Kg,
    P_PER_SPLIT,  # reduction length of one split, a multiple of BLOCK_K
    # Strides in elements: x (n, c, h, w), grad_out (n, k, h, w), dw (split, k, c, r, s).
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_dwsplit, stride_dwk, stride_dwc, stride_dwr, stride_dws,
    # Convolution geometry.
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    # Meta-parameters.
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INDEX_I64: tl.constexpr,
):
    # dw[k, c, r, s] = sum_p grad_out[p, k] * x[n(p), c, oh(p)*sh - top + r*dh, ow(p)*sw - left + s*dw]
    # as a GEMM: rows = k (Kg), columns j = (r * S + s) * Cg + c, reduction over p.
    pid = tl.program_id(axis=0)
    g = tl.program_id(axis=1)
    split = tl.program_id(axis=2)
    n_cols = Cg * R * S
    num_pid_m = tl.cdiv(Kg, BLOCK_M)
    num_pid_n = tl.cdiv(n_cols, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # k within the group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # j = (r, s, c)
    offs_k = tl.arange(0, BLOCK_K)  # p within the step
    m_ok = offs_m < Kg
    n_ok = offs_n < n_cols
    c = offs_n % Cg
    rs = offs_n // Cg
    r = rs // S
    s = rs % S
    k_out = g * Kg + offs_m
    c_in = g * Cg + c
    if INDEX_I64:
        k_out = k_out.to(tl.int64)
        c_in = c_in.to(tl.int64)
        split = split.to(tl.int64)
    col_dh = r * DIL_H - PAD_T
    col_dw = s * DIL_W - PAD_L
    x_col = x_ptr + c_in * stride_xc  # [BLOCK_N] pointers
    dy_col = dy_ptr + k_out * stride_dyk  # [BLOCK_M] pointers

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    p_start = split * P_PER_SPLIT
    p_stop = min(P, p_start + P_PER_SPLIT)
    for p0 in range(p_start, p_stop, BLOCK_K):
        p = p0 + offs_k
        p_ok = p < p_stop
        nb, oh, ow = _pixel_nhw(p, Ho, Wo, INDEX_I64)
        # A = grad_out^T: [BLOCK_M (k), BLOCK_K (p)].
        a = tl.load(dy_col[:, None] + (nb * stride_dyn + oh * stride_dyh + ow * stride_dyw)[None, :],
                    mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        # B = im2col(x): [BLOCK_K (p), BLOCK_N (j)].
        ih = (oh * STRIDE_H)[:, None] + col_dh[None, :]
        iw = (ow * STRIDE_W)[:, None] + col_dw[None, :]
        b_mask = p_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b = tl.load(x_col[None, :] + (nb * stride_xn)[:, None] + ih * stride_xh + iw * stride_xw,
                    mask=b_mask, other=0.0)
        acc = dot_acc(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)

    dw_ptrs = (dw_ptr + split * stride_dwsplit + (k_out * stride_dwk)[:, None]
               + (c * stride_dwc + r * stride_dwr + s * stride_dws)[None, :])
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Direct kernels (depthwise and few channels per group)


@triton.jit
def conv2d_fwd_direct_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    # Sizes: M = N * Ho * Wo; K = all output channels; Cg, Kg = channels per group in and out.
    M, H, W, Ho, Wo, K, Cg, Kg,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_bk,
    stride_yn, stride_yk, stride_yh, stride_yw,
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    INDEX_I64: tl.constexpr,
):
    # y[n, k, oh, ow] = sum_{c < Cg, r, s} x[n, (k // Kg) * Cg + c, ih, iw] * w[k, c, r, s]
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    if INDEX_I64:  # (before the product: pid_m * BLOCK_M wraps in int32 once M passes 2**31)
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < K
    nb, oh, ow = _pixel_nhw(offs_m, Ho, Wo, INDEX_I64)
    c0 = (offs_n // Kg) * Cg
    k_out = offs_n
    if INDEX_I64:
        c0 = c0.to(tl.int64)
        k_out = k_out.to(tl.int64)
    ih0 = oh * STRIDE_H - PAD_T
    iw0 = ow * STRIDE_W - PAD_L
    x_row = x_ptr + nb * stride_xn
    x_col = c0 * stride_xc
    w_col = w_ptr + k_out * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in range(0, Cg):
        for r in tl.static_range(R):
            ih = ih0 + r * DIL_H
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for s in tl.static_range(S):
                iw = iw0 + s * DIL_W
                row_ok = h_ok & (iw >= 0) & (iw < W)
                xv = tl.load((x_row + ih * stride_xh + iw * stride_xw)[:, None]
                             + (x_col + c * stride_xc)[None, :],
                             mask=row_ok[:, None] & n_ok[None, :], other=0.0)
                wv = tl.load(w_col + (c * stride_wc + r * stride_wr + s * stride_ws),
                             mask=n_ok, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]

    if HAS_BIAS:
        bias = tl.load(bias_ptr + k_out * stride_bk, mask=n_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    y_ptrs = (y_ptr + (nb * stride_yn + oh * stride_yh + ow * stride_yw)[:, None]
              + (k_out * stride_yk)[None, :])
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_bwd_input_direct_kernel(
    dy_ptr, w_ptr, dx_ptr,
    # Sizes: M = N * H * W; C = all input channels; Cg, Kg = channels per group in and out.
    M, H, W, Ho, Wo, C, Cg, Kg,
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INDEX_I64: tl.constexpr,
):
    # dx[n, ci, ih, iw] = sum_{kk < Kg, r, s} dy[n, g*Kg + kk, oh, ow] * w[g*Kg + kk, ci % Cg, r, s]
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    if INDEX_I64:  # (as in the forward kernel)
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < C
    nb, ih, iw = _pixel_nhw(offs_m, H, W, INDEX_I64)
    k0 = (offs_n // Cg) * Kg
    c_loc = offs_n % Cg
    c_in = offs_n
    if INDEX_I64:
        k0 = k0.to(tl.int64)
        c_in = c_in.to(tl.int64)
    dy_row = dy_ptr + nb * stride_dyn
    w_col = w_ptr + k0 * stride_wk + c_loc * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, Kg):
        dy_col = (k0 + kk) * stride_dyk
        for r in tl.static_range(R):
            th = ih + PAD_T - r * DIL_H
            thc = tl.maximum(th, 0)
            oh = thc // STRIDE_H
            h_ok = m_ok & (th >= 0) & (thc - oh * STRIDE_H == 0) & (oh < Ho)
            for s in tl.static_range(S):
                tw = iw + PAD_L - s * DIL_W
                twc = tl.maximum(tw, 0)
                ow = twc // STRIDE_W
                row_ok = h_ok & (tw >= 0) & (twc - ow * STRIDE_W == 0) & (ow < Wo)
                dyv = tl.load((dy_row + oh * stride_dyh + ow * stride_dyw)[:, None] + dy_col[None, :],
                              mask=row_ok[:, None] & n_ok[None, :], other=0.0)
                wv = tl.load(w_col + (kk * stride_wk + r * stride_wr + s * stride_ws),
                             mask=n_ok, other=0.0)
                # (a tap no output pixel reads adds nothing: 0 * an Inf or NaN weight made every
                # pixel NaN where torch's are NaN only where the weight's taps land)
                acc += tl.where(row_ok[:, None], dyv.to(tl.float32) * wv.to(tl.float32)[None, :],
                                0.0)

    dx_ptrs = (dx_ptr + (nb * stride_dxn + ih * stride_dxh + iw * stride_dxw)[:, None]
               + (c_in * stride_dxc)[None, :])
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv2d_bwd_weight_direct_kernel(
    x_ptr, dy_ptr, dw_ptr,
    # Sizes: P = N * Ho * Wo; K = all output channels; Cg, Kg = channels per group in and out.
    P, H, W, Ho, Wo, K, Cg, Kg,
    P_PER_SPLIT,  # a multiple of BLOCK_M
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_dwsplit, stride_dwk, stride_dwc, stride_dwr, stride_dws,
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INDEX_I64: tl.constexpr,
):
    # One program: BLOCK_N output channels x one column j = (c, r, s) x one split of the pixels;
    # a [BLOCK_M, BLOCK_N] float32 tile of products is summed over its rows at the end.
    num_pid_n = tl.cdiv(K, BLOCK_N)
    pid = tl.program_id(axis=0)
    pid_n = pid % num_pid_n
    j = pid // num_pid_n
    split = tl.program_id(axis=1)
    c = j // (R * S)
    r = (j // S) % R
    s = j % S
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < K
    k_out = offs_n
    c_in = (offs_n // Kg) * Cg + c
    if INDEX_I64:
        k_out = k_out.to(tl.int64)
        c_in = c_in.to(tl.int64)
        split = split.to(tl.int64)
    dh = r * DIL_H - PAD_T
    dw = s * DIL_W - PAD_L
    x_col = x_ptr + c_in * stride_xc
    dy_col = dy_ptr + k_out * stride_dyk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    p_start = split * P_PER_SPLIT
    p_stop = min(P, p_start + P_PER_SPLIT)
    for p0 in range(p_start, p_stop, BLOCK_M):
        p = p0 + offs_m
        p_ok = p < p_stop
        nb, oh, ow = _pixel_nhw(p, Ho, Wo, INDEX_I64)
        ih = oh * STRIDE_H + dh
        iw = ow * STRIDE_W + dw
        x_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        dyv = tl.load(dy_col[None, :] + (nb * stride_dyn + oh * stride_dyh + ow * stride_dyw)[:, None],
                      mask=p_ok[:, None] & n_ok[None, :], other=0.0)
        xv = tl.load(x_col[None, :] + (nb * stride_xn + ih * stride_xh + iw * stride_xw)[:, None],
                     mask=x_ok[:, None] & n_ok[None, :], other=0.0)
        acc += dyv.to(tl.float32) * xv.to(tl.float32)

    total = tl.sum(acc, axis=0)
    dw_ptrs = (dw_ptr + split * stride_dwsplit + k_out * stride_dwk
               + (c * stride_dwc + r * stride_dwr + s * stride_dws))
    tl.store(dw_ptrs, total.to(dw_ptr.dtype.element_ty), mask=n_ok)


# ---------------------------------------------------------------------------------------------
# Configurations


@dataclass(frozen=True)
class Conv2dConfig(TileConfig):
    """One launch configuration: output tile, reduction step, tile grouping, warps and stages.

    The implicit-GEMM kernels use all fields; the direct kernels (depthwise) use BLOCK_M x BLOCK_N
    as pixels x channels and ignore BLOCK_K, GROUP_M and num_stages.
    """

    @classmethod
    def default(cls, dtype: torch.dtype, kind: str = "gemm") -> Conv2dConfig:
        """A safe choice for any problem of that kernel kind (<= 96 KiB of shared memory)."""
        check_dtype("conv2d", dtype)
        if kind == "direct":
            return _DIRECT_DEFAULT
        return _FP32_DEFAULT if dtype == torch.float32 else _HALF_DEFAULT

    @classmethod
    def space(cls, dtype: torch.dtype, n: int, c: int, h: int, w: int, k: int, r: int, s: int,
              stride=1, groups: int = 1, *, max_shared: int | None = None) -> list[Conv2dConfig]:
        """At most 6 shipped configs worth trying for this forward problem, default first.

        Configs whose blocks exceed the problem (output pixels, channels per group, reduction
        length, each rounded up to a power of two) are dropped, unless no shipped config of that
        family has a smaller block there.
        """
        sh, sw = pair("conv2d (triton)", "stride", stride)
        kind = kernel_kind(c, k, r, s, groups)
        family = shipped_configs(dtype, kind)
        default = cls.default(dtype, kind)
        ho = max(1, (h - 1) // sh + 1)  # about right for "same" padding; only used to prune
        wo = max(1, (w - 1) // sw + 1)
        m = n * ho * wo
        if kind == "direct":
            dims = (m, k, 1 << 30)
        else:
            cg = max(1, c // max(groups, 1))
            dims = (m, k // max(groups, 1), cg if cg >= 16 else cg * r * s)
        caps = [max(next_pow2(d), min(getattr(cf, f) for cf in family))
                for d, f in zip(dims, ("BLOCK_M", "BLOCK_N", "BLOCK_K"))]
        out = [default]
        for cf in family:
            if cf in out or caps[0] < cf.BLOCK_M or caps[1] < cf.BLOCK_N or caps[2] < cf.BLOCK_K:
                continue
            if max_shared is not None and kind == "gemm" and cf.shared_bytes(dtype) > max_shared:
                continue
            out.append(cf)
        return out[:6]


_C = Conv2dConfig.of


# Implicit GEMM, fp16 / bf16. The A operand is a masked gather (no TMA) whose 2-D addresses cost
# registers, so 128 x 128 tiles take 8 warps. Every config fits sm_80's and sm_90's shared memory
# and compiles without spills for the forward (bias + gelu) and both backwards (checked by tests).
_HALF_DEFAULT = _C(128, 128, 32, 8, 4)
_HALF_CONFIGS: tuple[Conv2dConfig, ...] = (
    _HALF_DEFAULT,
    _C(128, 128, 64, 8, 3),
    _C(128, 64, 32, 4, 4),
    _C(64, 128, 32, 4, 4),
    _C(64, 64, 32, 4, 4),
    _C(64, 32, 32, 4, 3),
)
# float32 (IEEE or TF32): twice the bytes per element; IEEE runs the dot on FMA units, so tiles
# are smaller per thread.
_FP32_DEFAULT = _C(64, 128, 16, 8, 3)
_FP32_CONFIGS: tuple[Conv2dConfig, ...] = (
    _FP32_DEFAULT,
    _C(128, 64, 16, 8, 3),
    _C(64, 64, 32, 8, 3),
    _C(64, 32, 32, 4, 3),
    _C(64, 32, 16, 2, 3),
)
# Direct (depthwise) kernels: BLOCK_M pixels x BLOCK_N channels, 8 per thread but one (the R x S
# taps are unrolled and their loads hoisted: under Triton 3.6, 16 per thread spilled in 4 of 6
# configs; tests/test_triton36_registers.py); BLOCK_K and stages are unused.
_DIRECT_DEFAULT = _C(32, 64, 16, 8, 1, 1)
_DIRECT_CONFIGS: tuple[Conv2dConfig, ...] = (
    _DIRECT_DEFAULT,
    _C(16, 256, 16, 8, 1, 1),
    _C(16, 128, 16, 4, 1, 1),
    _C(64, 32, 16, 8, 1, 1),
    _C(16, 64, 16, 4, 1, 1),
    _C(32, 32, 16, 4, 1, 1),
)
SHIPPED_CONFIGS: tuple[Conv2dConfig, ...] = tuple(
    dict.fromkeys(_HALF_CONFIGS + _FP32_CONFIGS + _DIRECT_CONFIGS))


CONFIG = Conv2dConfig


def space(problem) -> list[Conv2dConfig]:
    """The configs worth timing for any conv2d op's ``Problem``."""
    n, c, h, w, k, r, s = problem_sizes(problem)
    if problem.op == "conv2d_backward_input":
        c, k = k, c  # grad_in's GEMM: N = C/groups, reduction over K/groups * R * S
    return Conv2dConfig.space(getattr(torch, problem.dtype), n, c, h, w, k, r, s,
                              problem.options.stride, problem.options.groups)


def shipped_configs(dtype: torch.dtype, kind: str = "gemm") -> tuple[Conv2dConfig, ...]:
    """The subset of :data:`SHIPPED_CONFIGS` for ``dtype`` and kernel kind (before pruning)."""
    check_dtype("conv2d", dtype)
    if kind == "direct":
        return _DIRECT_CONFIGS
    return _FP32_CONFIGS if dtype == torch.float32 else _HALF_CONFIGS


def _check_tensor(op: str, name: str, t, dims: int, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op} (triton): {name} must be a torch tensor, got {type(t)}")
    if t.dim() != dims:
        raise ValueError(f"{op} (triton): {name} must be {dims}-D, got shape {tuple(t.shape)}")
    check_dtype(op, t.dtype)
    if like is None:
        if not t.is_cuda and not triton_interpret():
            raise ValueError(f"{op} (triton): tensors must be on a CUDA device (or run with "
                             f"TRITON_INTERPRET=1), got {t.device}")
    else:
        if t.dtype != like.dtype:
            raise TypeError(f"{op} (triton): {name} must be {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op} (triton): {name} must be on {like.device}, got {t.device}")


def _check_config(op: str, config, dtype, kind: str) -> Conv2dConfig:
    if config is None:
        return Conv2dConfig.default(dtype, kind)
    if not isinstance(config, Conv2dConfig):
        raise TypeError(f"{op} (triton): config must be a Conv2dConfig, got {type(config)}")
    return config


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few splits, so the split path is exercised too


def _auto_split(base_programs: int, p: int, block: int, device: torch.device) -> int:
    """Splits of the N*Ho*Wo reduction: about 2 waves of programs, each split >= 4 blocks long."""
    target = 2 * _num_sms(device)
    split = max(1, min(target // max(base_programs, 1), triton.cdiv(p, 4 * block), MAX_GRID_YZ))
    return split


# ---------------------------------------------------------------------------------------------
# Launchers


@on_its_device
def conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups: int = 1,
    activation: str | None = None,
    layout: str = "NCHW",
    config: Conv2dConfig | None = None,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """act(conv2d(x, weight) + bias) with x (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC".

    weight is (K, C/groups, R, S), bias None or (K,); any strides. Returns a new tensor of x's
    dtype, contiguous in x's layout: (N, K, Ho, Wo) or (N, Ho, Wo, K).
    """
    op = "conv2d"
    _check_tensor(op, "x", x, 4)
    _check_tensor(op, "weight", weight, 4, like=x)
    check_layout(f"{op} (triton)", layout)
    check_flag(f"{op} (triton)", "allow_tf32", allow_tf32)  # ("no" is true: TF32 on)
    n, c, h, w = nchw_shape(x.shape, layout)
    k, cg, r, s = weight.shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or cg * groups != c:
        raise ValueError(f"{op} (triton): weight must be (K, C/groups, R, S) = (K, {c}/{groups}, R, S), "
                         f"got {tuple(weight.shape)}")
    geo = geometry(f"{op} (triton)", n, c, h, w, k, r, s, stride, padding, dilation, groups)
    if bias is not None:
        _check_tensor(op, "bias", bias, 1, like=x)
        if bias.shape != (k,):
            raise ValueError(f"{op} (triton): bias must have shape ({k},), got {tuple(bias.shape)}")
    check_activation(f"{op} (triton)", activation)
    kind = kernel_kind(c, k, r, s, groups)
    config = _check_config(op, config, x.dtype, kind)
    x, weight, bias = in_memory(x), in_memory(weight), in_memory(bias)

    y = torch.empty(act_shape(n, k, geo.ho, geo.wo, layout), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    xs, ys, ws = nchw_shape(x.stride(), layout), nchw_shape(y.stride(), layout), weight.stride()
    m = n * geo.ho * geo.wo
    bias_arg = bias if bias is not None else y
    bias_stride = bias.stride(0) if bias is not None else 0
    index_i64 = max(max_offset((n, c, h, w), xs), max_offset(tuple(weight.shape), ws),
                    max_offset((n, k, geo.ho, geo.wo), ys), m,
                    max_offset((k,), (bias_stride,))) > INT32_MAX // 2
    if kind == "direct":
        grid = (triton.cdiv(m, config.BLOCK_M), triton.cdiv(k, config.BLOCK_N))
        _check_grid(op, grid)
        conv2d_fwd_direct_kernel[grid](
            x, weight, bias_arg, y,
            m, h, w, geo.ho, geo.wo, k, geo.cg, geo.kg,
            *xs, *ws, bias_stride, *ys,
            *geo.geometry_args(),
            R=r, S=s, BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N,
            HAS_BIAS=bias is not None, ACTIVATION=activation or "", INDEX_I64=index_i64,
            num_warps=config.num_warps, num_stages=1,
        )
        return y
    grid = (triton.cdiv(m, config.BLOCK_M) * triton.cdiv(geo.kg, config.BLOCK_N), groups)
    _check_grid(op, grid)
    conv2d_fwd_kernel[grid](
        x, weight, bias_arg, y,
        m, h, w, geo.ho, geo.wo, geo.cg, geo.kg,
        *xs, *ws, bias_stride, *ys,
        *geo.geometry_args(),
        R=r, S=s,
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M,
        FLAT_K=geo.cg < config.BLOCK_K,
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "",
        **dot_args(x.dtype, allow_tf32),
        INDEX_I64=index_i64,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y


@on_its_device
def conv2d_backward_input(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_hw,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups: int = 1,
    layout: str = "NCHW",
    config: Conv2dConfig | None = None,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """Gradient of conv2d with respect to its input, of size ``input_hw`` = (H, W), in ``layout``.

    grad_out is (N, K, Ho, Wo) ("NCHW") or (N, Ho, Wo, K) ("NHWC"); weight (K, C/groups, R, S).
    """
    op = "conv2d_backward_input"
    _check_tensor(op, "grad_out", grad_out, 4)
    _check_tensor(op, "weight", weight, 4, like=grad_out)
    check_layout(f"{op} (triton)", layout)
    check_flag(f"{op} (triton)", "allow_tf32", allow_tf32)  # ("no" is true: TF32 on)
    h, w = pair(f"{op} (triton)", "input_hw", input_hw)
    n, k, ho, wo = nchw_shape(grad_out.shape, layout)
    kw, cg, r, s = weight.shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or kw != k:
        raise ValueError(f"{op} (triton): weight must have K={k} rows, got {tuple(weight.shape)}")
    c = cg * groups
    geo = geometry(f"{op} (triton)", n, c, h, w, k, r, s, stride, padding, dilation, groups)
    geo.check_grad_out(ho, wo)
    kind = kernel_kind(k, c, r, s, groups)  # grad_in's GEMM: N = C/groups, reduction K/groups*R*S
    config = _check_config(op, config, grad_out.dtype, kind)
    grad_out, weight = in_memory(grad_out), in_memory(weight)

    dx = torch.empty(act_shape(n, c, h, w, layout), dtype=grad_out.dtype, device=grad_out.device)
    if dx.numel() == 0:
        return dx
    if k == 0:
        return dx.zero_()
    dys, dxs = nchw_shape(grad_out.stride(), layout), nchw_shape(dx.stride(), layout)
    ws = weight.stride()
    m = n * h * w
    index_i64 = max(max_offset((n, k, ho, wo), dys), max_offset(tuple(weight.shape), ws),
                    max_offset((n, c, h, w), dxs), m) > INT32_MAX // 2
    if kind == "direct":
        grid = (triton.cdiv(m, config.BLOCK_M), triton.cdiv(c, config.BLOCK_N))
        _check_grid(op, grid)
        conv2d_bwd_input_direct_kernel[grid](
            grad_out, weight, dx,
            m, h, w, ho, wo, c, geo.cg, geo.kg,
            *dys, *ws, *dxs,
            *geo.geometry_args(),
            R=r, S=s, BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, INDEX_I64=index_i64,
            num_warps=config.num_warps, num_stages=1,
        )
        return dx
    grid = (triton.cdiv(m, config.BLOCK_M) * triton.cdiv(geo.cg, config.BLOCK_N), groups)
    _check_grid(op, grid)
    conv2d_bwd_input_kernel[grid](
        grad_out, weight, dx,
        m, h, w, ho, wo, geo.cg, geo.kg,
        *dys, *ws, *dxs,
        *geo.geometry_args(),
        R=r, S=s,
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
        GROUP_M=config.GROUP_M,
        **dot_args(grad_out.dtype, allow_tf32),
        INDEX_I64=index_i64,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return dx


@on_its_device
def conv2d_backward_weight(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_hw,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups: int = 1,
    layout: str = "NCHW",
    config: Conv2dConfig | None = None,
    allow_tf32: bool = False,
    *,
    split_k: int | None = None,
) -> torch.Tensor:
    """Gradient of conv2d with respect to its weight: a new contiguous (K, C/groups, R, S) tensor.

    The N*Ho*Wo reduction is accumulated in float32 and split over ``split_k`` programs per tile
    (None: enough to fill the GPU), whose float32 partial sums are added in a fixed order.
    """
    op = "conv2d_backward_weight"
    _check_tensor(op, "x", x, 4)
    _check_tensor(op, "grad_out", grad_out, 4, like=x)
    check_layout(f"{op} (triton)", layout)
    check_flag(f"{op} (triton)", "allow_tf32", allow_tf32)  # ("no" is true: TF32 on)
    r, s = pair(f"{op} (triton)", "kernel_hw", kernel_hw)
    n, c, h, w = nchw_shape(x.shape, layout)
    n2, k, ho, wo = nchw_shape(grad_out.shape, layout)
    if n2 != n:
        raise ValueError(f"{op} (triton): x has batch {n} but grad_out has {n2}")
    geo = geometry(f"{op} (triton)", n, c, h, w, k, r, s, stride, padding, dilation, groups)
    geo.check_grad_out(ho, wo)
    if split_k is not None and (not isinstance(split_k, int) or isinstance(split_k, bool)
                                or not 1 <= split_k <= MAX_GRID_YZ):
        raise ValueError(f"{op} (triton): split_k must be None or an int in [1, {MAX_GRID_YZ}]")
    kind = kernel_kind(c, k, r, s, groups)
    config = _check_config(op, config, x.dtype, kind)
    x, grad_out = in_memory(x), in_memory(grad_out)

    shape = (k, geo.cg, r, s)
    if 0 in shape:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    p = n * ho * wo
    if p == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    xs, dys = nchw_shape(x.stride(), layout), nchw_shape(grad_out.stride(), layout)
    index_i64 = max(max_offset((n, c, h, w), xs), max_offset((n, k, ho, wo), dys), p,
                    k * geo.cg * r * s) > INT32_MAX // 2
    if kind == "direct":
        base = triton.cdiv(k, config.BLOCK_N) * geo.cg * r * s
        step = config.BLOCK_M
    else:
        base = (triton.cdiv(geo.kg, config.BLOCK_M) * triton.cdiv(geo.cg * r * s, config.BLOCK_N)
                * groups)
        step = config.BLOCK_K
    split = split_k or _auto_split(base, p, step, x.device)
    p_per_split = triton.cdiv(triton.cdiv(p, split), step) * step
    split = triton.cdiv(p, p_per_split)  # no empty splits
    if split == 1:
        dw = torch.empty(shape, dtype=x.dtype, device=x.device)
        dw_strides = (0, *dw.stride())
    else:
        dw = torch.empty((split, *shape), dtype=torch.float32, device=x.device)
        dw_strides = dw.stride()
    index_i64 = index_i64 or dw.numel() > INT32_MAX // 2
    if kind == "direct":
        grid = (base, split)
        _check_grid(op, grid)
        conv2d_bwd_weight_direct_kernel[grid](
            x, grad_out, dw,
            p, h, w, ho, wo, k, geo.cg, geo.kg, p_per_split,
            *xs, *dys, *dw_strides,
            *geo.geometry_args(),
            R=r, S=s, BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, INDEX_I64=index_i64,
            num_warps=config.num_warps, num_stages=1,
        )
    else:
        grid = (base // groups, groups, split)
        _check_grid(op, grid)
        conv2d_bwd_weight_kernel[grid](
            x, grad_out, dw,
            p, h, w, ho, wo, geo.cg, geo.kg, p_per_split,
            *xs, *dys, *dw_strides,
            *geo.geometry_args(),
            R=r, S=s,
            BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K,
            GROUP_M=config.GROUP_M,
            **dot_args(x.dtype, allow_tf32),
            INDEX_I64=index_i64,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
    if split == 1:
        return dw
    return dw.sum(dim=0).to(x.dtype)


def _check_grid(op: str, grid: tuple[int, ...]) -> None:
    if grid[0] > INT32_MAX or any(g > MAX_GRID_YZ for g in grid[1:]):
        raise ValueError(f"{op} (triton): grid {grid} exceeds the launch limits; use larger blocks")
