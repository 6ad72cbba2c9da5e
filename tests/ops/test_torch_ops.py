"""The registered custom ops (kernelkit/ops/torch_ops.py): opcheck with and without grad inputs,
gradcheck and gradgradcheck in float64, on each CPU backend.

Issue 11: opcheck on kernelkit::conv2d with grad inputs failed test_aot_dispatch_dynamic (its
backward called plain Python functions, which FunctionalTensors cannot enter), so
torch.compile could not train a conv model.
"""

from __future__ import annotations

import pytest
import torch

import kernelkit
from kernelkit.ops.torch_ops import (
    conv2d_backward_ops,
    conv2d_op,
    linear_op,
    matmul_op,
    relu_backward_op,
)

BACKENDS = ["torch", "numba"]
GEOMETRIES = [  # stride, padding (top, bottom, left, right), dilation, groups, activation
    ([1, 1], [1, 1, 1, 1], [1, 1], 1, None),
    ([2, 1], [0, 1, 1, 0], [1, 2], 2, "silu"),
]


def _conv_inputs(grad: bool, groups: int, dtype=torch.float32, channels_last=False,
                 weight_channels_last=False):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // groups, 3, 2, generator=g, dtype=dtype)
    if weight_channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(6, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (x, w, b)]


def _out_shape(x, w, stride, pad, dil):
    from kernelkit.kernels.convgeom import out_size

    ho, wo = out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, pad, dil)
    return (x.shape[0], w.shape[0], ho, wo)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=["plain", "strided_grouped_silu"])
# "weight": an NCHW input beside a channels_last weight, which makes torch's conv (and the op,
# its fake included) channels_last
@pytest.mark.parametrize("channels_last", [False, True, "weight"],
                         ids=["nchw", "channels_last", "weight_channels_last"])
def test_opcheck_conv2d_and_its_backward_ops(backend, grad, geo, channels_last):
    stride, pad, dil, groups, act = geo
    x, w, b = _conv_inputs(grad, groups, channels_last=channels_last is True,
                           weight_channels_last=channels_last == "weight")
    g = torch.randn(_out_shape(x, w, stride, pad, dil))
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    g.requires_grad_(grad)
    bwd_input, bwd_weight = conv2d_backward_ops()
    with kernelkit.use(backend=backend):
        torch.library.opcheck(conv2d_op(), (x, w, b, stride, pad, dil, groups, act, None, False))
        torch.library.opcheck(bwd_input, (g, w, list(x.shape), stride, pad, dil, groups, None,
                                          False))
        torch.library.opcheck(bwd_weight, (x, g, list(w.shape), stride, pad, dil, groups, None,
                                           False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_opcheck_matmul(backend, grad, activation):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, 5, generator=g), torch.randn(5, 6, generator=g)
    bias = torch.randn(6, generator=g)
    with kernelkit.use(backend=backend):
        torch.library.opcheck(matmul_op(), tuple(t.requires_grad_(grad) for t in (a, b, bias))
                              + (activation, False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=["plain", "strided_grouped_silu"])
def test_gradcheck_conv2d_float64(backend, geo):
    stride, pad, dil, groups, act = geo
    x, w, b = _conv_inputs(True, groups, torch.float64)
    conv = conv2d_op()
    f = lambda x, w, b: conv(x, w, b, stride, pad, dil, groups, act, None, False)
    with kernelkit.use(backend=backend):
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_conv2d_backward_ops_float64(backend):
    stride, pad, dil, groups, _ = GEOMETRIES[1]
    x, w, _ = _conv_inputs(True, groups, torch.float64)
    g = torch.randn(_out_shape(x, w, stride, pad, dil), dtype=torch.float64, requires_grad=True)
    bwd_input, bwd_weight = conv2d_backward_ops()
    fi = lambda g, w: bwd_input(g, w, list(x.shape), stride, pad, dil, groups, None, False)
    fw = lambda x, g: bwd_weight(x, g, list(w.shape), stride, pad, dil, groups, None, False)
    with kernelkit.use(backend=backend):
        assert torch.autograd.gradcheck(fi, (g, w))
        assert torch.autograd.gradcheck(fw, (x, g))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"])
def test_gradcheck_matmul_float64(backend, activation):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda a, b, c: matmul_op()(a, b, c, activation, False)
    with kernelkit.use(backend=backend):
        assert torch.autograd.gradcheck(f, (a, b, bias))
        assert torch.autograd.gradgradcheck(f, (a, b, bias))


# (x shape, activation): 2-D, batch dims, unbatched, empty
LINEAR_CASES = [((3, 5), "gelu"), ((2, 3, 5), None), ((5,), "silu"), ((0, 5), None)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("x_shape, activation", LINEAR_CASES, ids=str)
def test_opcheck_linear(backend, grad, x_shape, activation):
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(x_shape, generator=g), torch.randn(7, 5, generator=g)
    bias = torch.randn(7, generator=g)
    with kernelkit.use(backend=backend):
        torch.library.opcheck(linear_op(), tuple(t.requires_grad_(grad) for t in (x, w, bias))
                              + (activation, False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_op_matches_float64_reference(backend, activation, with_bias):
    from kernelkit.kernels import torch_activations

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 13, generator=g)[:, ::2]  # non-contiguous batch dims
    w, b = torch.randn(11, 13, generator=g), torch.randn(11, generator=g)
    b = b if with_bias else None
    want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    if activation:
        want = torch_activations()[activation](want)
    with kernelkit.use(backend=backend):
        got = linear_op()(x, w, b, activation, False)
    assert got.shape == (2, 5, 11) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_gradcheck_linear_float64(backend, activation):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, c: linear_op()(x, w, c, activation, False)
    with kernelkit.use(backend=backend):
        assert torch.autograd.gradcheck(f, (x, w, bias))
        assert torch.autograd.gradgradcheck(f, (x, w, bias))


# a channels_last input, then a conv whose result has a size-1 dim (K = 1, or a 1x1 plane), then
# a conv of that result: (x shape, first weight, second weight, padding)
_SIZE_ONE_CHAINS = {
    "one_output_channel": ((2, 3, 8, 8), (1, 3, 3, 3), (4, 1, 3, 3), 1),
    "one_pixel_plane": ((2, 3, 3, 3), (4, 3, 3, 3), (5, 4, 1, 1), 0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(_SIZE_ONE_CHAINS))
def test_the_fake_conv_gives_the_real_strides_through_a_size_one_result(name, backend):
    """The fake kernel made its channels_last result with ``contiguous(memory_format=...)``,
    which keeps NCHW strides for a shape with a size-1 dim; the next conv's fake then read it as
    NCHW where the real result is channels_last: Inductor stopped with "incorrect fake" (stride
    1 == 64) on a chain of two convs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    xs, w1s, w2s, pad = _SIZE_ONE_CHAINS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g).to(memory_format=torch.channels_last)
    w1, w2 = torch.randn(w1s, generator=g), torch.randn(w2s, generator=g)
    op = conv2d_op()

    def chain(x, w1, w2):
        y1 = op(x, w1, None, [1, 1], [pad] * 4, [1, 1], 1, None, None, False)
        return y1, op(y1, w2, None, [1, 1], [0] * 4, [1, 1], 1, None, None, False)

    with kernelkit.use(backend=backend):
        real = chain(x, w1, w2)
    with FakeTensorMode() as mode:
        fake = chain(*(mode.from_tensor(t) for t in (x, w1, w2)))
    t1 = torch.nn.functional.conv2d(x, w1, padding=pad)
    t2 = torch.nn.functional.conv2d(t1, w2)
    assert [t.stride() for t in real] == [t1.stride(), t2.stride()]  # (torch's own)
    assert [t.stride() for t in fake] == [t.stride() for t in real]


def _bad_calls():
    f32, f64 = torch.float32, torch.float64
    t = lambda *shape, dtype=f32: torch.randn(*shape, dtype=dtype)
    ops = torch.ops.kernelkit
    geo = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    return {
        "matmul_vector": (ValueError, lambda: ops.matmul(t(5, 7), t(7), None, None, False)),
        "matmul_k": (ValueError, lambda: ops.matmul(t(3, 4), t(6, 5), None, None, False)),
        "matmul_dtypes": (TypeError, lambda: ops.matmul(t(3, 4), t(4, 5, dtype=f64), None,
                                                        None, False)),
        "matmul_bias": (ValueError, lambda: ops.matmul(t(3, 4), t(4, 5), t(3, 5), None, False)),
        "matmul_activation": (ValueError, lambda: ops.matmul(t(3, 4), t(4, 5), None, "tanh",
                                                             False)),
        "linear_features": (ValueError, lambda: ops.linear(t(2, 5), t(4, 8), None, None, False)),
        "linear_weight_1d": (ValueError, lambda: ops.linear(t(2, 4), t(4), None, None, False)),
        "conv_channels": (ValueError, lambda: ops.conv2d(t(1, 5, 8, 8), t(4, 3, 3, 3), None,
                                                         *geo, None, None, False)),
        "conv_kernel_past_input": (ValueError, lambda: ops.conv2d(
            t(1, 3, 2, 2), t(4, 3, 3, 3), None, *geo, None, None, False)),
        "conv_unbatched": (ValueError, lambda: ops.conv2d(t(3, 5, 5), t(4, 3, 3, 3), None, *geo,
                                                          None, None, False)),
        "conv_padding_pair": (ValueError, lambda: ops.conv2d(
            t(1, 3, 5, 5), t(4, 3, 3, 3), None, [1, 1], [1, 1], [1, 1], 1, None, None, False)),
        "conv_layout": (ValueError, lambda: ops.conv2d(t(1, 3, 5, 5), t(4, 3, 3, 3), None, *geo,
                                                       None, "nchw", False)),
        "conv_dtypes": (TypeError, lambda: ops.conv2d(t(1, 3, 5, 5), t(4, 3, 3, 3, dtype=f64),
                                                      None, *geo, None, None, False)),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_the_fakes_raise_what_the_ops_raise(name):
    """The registered ops' fakes checked nothing: torch.export of a patched Linear fed other
    features, or of a conv whose kernel is larger than its input, "succeeded" with a wrong
    output shape; a vector operand gave a fake of the wrong rank (opcheck failed, Inductor
    asserted). Each bad call now raises the same error type in eager mode and at trace time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    error, call = _bad_calls()[name]
    with pytest.raises(error, match="matmul|linear|conv2d"):  # (the op's name, in the body's
        call()                                              # words or the registered op's)
    with FakeTensorMode(), pytest.raises(error, match="kernelkit::"):
        call()


class _KernelkitOpCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the kernelkit ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # (the products and convs: kernelkit::relu_backward, a mask, is not counted)
        self.count += func.namespace == "kernelkit" and "relu_backward" not in func.name()
        return func(*args, **(kwargs or {}))


_RELU_SAVED = {
    "matmul": (lambda a, w, b, act: matmul_op()(a, w.t(), b, act, False),
               lambda a, w, b: a @ w.t() + b, (6, 5)),
    "linear": (lambda a, w, b, act: linear_op()(a, w, b, act, False),
               lambda a, w, b: torch.nn.functional.linear(a, w, b), (6, 5)),
    "conv2d": (lambda a, w, b, act: conv2d_op()(a, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, act,
                                                None, False),
               lambda a, w, b: torch.nn.functional.conv2d(a, w, b, padding=1), (2, 5, 6, 7)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(_RELU_SAVED))
def test_a_registered_ops_fused_relu_backward_reads_its_output(op, backend):
    # the registered ops' backward (torch.compile's training graphs, create_graph) recomputed
    # the product for a fused ReLU: a third GEMM or conv per step; GELU and SiLU still do
    kk, ref, x_shape = _RELU_SAVED[op]
    g = torch.Generator().manual_seed(8)
    x = torch.randn(x_shape, generator=g, requires_grad=True)
    w = torch.randn((4, 5, 3, 3) if op == "conv2d" else (4, 5), generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    for act, ops in (("relu", 2), ("gelu", 3)):
        with kernelkit.use(backend=backend):
            y = kk(x, w, b, act)
        gy = torch.randn(y.shape, generator=g)
        with _KernelkitOpCount() as counted, kernelkit.use(backend=backend):
            got = torch.autograd.grad(y, (x, w, b), gy)
        assert counted.count == ops, (act, counted.count)
        z = ref(x, w, b)
        want = torch.autograd.grad(torch.relu(z) if act == "relu"
                                   else torch.nn.functional.gelu(z), (x, w, b), gy)
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "expanded_grad", "mixed"])
def test_opcheck_and_gradcheck_relu_backward(layout):
    # kernelkit::relu_backward: the registered ops' fused-ReLU gradient, opaque to Inductor
    g = torch.Generator().manual_seed(5)
    out = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    out[0, 0, 0, :3] = 0.0  # (threshold_backward's tie: zero at 0, as torch's relu)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    if layout in ("channels_last", "mixed"):
        out = out.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last":
        grad = grad.contiguous(memory_format=torch.channels_last)
    if layout == "expanded_grad":  # (what .sum().backward() hands the last op)
        grad = torch.ones((), dtype=torch.float64).expand(out.shape)
    op = relu_backward_op()
    got = op(grad, out)
    assert got.stride() == torch.empty_like(grad).stride()
    torch.testing.assert_close(got, torch.ops.aten.threshold_backward(grad, out, 0),
                               rtol=0, atol=0)
    grad.requires_grad_(True)
    torch.library.opcheck(op, (grad, out))
    assert torch.autograd.gradcheck(lambda t: op(t, out), (grad.detach().clone()
                                                           .requires_grad_(True),))
    assert torch.autograd.gradgradcheck(lambda t: op(t, out), (grad.detach().clone()
                                                               .requires_grad_(True),))
