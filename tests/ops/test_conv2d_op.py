"""kernelkit.conv2d and its backward ops through the ops layer: CPU backends, layouts, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import CONV_MOBILENET_DW, CONV_RESNET50, assert_conv2d_close, conv2d_ref

import kernelkit
from kernelkit.kernels import ACTIVATIONS

CPU_BACKENDS = ["numba", "torch"]

# (N, C, H, W, K, R, S, stride, padding, dilation, groups), named by intent
ODD = {
    "1x1-image": (1, 3, 1, 1, 2, 1, 1, 1, 0, 1, 1),
    "primes": (2, 5, 13, 11, 7, 3, 3, 1, 1, 1, 1),
    "c1-k1": (1, 1, 7, 9, 1, 3, 3, 1, 0, 1, 1),
    "stride2": (2, 4, 15, 17, 6, 3, 3, 2, 1, 1, 1),
    "dilation2": (1, 3, 16, 16, 5, 3, 3, 1, 2, 2, 1),
    "groups": (2, 6, 10, 10, 9, 3, 3, 1, 1, 1, 3),
    "depthwise": (2, 8, 12, 12, 8, 3, 3, 1, 1, 1, 8),
    "depthwise-mult": (1, 4, 9, 9, 8, 3, 3, 2, 1, 1, 4),
    "1x1": (2, 16, 7, 7, 24, 1, 1, 1, 0, 1, 1),
    "1x1-stride2": (2, 16, 8, 8, 8, 1, 1, 2, 0, 1, 1),
    "pad-gt-kernel": (1, 2, 5, 5, 3, 3, 3, 1, 4, 1, 1),
    "rect-kernel": (1, 3, 11, 8, 4, 5, 2, (2, 1), (2, 1), 1, 1),
    "same-even": (1, 3, 8, 8, 4, 4, 4, 1, "same", 1, 1),
    "asym-pad": (1, 2, 6, 7, 3, 3, 3, 1, (0, 2, 1, 0), 1, 1),
}


def rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def make(case, rng, dtype=np.float32):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x = rand(rng, (n, c, h, w), dtype)
    wt = rand(rng, (k, c // groups, r, s), dtype)
    return x, wt, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def ref_padding(padding, r, s, dilation=1):
    """The (top, bottom, left, right) the reference needs for 'same'."""
    if padding != "same":
        return padding
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    th, tw = d[0] * (r - 1), d[1] * (s - 1)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", list(ODD))
def test_torchs_candidate_gives_torchs_own_conv_exactly(name, weight_layout, activation, rng):
    """The torch candidate's plan (one closure over torch's conv where the problem allows it:
    NCHW, symmetric padding, a non-empty reduction) computes exactly what torch's own conv does,
    in the memory format torch gives, on every odd geometry (asymmetric padding and "same" with
    an even kernel take the general path)."""
    x, w, conv = make(ODD[name], rng)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if weight_layout == "channels_last":
        wt = wt.to(memory_format=torch.channels_last)
    bt = torch.randn(wt.shape[0])
    with kernelkit.use(backend="torch"):
        got = kernelkit.conv2d(xt, wt, bt, activation=activation, **conv)
        again = kernelkit.conv2d(xt, wt, bt, activation=activation, **conv)  # the memoised plan
    pad = ref_padding(conv["padding"], *w.shape[2:], conv["dilation"])
    if not isinstance(pad, str) and len(np.atleast_1d(pad)) == 4:
        top, bottom, left, right = pad
        want = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, conv["stride"], 0,
                        conv["dilation"], conv["groups"])
    else:
        want = F.conv2d(xt, wt, bt, conv["stride"], pad, conv["dilation"], conv["groups"])
    if activation == "gelu":
        want = F.gelu(want)
    for y in (got, again):
        assert torch.equal(y, want)
        assert _memory_format(y) == _memory_format(want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(ODD))
def test_forward_odd(backend, dtype, name, rng):
    x, w, conv = make(ODD[name], rng, dtype)
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, **conv)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    conv["padding"] = ref_padding(conv["padding"], *w.shape[2:], conv["dilation"])
    assert_conv2d_close(y, x, w, **conv)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_bias_activation_nhwc_and_noncontiguous(backend, activation, rng):
    x, w, conv = make(ODD["primes"], rng)
    bias = rand(rng, (w.shape[0],))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    x_nc = rand(rng, (2, 10, 13, 11))[:, ::2]  # non-contiguous channels
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, bias, activation=activation, **conv)
        y_nhwc = kernelkit.conv2d(x_nhwc, w, bias, activation=activation, layout="NHWC", **conv)
        y_nc = kernelkit.conv2d(x_nc, w, bias, activation=activation, **conv)
    assert_conv2d_close(y, x, w, bias, activation=activation, **conv)
    assert y_nhwc.shape == (2, 13, 11, 7)
    assert_conv2d_close(y_nhwc, x_nhwc, w, bias, activation=activation, layout="NHWC", **conv)
    assert_conv2d_close(y_nc, x_nc, w, bias, activation=activation, **conv)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_channels_last_keeps_its_layout(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 6, 3, 3, generator=g)
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, padding=1)
    assert y.shape == (2, 4, 9, 9) and y.is_contiguous(memory_format=torch.channels_last)
    assert_conv2d_close(y, x, w, padding=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layer", CONV_RESNET50, ids=lambda l: "x".join(map(str, l)))
def test_resnet50_layers_batch1(backend, layer, rng):
    c, k, hw, r, stride, pad = layer
    x, w = rand(rng, (1, c, hw, hw)), rand(rng, (k, c, r, r)) * 0.05
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, stride=stride, padding=pad)
    assert_conv2d_close(y, x, w, stride=stride, padding=pad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layer", [CONV_RESNET50[2], CONV_RESNET50[6], CONV_RESNET50[13]],
                         ids=lambda l: "x".join(map(str, l)))
def test_resnet50_layers_batch8(backend, layer, rng):
    c, k, hw, r, stride, pad = layer
    x, w = rand(rng, (8, c, hw, hw)), rand(rng, (k, c, r, r)) * 0.05
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, stride=stride, padding=pad, activation="relu")
    assert_conv2d_close(y, x, w, stride=stride, padding=pad, activation="relu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layer", CONV_MOBILENET_DW[::3], ids=str)
def test_mobilenet_depthwise(backend, layer, rng):
    c, hw, stride = layer
    x, w = rand(rng, (2, c, hw, hw)), rand(rng, (c, 1, 3, 3))
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, stride=stride, padding=1, groups=c)
    assert_conv2d_close(y, x, w, stride=stride, padding=1, groups=c)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_inf_and_empty_batch(backend, rng):
    x, w, conv = make(ODD["primes"], rng)
    x[0, 1, 4, 4] = np.nan
    x[1, 0, 0, 0] = np.inf
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, **conv)
        empty = kernelkit.conv2d(x[:0], w, **conv)
    ref = conv2d_ref(x, w, **conv)
    assert np.array_equal(np.isnan(y), np.isnan(ref)) and np.array_equal(np.isinf(y), np.isinf(ref))
    assert np.isfinite(ref).sum() > ref.size // 2  # the values around the NaN/Inf reach, too:
    assert_conv2d_close(y, x, w, **conv)
    assert empty.shape == (0, 7, 13, 11)


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("kind", ["numpy", "torch", "nhwc"])
def test_one_image_without_a_batch_dim_as_f_conv2d(kind, backend, rng):
    # F.conv2d (and the patched nn.Conv2d) take (C, H, W); the op raised "'x' must be 4-D"
    x, w, b = rand(rng, (3, 9, 7)), rand(rng, (4, 3, 3, 3)), rand(rng, (4,))
    want = F.conv2d(*(torch.from_numpy(t).double() for t in (x, w, b)), stride=2, padding=1)
    args = {"numpy": (x, w, b), "torch": tuple(map(torch.from_numpy, (x, w, b))),
            "nhwc": (np.ascontiguousarray(x.transpose(1, 2, 0)), w, b)}[kind]
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(*args, stride=2, padding=1, activation="relu",
                             layout="NHWC" if kind == "nhwc" else None)
    y = np.asarray(y)
    if kind == "nhwc":
        y = y.transpose(2, 0, 1)
    assert y.shape == (4, 5, 4)
    np.testing.assert_allclose(y, F.relu(want).numpy(), rtol=1e-4, atol=1e-4)


def test_explain_takes_one_image_as_the_op_does(rng):
    # the op took (C, H, W) but kernelkit.explain of the same call raised "'x' must be 4-D"
    x, w = rand(rng, (3, 9, 7)), rand(rng, (4, 3, 3, 3))
    with kernelkit.use(tune="model"):
        one = kernelkit.explain("conv2d", x, w, stride=2, padding=1)
        batched = kernelkit.explain("conv2d", x[None], w, stride=2, padding=1)
    assert one.problem.shapes == batched.problem.shapes == ((1, 3, 9, 7), (4, 3, 3, 3), (1, 4, 5, 4))
    assert one.key == batched.key


def test_vmap_over_images_as_over_f_conv2d(rng):
    # vmap hands the op one (C, H, W) image at a time: "'x' must be 4-D" before
    xs, w = torch.from_numpy(rand(rng, (5, 3, 8, 8))), torch.from_numpy(rand(rng, (4, 3, 3, 3)))
    y = torch.func.vmap(lambda x: kernelkit.conv2d(x, w, padding=1))(xs)
    torch.testing.assert_close(y, F.conv2d(xs, w, padding=1), rtol=1e-4, atol=1e-4)


def _memory_format(t: torch.Tensor) -> tuple[bool, bool]:
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


# tensors with a size-1 dim in channels_last memory: contiguous in both formats, read by torch
# as channels_last all the same (its conv then returns a channels_last result)
_SIZE_ONE_CHANNELS_LAST = {
    "one_channel_input": ((2, 1, 9, 7), (4, 1, 3, 3), "x"),
    "1x1_weight": ((2, 6, 9, 7), (4, 6, 1, 1), "w"),
    "one_channel_weight": ((2, 1, 9, 7), (4, 1, 3, 3), "w"),
    "both_one_channel": ((2, 1, 9, 7), (4, 1, 1, 1), "xw"),
}


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("name", list(_SIZE_ONE_CHANNELS_LAST))
def test_a_size_one_dim_in_channels_last_memory_gives_torchs_memory_format(name, grad, backend,
                                                                        rng):
    # the op read a tensor contiguous in both formats as NCHW and returned an NCHW result where
    # torch returns a channels_last one (values equal; the next layer's format not)
    xs, ws, which = _SIZE_ONE_CHANNELS_LAST[name]
    x, w = (torch.from_numpy(rand(rng, s)) for s in (xs, ws))
    # (.to, not .contiguous, which keeps a tensor already contiguous in that format as it is)
    if "x" in which:
        x = x.to(memory_format=torch.channels_last)
    if "w" in which:
        w = w.to(memory_format=torch.channels_last)
    x.requires_grad_(grad)
    w.requires_grad_(grad)
    pad = ws[2] // 2
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, padding=pad)
    want = F.conv2d(x, w, padding=pad)
    assert _memory_format(want) == (False, True)
    got = _as_torchs_conv(y, want, x, w, pad, grad, rng)
    if grad:
        # (the output gradient made dense in the forward's format as torch reads it: the input
        # gradient came back NCHW where torch's is channels_last)
        assert _memory_format(got[0]) == _memory_format(x.detach())


def _as_torchs_conv(y, want, x, w, pad, grad, rng):
    """Check the op's `y` against torch's `want` (its memory format; its values against
    float64) and, with `grad`, its gradients against torch's; return its gradients."""
    assert _memory_format(y) == _memory_format(want)
    ref = F.conv2d(x.detach().double(), w.detach().double(), padding=pad)
    torch.testing.assert_close(y.detach().double(), ref, rtol=1e-4, atol=1e-4)
    if not grad:
        return None
    gy = torch.from_numpy(rand(rng, tuple(y.shape)))
    got = torch.autograd.grad(y, (x, w), gy)
    for g1, g2 in zip(got, torch.autograd.grad(want, (x, w), gy)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)
    return got


# views of channels_last tensors that are not dense: torch still reads them as channels_last
# (its strides' order) or not, and its conv's result follows that reading
_SLICED_CHANNELS_LAST = {
    "batch_step": (lambda t: t[::2], "x"),
    "batch_range": (lambda t: t[1:3], "x"),
    "channel_range": (lambda t: t[:, :4], "x"),
    "row_step": (lambda t: t[:, :, ::2], "x"),  # (torch reads this one as NCHW)
    "weight_out_step": (lambda t: t[::2], "w"),
    "weight_in_range": (lambda t: t[:, :4], "xw"),
}


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=4, max_size=4),
       channels_last=st.booleans(), starts=st.lists(st.integers(0, 1), min_size=4, max_size=4),
       steps=st.lists(st.integers(1, 2), min_size=4, max_size=4),
       order=st.permutations(range(4)))
def test_channels_last_memory_reads_any_view_as_torch_does(sizes, channels_last, starts, steps,
                                                           order):
    # (its shortcut for sliced NCHW tensors, torch's first stride test, must never disagree)
    from torch._prims_common import suggest_memory_format

    from kernelkit.arrays import channels_last_memory

    base = torch.zeros([2 * s for s in sizes])
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    t = base[tuple(slice(a, None, b) for a, b in zip(starts, steps))].permute(*order)
    assert channels_last_memory(t) == (suggest_memory_format(t) == torch.channels_last)


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("name", list(_SLICED_CHANNELS_LAST))
def test_a_sliced_channels_last_tensor_gives_torchs_memory_format(name, grad, backend, rng):
    # a batch-sliced channels_last input (x_cl[::2]) gave an NCHW result where torch's is
    # channels_last: the op asked for dense channels_last memory
    view, which = _SLICED_CHANNELS_LAST[name]
    x = torch.from_numpy(rand(rng, (4, 8, 9, 7)))
    w = torch.from_numpy(rand(rng, (12, 8, 3, 3)))
    x = view(x.to(memory_format=torch.channels_last)) if "x" in which else x
    w = view(w.to(memory_format=torch.channels_last)) if "w" in which else w
    if w.shape[1] != x.shape[1]:
        w = w[:, :x.shape[1]]
    x.requires_grad_(grad)
    w.requires_grad_(grad)
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, padding=1)
    _as_torchs_conv(y, F.conv2d(x, w, padding=1), x, w, 1, grad, rng)


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_a_channels_last_weight_makes_the_result_channels_last_as_in_torch(backend, grad, rng):
    # torch's rule (oneDNN and cuDNN): a channels_last weight makes the conv channels_last; the
    # op returned a contiguous result beside an NCHW input
    x = torch.from_numpy(rand(rng, (2, 8, 10, 9))).requires_grad_(grad)
    w = torch.from_numpy(rand(rng, (6, 8, 3, 3))).contiguous(memory_format=torch.channels_last)
    w.requires_grad_(grad)
    b = torch.from_numpy(rand(rng, (6,))).requires_grad_(grad)
    with kernelkit.use(backend=backend):
        y = kernelkit.conv2d(x, w, b, padding=1, activation="relu")
    want = F.relu(F.conv2d(x, w, b, padding=1))
    assert want.is_contiguous(memory_format=torch.channels_last) and not want.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    if grad:
        gy = torch.from_numpy(rand(rng, tuple(y.shape)))
        got = torch.autograd.grad(y, (x, w, b), gy)
        ref = torch.autograd.grad(want, (x, w, b), gy)
        for g1, g2 in zip(got, ref):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-3)


# No input channels (every sum empty: act(bias) everywhere) and no output channels: torch's own
# conv returned an input-shaped (2, 0, 5, 5) for the first and raised for the second, so the
# answer depended on the candidate the tuner picked (the Numba kernels gave these).
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("xs, ws", [((2, 0, 5, 6), (3, 0, 3, 3)), ((2, 4, 5, 6), (0, 4, 3, 3))],
                         ids=["C=0", "K=0"])
def test_empty_channels_give_one_answer_on_every_backend(backend, lib, layout, xs, ws, rng):
    n, c, h, w = xs
    k = ws[0]
    x = rand(rng, (n, h, w, c) if layout == "NHWC" else xs)
    wt, b = rand(rng, ws), rand(rng, (k,)) + 0.5  # a bias the ReLU keeps in part
    b[:1] = -1.0
    conv = dict(padding=1, stride=(1, 2), layout=layout)
    if lib == "torch":
        x, wt, b = map(torch.from_numpy, (x, wt, b))
    with kernelkit.use(backend=backend):
        y = np.asarray(kernelkit.conv2d(x, wt, b, activation="relu", **conv))
        dy = np.ones_like(y) if lib == "numpy" else torch.ones(y.shape)
        dx = np.asarray(kernelkit.conv2d_backward_input(dy, wt, x.shape, **conv))
        dw = np.asarray(kernelkit.conv2d_backward_weight(x, dy, ws, **conv))
    out = (n, 5, 3, k) if layout == "NHWC" else (n, k, 5, 3)
    assert y.shape == out
    chan = (1, 1, 1, k) if layout == "NHWC" else (1, k, 1, 1)
    np.testing.assert_array_equal(y, np.broadcast_to(np.maximum(np.asarray(b), 0).reshape(chan),
                                                     out))
    assert dx.shape == tuple(x.shape) and not dx.any()
    assert dw.shape == ws


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["primes", "stride2", "dilation2", "groups", "depthwise",
                                  "1x1-stride2", "asym-pad", "rect-kernel"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_backward_ops(backend, name, layout, rng):
    x, w, conv = make(ODD[name], rng, np.float64)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    pad = conv["padding"]
    if isinstance(pad, tuple) and len(pad) == 4:
        y = F.conv2d(F.pad(xt, (pad[2], pad[3], pad[0], pad[1])), wt, None, conv["stride"], 0,
                     conv["dilation"], conv["groups"])
    else:
        y = F.conv2d(xt, wt, None, conv["stride"], pad, conv["dilation"], conv["groups"])
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    g_np, x_np = g.numpy(), x
    if layout == "NHWC":
        g_np, x_np = g_np.transpose(0, 2, 3, 1), x.transpose(0, 2, 3, 1)
    with kernelkit.use(backend=backend):
        dx = kernelkit.conv2d_backward_input(g_np, w, x_np.shape, layout=layout, **conv)
        dw = kernelkit.conv2d_backward_weight(x_np, g_np, w.shape, layout=layout, **conv)
    if layout == "NHWC":
        dx = dx.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["primes", "stride2", "groups", "depthwise", "1x1", "asym-pad"])
def test_half_precision_forward_and_backward(dtype, name, rng):
    """float16 / bfloat16 tensors on the CPU (computed in float32 by the Numba kernels, rounded
    once): the forward with bias and activation, channels_last, and both backward ops, each
    against float64 within a float32 reduction's bound plus one half-precision rounding."""
    from reference import assert_grad_close, conv2d_grads_ref

    x64, w64, conv = make(ODD[name], rng)
    x, w = torch.from_numpy(x64).to(dtype), torch.from_numpy(w64).to(dtype)
    b = torch.from_numpy(rand(rng, (w.shape[0],))).to(dtype)
    pad = ref_padding(conv["padding"], w.shape[2], w.shape[3])
    with kernelkit.use(backend="numba"):
        y = kernelkit.conv2d(x, w, b, activation="relu", **conv)
        y_cl = kernelkit.conv2d(x.to(memory_format=torch.channels_last), w, **conv)
    assert y.dtype == dtype and y_cl.dtype == dtype
    assert_conv2d_close(y, x, w, b, activation="relu", **{**conv, "padding": pad})
    assert_conv2d_close(y_cl, x, w, **{**conv, "padding": pad})
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    with kernelkit.use(backend="numba"):
        dx = kernelkit.conv2d_backward_input(gy, w, x.shape, **conv)
        dw = kernelkit.conv2d_backward_weight(x, gy, w.shape, **conv)
    assert dx.dtype == dtype and dw.dtype == dtype
    full = pad if isinstance(pad, tuple) and len(pad) == 4 else (pad, pad, pad, pad)
    (rdx, rdw), (sdx, sdw) = conv2d_grads_ref(x, w, gy, stride=conv["stride"], padding=full,
                                              dilation=conv["dilation"], groups=conv["groups"])
    k_out = w.shape[0] // conv["groups"] * w.shape[2] * w.shape[3]
    assert_grad_close(dx, rdx, sdx, k_out, "dx")
    assert_grad_close(dw, rdw, sdw, x.shape[0] * y.shape[2] * y.shape[3], "dw")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autograd_through_kernelkit(backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    with kernelkit.use(backend=backend):
        kernelkit.conv2d(x, w, b, stride=2, padding=1, groups=2, activation="silu").square().sum().backward()
    got = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.silu(F.conv2d(x, w, b, 2, 1, 1, 2)).square().sum().backward()
    for a, t in zip(got, (x, w, b)):
        torch.testing.assert_close(a, t.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_kernel_routed_training_step_runs_bound_plans_only(channels_last, monkeypatch):
    """A kernelkit.nn.Conv2d on a kernelkit kernel chooses its forward, pre-activation and both
    backward products once (`ConvPlans`); later training steps call those plans without the
    public functions' signature and dispatch (10-40 us each on a small CPU layer), and still
    give torch's float64 gradients."""
    import kernelkit.nn as knn
    from kernelkit.nn import _route
    from kernelkit.ops import conv2d as ops_conv2d

    g = torch.Generator().manual_seed(11)
    layer = knn.Conv2d(4, 6, 3, stride=2, padding=1, activation="relu").double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, generator=g).to(memory_format=fmt)
    x.requires_grad_(True)
    gy = torch.randn(2, 6, 5, 5, dtype=torch.float64, generator=g)

    def step():
        for t in (x, layer.weight, layer.bias):
            t.grad = None
        layer(x).backward(gy)
        return [t.grad.clone() for t in (x, layer.weight, layer.bias)]

    with kernelkit.use(backend="numba"):  # forced: a kernel route, no in-model trial
        step()

        def no_dispatch(*args, **kwargs):
            raise AssertionError("a bound training step went through public dispatch")

        monkeypatch.setattr(ops_conv2d, "signature3", no_dispatch)
        monkeypatch.setattr(ops_conv2d, "plain_signature3", no_dispatch)
        monkeypatch.setattr(ops_conv2d, "plan_for", no_dispatch)
        got = step()
    (route,) = layer._kk_routes.values()
    assert _route.describe(route) == "numba-cpu"
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, layer.weight, layer.bias))
    F.relu(F.conv2d(xr, wr, br, 2, 1)).backward(gy)
    for a, t in zip(got, (xr, wr, br)):
        torch.testing.assert_close(a, t.grad, rtol=1e-9, atol=1e-9)
    assert got[0].is_contiguous(memory_format=fmt)


BAD = [
    (lambda r: (rand(r, (1, 4, 8, 8)), rand(r, (2, 3, 3, 3))), {}, ValueError, "needs C=3"),
    (lambda r: (rand(r, (1, 6, 8, 8)), rand(r, (5, 2, 3, 3))), {"groups": 3}, ValueError,
     "must divide"),
    (lambda r: (rand(r, (1, 6, 8, 8)), rand(r, (4, 3, 3, 3))), {"groups": 4}, ValueError,
     "must divide"),
    (lambda r: (rand(r, (1, 3, 2, 2)), rand(r, (2, 3, 5, 5))), {}, ValueError, "larger than the padded"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"padding": -1}, ValueError,
     "non-negative"),
    (lambda r: (rand(r, (8, 8)), rand(r, (2, 3, 3, 3))), {}, ValueError, "must be 4-D"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3))), {}, ValueError, "must be 4-D"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"stride": 0}, ValueError, "positive"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"stride": 2, "padding": "same"},
     ValueError, "needs stride 1"),
    (lambda r: (rand(r, (1, 3, 8, 8)).astype(np.int64), rand(r, (2, 3, 3, 3))), {}, TypeError, "dtype"),
    (lambda r: (rand(r, (1, 3, 8, 8)), torch.ones(2, 3, 3, 3)), {}, TypeError, "torch array"),
    (lambda r: ([[1.0]], rand(r, (2, 3, 3, 3))), {}, TypeError, "'x' must be"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"activation": "tanh"}, ValueError,
     "'activation'"),
    # unhashable arguments: before, the plan memo's lookup raised "unhashable type" (or numpy's
    # "only 0-dimensional arrays can be converted"), naming neither the op nor the argument
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"padding": np.array([1, 1])},
     TypeError, "'padding' must be an int, a pair, a 4-tuple"),
    (lambda r: (torch.ones(1, 3, 8, 8), torch.ones(2, 3, 3, 3)), {"stride": np.array([1, 1])},
     TypeError, "'stride' must be an int or a pair of ints"),
    (lambda r: (torch.ones(1, 3, 8, 8), torch.ones(2, 3, 3, 3)), {"padding": {"h": 1}},
     TypeError, "'padding' must be an int, a pair, a 4-tuple"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"activation": ["relu"]},
     TypeError, "'activation'"),
    # wrong types are TypeErrors (were ValueErrors); a kernel of zero rows or columns is
    # rejected (torch raised its own RuntimeError, Numba returned a (1, 2, 6, 3) result)
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"activation": 1},
     TypeError, "'activation'"),
    (lambda r: (rand(r, (1, 3, 8, 8)), rand(r, (2, 3, 3, 3))), {"groups": 1.0},
     TypeError, "'groups' must be a positive int"),
    (lambda r: (rand(r, (1, 3, 5, 5)), rand(r, (2, 3, 0, 3))), {}, ValueError, "at least 1x1"),
    (lambda r: (torch.ones(1, 3, 5, 5), torch.ones(2, 3, 3, 0)), {}, ValueError,
     "at least 1x1"),
]


@pytest.mark.parametrize("make_args,kwargs,exc,match", BAD)
def test_bad_input(make_args, kwargs, exc, match, rng):
    x, w = make_args(rng)
    with pytest.raises(exc, match=match) as info:
        kernelkit.conv2d(x, w, **kwargs)
    assert str(info.value).startswith("conv2d:")


def test_bad_bias_and_mixed_devices(rng):
    x, w = rand(rng, (1, 3, 8, 8)), rand(rng, (2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"'bias' must have shape \(K,\) = \(2,\)"):
        kernelkit.conv2d(x, w, rand(rng, (3,)))
    with pytest.raises(ValueError, match="is on meta"):
        kernelkit.conv2d(torch.ones(1, 3, 8, 8), torch.ones(2, 3, 3, 3, device="meta"))


def test_a_parents_torch_choice_for_numpy_data_is_asked_again_in_a_forked_worker():
    """The parent's plan for numpy data runs torch's conv (tune="off": the vendor by default);
    a multiprocessing worker forked after torch's OpenMP team ran hung on it (GNU OpenMP's team
    does not survive a fork). The worker decides again at its first call: without torch where
    torch there would run more than one thread, torch where it runs one (kernelkit sets one in
    a child forked after it used the team, `threads._single_threaded_torch`)."""
    import subprocess
    import sys

    code = """if True:
        import multiprocessing as mp
        import numpy as np
        import torch
        import kernelkit
        from kernelkit.autotune import tuner
        torch.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((2, 16, 32, 32), dtype=np.float32)
        w = np.random.default_rng(1).standard_normal((16, 16, 3, 3), dtype=np.float32)
        torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w))  # the team ran
        with kernelkit.use(tune="off"):
            y = kernelkit.conv2d(x, w, padding=1)  # the plan: torch's conv
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)

        def work(_):
            with kernelkit.use(tune="off"):
                out = kernelkit.conv2d(x, w, padding=1)
            chosen = [c.candidate for c in tuner._memo.values()]
            return float(np.abs(out - ref.numpy()).max()), chosen, torch.get_num_threads()

        with mp.get_context("fork").Pool(1) as pool:
            err, chosen, threads = pool.apply_async(work, (0,)).get(timeout=90)
        assert err < 1e-3 and ("torch-cpu" not in chosen or threads == 1), (err, chosen, threads)
        assert float(np.abs(y - ref.numpy()).max()) < 1e-3
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_a_record_arrays_field_is_convolved_as_its_values(backend, rng):
    """float32 values 5 bytes apart beside a mask byte (a field of a numpy record array): torch
    refuses such strides, and conv2d, its backward and matmul raised torch's message ("strides
    not a multiple of the element byte size", no op or argument named) wherever torch's
    candidate ran, on every call once torch won the size's tuning."""
    rec = np.zeros((2, 5, 9, 7), dtype=[("v", "<f4"), ("mask", "u1")])
    rec["v"] = rng.standard_normal(rec.shape)
    x = rec["v"]
    w = rng.standard_normal((3, 5, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    pair = np.zeros((9, 5), dtype=[("v", "<f4"), ("mask", "u1")])
    pair["v"] = rng.standard_normal(pair.shape)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    with kernelkit.use(backend=backend):
        for _ in range(2):  # (the second call runs the memoised plan)
            assert_conv2d_close(kernelkit.conv2d(x, w, padding=1), np.ascontiguousarray(x), w,
                                padding=1)
            gw = kernelkit.conv2d_backward_weight(x, g, w.shape, padding=1)
            want = torch.nn.grad.conv2d_weight(torch.from_numpy(x.astype(np.float64)), w.shape,
                                               torch.from_numpy(g.astype(np.float64)), padding=1)
            np.testing.assert_allclose(gw, want.numpy(), rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(kernelkit.matmul(pair["v"], b),
                                       pair["v"].astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
