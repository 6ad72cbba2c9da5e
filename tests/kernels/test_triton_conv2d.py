"""The Triton conv2d kernels: correctness (interpreter on CPU, or a real GPU) and compile checks.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest.py) on CPU tensors:
one program costs 15-45 ms there, so shapes are small and blocks large. bfloat16 goes through the
launchers' float32 cast for the interpreter's ``tl.dot``. The forward is checked against the
float64 reference of tests/reference.py; both backward passes against torch autograd in float64,
normwise (scaled by the same gradients of |inputs|). The compile tests build every shipped config
for sm_80 and sm_90 in child processes without the interpreter (tests/triton_compile.py).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from reference import (  # noqa: E402
    CONV_MOBILENET_DW,
    CONV_RESNET50,
    assert_conv2d_close,
    matmul_bound,
)
from triton_runtime import DEVICE, needs_runtime  # noqa: E402

import kernelkit.kernels.triton.conv2d as tc  # noqa: E402
from kernelkit.kernels import ACTIVATIONS  # noqa: E402
from kernelkit.kernels.convgeom import nchw_shape  # noqa: E402
from kernelkit.kernels.triton.conv2d import (  # noqa: E402
    SHIPPED_CONFIGS,
    Conv2dConfig,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
    kernel_kind,
    shipped_configs,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered in exp:RuntimeWarning")  # numpy's exp in the interpreter


# Big blocks: few interpreted programs. SMALL has several tiles in M and N and GROUP_M=2.
BIG = Conv2dConfig(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2)
SMALL = Conv2dConfig(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=2)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(DEVICE)


def _to_layout(x_nchw: torch.Tensor, layout: str) -> torch.Tensor:
    return x_nchw.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else x_nchw


def _nchw(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if layout == "NHWC" else t


def _grads_f64(x, w, go, stride, padding, dilation, groups, layout):
    """(grad_in, grad_weight) of conv2d in float64 by autograd, and the same for |x|, |w|, |go|
    (the scale of a normwise check). x, go in ``layout``; padding (top, bottom, left, right)."""
    top, bottom, left, right = padding
    out = []
    for f in (lambda t: t, torch.abs):
        xd = f(_nchw(x, layout).detach().cpu().double()).requires_grad_()
        wd = f(w.detach().cpu().double()).requires_grad_()
        y = F.conv2d(F.pad(xd, (left, right, top, bottom)), wd, None, stride, 0, dilation, groups)
        y.backward(f(_nchw(go, layout).detach().cpu().double()))
        dx = xd.grad.permute(0, 2, 3, 1) if layout == "NHWC" else xd.grad
        out.append((dx, wd.grad))
    return out


def _assert_grad_close(got, ref, scale, k: int, what: str) -> None:
    got64 = got.detach().cpu().double()
    assert got64.shape == ref.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    dt = str(got.dtype).replace("torch.", "")
    err = float(((got64 - ref).abs() / scale.clamp_min(1.0)).max())
    bound = 1.2 * matmul_bound(k, "float32", dt)
    assert err <= bound, f"{what}: normwise error {err:.3e} > bound {bound:.3e} (K={k}, {dt})"


def _check_all(n, c, h, w, k, r, s, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
               groups=1, layout="NCHW", dtype=torch.float32, bias=True, activation=None,
               config=None, backward=True, seed=0, x=None, weight=None):
    """Forward against the float64 reference, and both backward passes against autograd."""
    if x is None:
        x = _to_layout(_rand(n, c, h, w, dtype=dtype, seed=seed), layout)
    if weight is None:
        weight = _rand(k, c // groups, r, s, dtype=dtype, seed=seed + 1)
    b = _rand(k, dtype=dtype, seed=seed + 2) if bias else None
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = conv2d_forward(x, weight, b, activation=activation, layout=layout, config=config, **conv)
    assert y.dtype == dtype and y.is_contiguous()
    assert_conv2d_close(y, x, weight, b, activation=activation, layout=layout, **conv)
    if not backward:
        return
    go = _rand(*y.shape, dtype=dtype, seed=seed + 3)
    (dx_ref, dw_ref), (dx_scale, dw_scale) = _grads_f64(x, weight, go, stride, padding, dilation,
                                                        groups, layout)
    dx = conv2d_backward_input(go, weight, (h, w), layout=layout, config=config, **conv)
    assert dx.dtype == dtype and dx.is_contiguous() and dx.shape == x.shape
    _assert_grad_close(dx, dx_ref, dx_scale, (k // groups) * r * s, "grad_input")
    dw = conv2d_backward_weight(x, go, (r, s), layout=layout, config=config, **conv)
    assert dw.dtype == dtype and dw.is_contiguous() and dw.shape == weight.shape
    p = y.numel() // k
    _assert_grad_close(dw, dw_ref, dw_scale, p, "grad_weight")


# ---------------------------------------------------------------------------------------------
# Correctness

# (name, (n, c, h, w, k, r, s), conv kwargs). Every case runs forward and both backwards.
CASES = [
    ("3x3", (2, 16, 9, 10, 32, 3, 3), dict(padding=(1, 1, 1, 1))),
    ("3x3_stride2", (2, 16, 9, 10, 32, 3, 3), dict(stride=(2, 2), padding=(1, 1, 1, 1))),
    ("1x1", (2, 32, 6, 7, 48, 1, 1), {}),
    ("1x1_stride2", (2, 32, 7, 7, 16, 1, 1), dict(stride=(2, 2))),
    ("dilation2", (1, 16, 11, 9, 16, 3, 3), dict(dilation=(2, 2), padding=(2, 2, 2, 2))),
    ("asym_pad_stride", (1, 16, 8, 9, 16, 3, 2), dict(stride=(2, 3), padding=(0, 2, 1, 0),
                                                      dilation=(1, 2))),
    ("pad_gt_kernel", (1, 16, 4, 5, 16, 2, 2), dict(padding=(3, 2, 4, 3))),
    ("groups2", (2, 32, 7, 7, 32, 3, 3), dict(groups=2, padding=(1, 1, 1, 1))),
    ("stem_flat_k", (1, 3, 9, 8, 16, 5, 5), dict(stride=(2, 2), padding=(2, 2, 2, 2))),
    ("depthwise", (2, 24, 9, 8, 24, 3, 3), dict(groups=24, padding=(1, 1, 1, 1))),
    ("depthwise_s2", (2, 24, 9, 8, 24, 3, 3), dict(groups=24, stride=(2, 2), padding=(1, 1, 1, 1))),
    ("depthwise_mult2", (1, 8, 7, 7, 16, 3, 3), dict(groups=8, padding=(0, 1, 1, 0),
                                                     dilation=(2, 1))),
    ("resnext_g4", (1, 16, 6, 6, 16, 3, 3), dict(groups=4, padding=(1, 1, 1, 1))),
]


@needs_runtime
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_backward(case, dtype, layout):
    _, dims, conv = case
    _check_all(*dims, layout=layout, dtype=dtype, config=BIG, **conv)


@needs_runtime
@pytest.mark.parametrize("case", [CASES[1], CASES[8], CASES[10]], ids=["gemm", "flat_k", "direct"])
def test_bfloat16(case):
    _, dims, conv = case
    _check_all(*dims, layout="NHWC", dtype=torch.bfloat16, config=BIG, **conv)


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_small_tiles_and_grouped_order(dtype):
    # 2*9*10 = 180 output pixels over 32-row tiles, 32 channels over 16-column tiles, GROUP_M=2.
    _check_all(2, 32, 9, 10, 32, 3, 3, padding=(1, 1, 1, 1), layout="NHWC", dtype=dtype,
               config=SMALL)


@needs_runtime
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
@pytest.mark.parametrize("kind", ["gemm", "direct"])
def test_bias_and_activations(kind, activation):
    dims = (1, 16, 6, 7, 32, 3, 3) if kind == "gemm" else (1, 32, 6, 7, 32, 3, 3)
    groups = 1 if kind == "gemm" else 32
    assert kernel_kind(dims[1], dims[4], 3, 3, groups) == kind
    for dtype in (torch.float32, torch.float16):
        _check_all(*dims, groups=groups, padding=(1, 1, 1, 1), dtype=dtype, activation=activation,
                   layout="NHWC", config=BIG, backward=False)


@needs_runtime
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_non_contiguous_operands(layout):
    # x: every other column and a channel slice; weight: stored (K, R, S, C) and (K, C, S, R).
    n, c, h, w, k = 2, 16, 7, 6, 32
    big = _rand(n, c + 3, h, 2 * w, seed=4)
    x = _to_layout(big, layout)
    x = x[:, 1:c + 1, :, ::2] if layout == "NCHW" else x[:, :, ::2, 1:c + 1]
    assert not x.is_contiguous()
    w_krsc = _rand(k, 3, 3, c, seed=5).permute(0, 3, 1, 2)  # channels_last weight
    _check_all(n, c, h, w, k, 3, 3, padding=(1, 1, 1, 1), layout=layout, config=BIG, x=x,
               weight=w_krsc)
    w_kcsr = _rand(k, c, 3, 3, seed=6).transpose(2, 3)
    _check_all(n, c, h, w, k, 3, 3, stride=(2, 1), layout=layout, config=BIG, x=x, weight=w_kcsr)
    # depthwise with a strided x
    dw = _rand(c, 1, 3, 3, seed=7)
    _check_all(n, c, h, w, c, 3, 3, groups=c, padding=(1, 1, 1, 1), layout=layout, config=BIG,
               x=x, weight=dw)


@needs_runtime
@pytest.mark.parametrize("split_k", [1, 3, 64])
def test_backward_weight_split(split_k):
    x = _to_layout(_rand(2, 16, 9, 9, seed=8), "NHWC")
    weight = _rand(32, 16, 3, 3, seed=9)
    go = _rand(2, 9, 9, 32, seed=10)
    conv = dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    (_, dw_ref), (_, dw_scale) = _grads_f64(x, weight, go, layout="NHWC", **conv)
    dw = conv2d_backward_weight(x, go, (3, 3), layout="NHWC", config=SMALL, split_k=split_k, **conv)
    _assert_grad_close(dw, dw_ref, dw_scale, 2 * 81, f"grad_weight split_k={split_k}")
    dwx = _rand(16, 1, 3, 3, seed=11)
    (_, dw_ref), (_, dw_scale) = _grads_f64(x, dwx, go[..., :16], layout="NHWC",
                                            **{**conv, "groups": 16})
    dw = conv2d_backward_weight(x, go[..., :16], (3, 3), layout="NHWC", config=SMALL,
                                split_k=split_k, **{**conv, "groups": 16})
    _assert_grad_close(dw, dw_ref, dw_scale, 2 * 81, f"depthwise grad_weight split_k={split_k}")


@needs_runtime
def test_resnet_and_mobilenet_layers_shrunk():
    # The shape-set geometry (kernel, stride, padding, groups) on shrunken images and channels.
    for c, k, hw, ks, st, pad in (CONV_RESNET50[0], CONV_RESNET50[6]):
        c2, k2 = min(c, 32), min(k, 32)
        _check_all(1, c2, min(hw, 12), min(hw, 12), k2, ks, ks, stride=(st, st),
                   padding=(pad,) * 4, layout="NHWC", dtype=torch.float16, config=BIG,
                   backward=c2 >= 16)
    c, hw, st = CONV_MOBILENET_DW[1]
    _check_all(2, 32, 10, 10, 32, 3, 3, stride=(st, st), padding=(1, 1, 1, 1), groups=32,
               layout="NHWC", dtype=torch.float16, config=BIG)


@needs_runtime
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on purpose
def test_nan_and_inf_propagate():
    x = _rand(1, 16, 6, 6, seed=12)
    w = _rand(16, 16, 3, 3, seed=13)
    x[0, 3, 2, 2] = float("nan")
    x[0, 5, 4, 4] = float("inf")
    for groups, wt in ((1, w), (16, w[:, :1])):
        y = conv2d_forward(x, wt, None, (1, 1), (1, 1, 1, 1), (1, 1), groups, "relu", "NCHW",
                           config=BIG)
        assert_conv2d_close(y, x, wt, None, padding=(1, 1, 1, 1), groups=groups,
                            activation="relu")


@needs_runtime
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on purpose
def test_a_non_finite_weight_leaves_the_direct_input_gradient_finite_where_torchs_is(stride):
    # the direct backward multiplied its masked taps' zero dy by the weight: one NaN or Inf
    # weight made every dx pixel NaN, where torch's are NaN or Inf only where its taps land
    # (found by review). (The GEMM kernel still does: its dot cannot mask per row.)
    dy = _rand(1, 8, 5 if stride == 1 else 3, 5 if stride == 1 else 3, seed=21)
    w = _rand(8, 1, 3, 3, seed=22)
    w[0, 0, 2, 2] = float("nan")
    w[3, 0, 0, 1] = float("inf")
    conv = dict(stride=(stride, stride), padding=(1, 1, 1, 1), groups=8)
    assert kernel_kind(8, 8, 3, 3, 8) == "direct"
    dx = conv2d_backward_input(dy, w, (5, 5), config=BIG, **conv)
    want = torch.nn.grad.conv2d_input((1, 8, 5, 5), w.double(), dy.double(), stride=stride,
                                      padding=1, groups=8)
    assert torch.isfinite(want).any() and not torch.isfinite(want).all()
    torch.testing.assert_close(dx.double(), want, rtol=1e-4, atol=1e-4, equal_nan=True)


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_shipped_config(dtype):
    for kind, dims, groups in (("gemm", (1, 24, 7, 6, 40, 3, 3), 1),
                               ("direct", (1, 40, 7, 6, 40, 3, 3), 40)):
        for cfg in shipped_configs(dtype, kind):
            _check_all(*dims, groups=groups, padding=(1, 1, 0, 1), layout="NHWC", dtype=dtype,
                       activation="silu", config=cfg, backward=cfg == shipped_configs(dtype, kind)[0])


@needs_runtime
def test_default_configs_are_used():
    _check_all(1, 16, 5, 5, 16, 3, 3, padding=(1, 1, 1, 1), dtype=torch.float16)
    _check_all(1, 16, 5, 5, 16, 3, 3, groups=16, padding=(1, 1, 1, 1), dtype=torch.float16)


@needs_runtime
def test_tf32_is_opt_in():
    x = _rand(1, 32, 6, 6, seed=14)
    w = _rand(32, 32, 3, 3, seed=15)
    y = conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None, "NCHW", config=BIG,
                       allow_tf32=True)
    assert_conv2d_close(y, x, w, None, padding=(1, 1, 1, 1), acc="tf32")
    y = conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None, "NCHW", config=BIG)
    assert_conv2d_close(y, x, w, None, padding=(1, 1, 1, 1), acc="float32")


@needs_runtime
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_empty_batch_and_channels(layout, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("no kernel may launch for an empty result")

    for name in ("conv2d_fwd_kernel", "conv2d_fwd_direct_kernel", "conv2d_bwd_input_kernel",
                 "conv2d_bwd_input_direct_kernel", "conv2d_bwd_weight_kernel",
                 "conv2d_bwd_weight_direct_kernel"):
        monkeypatch.setattr(tc, name, NoLaunch())
    x = _to_layout(torch.empty(0, 16, 5, 5, device=DEVICE), layout)
    w = _rand(32, 16, 3, 3)
    conv = dict(stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, layout=layout)
    y = conv2d_forward(x, w, None, activation="relu", **conv)
    assert tuple(nchw_shape(y.shape, layout)) == (0, 32, 3, 3)
    dx = conv2d_backward_input(y, w, (5, 5), **conv)
    assert dx.shape == x.shape
    dw = conv2d_backward_weight(x, y, (3, 3), **conv)
    assert dw.shape == w.shape and (dw == 0).all()  # a sum over nothing


@needs_runtime
def test_zero_input_channels_give_activation_of_bias():
    x = torch.empty(1, 0, 4, 4, device=DEVICE)
    w = torch.empty(16, 0, 3, 3, device=DEVICE)
    bias = _rand(16, seed=3)
    y = conv2d_forward(x, w, bias, (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", "NCHW")
    expect = torch.relu(bias).reshape(1, 16, 1, 1).expand(1, 16, 4, 4)
    assert torch.equal(y, expect)


@needs_runtime
@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda x, w: conv2d_forward(x.numpy() if x.device.type == "cpu" else x.cpu(), w), TypeError),
        (lambda x, w: conv2d_forward(x[0], w), ValueError),
        (lambda x, w: conv2d_forward(x.double(), w.double()), TypeError),
        (lambda x, w: conv2d_forward(x, w.half()), TypeError),
        (lambda x, w: conv2d_forward(x, w[:, :3]), ValueError),
        (lambda x, w: conv2d_forward(x, w, groups=3), ValueError),
        (lambda x, w: conv2d_forward(x, w, torch.zeros(3, device=x.device)), ValueError),
        (lambda x, w: conv2d_forward(x, w, activation="tanh"), ValueError),
        (lambda x, w: conv2d_forward(x, w, layout="NCWH"), ValueError),
        (lambda x, w: conv2d_forward(x, w, stride=(0, 1)), ValueError),
        (lambda x, w: conv2d_forward(x, w, padding=(1, 1, 1)), ValueError),
        (lambda x, w: conv2d_forward(x, w, padding=(-1, 0, 0, 0)), ValueError),
        (lambda x, w: conv2d_forward(x[:, :, :2], w), ValueError),  # output would be empty
        (lambda x, w: conv2d_forward(x, w, config={"BLOCK_M": 32}), TypeError),
        (lambda x, w: conv2d_backward_input(x, w, (9, 9)), ValueError),  # grad_out has C, not K
        (lambda x, w: conv2d_backward_weight(x, x, (3, 3)), ValueError),
        (lambda x, w: conv2d_backward_weight(x, x[:, :8, :3, :3], (3, 3), split_k=0), ValueError),
        # (were taken: True as one split, "no" as TF32 on; a negative size failed in torch.empty)
        (lambda x, w: conv2d_backward_weight(x, x[:, :8, :3, :3], (3, 3), split_k=True),
         ValueError),
        (lambda x, w: conv2d_forward(x, w, allow_tf32="no"), TypeError),
        (lambda x, w: conv2d_backward_input(_rand(2, 8, 3, 5), w, (-1, 5), padding=(3, 3, 1, 1)),
         ValueError),
    ],
)
def test_bad_arguments(call, exc):
    x = _rand(2, 4, 5, 5)
    w = _rand(8, 4, 3, 3)
    with pytest.raises(exc, match="conv2d"):
        call(x, w)


# ---------------------------------------------------------------------------------------------
# Configs as data


def test_config_round_trip():
    for cfg in SHIPPED_CONFIGS:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert Conv2dConfig.from_dict(d) == cfg and hash(Conv2dConfig.from_dict(d)) == hash(cfg)
    with pytest.raises(ValueError):
        Conv2dConfig.from_dict({"BLOCK_M": 64})
    with pytest.raises(ValueError):
        Conv2dConfig.from_dict({**SHIPPED_CONFIGS[0].to_dict(), "extra": 1})
    with pytest.raises(ValueError):
        Conv2dConfig(BLOCK_M=48, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    with pytest.raises(ValueError):
        Conv2dConfig(BLOCK_M=64, BLOCK_N=64, BLOCK_K=8, GROUP_M=8, num_warps=4, num_stages=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_space(dtype):
    for c, k, hw, ks, st, _ in CONV_RESNET50:
        for n in (1, 32):
            space = Conv2dConfig.space(dtype, n, c, hw, hw, k, ks, ks, st, 1)
            assert space[0] == Conv2dConfig.default(dtype, "gemm")
            assert 1 <= len(space) <= 6 and len(set(space)) == len(space)
            assert set(space) <= set(shipped_configs(dtype, "gemm"))
    for c, hw, st in CONV_MOBILENET_DW:
        space = Conv2dConfig.space(dtype, 8, c, hw, hw, c, 3, 3, (st, st), c)
        assert space[0] == Conv2dConfig.default(dtype, "direct")
        assert set(space) <= set(shipped_configs(dtype, "direct"))
    tiny = Conv2dConfig.space(dtype, 1, 16, 3, 3, 16, 1, 1, 1, 1)
    smallest_m = min(c.BLOCK_M for c in shipped_configs(dtype, "gemm"))
    assert tiny[0] == Conv2dConfig.default(dtype) and all(smallest_m == c.BLOCK_M for c in tiny[1:])
    limited = Conv2dConfig.space(dtype, 32, 256, 56, 56, 256, 3, 3, 1, 1, max_shared=101376)
    assert all(c.shared_bytes(dtype) <= 101376 for c in limited)
    assert set(SHIPPED_CONFIGS) == {c for d in DTYPES for kd in ("gemm", "direct")
                                    for c in shipped_configs(d, kd)}


def test_kernel_kind():
    assert kernel_kind(64, 64, 3, 3, 1) == "gemm"
    assert kernel_kind(3, 64, 7, 7, 1) == "gemm"  # FLAT_K: 147-long reduction
    assert kernel_kind(32, 32, 3, 3, 32) == "direct"  # depthwise
    assert kernel_kind(128, 128, 3, 3, 32) == "direct"  # ResNeXt: 4 channels per group
    assert kernel_kind(8, 64, 1, 1, 1) == "direct"  # 8-long reduction


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        Conv2dConfig.default(torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        Conv2dConfig.space(torch.int8, 1, 8, 8, 8, 8, 3, 3)


# ---------------------------------------------------------------------------------------------
# Compile checks: every shipped config, for sm_80 and sm_90, without a GPU
#
# One session-scoped batch of compiles in child processes, with the specialisation the runtime
# makes for NHWC activations with 16-aligned channel counts, a channels_last weight (K, R, S, C),
# stride 1 and dilation 1 (ints equal to 1 become constants; multiples of 16 get the divisibility
# hint), a 3x3 kernel, and the heaviest epilogue (bias + exact gelu).

TARGETS = (80, 90)
TL_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_UNIT_STRIDES = ("stride_xc", "stride_wc", "stride_bk", "stride_yk", "stride_dyk", "stride_dxc",
                 "stride_dws", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W")
_NOT_ALIGNED = ("PAD_T", "PAD_L", "H", "W", "Ho", "Wo", "P_PER_SPLIT")


def _job(fn_name, dtype, cc, cfg, *, r=3, s=3, extra=None, label="", sass=False, asm=()):
    from triton_compile import CompileJob

    fn = getattr(tc, fn_name)
    names = list(fn.arg_names)
    constexprs = {"R": r, "S": s, "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N}
    for name, value in (("BLOCK_K", cfg.BLOCK_K), ("GROUP_M", cfg.GROUP_M), ("FLAT_K", False),
                        ("HAS_BIAS", True), ("ACTIVATION", "gelu"), ("INPUT_PRECISION", "ieee"),
                        ("DOT_IN_FP32", False), ("INDEX_I64", False)):
        if name in names:
            constexprs[name] = value
    constexprs.update({n: 1 for n in _UNIT_STRIDES if n in names})
    constexprs.update(extra or {})
    ptr = "*" + TL_TYPES[dtype]
    signature, aligned = {}, []
    for name in names:
        if name in constexprs:
            continue
        if name.endswith("_ptr"):
            # backward weight with split_k > 1 writes float32 partial sums
            signature[name] = "*fp32" if name == "dw_ptr" and dtype != torch.float32 else ptr
            aligned.append(name)
        else:
            signature[name] = "i32"
            if name not in _NOT_ALIGNED:
                aligned.append(name)
    return CompileJob("kernelkit.kernels.triton.conv2d", fn_name, signature, constexprs, cc=cc,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      divisible_by_16=tuple(aligned), sass=sass, asm=asm, label=label)


def _label(fn_name, kind, cc, cfg):
    return (f"{fn_name}/{kind}/sm_{cc}/{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} "
            f"g{cfg.GROUP_M} w{cfg.num_warps} s{cfg.num_stages}")


GEMM_KERNELS = ("conv2d_fwd_kernel", "conv2d_bwd_input_kernel", "conv2d_bwd_weight_kernel")
DIRECT_KERNELS = ("conv2d_fwd_direct_kernel", "conv2d_bwd_input_direct_kernel",
                  "conv2d_bwd_weight_direct_kernel")
COMPILE_DTYPES = (torch.float16, torch.float32)


@pytest.fixture(scope="session")
def compiled():
    """{label: CompileResult} for every shipped config of every kernel, fp16 and fp32."""
    import triton
    from triton_compile import compile_many

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not all(os.path.exists(os.path.join(tools, t)) for t in ("ptxas", "cuobjdump")):
        pytest.skip(f"this triton wheel has no NVIDIA ptxas/cuobjdump in {tools}")
    jobs = []
    for dtype in COMPILE_DTYPES:
        kind = TL_TYPES[dtype]
        for cc in TARGETS:
            for cfg in shipped_configs(dtype, "gemm"):
                default = cfg == Conv2dConfig.default(dtype)
                for fn in GEMM_KERNELS:
                    jobs.append(_job(fn, dtype, cc, cfg, label=_label(fn, kind, cc, cfg),
                                     sass=default and cc == 90 and fn == GEMM_KERNELS[0]))
            for cfg in shipped_configs(dtype, "direct"):
                # backward weight's direct kernel holds one tile and no unrolled taps (about 100
                # registers for every config): its default stands for the others
                fns = DIRECT_KERNELS if cfg == Conv2dConfig.default(dtype, "direct") else \
                    DIRECT_KERNELS[:2]
                for fn in fns:
                    jobs.append(_job(fn, dtype, cc, cfg, label=_label(fn, kind, cc, cfg)))
    # The default fp16 config: the stem's FLAT_K path (7x7), bf16, TF32, and 64-bit indexing.
    d16, d32 = Conv2dConfig.default(torch.float16), Conv2dConfig.default(torch.float32)
    jobs.append(_job("conv2d_fwd_kernel", torch.float16, 90, d16, r=7, s=7,
                     extra={"FLAT_K": True}, label="flat_k"))
    jobs.append(_job("conv2d_fwd_kernel", torch.bfloat16, 90, d16, label="bf16", sass=True))
    jobs.append(_job("conv2d_fwd_kernel", torch.float32, 90, d32,
                     extra={"INPUT_PRECISION": "tf32"}, label="tf32", sass=True))
    jobs.append(_job("conv2d_fwd_kernel", torch.float16, 90, d16, extra={"INDEX_I64": True},
                     label="index_i64"))
    return {job.label: res for job, res in zip(jobs, compile_many(jobs), strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm_{cc}")
@pytest.mark.parametrize("dtype", COMPILE_DTYPES, ids=str)
def test_shipped_configs_compile_fit_and_do_not_spill(compiled, dtype, cc):
    from triton_compile import SHARED_MEMORY_LIMIT

    kind = TL_TYPES[dtype]
    for family, kernels in (("gemm", GEMM_KERNELS), ("direct", DIRECT_KERNELS)):
        for cfg in shipped_configs(dtype, family):
            for fn in kernels:
                if _label(fn, kind, cc, cfg) not in compiled:
                    continue
                res = compiled[_label(fn, kind, cc, cfg)]
                assert res.ok, f"{fn} {cfg} failed to compile for sm_{cc}:\n{res.error}"
                md = res.metadata
                assert md["shared"] <= SHARED_MEMORY_LIMIT[cc], (fn, cfg, md["shared"])
                if family == "gemm":
                    # the estimate that Conv2dConfig.space prunes with must not undercount
                    assert md["shared"] <= cfg.shared_bytes(dtype), (fn, cfg, md["shared"])
                assert md["stack"] == 0 and md["local"] == 0, f"{fn} {cfg} spills on sm_{cc}: {md}"


@pytest.mark.slow
def test_hopper_uses_wgmma_and_variants_compile(compiled):
    d16 = Conv2dConfig.default(torch.float16)
    assert "HGMMA" in compiled[_label(GEMM_KERNELS[0], "fp16", 90, d16)].asm["sass"]
    assert "HGMMA" in compiled["bf16"].asm["sass"]
    assert "HGMMA" in compiled["tf32"].asm["sass"]
    ieee = compiled[_label(GEMM_KERNELS[0], "fp32", 90, Conv2dConfig.default(torch.float32))]
    assert "HGMMA" not in ieee.asm["sass"] and "HMMA" not in ieee.asm["sass"]
    for label in ("flat_k", "bf16", "tf32"):
        assert compiled[label].ok, f"{label}:\n{compiled[label].error}"
        assert compiled[label].metadata["stack"] == 0, (label, compiled[label].metadata)
    assert compiled["index_i64"].ok, compiled["index_i64"].error  # a rare fallback: may spill



@needs_runtime
def test_lazily_negated_operands_are_read_with_their_values():
    """A view torch negates lazily (``torch._neg_view``, ``x.conj().imag``) holds the un-negated
    values in memory, which the kernels read: forward and both backward ops must see the values
    (before, each came out with the wrong sign)."""
    x, wt, go = _rand(2, 16, 9, 10, seed=1), _rand(32, 16, 3, 3, seed=2), _rand(2, 32, 9, 10, seed=3)
    bias = _rand(32, seed=4)
    neg = lambda t: torch._neg_view(-t)
    conv = dict(padding=(1, 1, 1, 1))
    want = tc.conv2d_forward(x, wt, bias, config=BIG, **conv)
    got = tc.conv2d_forward(neg(x), neg(wt), neg(bias), config=BIG, **conv)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(tc.conv2d_backward_input(neg(go), neg(wt), (9, 10), config=BIG, **conv),
                               tc.conv2d_backward_input(go, wt, (9, 10), config=BIG, **conv))
    torch.testing.assert_close(tc.conv2d_backward_weight(neg(x), neg(go), (3, 3), config=BIG, **conv),
                               tc.conv2d_backward_weight(x, go, (3, 3), config=BIG, **conv))


@needs_runtime
@pytest.mark.parametrize("case", ["3x3", "depthwise", "depthwise_s2", "groups2"])
def test_64_bit_indexing_gives_the_same_results(case, monkeypatch):
    """Every kernel's INDEX_I64 path (taken for tensors past 2**30 elements), forced on small
    tensors: the same conv, forward and both backwards, as the float64 reference."""
    monkeypatch.setattr(tc, "INT32_MAX", 64)
    _, dims, conv = next(c for c in CASES if c[0] == case)
    _check_all(*dims, dtype=torch.float32, config=SMALL, **conv)


@pytest.mark.slow
def test_64_bit_indexing_forms_the_pixel_index_in_64_bits():
    """With INDEX_I64 the direct kernels formed offs_m = pid_m * BLOCK_M + arange in int32 and
    widened it only after: past 2**31 output pixels (x (2049, 1, 1024, 1024) fp16, 3x3,
    padding 1) it wrapped negative, and the store went before y (an H100 would fault or corrupt
    another tensor). Read from the kernels' TTIR for sm_90 (no GPU needed)."""
    import re

    from triton_compile import compile_many

    direct = Conv2dConfig.default(torch.float16, "direct")
    gemm = Conv2dConfig.default(torch.float16)
    jobs = [_job(fn, torch.float16, 90, cfg, extra={"INDEX_I64": i64}, asm=("ttir",),
                 label=f"{fn} {i64}")
            for fn, cfg in (("conv2d_fwd_direct_kernel", direct),
                            ("conv2d_bwd_input_direct_kernel", direct),
                            ("conv2d_fwd_kernel", gemm), ("conv2d_bwd_input_kernel", gemm))
            for i64 in (True, False)]
    for job, res in zip(jobs, compile_many(jobs), strict=True):
        assert res.ok, f"{job.label}:\n{res.error}"
        types = re.findall(r"%offs_m\w* = arith\.(?:muli|addi) [^:]*: (\S+)", res.asm["ttir"])
        assert types, job.label  # (the check reads the value it means to)
        wide = [t.endswith(("i64", "i64>")) for t in types]
        assert all(wide) if job.constexprs["INDEX_I64"] else not any(wide), (job.label, types)
