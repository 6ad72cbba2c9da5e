"""Kernel-level tests of the Numba conv2d: forward (every path, layout, epilogue), both backward
ops against torch's autograd in float64, every config of the space, and random shapes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    CONV_MOBILENET_DW,
    CONV_RESNET50,
    assert_conv2d_close,
    assert_grad_close,
    conv2d_grads_ref,
)

from kernelkit.kernels.numba import conv2d as nc
from kernelkit.kernels.numba.conv2d import (
    CONV_KERNELS,
    Conv2dConfig,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
)

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
# Blocks far smaller than the defaults, so that modest shapes cross every block boundary.
TINY = {np.float32: Conv2dConfig(mc=24, kc=16, nc=64), np.float64: Conv2dConfig(24, 16, 32)}

# (N, C, H, W, K, R, S, stride, padding (t, b, l, r), dilation, groups)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1 image, C = K = 1
    (2, 3, 7, 5, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K = 1
    (2, 1, 11, 13, 5, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # C = 1
    (1, 5, 13, 11, 7, 3, 2, (2, 2), (1, 1, 0, 1), (1, 1), 1),  # stride 2, even kernel
    (2, 4, 9, 10, 6, 3, 3, (1, 2), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    (1, 6, 5, 6, 4, 2, 2, (1, 1), (3, 4, 5, 3), (1, 1), 1),  # padding > kernel, asymmetric
    (2, 6, 8, 8, 9, 3, 3, (2, 1), (1, 0, 2, 1), (1, 1), 3),  # groups
    (2, 8, 9, 9, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8),  # depthwise
    (1, 6, 10, 7, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 2), 6),  # depthwise x2, stride, dilation
    (2, 17, 7, 9, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1 (plain GEMM)
    (2, 16, 9, 9, 20, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),  # 1x1 stride 2
    (1, 8, 6, 6, 8, 1, 1, (1, 1), (1, 0, 1, 0), (1, 1), 2),  # 1x1 padded, groups
    (3, 37, 13, 11, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # primes, several tiles
    (1, 3, 4, 4, 2, 5, 5, (3, 3), (2, 2, 2, 2), (1, 1), 1),  # kernel > image
    (1, 24, 3, 3, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # Kg > HoWo: threads split K
]


def _ids(case):
    n, c, h, w, k, r, s, st_, pad, dil, g = case
    return f"n{n}c{c}h{h}w{w}k{k}r{r}s{s}st{st_[0]}{st_[1]}p{''.join(map(str, pad))}d{dil[0]}{dil[1]}g{g}"


def make(case, dtype, layout, rng, bias=True):
    n, c, h, w, k, r, s, _, _, _, g = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    wt = rng.standard_normal((k, c // g, r, s)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    return x, wt, b


def fwd(x, w, b, case, layout, act=None, config=None):
    _, _, _, _, _, _, _, st_, pad, dil, g = case
    return conv2d_forward(x, w, b, st_, pad, dil, g, act, layout, config)


def check(out, x, w, b, case, layout, act=None):
    _, _, _, _, _, _, _, st_, pad, dil, g = case
    assert out.flags.c_contiguous and out.dtype == x.dtype
    assert_conv2d_close(out, x, w, b, stride=st_, padding=pad, dilation=dil, groups=g,
                        activation=act, layout=layout)


def poison_allocations(monkeypatch):
    """Every float array the launchers allocate starts as NaN, so that an output element no
    kernel writes shows: numpy's ``empty`` (float dtypes; the uint8 scratch buffers are left
    alone) and the 64-byte aligned outputs (``aligned_empty``).

    The entry points are compiled (or loaded) first: numba types ``np.empty`` inside them from
    the numpy module this patches, so one compiled under the patch fails to type."""
    for dtype in DTYPES:
        fns = nc._compiled(dtype)
        for name in ("fwd", "dw", "bwd", "dw_wgrad"):
            getattr(fns, name)
    real_empty = np.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        if out.dtype.kind == "f":
            out.fill(np.nan)
        return out

    monkeypatch.setattr(nc.np, "empty", empty)
    monkeypatch.setattr(nc, "aligned_empty", lambda size, dtype: np.full(int(size), np.nan, dtype))


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """Force one thread, or the threaded path whatever the size."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 1 << 62 if request.param == "serial" else 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 1 << 62 if request.param == "serial" else 0)
    for name in ("DW_PARALLEL_MACS", "DW_PARALLEL_INPUT"):
        monkeypatch.setattr(nc, name, 1 << 62 if request.param == "serial" else 0)
    return request.param


@pytest.fixture(params=["gemm", "shift"])
def kernel(request, monkeypatch):
    """Which algorithm config kernel "auto" (every config in these tests) runs for stride-1 NCHW
    forwards: the implicit GEMM or the shifted GEMM, whatever the plane size."""
    monkeypatch.setattr(nc, "SHIFT_WIDE", False)
    monkeypatch.setattr(nc, "SHIFT_MIN_PIXELS", 1 << 62 if request.param == "gemm" else 0)
    monkeypatch.setattr(nc, "SHIFT_MIN_PLANE", 0)
    return request.param


# ------------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_cases(case, layout, dtype, path, kernel):
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = make(case, dtype, layout, rng)
    check(fwd(x, w, b, case, layout, config=TINY[dtype]), x, w, b, case, layout)
    check(fwd(x, w, None, case, layout), x, w, None, case, layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS[1:])
@pytest.mark.parametrize("case", [CASES[4], CASES[7], CASES[9]], ids=_ids)
def test_bias_activation(case, act, layout, dtype, kernel):
    rng = np.random.default_rng(7)
    x, w, b = make(case, dtype, layout, rng)
    x *= 3  # reach the tails of the activations
    check(fwd(x, w, b, case, layout, act, TINY[dtype]), x, w, b, case, layout, act)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9]], ids=_ids)
def test_noncontiguous(case, layout, dtype, kernel):
    """Strided, sliced and negative-stride views of x, and a non-contiguous weight."""
    rng = np.random.default_rng(3)
    x, w, b = make(case, dtype, layout, rng)
    big = np.zeros((x.shape[0] * 2, x.shape[1] + 2, x.shape[2] * 2, x.shape[3] * 3), dtype)
    view = big[::2, 1:-1, ::2, ::3]
    view[...] = x
    flipped = np.ascontiguousarray(x[:, ::-1])[:, ::-1]
    wv = np.asfortranarray(w)
    bv = np.repeat(b, 2)[::2]
    for xx in (view, flipped, np.asfortranarray(x)):
        out = fwd(xx, wv, bv, case, layout, "relu")
        check(out, np.ascontiguousarray(xx), wv, bv, case, layout, "relu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [CASES[4], CASES[7], CASES[9]], ids=_ids)
def test_nan_inf(case, layout, dtype, kernel):
    """NaN/Inf in x and in the weight propagate as in torch (0 * Inf in the padding is NaN)."""
    rng = np.random.default_rng(5)
    x, w, b = make(case, dtype, layout, rng)
    flat = x.reshape(-1)
    flat[::7] = np.nan
    flat[3::11] = np.inf
    flat[5::13] = -np.inf
    check(fwd(x, w, b, case, layout), x, w, b, case, layout)
    x, w, b = make(case, dtype, layout, rng)
    w.reshape(-1)[1] = np.inf
    check(fwd(x, w, b, case, layout), x, w, b, case, layout)
    w = np.zeros_like(w)  # zero weights do not hide a NaN
    x.reshape(-1)[0] = np.nan
    check(fwd(x, w, b, case, layout), x, w, b, case, layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty(dtype, layout):
    case = (0, 4, 5, 5, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    rng = np.random.default_rng(0)
    x, w, b = make(case, dtype, layout, rng)
    out = fwd(x, w, b, case, layout, "gelu")
    assert out.shape == ((0, 3, 5, 5) if layout == "NCHW" else (0, 5, 5, 3))
    dx = conv2d_backward_input(out, w, (5, 5), (1, 1), (1, 1, 1, 1), (1, 1), 1, layout)
    assert dx.shape == x.shape
    dw = conv2d_backward_weight(x, out, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, layout)
    assert dw.shape == w.shape and not dw.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_config(dtype, layout):
    case = (2, 24, 15, 15, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    rng = np.random.default_rng(11)
    x, w, b = make(case, dtype, layout, rng)
    space = Conv2dConfig.space(dtype, 2, 24, 15, 15, 40, 3, 3, (1, 1), 1)
    assert 1 <= len(space) <= 6 and space[0] == Conv2dConfig.default(dtype)
    for cfg in space + [TINY[dtype]]:
        assert Conv2dConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        check(fwd(x, w, b, case, layout, "silu", cfg), x, w, b, case, layout, "silu")
    with pytest.raises(ValueError):
        Conv2dConfig(0, 16, 32)


# ----------------------------------------------------------------------------------------- backward

def check_grads(x, w, gy, case, layout, config=None):
    """Both backward ops against float64 autograd, normwise with the sqrt(K) bound of each
    gradient's own reduction."""
    n, c, h, w_, k, r, s, st_, pad, dil, g = case
    (dx_ref, dw_ref), (dx_scale, dw_scale) = conv2d_grads_ref(
        x, w, gy, stride=st_, padding=pad, dilation=dil, groups=g, layout=layout)
    dx = conv2d_backward_input(gy, w, (h, w_), st_, pad, dil, g, layout, config)
    assert dx.flags.c_contiguous and dx.dtype == x.dtype
    assert_grad_close(dx, dx_ref, dx_scale, (k // g) * r * s, "grad_input")
    dw = conv2d_backward_weight(x, gy, (r, s), st_, pad, dil, g, layout, config)
    assert dw.flags.c_contiguous and dw.dtype == x.dtype
    spatial = gy.shape[1:3] if layout == "NHWC" else gy.shape[2:]
    assert_grad_close(dw, dw_ref, dw_scale, n * spatial[0] * spatial[1], "grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_backward(case, layout, dtype, path):
    rng = np.random.default_rng(abs(hash(case)) % 2**32 + 1)
    n, c, h, w_, k, r, s, st_, pad, dil, g = case
    x, w, _ = make(case, dtype, layout, rng, bias=False)
    y = fwd(x, w, None, case, layout)
    gy = rng.standard_normal(y.shape).astype(dtype)
    check_grads(x, w, gy, case, layout, TINY[dtype] if path == "parallel" else None)


# ----------------------------------------------------------------------------------- model layers

@pytest.mark.parametrize("layout", LAYOUTS)
def test_resnet50_batch1(layout):
    rng = np.random.default_rng(0)
    for ci, co, hw, kk, st_, pd in CONV_RESNET50:
        case = (1, ci, hw, hw, co, kk, kk, (st_, st_), (pd,) * 4, (1, 1), 1)
        x, w, b = make(case, np.float32, layout, rng)
        check(fwd(x, w, b, case, layout, "relu"), x, w, b, case, layout, "relu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer", [CONV_RESNET50[2], CONV_RESNET50[13]])
def test_resnet50_batch8(layer, layout, kernel):
    ci, co, hw, kk, st_, pd = layer
    case = (8, ci, hw, hw, co, kk, kk, (st_, st_), (pd,) * 4, (1, 1), 1)
    rng = np.random.default_rng(1)
    x, w, b = make(case, np.float32, layout, rng)
    check(fwd(x, w, b, case, layout), x, w, b, case, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mobilenet_depthwise(layout):
    rng = np.random.default_rng(2)
    for c, hw, st_ in CONV_MOBILENET_DW[::3]:
        case = (2, c, hw, hw, c, 3, 3, (st_, st_), (1, 1, 1, 1), (1, 1), c)
        x, w, b = make(case, np.float32, layout, rng)
        check(fwd(x, w, b, case, layout, "relu"), x, w, b, case, layout, "relu")


@pytest.mark.parametrize("hw", [(3, 3), (3, 17), (17, 3), (4, 5), (3, 6), (7, 7), (14, 14),
                                (28, 29), (5, 64)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_flat_planes(hw, dtype, path):
    """Depthwise 3x3, pad 1, stride 1 on narrow NCHW planes (the flattened-plane path): every
    border row and column, with bias and relu, a NaN that must reach exactly its 3x3
    neighbourhood, and a strided input that takes the general path."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    c = 5
    case = (2, c, hw[0], hw[1], c, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), c)
    x, w, b = make(case, dtype, "NCHW", rng)
    check(fwd(x, w, b, case, "NCHW", "relu"), x, w, b, case, "NCHW", "relu")
    xn = x.copy()
    xn[1, 2, hw[0] // 2, hw[1] - 1] = np.nan
    y = fwd(xn, w, b, case, "NCHW")
    nan = np.zeros(y.shape, bool)
    nan[1, 2, max(0, hw[0] // 2 - 1):hw[0] // 2 + 2, hw[1] - 2:] = True
    assert np.array_equal(np.isnan(y), nan)
    wide = np.zeros((2, c, hw[0], hw[1] + 3), dtype)
    wide[..., 1:hw[1] + 1] = x
    xs = wide[..., 1:hw[1] + 1]  # rows of pitch W + 3: not flat
    check(fwd(xs, w, b, case, "NCHW", "relu"), x, w, b, case, "NCHW", "relu")


@pytest.mark.parametrize("hw", [(4, 4), (4, 18), (18, 4), (14, 14), (28, 30), (13, 14), (7, 7),
                                (9, 40), (5, 33)], ids=str)
@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (1, 0, 1, 0)], ids=["pad1", "pad-tl"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_stride2_planes(hw, pad, dtype, path):
    """Depthwise 3x3 stride 2 on NCHW planes (the direct row path), even and odd sizes, with
    bias, relu and a NaN that must reach exactly the outputs that read it."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    c = 4
    case = (2, c, hw[0], hw[1], c, 3, 3, (2, 2), pad, (1, 1), c)
    x, w, b = make(case, dtype, "NCHW", rng)
    check(fwd(x, w, b, case, "NCHW", "relu"), x, w, b, case, "NCHW", "relu")
    xn = x.copy()
    ih, iw = hw[0] // 2, hw[1] - 1
    xn[1, 3, ih, iw] = np.nan
    y = fwd(xn, w, b, case, "NCHW")
    oh = np.arange(y.shape[2])[:, None] * 2 - 1
    ow = np.arange(y.shape[3])[None, :] * 2 - 1
    want = np.zeros(y.shape, bool)
    want[1, 3] = (oh <= ih) & (ih <= oh + 2) & (ow <= iw) & (iw <= ow + 2)
    assert np.array_equal(np.isnan(y), want)


@pytest.mark.parametrize("hw", [(5, 5), (7, 7), (6, 11), (14, 14), (9, 40)], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_vector_blocks_read_only_their_plane(hw, stride, poison, dtype, path):
    """The vectorised depthwise blocks load every tap of 16 lanes, inside the plane or not, and
    drop the ones outside by lane masks: with every other plane (the neighbours in memory) full
    of NaN or Inf, the planes between them still come out exact, borders and corners included."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1] + stride)
    c = 6
    case = (2, c, hw[0], hw[1], c, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), c)
    x, w, b = make(case, dtype, "NCHW", rng)
    xp = x.copy()
    xp[:, ::2] = poison
    y = fwd(xp, w, b, case, "NCHW", "relu")
    ref = fwd(x, w, b, case, "NCHW", "relu")
    check(ref, x, w, b, case, "NCHW", "relu")
    assert np.isfinite(y[:, 1::2]).all()
    np.testing.assert_array_equal(y[:, 1::2], ref[:, 1::2])


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_non_finite_weights_reach_the_outputs_torch_gives(bad, layout, stride):
    """A NaN or Inf weight tap: the vector blocks mask padded taps out (they cannot propagate
    w * 0 = NaN as torch's zero padding does), so such weights take the plain loops, in the
    forward and in the input gradient; the NaN pattern must be torch's exactly."""
    import torch

    rng = np.random.default_rng(3)
    c = 18
    case = (2, c, 7, 9, c, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), c)
    x, w, b = make(case, np.float32, layout, rng)
    w[5, 0, 0, 2] = bad
    w[17, 0, 1, 1] = bad
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2) if layout == "NHWC" else x).double()
    wt, bt = torch.from_numpy(w).double(), torch.from_numpy(b).double()
    ref = torch.nn.functional.conv2d(xt, wt, bt, stride, 1, 1, c).numpy()
    y = fwd(x, w, b, case, layout)
    y = y.transpose(0, 3, 1, 2) if layout == "NHWC" else y
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-4, atol=1e-4)
    gy = rng.standard_normal(ref.shape).astype(np.float32)
    gyl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)) if layout == "NHWC" else gy
    dx = conv2d_backward_input(gyl, w, (7, 9), (stride, stride), (1, 1, 1, 1), (1, 1), c, layout)
    dx = dx.transpose(0, 3, 1, 2) if layout == "NHWC" else dx
    dx_ref = torch.nn.grad.conv2d_input(xt.shape, wt, torch.from_numpy(gy).double(), stride, 1,
                                        1, c).numpy()
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx_ref))


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_non_finite_inputs_reach_the_weight_gradients_torch_gives(bad, layout, stride):
    """A NaN or Inf input element: the stride-2 weight gradient ran as the stride-1 one of the
    output gradient spread out with zeros, which met every input element (0 * NaN = NaN), so
    the bad element's channel got NaN in all nine taps where torch's has it in the taps that
    read the element."""
    import torch

    rng = np.random.default_rng(5)
    c = 6
    case = (2, c, 9, 9, c, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), c)
    x, w, b = make(case, np.float64, layout, rng)
    xn = x.transpose(0, 3, 1, 2) if layout == "NHWC" else x  # (a view: writes reach x)
    xn[0, 0, 4, 4] = bad
    xn[1, 3, 3, 6] = bad
    xt = torch.from_numpy(np.ascontiguousarray(xn))
    out_hw = (9 - 1) // stride + 1
    gy = rng.standard_normal((2, c, out_hw, out_hw))
    gyl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)) if layout == "NHWC" else gy
    dw = conv2d_backward_weight(x, gyl, (3, 3), (stride, stride), (1, 1, 1, 1), (1, 1), c,
                                layout)
    ref = torch.nn.grad.conv2d_weight(xt, (c, 1, 3, 3), torch.from_numpy(gy), stride, 1, 1,
                                      c).numpy()
    assert not np.isfinite(ref).all()
    if stride == 2:  # (at stride 1 every tap reads the bad element; at 2 only the centre's)
        assert np.isfinite(ref[0]).sum() == 8
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(dw[fin], ref[fin], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hw", [(4, 4), (5, 9), (7, 7), (14, 13), (3, 17)], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_nhwc_channel_blocks(hw, stride, dtype, path):
    """Depthwise 3x3 channels-last through blocks of 16 channels by 4 pixels (20 channels: the
    last block overlaps the first; the last pixel group overlaps the one before), with bias and
    relu, and NaNs at two corners that must reach exactly the outputs whose windows hold them."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1] + stride)
    c = 20
    case = (2, c, hw[0], hw[1], c, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), c)
    x, w, b = make(case, dtype, "NHWC", rng)
    check(fwd(x, w, b, case, "NHWC", "relu"), x, w, b, case, "NHWC", "relu")
    xn = x.copy()
    spots = [(1, 0, 0, 17), (0, hw[0] - 1, hw[1] - 1, 3)]
    for n, ih, iw, ch in spots:
        xn[n, ih, iw, ch] = np.nan
    y = fwd(xn, w, b, case, "NHWC")
    oh = np.arange(y.shape[1])[:, None] * stride - 1
    ow = np.arange(y.shape[2])[None, :] * stride - 1
    want = np.zeros(y.shape, bool)
    for n, ih, iw, ch in spots:
        want[n, :, :, ch] |= (oh <= ih) & (ih <= oh + 2) & (ow <= iw) & (iw <= ow + 2)
    assert np.array_equal(np.isnan(y), want)


@pytest.mark.parametrize("hw", [(3, 3), (4, 5), (7, 7), (14, 14), (9, 40)], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_backward_blocks(hw, stride, poison, dtype, path):
    """The depthwise 3x3 backward (dx as the stride-1 forward with the kernel turned, dW in
    vector blocks with per-lane sums; stride 2 through dy spread out to the input's size)
    against float64 autograd, and with every other channel of x and dy poisoned, the channels
    between them unchanged, exactly."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1] + stride)
    c = 6
    case = (3, c, hw[0], hw[1], c, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), c)
    x, w, _ = make(case, dtype, "NCHW", rng, bias=False)
    ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
    gy = rng.standard_normal((3, c, ho, wo)).astype(dtype)
    check_grads(x, w, gy, case, "NCHW")
    check_grads(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w,
                np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), case, "NHWC")
    geo = ((stride, stride), (1, 1, 1, 1), (1, 1), c)
    dx = conv2d_backward_input(gy, w, hw, *geo, "NCHW")
    dw = conv2d_backward_weight(x, gy, (3, 3), *geo, "NCHW")
    xp, gp = x.copy(), gy.copy()
    xp[:, ::2] = poison
    gp[:, ::2] = poison
    dxp = conv2d_backward_input(gp, w, hw, *geo, "NCHW")
    dwp = conv2d_backward_weight(xp, gp, (3, 3), *geo, "NCHW")
    np.testing.assert_array_equal(dxp[:, 1::2], dx[:, 1::2])
    np.testing.assert_array_equal(dwp[1::2], dw[1::2])


# --------------------------------------------------------------------------------------- hypothesis

@st.composite
def conv_problem(draw):
    """Random geometry, including empty batches, channels and reductions (N, C/groups or
    K/groups of 0), depthwise, strides, dilations and asymmetric padding larger than the kernel."""
    g = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(0, 5))
    kg = draw(st.integers(0, 5))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    st_ = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, dil[0] * (r - 1) + 1 - pad[0] - pad[1]), 12))
    w = draw(st.integers(max(1, dil[1] * (s - 1) + 1 - pad[2] - pad[3]), 12))
    n = draw(st.integers(0, 3))
    if draw(st.booleans()):  # depthwise
        g, cg = draw(st.integers(2, 6)), 1
    return (n, g * cg, h, w, g * kg, r, s, st_, pad, dil, g)


def view(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values as `a`, laid out as `kind`: contiguous, strided (every other element of a
    larger buffer) or reversed along its last two axes (negative strides)."""
    if kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "reversed":
        return np.ascontiguousarray(a[..., ::-1, ::-1])[..., ::-1, ::-1]
    return a


@settings(max_examples=60, deadline=None)
@given(case=conv_problem(), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(DTYPES), act=st.sampled_from(ACTS), bias=st.booleans(),
       x_view=st.sampled_from(["contiguous", "strided", "reversed"]),
       w_view=st.sampled_from(["contiguous", "strided", "reversed"]),
       poison=st.sampled_from([None, None, np.nan, np.inf, -np.inf]))
def test_random(case, layout, seed, dtype, act, bias, x_view, w_view, poison):
    rng = np.random.default_rng(seed)
    n, c, h, w_, k, r, s, st_, pad, dil, g = case
    x, w, b = make(case, dtype, layout, rng, bias=bias)
    if poison is not None and x.size:
        x.flat[rng.integers(x.size)] = poison
    x, w = view(x, x_view), view(w, w_view)
    for kernel in CONV_KERNELS:
        cfg = dataclasses.replace(TINY[dtype], kernel=kernel)
        check(fwd(x, w, b, case, layout, act, cfg), x, w, b, case, layout, act)
    y = fwd(x, w, None, case, layout)
    gy = rng.standard_normal(y.shape).astype(dtype)
    check_grads(x, w, gy, case, layout, TINY[dtype])


# ------------------------------------------------------------------------------- the shifted GEMM

def _conv_problem(op, n, c, hw, k, r, stride, layout, groups=1):
    from kernelkit.core import Problem
    from kernelkit.kernels.convgeom import ConvOptions

    ho = (hw + 2 * (r // 2) - r) // stride + 1
    opts = ConvOptions(stride=(stride, stride), padding=(r // 2,) * 4, dilation=(1, 1),
                       groups=groups)
    return Problem(op=op, shapes=((n, c, hw, hw), (k, c // groups, r, r), (n, k, ho, ho)),
                   dtype="float32", layout=layout, lib="numpy", device="cpu", options=opts)


@pytest.mark.parametrize("wide", [False, True], ids=["avx2-tile", "avx512-tile"])
@pytest.mark.parametrize("n, hw, taps, other", [
    (1, 56, 9, ("gemm", "gemm")), (2, 14, 9, ("shift", "gemm")), (8, 14, 9, ("gemm", "gemm")),
    (8, 7, 9, ("shift", "gemm")), (1, 7, 9, ("shift", "gemm")), (1, 7, 1, ("shift", "gemm"))])
def test_the_space_offers_the_algorithm_auto_does_not_pick(n, hw, taps, other, wide,
                                                            monkeypatch):
    """An NCHW forward (stride 1 or not) is tuned over both algorithms: the default config
    (kernel "auto": the measured rule of the tile width, ``_shift_by_default``) and, second, the
    default blocking with the other one; nothing else offers them."""
    monkeypatch.setattr(nc, "SHIFT_WIDE", wide)
    r = 3 if taps == 9 else 1
    space = nc.space(_conv_problem("conv2d", n, 64, hw, 64, r, 1, "NCHW"))
    assert space[0].kernel == "auto" and space[1].kernel == other[wide]
    assert (space[1].mc, space[1].kc, space[1].nc) == (space[0].mc, space[0].kc, space[0].nc)
    ho = (hw + 2 * (r // 2) - r) // 2 + 1
    strided = nc.space(_conv_problem("conv2d", n, 64, hw, 64, r, 2, "NCHW"))
    assert strided[1].kernel == ("gemm" if nc._shift_by_default(n, ho, ho, taps) else "shift")
    for problem in (_conv_problem("conv2d", 2, 64, hw, 64, 3, 1, "NHWC"),
                    _conv_problem("conv2d", 2, 64, hw, 64, 3, 1, "NCHW", groups=64),
                    _conv_problem("conv2d_backward_input", 2, 64, hw, 64, 3, 1, "NCHW")):
        assert {cfg.kernel for cfg in nc.space(problem)} == {"auto"}
    with pytest.raises(ValueError, match="kernel"):
        Conv2dConfig(8, 8, 8, "im2col")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("source", ["in_place", "padded_copy"])
@pytest.mark.parametrize("kernel", ["gemm", "shift"])
@pytest.mark.parametrize("hw", [(1, 1), (5, 3), (7, 7), (14, 14), (17, 23)], ids=str)
def test_every_output_element_is_written_on_small_planes(hw, kernel, source, dtype,
                                                         monkeypatch):
    """Into a poisoned output that must be overwritten everywhere, 3 images: the shifted GEMM
    reads an unpadded input with contiguous rows where it lies (the grid's last sliver, which
    would read past the array, through a copy) and anything else from a padded copy whose
    planes are spaced apart (16 x 16 planes are 1 KiB apart, the L1 aliasing case); the
    implicit GEMM runs its columns across the images on planes whose last sliver is mostly
    empty (1x1, 5x3, 7x7, 17x23), slivers that cross from one image to the next included."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 0)
    poison_allocations(monkeypatch)
    pad = (0, 0, 0, 0) if source == "in_place" else (1, 1, 1, 1)
    r = 1 if hw == (1, 1) else 3
    case = (3, 19, hw[0], hw[1], 13, r, r, (1, 1), pad if r == 3 else (0,) * 4, (1, 1), 1)
    rng = np.random.default_rng(hash(hw) % 2**32)
    x, w, b = make(case, dtype, "NCHW", rng)
    cfg = dataclasses.replace(TINY[dtype], kernel=kernel)
    check(fwd(x, w, b, case, "NCHW", "relu", cfg), x, w, b, case, "NCHW", "relu")
    strided = view(x, "strided")  # not unit-stride rows: always the padded copy
    check(fwd(strided, w, b, case, "NCHW", None, cfg), x, w, b, case, "NCHW")


EXACT_CASES = [
    (3, 19, 7, 7, 13, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # slivers cross images, K tail
    (5, 37, 5, 6, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # primes: several blocks
    (4, 12, 14, 14, 10, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride phases
    (3, 8, 9, 7, 12, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2),  # dilation, groups
    (2, 6, 6, 6, 7, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # x read in place
    (2, 5, 3, 4, 9, 5, 3, (1, 2), (2, 1, 1, 2), (1, 1), 1),  # 5x3, asymmetric padding
    (3, 17, 7, 9, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1
    (2, 16, 9, 9, 20, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),  # 1x1 stride 2
    (2, 8, 6, 6, 8, 1, 1, (1, 1), (1, 0, 1, 0), (1, 1), 2),  # 1x1 padded, groups
    (2, 5, 4, 41, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # output rows past 32 lanes
    (2, 4, 5, 70, 5, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride-2 rows past 16 lanes
    (2, 6, 8, 11, 7, 3, 3, (1, 3), (1, 1, 1, 1), (1, 1), 1),  # column stride 3
]


def _geo_modes(monkeypatch):
    """The geometry of every forward launch from here on (a list that fills)."""
    seen = []
    real_launch = nc._launch
    monkeypatch.setattr(nc, "_launch", lambda fn, tn, p, *a: seen.append(a[-1].copy())
                        or real_launch(fn, tn, p, *a))
    return seen


def _shift_case(case, dtype, threads, seed, monkeypatch):
    """(x, w, b, geos) for a shifted-GEMM test of ``case``: inputs from a seed of the case's
    sizes, one thread or every share threaded, the entry point compiled before the allocations
    are poisoned, and the list that fills with each launch's geometry."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 1 << 62 if threads == "serial" else 0)
    rng = np.random.default_rng(sum(case[:5]) + seed)
    x, w, b = make(case, dtype, "NCHW", rng)
    fwd(x, w, b, case, "NCHW")  # compiled before numpy's empty is poisoned
    poison_allocations(monkeypatch)
    return x, w, b, _geo_modes(monkeypatch)


def _check_shift_inputs(x, w, b, case, dtype, weights):
    """The shifted GEMM (TINY and default blocking) on ``case``: bias + relu, each of
    ``weights`` (views of ``w``), strided and channel-reversed inputs; NaN/Inf in x."""
    for cfg in (dataclasses.replace(TINY[dtype], kernel="shift"),
                dataclasses.replace(Conv2dConfig.default(dtype), kernel="shift")):
        check(fwd(x, w, b, case, "NCHW", "relu", cfg), x, w, b, case, "NCHW", "relu")
        for wv in weights:
            check(fwd(x, wv, b, case, "NCHW", None, cfg), x, w, b, case, "NCHW")
        for xx in (view(x, "strided"), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):
            check(fwd(xx, w, b, case, "NCHW", None, cfg), x, w, b, case, "NCHW")
    bad = x.copy()
    flat = bad.reshape(-1)
    flat[::17] = np.nan
    flat[3::23] = np.inf
    check(fwd(bad, w, b, case, "NCHW", None, TINY[dtype]), bad, w, b, case, "NCHW")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", ["packed", "in_place"])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
@pytest.mark.parametrize("case", EXACT_CASES, ids=_ids)
def test_shifted_gemm_exact_columns_across_images(case, threads, weight, dtype, monkeypatch):
    """The shifted GEMM with B packed over exact output columns across the images
    (``_conv._shift_exact_unit``), forced on every batch: slivers that cross from one image to
    the next, a last sliver of a few columns, channel and column blocks (TINY and default
    blocking), weight rows not a multiple of MR, stride phases, dilation, groups, x read in
    place, bias + relu; the weight packed or read where it lies (EXACT_INPLACE, a last sliver
    of fewer than MR rows through its copy); contiguous, strided and channel-reversed inputs,
    into poisoned outputs (an unwritten or doubly accumulated element shows), NaN/Inf in x as
    torch gives them."""
    from kernelkit.kernels.numba import _conv

    monkeypatch.setattr(nc, "SHIFT_EXACT_WASTE", 0.0)
    monkeypatch.setattr(nc, "EXACT_INPLACE", weight == "in_place")
    x, w, b, geos = _shift_case(case, dtype, threads, 7, monkeypatch)
    _check_shift_inputs(x, w, b, case, dtype, (w,))
    assert geos and all(g[_conv.G_MODE] == _conv.MODE_SHIFT and g[_conv.G_PACKB] == 1
                        for g in geos)
    assert all((g[_conv.G_AINPL] != 0) == (weight == "in_place") for g in geos)


@pytest.mark.parametrize("n, c, hw, r, stride, exact", [
    (8, 512, 7, 3, 1, True), (8, 512, 14, 3, 2, True), (8, 256, 14, 3, 1, False),
    (1, 512, 7, 3, 1, False), (8, 2048, 7, 1, 1, True), (8, 1024, 14, 1, 2, True),
    (8, 1024, 14, 1, 1, False), (8, 128, 28, 3, 1, False),
    (8, 64, 56, 3, 1, False)])
def test_exact_columns_where_the_grid_wastes_slivers(n, c, hw, r, stride, exact):
    """The shifted GEMM packs B over exact columns where the images' grids would take 20% more
    slivers or more (a batch of 7x7 3x3 outputs: 8x8 grids), not on 14x14 ones (14x15 grids),
    not at batch 1 (one image's columns either way), not on large planes, not where the packed
    B would pass SHIFT_EXACT_MAX_BYTES; 1x1 layers alike."""
    from kernelkit.kernels.numba import _conv

    x = np.zeros((n, c, hw, hw), np.float32)
    cfg = dataclasses.replace(Conv2dConfig.default(np.float32), kernel="shift")

    def geometry():
        return nc._float_geometry(x.shape, x.strides, x.dtype, (c, c, r, r), (stride, stride),
                                  (r // 2,) * 4, (1, 1), 1, 0, 0, False, cfg, 2, nc._knobs())

    fg = geometry()
    assert fg.mode == _conv.MODE_SHIFT
    assert fg.geo[_conv.G_PACKB] == int(exact)
    if exact:  # past the bytes its packed B may take, the grid again
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nc, "SHIFT_EXACT_MAX_BYTES", fg.xp_size * 4 - 1)
            over = geometry()
            assert over.mode == _conv.MODE_SHIFT and over.geo[_conv.G_PACKB] == 0
    if exact:  # B is packed whole and shared: two threads split the rows where they
        # outnumber the columns (even shares of 12-row slivers), else the columns
        rows_first = c > n * (hw // stride) ** 2
        assert (fg.geo[_conv.G_PM], fg.geo[_conv.G_PN]) == ((2, 1) if rows_first else (1, 2))
        nr = nc.tile_shape(np.float32)[1]
        assert fg.xp_size == c * r * r * -(-n * (hw // stride) ** 2 // nr) * nr


INPLACE_CASES = EXACT_CASES + [
    (1, 29, 8, 8, 31, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # batch 1, K tail of 7 rows
    (1, 40, 7, 7, 25, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride 2 at 7 px
    (1, 64, 7, 7, 130, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1, x in place
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", ["serial", "parallel"])
@pytest.mark.parametrize("rows", ["where_they_lie", "through_a_copy"])
@pytest.mark.parametrize("case", INPLACE_CASES, ids=_ids)
def test_shifted_gemm_reads_the_weight_in_place(case, rows, threads, dtype, monkeypatch):
    """The shifted GEMM reading the weight where it lies (``_conv._taps``, geo[G_AINPL]),
    forced on, its rows read where they lie or through a copy of each sliver of rows
    (``_conv._sliver_rows``: every row stride counted as aliasing): rows a sliver at a time, a
    last sliver of fewer than MR rows, channel blocks (TINY and default blocking), the grid's
    dropped columns, stride phases, dilation, groups, x read in place, 1x1, bias + relu; a
    weight that is a reversed view, and strided and channel-reversed inputs, into poisoned
    outputs; NaN/Inf in x. Then forced off for the same case: the packed weight again."""
    from kernelkit.kernels.numba import _conv

    copy = rows == "through_a_copy"
    monkeypatch.setattr(nc, "SHIFT_INPLACE_SLIVERS", 1 << 30)
    monkeypatch.setattr(nc, "SHIFT_EXACT_WASTE", float("inf"))
    monkeypatch.setattr(nc, "SHIFT_ALIAS_BYTES", np.dtype(dtype).itemsize if copy else 1 << 62)
    x, w, b, geos = _shift_case(case, dtype, threads, 11, monkeypatch)
    w_rev = np.ascontiguousarray(w[::-1])[::-1]  # the same weight, negative row strides
    _check_shift_inputs(x, w, b, case, dtype, (w, w_rev))
    mode = _conv.AINPL_COPY if copy else _conv.AINPL_ROWS
    assert geos and all(g[_conv.G_MODE] == _conv.MODE_SHIFT and g[_conv.G_AINPL] == mode
                        and g[_conv.G_MC] == nc.tile_shape(dtype)[0] for g in geos)
    monkeypatch.setattr(nc, "SHIFT_INPLACE_SLIVERS", 0)
    geos.clear()  # (the shifted GEMM asked for: "auto" runs the implicit GEMM on small planes
    shift = dataclasses.replace(TINY[dtype], kernel="shift")  # where a tile is 16 wide, AVX2)
    check(fwd(x, w, b, case, "NCHW", "relu", shift), x, w, b, case, "NCHW", "relu")
    assert geos and geos[-1][_conv.G_AINPL] == 0


def _poison_scratch(monkeypatch):
    """The launchers' per-thread scratch (packed weights, padded copies) full of NaN (float) or
    0xFF (uint8) on every call, so that a word of a padded copy no one wrote shows."""

    def scratch(size, dtype):
        dtype = np.dtype(dtype)
        return np.full(int(size), np.nan if dtype.kind == "f" else 0xFF, dtype)

    monkeypatch.setattr(nc, "_scratch", scratch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sw", [1, 2])
@pytest.mark.parametrize("sh", [1, 2])
@pytest.mark.parametrize("width", [1, 2, 5, 15, 16, 17, 31, 32, 33, 34, 64, 67])
def test_padded_copy_rows_through_masked_vectors(width, sh, sw, dtype, monkeypatch):
    """The shifted GEMM's padded copy, a row at a time through masked vector loads and stores:
    at column stride 1 16 words at a time (``_conv._pad_row``, ``_gemm.pad_row``), at column
    stride 2 both column phases from one read of 32 (``_conv._pair_row``,
    ``_gemm.deinterleave2``). Rows narrower than one load, exactly one, one and a word,
    several; left and right padding of 0-3 (a row or a phase starting or ending in the
    padding), row stride 1 and 2, a 1x1 kernel (one phase read), dilation 2, an even kernel;
    the scratch the copy lives in full of NaN first, outputs poisoned, against float64; NaN and
    Inf in x where torch gives them."""
    from kernelkit.kernels.numba import _conv

    cfg = dataclasses.replace(Conv2dConfig.default(dtype), kernel="shift")
    rng = np.random.default_rng(width * 10 + sh * 3 + sw)
    warm = (1, 3, 4, 67, 5, 3, 3, (1, 1), (0,) * 4, (1, 1), 1)
    x0, w0, b0 = make(warm, dtype, "NCHW", rng)
    fwd(x0, w0, b0, warm, "NCHW")  # compiled before the allocations are poisoned
    poison_allocations(monkeypatch)
    _poison_scratch(monkeypatch)
    geos = _geo_modes(monkeypatch)
    for r, s_, pad, dil in [(3, 3, (1, 1, 1, 1), (1, 1)), (3, 3, (0, 2, 0, 3), (1, 1)),
                            (3, 3, (2, 0, 3, 2), (1, 1)), (1, 1, (0, 1, 1, 0), (1, 1)),
                            (3, 3, (2, 2, 2, 2), (2, 2)), (2, 4, (1, 0, 3, 1), (1, 1))]:
        case = (2, 3, 5, width, 7, r, s_, (sh, sw), pad, dil, 1)
        if width + pad[2] + pad[3] - dil[1] * (s_ - 1) - 1 < 0:
            continue  # no output column
        x, w, b = make(case, dtype, "NCHW", rng)
        geos.clear()
        check(fwd(x, w, b, case, "NCHW", "relu", cfg), x, w, b, case, "NCHW", "relu")
        bad = x.copy()
        bad.reshape(-1)[::13] = np.nan
        bad.reshape(-1)[5::17] = -np.inf
        check(fwd(bad, w, b, case, "NCHW", None, cfg), bad, w, b, case, "NCHW")
        # (a stride past the input's span is the span: one output column either way)
        used_sw = nc.useful_stride((sh, sw), (5, width), (r, s_), pad, dil)[1]
        assert geos and all(g[_conv.G_MODE] == _conv.MODE_SHIFT and g[_conv.G_SW] == used_sw
                            and g[_conv.G_DIRECT] == 0 for g in geos)  # (every case pads)


# A last sliver's columns, per class of ``_conv._piece`` for a tile of NR columns: a quarter
# tile, a half, a half and a quarter (NR / 2 + 1 ... 3 NR / 4), a whole one; the bounds of each.
NARROW_TAILS = {"1": lambda nr: 1, "quarter": lambda nr: nr // 4,
                "quarter+1": lambda nr: nr // 4 + 1, "half": lambda nr: nr // 2,
                "half+1": lambda nr: nr // 2 + 1, "3quarters": lambda nr: 3 * nr // 4,
                "3quarters+1": lambda nr: 3 * nr // 4 + 1, "nr-1": lambda nr: nr - 1}


def _narrow_case(shape, cols):
    """A case whose shifted GEMM ends on a sliver of ``cols`` columns (past whole slivers):
    "direct" a 1x1 conv on x in place (one row of output), "grid" a 3x3 conv whose grid's
    dropped columns go through the scratch, "phases" the same at stride 2 (a stride phase of
    the padded copy), "exact" B packed over exact columns across images of one pixel each."""
    k = 13  # a sliver of MR (12, 6 or 4) rows and a last one of fewer
    return {"direct": (1, 5, 1, cols, k, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
            "grid": (1, 5, 1, cols, k, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
            "phases": (1, 5, 2, 2 * cols, k, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
            "exact": (cols, 5, 1, 1, k, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)}[shape]


@pytest.mark.parametrize("bits", [512, 256, 128])
def test_narrow_taps_tiles_type_on_every_target(bits, monkeypatch):
    """``_conv._taps`` branches at run time between the whole, half and quarter taps
    micro-kernels, so all three compile into every float entry point and each must type on
    every target's register tile (AVX-512, AVX2, SSE), not only on this machine's: float64's
    quarter tile is 4 lanes with AVX-512, 2 with AVX2 (an xmm), 1 with SSE."""
    from numba import types

    from kernelkit.kernels.numba import _gemm

    mr = {512: 12, 256: 6, 128: 4}[bits]
    tiles = {"float32": (mr, 2 * bits // 32), "float64": (mr, 2 * bits // 64),
             "uint32": (mr, 2 * bits // 32)}
    monkeypatch.setattr(_gemm, "TILE", tiles)
    toffs = types.Array(types.int64, 1, "C")
    for name, nbtype in (("float32", types.float32), ("float64", types.float64)):
        arr = types.Array(nbtype, 1, "C")
        for parts in (1, 2, 4):
            assert _gemm._taps_tile(parts, toffs, (arr, arr, arr)) == (
                mr, tiles[name][1] // parts), (name, parts)
    f32 = types.Array(types.float32, 1, "C")
    assert _gemm._taps_tile(1, types.Array(types.int32, 1, "C"), (f32, f32, f32)) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", ["packed", "in_place"])
@pytest.mark.parametrize("shape", ["direct", "grid", "phases", "exact"])
@pytest.mark.parametrize("tail", list(NARROW_TAILS))
def test_shifted_gemm_last_columns_on_narrow_tiles(tail, shape, weight, dtype, monkeypatch):
    """A last sliver of fewer than NR columns on tiles of NR / 2 and NR / 4 columns
    (``_conv._piece``, geo[G_NARROW]), for every class of column count and its bounds, after
    one and two whole slivers: in place or through the scratch of a grid's dropped columns, on
    a stride phase, over exact columns; the weight packed or read where it lies (in rows, and
    a last sliver of fewer than MR rows); into poisoned outputs, one thread and two, bias +
    relu and NaN/Inf in x, against float64; the same with the narrow tiles turned off."""
    from kernelkit.kernels.numba import _conv

    nr = nc.tile_shape(dtype)[1]
    monkeypatch.setattr(nc, "SHIFT_INPLACE_SLIVERS", 1 << 30 if weight == "in_place" else 0)
    monkeypatch.setattr(nc, "EXACT_INPLACE", weight == "in_place")
    monkeypatch.setattr(nc, "SHIFT_EXACT_WASTE", 0.0 if shape == "exact" else float("inf"))
    cfg = dataclasses.replace(Conv2dConfig.default(dtype), kernel="shift")
    for whole in (1, 2):
        case = _narrow_case(shape, whole * nr + NARROW_TAILS[tail](nr))
        for threads in ("serial", "parallel"):
            with monkeypatch.context() as mp:
                x, w, b, geos = _shift_case(case, dtype, threads, whole, mp)
                check(fwd(x, w, b, case, "NCHW", "relu", cfg), x, w, b, case, "NCHW", "relu")
                bad = x.copy()
                bad.reshape(-1)[::7] = np.nan
                bad.reshape(-1)[3::11] = np.inf
                check(fwd(bad, w, b, case, "NCHW", None, cfg), bad, w, b, case, "NCHW")
                mp.setattr(nc, "SHIFT_NARROW_TAIL", False)
                check(fwd(x, w, b, case, "NCHW", None, cfg), x, w, b, case, "NCHW")
        assert len(geos) == 3 and all(g[_conv.G_MODE] == _conv.MODE_SHIFT for g in geos)
        assert [g[_conv.G_NARROW] for g in geos] == [1, 1, 0]
        assert all(g[_conv.G_PACKB] == (shape == "exact") for g in geos)
        assert all((g[_conv.G_AINPL] != 0) == (weight == "in_place") for g in geos)
        if shape != "exact":
            assert all((g[_conv.G_GW] != g[_conv.G_WO]) == (shape != "direct") for g in geos)


@pytest.mark.parametrize("n, c, hw, r, stride, inplace", [
    (1, 512, 7, 3, 1, "rows"), (1, 512, 14, 3, 2, "rows"), (1, 256, 14, 3, 1, "rows"),
    (1, 2048, 7, 1, 1, "copy"), (1, 1024, 14, 1, 2, "copy"), (2, 512, 7, 3, 1, "rows"),
    (1, 128, 28, 3, 1, None), (1, 64, 56, 3, 1, None), (8, 256, 14, 3, 1, None),
    (1, 1024, 14, 1, 1, "copy"), (1, 256, 14, 1, 1, "rows"), (1, 512, 7, 1, 1, "rows"),
    (8, 512, 7, 3, 1, "exact"), (8, 2048, 7, 1, 1, None), (8, 512, 14, 3, 2, "exact")])
def test_weight_read_in_place_where_it_meets_few_slivers(n, c, hw, r, stride, inplace):
    """The shifted GEMM reads the weight where it lies where a sliver of its rows meets at most
    SHIFT_INPLACE_SLIVERS column slivers over the batch (batch 1 up to 14 px, batch 2 at 7
    px), and packs it where the packing is shared by more (28 px and up, batch 8); nothing of
    the weight to pack then. A batch of 8 at 7 px takes the exact columns, whose one packed B
    every row sliver shares: read in place there too ("exact", EXACT_INPLACE), but for rows a
    multiple of 4 KiB apart (2048 channels 1x1), packed. Elsewhere such rows (1x1 layers of
    1024 and 2048 channels) are read through a copy of each sliver of rows; with that copy
    turned off, such rows are read in place only over two slivers (at 14 px, seven: packed)."""
    from kernelkit.kernels.numba import _conv

    x = np.zeros((n, c, hw, hw), np.float32)
    cfg = dataclasses.replace(Conv2dConfig.default(np.float32), kernel="shift")

    def geometry():
        return nc._float_geometry(x.shape, x.strides, x.dtype, (c, c, r, r), (stride, stride),
                                  (r // 2,) * 4, (1, 1), 1, 0, 0, False, cfg, 2, nc._knobs())

    fg = geometry()
    assert fg.mode == _conv.MODE_SHIFT
    assert fg.geo[_conv.G_PACKB] == (inplace == "exact" or (n, c, hw, r) == (8, 2048, 7, 1))
    modes = {None: 0, "rows": _conv.AINPL_ROWS, "copy": _conv.AINPL_COPY,
             "exact": _conv.AINPL_ROWS}
    assert fg.geo[_conv.G_AINPL] == modes[inplace]
    assert (fg.wsize == 0) == (inplace is not None)
    if inplace == "exact":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nc, "EXACT_INPLACE", False)
            assert geometry().geo[_conv.G_AINPL] == 0 and geometry().wsize > 0
    if inplace == "copy":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nc, "SHIFT_INPLACE_COPY", False)
            fg_off = geometry()
        assert fg_off.geo[_conv.G_AINPL] == (_conv.AINPL_ROWS if hw // stride <= 7 else 0)
    if inplace in ("rows", "copy"):  # a sliver of rows at a time (exact: blocked as packed)
        assert fg.geo[_conv.G_MC] == nc.tile_shape(np.float32)[0]
    if inplace:
        assert fg.geo[_conv.G_XPOFF] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    (2, 5, 15, 16, 7, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    (1, 3, 23, 22, 8, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    (2, 6, 13, 17, 9, 3, 3, (2, 3), (1, 0, 2, 1), (2, 1), 1),
    (2, 8, 12, 12, 10, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1), 2),
    (3, 4, 9, 9, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
], ids=["1x1-s2", "stem-7x7-s2", "s2x3-dilated-asym", "s3-groups", "3x3-s2-odd"])
def test_shifted_gemm_over_stride_phases(case, dtype, monkeypatch):
    """Strided convolutions through the shifted GEMM (each tap a shift within one stride phase
    of the padded copy) into a poisoned output: a 1x1 stride 2 (one phase read, the others
    never written), ResNet's 7x7 stem, mixed strides with dilation and asymmetric padding,
    stride 3 with groups, odd planes; strided and channel-reversed inputs too."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 0)
    poison_allocations(monkeypatch)
    rng = np.random.default_rng(sum(case[:5]))
    x, w, b = make(case, dtype, "NCHW", rng)
    for cfg in (dataclasses.replace(TINY[dtype], kernel="shift"),
                dataclasses.replace(Conv2dConfig.default(dtype), kernel="shift")):
        check(fwd(x, w, b, case, "NCHW", "relu", cfg), x, w, b, case, "NCHW", "relu")
        for xx in (view(x, "strided"), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):
            check(fwd(xx, w, b, case, "NCHW", None, cfg), x, w, b, case, "NCHW")


@pytest.mark.parametrize("w_in", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("left, right", [(0, 0), (1, 1), (2, 0), (0, 3), (3, 3)])
def test_stride2_column_pairs_at_every_border(w_in, left, right, monkeypatch):
    """The padded copy of a stride-2 conv with unit-stride rows fills both column phases from
    one read of each pair (``_conv._pad_rows2``): every width and left/right padding, where one
    phase has columns the other lacks at either end; poisoned output, float32, 3 and 4 wide."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 0)
    poison_allocations(monkeypatch)
    rng = np.random.default_rng(w_in * 100 + left * 10 + right)
    for s_ in (3, 4):
        if w_in + left + right < s_:
            continue
        case = (2, 3, 5, w_in, 4, 3, s_, (2, 2), (1, 1, left, right), (1, 1), 1)
        x, w, b = make(case, np.float32, "NCHW", rng)
        check(fwd(x, w, b, case, "NCHW", None, dataclasses.replace(TINY[np.float32],
                                                                 kernel="shift")),
              x, w, b, case, "NCHW")


def test_config_free_depthwise_problems_are_timed_once():
    """Every config runs the same kernel on a depthwise forward and on the 3x3 pad-1 stride-1/2
    depthwise backward ops (dW in NCHW): the tuner's space for them is one config, where a plain
    conv and a depthwise 5x5 backward keep their blocking variants."""
    from kernelkit.ops.conv2d import (
        prepare_backward_input,
        prepare_backward_weight,
        prepare_forward,
    )

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 14, 14)).astype(np.float32)
    w3 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w5 = rng.standard_normal((16, 1, 5, 5)).astype(np.float32)
    wfull = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    for st_ in (1, 2):
        ho = (14 - 1) // st_ + 1
        gy = rng.standard_normal((2, 16, ho, ho)).astype(np.float32)
        one = [prepare_forward(x, w3, stride=st_, padding=1, groups=16),
               prepare_backward_input(gy, w3, x.shape, stride=st_, padding=1, groups=16),
               prepare_backward_weight(x, gy, w3.shape, stride=st_, padding=1, groups=16)]
        for call in one:
            assert len(nc.space(call.problem)) == 1, call.problem.op
    gy5 = rng.standard_normal((2, 16, 14, 14)).astype(np.float32)
    many = [prepare_forward(x, wfull, stride=1, padding=1),
            prepare_backward_input(gy5, w5, x.shape, stride=1, padding=2, groups=16),
            prepare_backward_weight(x, gy5, w5.shape, stride=1, padding=2, groups=16)]
    for call in many:
        assert len(nc.space(call.problem)) > 1, call.problem.op


@pytest.mark.parametrize("l1", [32 << 10, 48 << 10])
@pytest.mark.parametrize("itemsize, nr", [(4, 32), (4, 16), (8, 16)])
def test_shifted_gemm_channel_block_fits_its_taps_in_l1(l1, itemsize, nr, monkeypatch):
    """A 1x1 kernel keeps SHIFT_KC channels per block; a wider kernel takes fewer, so that the
    block's B sliver under every tap (R row segments of NR + S - 1 elements per channel) fits
    L1; never more than the channels or the config's kc, never below 8 (or the channels)."""
    monkeypatch.setattr(nc, "_l1_bytes", lambda: l1)
    for r in (1, 3, 5, 7):
        for cg in (1, 3, 64, 512, 2048):
            kc = nc._shift_kc(cg, 1024, r, r, 1, itemsize, nr)
            footprint = kc * r * -(-(nr + r - 1) * itemsize // 64) * 64
            assert 1 <= kc <= min(cg, nc.SHIFT_KC)
            assert footprint <= l1 or kc <= 8 or kc == cg < 8
            if r == 1 and cg >= nc.SHIFT_KC and nr * itemsize <= 2 * 64:
                assert kc == nc.SHIFT_KC
            assert nc._shift_kc(cg, 16, r, r, 1, itemsize, nr) <= 16
    monkeypatch.setattr(nc, "_l1_bytes", lambda: 48 << 10)
    assert 48 <= nc._shift_kc(512, 1024, 3, 3, 1, 4, 32) <= 96  # the 3x3 layers measured


def test_float_geometry_is_kept_per_signature_thread_count_and_knob(monkeypatch):
    """The forward keeps its geometry per signature (`_float_geometry`): a change of the thread
    count or of a module knob between two calls of one signature must give the new geometry,
    never the kept one (the `path` and `kernel` fixtures above rely on it)."""
    import numba

    from kernelkit.kernels.numba import _conv

    rng = np.random.default_rng(11)
    case = (2, 16, 12, 12, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    x, w, b = make(case, np.float32, "NCHW", rng)
    seen = []
    real_run, real_launch = nc._run, nc._launch
    monkeypatch.setattr(nc, "_run", lambda fn, tn, *a: seen.append((tn, a[-2][_conv.G_MODE]))
                        or real_run(fn, tn, *a))
    monkeypatch.setattr(nc, "_launch", lambda fn, tn, p, *a: seen.append((tn, a[-1][_conv.G_MODE]))
                        or real_launch(fn, tn, p, *a))

    def run():
        seen.clear()
        check(fwd(x, w, b, case, "NCHW"), x, w, b, case, "NCHW")
        return seen[-1]

    monkeypatch.setattr(nc, "SHIFT_WIDE", True)  # "auto": the shifted GEMM
    monkeypatch.setattr(nc, "SERIAL_WORK", 1 << 62)
    assert run() == (1, _conv.MODE_SHIFT)
    monkeypatch.setattr(nc, "SHIFT_WIDE", False)  # the implicit GEMM on this small plane
    monkeypatch.setattr(nc, "SHIFT_MIN_PIXELS", 1 << 62)
    assert run() == (1, _conv.MODE_KP)
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    threads = numba.get_num_threads()
    assert run() == (threads, _conv.MODE_KP)
    if threads > 1:  # (the CI machine has 2 cores)
        numba.set_num_threads(1)
        try:
            assert run() == (1, _conv.MODE_KP)
        finally:
            numba.set_num_threads(threads)
    hits = nc._float_geometry.cache_info().hits
    run()
    assert nc._float_geometry.cache_info().hits == hits + 1


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("h", [1, 3])
@pytest.mark.parametrize("pad", [(t, b, l, r) for t in (0, 2) for b in (0, 2) for l in (0, 1)
                                 for r in (0, 3)], ids=lambda p: "p" + "".join(map(str, p)))
def test_one_by_one_padded_on_any_side_reads_only_its_input(pad, h, n, kernel):
    """A 1x1 stride-1 conv read its plane as a plain (C, H*W) matrix when its top and left
    padding were 0, whatever the bottom and right: padding below (or right of a 1-row input)
    read Ho x Wo pixels from an H x W plane, past its end (garbage; a large pad segfaulted,
    through `explain` and under tune=measure). The rows past the input here are NaN."""
    c, w, k = 3, 4, 5
    rng = np.random.default_rng(sum(pad) + h)
    buf = np.full((n, c, h + 6, w), np.nan, np.float32)
    buf[:, :, :h] = rng.standard_normal((n, c, h, w))
    x = buf[:, :, :h]  # its rows are contiguous: what made the plain plane look right
    wt = rng.standard_normal((k, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    case = (n, c, h, w, k, 1, 1, (1, 1), pad, (1, 1), 1)
    default = Conv2dConfig.default(np.float32)
    for config in (None, dataclasses.replace(default, kernel="gemm")):
        check(fwd(x, wt, b, case, "NCHW", config=config), x, wt, b, case, "NCHW")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride", [(1 << 16, 1 << 16), (9, 2), (1 << 20, 1)],
                         ids=["2^16", "9x2", "2^20x1"])
@pytest.mark.parametrize("n, pad", [(1, (0, 0, 0, 0)), (2, (1, 1, 1, 1))])
def test_a_stride_past_the_input_costs_no_more_than_one_window(stride, layout, n, pad):
    """A stride beyond the padded input leaves one output row (column); it still sized the
    shifted GEMM's stride-phase scratch by stride squared: 2**16 on a 7 x 7 image asked for
    48 GiB (a MemoryError; torch computes it). Forward (the default config and the shifted
    GEMM's) and both gradients against float64."""
    case = (n, 3, 7, 7, 4, 3, 3, stride, pad, (1, 1), 1)
    rng = np.random.default_rng(sum(stride) % 97)
    x, w, b = make(case, np.float32, layout, rng)
    shift = dataclasses.replace(Conv2dConfig.default(np.float32), kernel="shift")
    for config in (None, shift):
        y = fwd(x, w, b, case, layout, config=config)
        check(y, x, w, b, case, layout)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    check_grads(x, w, gy, case, layout)


# ------------------------------------------------------------------------------ pixel-rows conv
# one group, float32 (the rows kernel's domain), and shapes that cross its tiles: 12 pixel rows
# and 32 output channels a tile where AVX-512 sets them (primes, K past one sliver, batch
# tiles that straddle images)
ROWS_CASES = [c for c in CASES if c[10] == 1] + [
    (3, 29, 7, 7, 37, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 19, 14, 14, 70, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (5, 7, 5, 3, 33, 1, 3, (1, 2), (0, 2, 1, 0), (1, 1), 1),
]
ROWS = dataclasses.replace(Conv2dConfig.default(np.float32), kernel="rows")


@pytest.fixture(params=["default", "tiny"])
def rows_blocks(request, monkeypatch):
    """The pixel-rows conv's own blocking, or one tile and a few channels a block (every tile
    block and channel block boundary crossed)."""
    if request.param == "tiny":
        monkeypatch.setattr(nc, "ROWS_TILES", 1)
        monkeypatch.setattr(nc, "ROWS_L2_SHARE", 1 << 40)  # (one channel a block)
    return request.param


def poison_rows_scratch(monkeypatch):
    """The per-thread scratch the pixel-rows conv takes (padded copy, C tiles, weight slivers)
    and its outputs start as NaN."""
    nc._rows_compiled()
    poison_allocations(monkeypatch)
    monkeypatch.setattr(nc, "_scratch", lambda size, dtype: np.full(int(size), np.nan, dtype))


@pytest.mark.parametrize("act", [None, "relu", "gelu_tanh"])
@pytest.mark.parametrize("case", ROWS_CASES, ids=_ids)
def test_pixel_rows_conv(case, act, path, rows_blocks, monkeypatch):
    """Config kernel "rows" against float64, with and without a bias, every element written
    (outputs and scratch poisoned), one thread or two, the default blocks and tiny ones."""
    poison_rows_scratch(monkeypatch)
    ran = []
    real = nc._conv_rows
    monkeypatch.setattr(nc, "_conv_rows", lambda *a: ran.append(1) or real(*a))
    rng = np.random.default_rng(abs(hash((case, act))) % 2**32)
    x, w, b = make(case, np.float32, "NCHW", rng)
    check(fwd(x, w, b, case, "NCHW", act, ROWS), x, w, b, case, "NCHW", act)
    check(fwd(x, w, None, case, "NCHW", act, ROWS), x, w, None, case, "NCHW", act)
    assert len(ran) == 2  # (the rows kernel, not a fallback)


def test_pixel_rows_conv_reads_any_strides():
    """Transposed, negative-stride and sliced inputs and weights (read through 4-D views)."""
    rng = np.random.default_rng(11)
    case = (3, 10, 9, 8, 35, 3, 3, (1, 2), (1, 2, 0, 1), (2, 1), 1)
    x = rng.standard_normal((3, 8, 9, 10)).astype(np.float32).transpose(0, 3, 2, 1)[:, :, ::-1]
    w = rng.standard_normal((35, 3, 3, 20)).astype(np.float32).transpose(0, 3, 1, 2)[:, ::2]
    b = rng.standard_normal(70).astype(np.float32)[::2]
    check(fwd(x, w, b, case, "NCHW", "silu", ROWS), x, w, b, case, "NCHW", "silu")


@pytest.mark.parametrize("case", [ROWS_CASES[-3], CASES[4]], ids=_ids)
def test_pixel_rows_conv_nan_inf(case):
    """NaN/Inf in x and in the weight propagate as in torch (0 * Inf in the padding is NaN)."""
    rng = np.random.default_rng(5)
    x, w, b = make(case, np.float32, "NCHW", rng)
    flat = x.reshape(-1)
    flat[::7] = np.nan
    flat[3::11] = np.inf
    flat[5::13] = -np.inf
    check(fwd(x, w, b, case, "NCHW", None, ROWS), x, w, b, case, "NCHW")
    x, w, b = make(case, np.float32, "NCHW", rng)
    w.reshape(-1)[1] = np.inf
    check(fwd(x, w, b, case, "NCHW", None, ROWS), x, w, b, case, "NCHW")


@pytest.mark.parametrize("taps, hw, stride, kept, want", [
    (9, 7, 1, True, True), (9, 8, 1, True, True), (9, 9, 1, True, False), (1, 7, 1, True, False),
    (9, 7, 1, False, False), (4, 1, 1, True, True), (9, 7, 2, True, False)])
def test_auto_runs_the_pixel_rows_conv_on_small_planes_with_a_kept_weight(taps, hw, stride, kept,
                                                                          want):
    """Config kernel "auto": the pixel-rows conv only where the packed weight is kept, for more
    than one tap, stride 1, on planes of at most ROWS_MAX_PLANE output pixels
    (docs/performance.md)."""
    assert nc._rows_by_default(taps, hw, hw, (stride, stride), kept) is want
